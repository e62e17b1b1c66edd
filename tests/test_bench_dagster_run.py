"""bench/bench_dagster_run.py end to end on one copy of Liechtenstein: a real `dagster asset
materialize` whose steps the report must name, each with the peak RSS sampled while it ran."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_bench

STEPS = {
    "cell_features.cell_features_plan",
    "cell_features.cell_features_extract[group_0]",
    "cell_features.cell_features_write",
    "cell_features_checks",
    "raster_tensors",
    "raster_tensors_checks",
}


@pytest.mark.slow
def test_a_dagster_run_reports_each_steps_peak_memory():
    out = run_bench("bench_dagster_run.py", "--copies", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert set(report["steps"]) == STEPS
    for step in report["steps"].values():
        # A process that imported dagster and polars holds well over 50 MB; the tree includes it.
        assert 50 < step["largest_process_mb"] <= step["all_processes_mb"] <= report["all_processes_mb"]
        assert 0 < step["wall_s"] < report["wall_s"]
