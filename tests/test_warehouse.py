"""Partition-scoped Delta writes: other partitions survive, failed writes commit nothing."""

import numpy as np
import polars as pl
import pytest
from deltalake import DeltaTable

from s2vec_core import warehouse


def _frame(region: str, n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "region": [region] * n,
        "cell_id": rng.integers(-(2**62), 2**62, n, dtype=np.int64),
        "value": rng.random(n),
        "embedding": pl.Series(rng.random((n, 4), dtype=np.float32), dtype=pl.Array(pl.Float32, 4)),
    })


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort("cell_id")


def test_rewrite_of_one_region_leaves_others_identical(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    a1, b, a2 = _frame("a", 50, 1), _frame("b", 40, 2), _frame("a", 7, 3)
    assert warehouse.write_partition(a1, uri, {"region": "a"}) == 0
    warehouse.write_partition(b, uri, {"region": "b"})
    before_b = _sorted(warehouse.read_table(uri, {"region": "b"}))
    v = warehouse.write_partition(a2, uri, {"region": "a"})
    assert v == 2
    after_b = _sorted(warehouse.read_table(uri, {"region": "b"}))
    assert after_b.equals(before_b)
    assert before_b.select("region", "cell_id", "value").equals(_sorted(b).select("region", "cell_id", "value"))
    got_a = _sorted(warehouse.read_table(uri, {"region": "a"}))
    assert got_a.height == 7
    assert np.allclose(got_a["value"].to_numpy(), _sorted(a2)["value"].to_numpy())
    assert DeltaTable(uri).metadata().partition_columns == ["region"]


def test_rows_outside_partition_are_refused_and_nothing_commits(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    warehouse.write_partition(_frame("a", 5, 1), uri, {"region": "a"})
    bad = pl.concat([_frame("a", 3, 2), _frame("b", 2, 3)])
    with pytest.raises(warehouse.WarehouseError, match="outside the partition"):
        warehouse.write_partition(bad, uri, {"region": "a"})
    assert warehouse.table_version(uri) == 0
    assert warehouse.read_table(uri).height == 5


def test_schema_mismatch_is_refused_and_table_unchanged(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    warehouse.write_partition(_frame("a", 5, 1), uri, {"region": "a"})
    warehouse.write_partition(_frame("b", 5, 2), uri, {"region": "b"})
    with pytest.raises(warehouse.WarehouseError, match="schema"):
        warehouse.write_partition(_frame("a", 3, 3).drop("value"), uri, {"region": "a"})
    assert warehouse.table_version(uri) == 1
    assert warehouse.read_table(uri, {"region": "a"}).height == 5


def test_whole_table_overwrite_is_impossible(tmp_path):
    with pytest.raises(warehouse.WarehouseError, match="whole-table"):
        warehouse.write_partition(_frame("a", 1, 1), warehouse.table_uri(tmp_path, "t"), {})


def test_empty_partition_write_removes_only_that_partition(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    warehouse.write_partition(_frame("a", 5, 1), uri, {"region": "a"})
    warehouse.write_partition(_frame("b", 5, 2), uri, {"region": "b"})
    warehouse.write_partition(_frame("a", 0, 3), uri, {"region": "a"})
    assert warehouse.read_table(uri)["region"].unique().to_list() == ["b"]


def test_readable_by_polars_deltalake_and_duckdb(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    df = _frame("a", 20, 1)
    warehouse.write_partition(df, uri, {"region": "a"})
    assert pl.read_delta(uri).height == 20
    assert len(DeltaTable(uri).to_pandas()) == 20
    con = warehouse.duckdb_connect()
    n, total = con.execute(f"SELECT count(*), sum(value) FROM delta_scan('{uri}')").fetchone()
    assert n == 20 and total == pytest.approx(df["value"].sum())
