"""The Dagster entry points a user types: the `dagster asset materialize` CLI and the webserver."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from s2vec_assets import webserver
from s2vec_assets.definitions import defs as load_defs

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return {**os.environ, "DAGSTER_HOME": str(home), "S2VEC_WAREHOUSE": str(tmp_path / "warehouse")}


def _materialize(env: dict[str, str], asset: str, region: str) -> subprocess.CompletedProcess:
    """`dagster asset materialize`, as the README gives it: the run uses the code location's executor."""
    cmd = [str(BIN / "dagster"), "asset", "materialize", "-m", "s2vec_assets.definitions"]
    cmd += ["--select", asset, "--partition", region]
    done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _step_processes(home: str) -> tuple[int, set[int], int]:
    """The only run in `home`: the pid that ran it, the pids its steps started in, step workers launched."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", home)  # dagster.yaml reads it
        with dg.DagsterInstance.from_config(home) as instance:
            (run,) = instance.get_runs()
            assert run.status == dg.DagsterRunStatus.SUCCESS
            events = [e for e in instance.all_logs(run.run_id) if e.dagster_event]
            kinds = [(e.dagster_event.event_type, e.dagster_event.pid) for e in events]
    (run_pid,) = [pid for kind, pid in kinds if kind == dg.DagsterEventType.RUN_START]
    steps = {pid for kind, pid in kinds if kind == dg.DagsterEventType.STEP_START}
    workers = sum(kind == dg.DagsterEventType.STEP_WORKER_STARTING for kind, _ in kinds)
    return run_pid, steps, workers


def test_the_executor_is_in_process_unless_s2vec_executor_says_multiprocess(monkeypatch):
    monkeypatch.delenv("S2VEC_EXECUTOR", raising=False)
    defs = load_defs()
    jobs = [defs.resolve_implicit_global_asset_job_def(), *(defs.resolve_job_def(j.name) for j in defs.jobs)]
    assert {job.executor_def.name for job in jobs} == {"in_process"}
    monkeypatch.setenv("S2VEC_EXECUTOR", "multiprocess")
    assert load_defs().resolve_implicit_global_asset_job_def().executor_def.name == "multiprocess"
    monkeypatch.setenv("S2VEC_EXECUTOR", "threads")
    with pytest.raises(ValueError, match="S2VEC_EXECUTOR"):
        load_defs()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_materialises_one_region(env):
    env.pop("S2VEC_EXECUTOR", None)
    done = _materialize(env, "cell_features", "liechtenstein")
    table = pl.read_delta(str(Path(env["S2VEC_WAREHOUSE"]) / "cell_features"))
    assert table["region"].unique().to_list() == ["liechtenstein"]
    assert table.height > 0
    assert "ASSET_CHECK_EVALUATION" in done.stderr + done.stdout  # the checks ran with it
    assert (Path(env["DAGSTER_HOME"]) / "history" / "runs.db").is_file()
    # The default executor: the steps ran in the run's own process, no step subprocess was launched.
    run_pid, step_pids, workers = _step_processes(env["DAGSTER_HOME"])
    assert step_pids == {run_pid} and workers == 0


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_s2vec_executor_multiprocess_runs_each_step_in_a_subprocess(env):
    env["S2VEC_EXECUTOR"] = "multiprocess"
    _materialize(env, "osm_extract", "monaco")
    run_pid, step_pids, workers = _step_processes(env["DAGSTER_HOME"])
    assert workers == 1 and len(step_pids) == 1 and run_pid not in step_pids


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_webserver_serves_the_asset_graph_over_graphql(env, tmp_path):
    command = [str(BIN / "dagster-webserver"), "-w", str(REPO / "workspace.yaml")]
    with webserver.serving(command, env, REPO, tmp_path / "webserver.log", webserver.has_assets, 240) as port:
        answer = webserver.graphql(port, "{ assetNodes { assetKey { path } partitionKeys hasAssetChecks } }")
    nodes = {"/".join(n["assetKey"]["path"]): n for n in answer["data"]["assetNodes"]}
    assert {"osm_extract", "cell_features"} <= set(nodes)
    assert set(nodes["cell_features"]["partitionKeys"]) >= {"liechtenstein", "monaco"}
    assert nodes["cell_features"]["hasAssetChecks"]
