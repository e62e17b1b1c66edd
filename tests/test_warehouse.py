"""Partition-scoped Delta writes: other partitions survive, failed writes commit nothing."""

import numpy as np
import polars as pl
import pytest
from deltalake import DeltaTable

from s2vec_core import warehouse


def _frame(region: str, n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "region": [region] * n,
            "cell_id": rng.integers(-(2**62), 2**62, n, dtype=np.int64),
            "value": rng.random(n),
            "embedding": pl.Series(rng.random((n, 4), dtype=np.float32), dtype=pl.Array(pl.Float32, 4)),
        }
    )


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
    assert before_b.select("region", "cell_id", "value").equals(
        _sorted(b).select("region", "cell_id", "value")
    )
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


def test_commits_carry_provenance_and_a_run_names_a_version(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    for i, region in enumerate(("a", "b", "a")):
        warehouse.write_partition(
            _frame(region, 5, i),
            uri,
            {"region": region},
            commit={"run_id": f"run-{i}", "asset": "x", "region": region},
        )
    hist = warehouse.history(uri)
    assert hist["run_id"].to_list() == ["run-0", "run-1", "run-2"] and hist["region"].to_list() == [
        "a",
        "b",
        "a",
    ]
    assert warehouse.version_of_run(uri, "run-1") == 1
    as_of = warehouse.read_table(uri, version=warehouse.version_of_run(uri, "run-1"))
    assert sorted(as_of["region"].unique()) == ["a", "b"] and as_of.height == 10
    with pytest.raises(warehouse.WarehouseError, match="no commit of run"):
        warehouse.version_of_run(uri, "run-9")
    with pytest.raises(warehouse.WarehouseError, match="unknown commit metadata"):
        warehouse.write_partition(_frame("a", 1, 1), uri, {"region": "a"}, commit={"who": "me"})


def test_facts_live_in_the_description_and_change_only_when_they_do(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    warehouse.write_partition(_frame("a", 5, 1), uri, {"region": "a"}, description="d", facts={"dim": 4})
    warehouse.write_partition(_frame("b", 5, 1), uri, {"region": "b"}, description="d", facts={"dim": 4})
    assert warehouse.table_version(uri) == 1  # same facts: no description commit
    warehouse.write_partition(_frame("b", 5, 1), uri, {"region": "b"}, description="d", facts={"dim": 8})
    assert warehouse.table_facts(uri) == {"dim": 8} and warehouse.table_version(uri) == 3
    assert DeltaTable(uri).metadata().description.startswith("d\n")


def test_a_list_partition_replaces_several_keys_in_one_commit(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    for region in "abc":
        warehouse.write_partition(_frame(region, 3, 1), uri, {"region": region})
    both = pl.concat([_frame("a", 1, 2), _frame("b", 2, 3)])
    assert warehouse.write_partition(both, uri, {"region": ["a", "b"]}) == 3
    counts = dict(warehouse.read_table(uri).group_by("region").len().iter_rows())
    assert counts == {"a": 1, "b": 2, "c": 3}
    with pytest.raises(warehouse.WarehouseError, match="outside the partition"):
        warehouse.write_partition(_frame("c", 1, 1), uri, {"region": ["a", "b"]})


def test_removing_a_region_deletes_it_everywhere_one_commit_per_table(tmp_path):
    from s2vec_core import lifecycle
    from s2vec_core.catalog import Region

    root = str(tmp_path)
    for name in ("cell_features", "cell_embeddings"):
        for region in ("gone", "kept"):
            warehouse.write_partition(
                _frame(region, 6, 1), warehouse.table_uri(root, name), {"region": region}
            )
    (tmp_path / "rasters" / "gone").mkdir(parents=True)
    kept_files = {n: sorted(DeltaTable(warehouse.table_uri(root, n)).file_uris()) for n in ("cell_features",)}
    before = {
        n: warehouse.read_table(warehouse.table_uri(root, n), {"region": "kept"})
        for n in ("cell_features", "cell_embeddings")
    }
    catalog = {"kept": Region("kept", "/x.pbf")}
    with pytest.raises(lifecycle.LifecycleError, match="still in the catalog"):
        lifecycle.remove_region(root, "kept", catalog)
    versions = lifecycle.remove_region(root, "gone", catalog)
    assert versions == {"cell_features": 2, "cell_embeddings": 2}
    for name, rows in before.items():
        uri = warehouse.table_uri(root, name)
        assert warehouse.read_table(uri)["region"].unique().to_list() == ["kept"]
        assert warehouse.read_table(uri, {"region": "kept"}).equals(rows)
        assert warehouse.history(uri).row(-1, named=True)["asset"] == "remove-region"
    kept_now = sorted(DeltaTable(warehouse.table_uri(root, "cell_features")).file_uris())
    assert [f for f in kept_files["cell_features"] if "region=kept" in f] == kept_now  # the same files
    assert not (tmp_path / "rasters" / "gone").exists()
    assert lifecycle.remove_region(root, "gone", catalog) == {"cell_features": None, "cell_embeddings": None}


def test_bbox_clips_cells_by_their_centre():
    from s2vec_core import bbox, s2

    ids = s2.latlng_to_cell_id(np.array([47.1, 47.1, 46.0]), np.array([9.5, 9.9, 9.5]), 17)
    frame = pl.DataFrame({"cell_id": ids, "value": [1.0, 2.0, 3.0]})
    assert bbox.clip(frame, (9.47, 47.04, 9.64, 47.28))["value"].to_list() == [1.0]
    assert bbox.clip(frame, None).equals(frame)


def test_a_deliberate_additive_migration_adds_columns_and_old_rows_read_null(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    warehouse.write_partition(_frame("a", 4, 1), uri, {"region": "a"})
    newer = _frame("b", 3, 2).with_columns(norm=pl.lit(2.0, pl.Float32))
    with pytest.raises(warehouse.WarehouseError, match=r"new columns \['norm'\]"):
        warehouse.write_partition(newer, uri, {"region": "b"})
    warehouse.write_partition(newer, uri, {"region": "b"}, add_columns=True, commit={"run_id": "r"})
    table = warehouse.read_table(uri)
    assert table.columns[-1] == "norm" and table.schema["norm"] == pl.Float32
    assert table.filter(pl.col("region") == "a")["norm"].null_count() == 4
    assert table.filter(pl.col("region") == "b")["norm"].to_list() == [2.0] * 3
    assert warehouse.history(uri)["run_id"].to_list()[-2:] == ["r", "r"]  # the migration commit names the run
