"""Compaction and vacuum on real Delta tables: orphans and replaced files go, time travel within the
retention stays, current rows never change; and the Dagster job that runs it."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from s2vec_assets.defs.maintenance.jobs import warehouse_maintenance
from s2vec_assets.defs.resources import WarehouseResource
from s2vec_core import maintenance
from s2vec_core.tables import CELL_FEATURES, MODEL_VERSIONS
from s2vec_core.warehouse import table_uri, write_partition


def _rows(region: str, value: float, n: int = 3) -> pl.DataFrame:
    return pl.DataFrame({"region": [region] * n, "cell_id": list(range(n)), "v": [value] * n})


def _orphan(directory: Path, name: str, age_s: float) -> Path:
    path = directory / name
    _rows("a", -1.0).write_parquet(path)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _files(uri: str) -> int:
    return len(DeltaTable(uri).file_uris())


def test_maintain_compacts_vacuums_and_keeps_time_travel_within_the_retention(tmp_path):
    root = str(tmp_path)
    uri = table_uri(root, CELL_FEATURES.name)
    for value in (0.0, 1.0, 2.0):  # three re-runs of region a: two replaced copies left for time travel
        write_partition(_rows("a", value), uri, {"region": "a"})
    write_partition(_rows("b", 5.0), uri, {"region": "b"})
    # Region b grown by appends: two small files in one partition.
    write_deltalake(
        uri, _rows("b", 6.0).with_columns(cell_id=pl.col("cell_id") + 10).to_arrow(), mode="append"
    )
    assert _files(uri) == 3
    current = pl.read_delta(uri).sort("region", "cell_id")
    old = _orphan(Path(uri) / "region=a", "part-00000-crashed-writer.parquet", 3 * 3600)
    fresh = _orphan(Path(uri) / "region=a", "part-00001-writer-right-now.parquet", 0)
    first_version = pl.read_delta(uri, version=0)

    done = {d.table: d for d in maintenance.maintain(root, retention=timedelta(hours=1))}
    assert set(done) == {CELL_FEATURES.name}  # tables that do not exist are skipped
    assert done[CELL_FEATURES.name].files_compacted == 1 and _files(uri) == 2
    assert not old.exists() and fresh.exists()  # an unreferenced file older than the retention goes
    assert pl.read_delta(uri).sort("region", "cell_id").equals(current)
    # Replaced an instant ago: still inside the retention, so version 0 reads as it was.
    assert pl.read_delta(uri, version=0).equals(first_version)

    dry = {d.table: d for d in maintenance.maintain(root, retention=timedelta(0), dry_run=True)}
    assert dry[CELL_FEATURES.name].files_vacuumed >= 3 and pl.read_delta(uri, version=0).equals(first_version)
    done = {d.table: d for d in maintenance.maintain(root, retention=timedelta(0))}
    assert done[CELL_FEATURES.name].files_vacuumed >= 3 and not fresh.exists()
    assert pl.read_delta(uri).sort("region", "cell_id").equals(current)
    with pytest.raises(Exception):  # noqa: B017 - whatever the reader raises: version 0's files are gone
        pl.read_delta(uri, version=0)
    with pytest.raises(ValueError, match="retention"):
        maintenance.maintain(root, retention=timedelta(hours=-1))


def test_the_maintenance_job_runs_through_dagster_and_reports_per_table(tmp_path):
    root = str(tmp_path)
    uri = table_uri(root, MODEL_VERSIONS.name)
    for value in (0.0, 1.0):
        write_partition(_rows("x", value).rename({"region": "model_version"}), uri, {"model_version": "x"})
    result = warehouse_maintenance.execute_in_process(
        run_config={"ops": {"maintain_warehouse": {"config": {"retention_hours": 0}}}},
        resources={"warehouse": WarehouseResource(root=root)},
    )
    assert result.success
    tables = next(
        e.event_specific_data.metadata["tables"].value
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.STEP_OUTPUT
    )
    assert tables[MODEL_VERSIONS.name]["vacuumed"] == 1
    assert DeltaTable(uri).history()[0]["operation"] == "VACUUM END"
