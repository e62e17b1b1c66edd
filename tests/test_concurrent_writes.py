"""Concurrent writers of one Delta table, in real processes started together.

Two first writers of the same region on a new table once both appended (every row twice). Now each
write is a predicate overwrite (or a create that fails if the table exists), retried on a conflicting
commit: whatever the interleaving, a region holds exactly one writer's rows and no other region's
rows are lost, in the final table and in every version of its history.
"""

import subprocess
import sys
import time

import polars as pl
import pytest
from deltalake import DeltaTable

from s2vec_core import warehouse

ROWS = 3000
WORKER = """
import sys, time
from pathlib import Path
import numpy as np, polars as pl
from s2vec_core import warehouse

uri, region, writer, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
rng = np.random.default_rng(writer)
df = pl.DataFrame({
    "region": [region] * ROWS,
    "cell_id": np.arange(ROWS, dtype=np.int64),
    "writer": np.full(ROWS, writer, dtype=np.int64),
    "value": rng.random(ROWS),
})
(barrier / f"ready-{writer}").touch()
while not (barrier / "go").exists():
    time.sleep(0.001)
version = warehouse.write_partition(df, uri, {"region": region}, commit={"run_id": f"w{writer}"})
print(version)
""".replace("ROWS", str(ROWS))


def write_at_once(tmp_path, uri: str, regions: list[str]) -> list[int]:
    """One process per entry of `regions`, all released at once; their returned versions."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, uri, region, str(i), str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, region in enumerate(regions)
    ]
    deadline = time.monotonic() + 120
    while len(list(barrier.glob("ready-*"))) < len(regions):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    (barrier / "go").touch()
    versions = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        versions.append(int(out.split()[-1]))
    return versions


def assert_one_copy_per_region(df: pl.DataFrame) -> None:
    """Every region holds exactly one writer's full set of rows."""
    for (region,), rows in df.group_by("region"):
        assert rows.height == ROWS, f"{region}: {rows.height} rows, expected {ROWS}"
        assert rows["writer"].n_unique() == 1, f"{region}: rows of several writers"
        assert rows["cell_id"].n_unique() == ROWS


def assert_history_sound(uri: str, regions_at_end: set[str]) -> None:
    """No version ever held duplicates, and a region once written never vanished in a later version."""
    seen: set[str] = set()
    for version in range(DeltaTable(uri).version() + 1):
        df = warehouse.read_table(uri, version=version)
        assert_one_copy_per_region(df)
        present = set(df["region"].unique())
        assert seen <= present, f"version {version} lost {seen - present}"
        seen = present
    assert seen == regions_at_end


@pytest.mark.parametrize("writers", [4])
def test_same_region_written_at_once_on_a_new_table_lands_once(tmp_path, writers):
    uri = warehouse.table_uri(tmp_path, "t")
    versions = write_at_once(tmp_path, uri, ["a"] * writers)
    final = warehouse.read_table(uri)
    assert_one_copy_per_region(final)
    # Each writer committed its own version; the last one's rows are current.
    assert sorted(versions) == sorted(set(versions))
    last = warehouse.read_table(uri, version=max(versions))
    assert last.equals(final)
    hist = warehouse.history(uri)
    assert set(hist["run_id"].drop_nulls()) == {f"w{i}" for i in range(writers)}
    assert final["writer"][0] == int(hist.filter(pl.col("version") == max(versions))["run_id"][0][1:])
    assert_history_sound(uri, {"a"})


def test_two_regions_two_writers_each_on_a_new_table(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    write_at_once(tmp_path, uri, ["a", "b", "a", "b"])
    final = warehouse.read_table(uri)
    assert set(final["region"]) == {"a", "b"}
    assert_one_copy_per_region(final)
    assert_history_sound(uri, {"a", "b"})


def test_concurrent_writers_keep_an_existing_region(tmp_path):
    uri = warehouse.table_uri(tmp_path, "t")
    kept = pl.DataFrame(
        {
            "region": ["kept"] * ROWS,
            "cell_id": pl.int_range(ROWS, eager=True, dtype=pl.Int64),
            "writer": pl.Series([-1] * ROWS, dtype=pl.Int64),
            "value": pl.Series([0.5] * ROWS),
        }
    )
    warehouse.write_partition(kept, uri, {"region": "kept"})
    write_at_once(tmp_path, uri, ["a", "a", "a"])
    final = warehouse.read_table(uri)
    assert_one_copy_per_region(final)
    assert final.filter(pl.col("region") == "kept").sort("cell_id").equals(kept)
    assert_history_sound(uri, {"a", "kept"})
