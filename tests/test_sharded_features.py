"""cell_features of a region extracted in S2 shards (forced by a tiny `shard_mb`) equal the whole-file
extraction's, through the real asset and Delta table: in one process, and with the shards cut into
extraction steps that Dagster's multiprocess executor runs in parallel processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from s2vec_assets.definitions import defs as load_defs
from s2vec_assets.defs.resources import WarehouseResource
from s2vec_core import bbox, features, osm, shards, warehouse
from s2vec_core.catalog import default_catalog_path, get_region, load_catalog

REGION = "liechtenstein"
REPO = Path(__file__).resolve().parents[1]
PBF = REPO / "data/osm/liechtenstein-2013-08-03.osm.pbf"
SHARD_MB = 0.1


def assert_equals_the_whole_extraction(root: Path) -> None:
    sharded = warehouse.read_table(warehouse.table_uri(root, "cell_features")).sort("level", "cell_id")
    levels = sorted(sharded["level"].unique())
    box = get_region(REGION, load_catalog(default_catalog_path())).bbox  # the asset keeps the catalog's bbox
    whole = features.cell_features(bbox.clip(osm.extract_cells_long(PBF, levels[-1]), box), levels, REGION)
    whole = whole.with_columns(pl.col("cell_id").cast(sharded["cell_id"].dtype)).sort("level", "cell_id")
    assert whole.height > 1000 and whole.select("level", "cell_id").equals(sharded.select("level", "cell_id"))
    channels = [c for c in whole.columns if whole[c].dtype == pl.Float64]
    np.testing.assert_allclose(
        sharded.select(channels).to_numpy(), whole.select(channels).to_numpy(), rtol=1e-9
    )
    assert not (root / "staging").exists() or not any(
        p.is_file() for p in (root / "staging").rglob("*")
    )  # cleared


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 3])
def test_sharded_cell_features_equal_the_whole_extraction(tmp_path, dagster_instance, steps):
    assert shards.plan_shards(PBF, int(SHARD_MB * 2**20)).cells.size > 1
    defs = load_defs()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=["osm_extract", "cell_features"],
        partition_key=REGION,
        resources={**defs.resources, "warehouse": WarehouseResource(root=str(tmp_path))},
        instance=dagster_instance,
        run_config={"ops": {"cell_features": {"config": {"shard_mb": SHARD_MB, "shard_steps": steps}}}},
        raise_on_error=False,
    )
    assert result.success
    extracts = [
        e.step_key for e in result.all_events if e.is_step_success and "cell_features_extract" in e.step_key
    ]
    assert len(extracts) == steps, extracts
    assert_equals_the_whole_extraction(tmp_path)


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_extraction_steps_run_in_parallel_processes(tmp_path):
    """`shard_steps: 3` under S2VEC_EXECUTOR=multiprocess: three extraction steps, each in its own
    process, running at the same time; the rows pass between them through the warehouse."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    root = tmp_path / "warehouse"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "S2VEC_WAREHOUSE": str(root),
        "S2VEC_EXECUTOR": "multiprocess",
    }
    config = {
        "ops": {"cell_features": {"config": {"shard_mb": SHARD_MB, "shard_steps": 3, "shard_workers": 1}}},
        "execution": {"config": {"max_concurrent": 3}},
    }
    cmd = [
        str(Path(sys.executable).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "s2vec_assets.definitions",
    ]
    cmd += [
        "--select",
        "osm_extract,cell_features",
        "--partition",
        REGION,
        "--config-json",
        json.dumps(config),
    ]
    done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            events = [e for e in instance.all_logs(run.run_id) if e.dagster_event and e.step_key]
    steps = {e.step_key for e in events if "cell_features_extract" in e.step_key}
    assert len(steps) == 3, sorted(steps)
    span, pids = {}, set()
    for step in steps:
        # From the executor launching the step's process (its import included) to the step's end.
        (start,) = [
            e
            for e in events
            if e.step_key == step and e.dagster_event.event_type_value == "STEP_WORKER_STARTING"
        ]
        (end,) = [
            e for e in events if e.step_key == step and e.dagster_event.event_type_value == "STEP_SUCCESS"
        ]
        span[step] = (start.timestamp, end.timestamp)
        pids.add(end.dagster_event.pid)
    assert len(pids) == 3  # a process each
    assert any(
        a0 < b1 and b0 < a1 for a, (a0, a1) in span.items() for b, (b0, b1) in span.items() if a < b
    ), span
    assert_equals_the_whole_extraction(root)


def region_job():
    """The region job as the code location builds it (reconstructable, for re-execution)."""
    from s2vec_assets.defs.jobs import REGION_JOB

    return load_defs().resolve_job_def(REGION_JOB)


@pytest.mark.system
@pytest.mark.slow
def test_a_failed_write_re_executes_without_extracting_again(tmp_path, monkeypatch):
    """The write refuses a bbox that drops every cell; once the catalog is fixed, re-executing the run
    from its failure runs the write on the rows the first run staged, not the extraction."""
    catalog = tmp_path / "regions.toml"
    far_away = f'[regions.{REGION}]\nsource = "{PBF}"\nbbox = [0.0, 0.0, 0.1, 0.1]\n'
    catalog.write_text(far_away)
    root = tmp_path / "warehouse"
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("S2VEC_CATALOG", str(catalog))
    monkeypatch.setenv("S2VEC_WAREHOUSE", str(root))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    config = {"ops": {"cell_features": {"config": {"shard_mb": SHARD_MB, "shard_steps": 2}}}}
    job = dg.reconstructable(region_job)
    with dg.DagsterInstance.get() as instance:
        options = {
            "instance": instance,
            "run_config": config,
            "tags": {"dagster/partition": REGION},
            "raise_on_error": False,
        }
        first = dg.execute_job(
            job, asset_selection=[dg.AssetKey("osm_extract"), dg.AssetKey("cell_features")], **options
        )
        assert not first.success
        failed = [e for e in first.all_events if e.is_step_failure]
        assert [e.step_key for e in failed] == ["cell_features.cell_features_write"]
        assert (
            "refusing to replace the region's features with zero rows"
            in failed[0].step_failure_data.error.message
        )
        assert list((root / "staging").rglob("*.key.npy"))  # the extraction's rows wait for the retry

        catalog.write_text(catalog.read_text().replace("[0.0, 0.0, 0.1, 0.1]", "[9.47, 47.04, 9.64, 47.28]"))
        again = dg.execute_job(
            job, reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance), **options
        )
        assert again.success
        started = {e.step_key for e in again.all_events if e.is_step_start}
        assert "cell_features.cell_features_write" in started
        assert not any("extract" in s or "plan" in s for s in started), started
    assert_equals_the_whole_extraction(root)
