"""The Dagster entry points a user types: the `dagster asset materialize` CLI and the webserver."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_webserver_serves_the_asset_graph_over_graphql(env, tmp_path):
    port = _free_port()
    log = (tmp_path / "webserver.log").open("w")
    server = subprocess.Popen(
        [
            str(BIN / "dagster-webserver"),
            "-w",
            str(REPO / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    query = "{ assetNodes { assetKey { path } partitionKeys hasAssetChecks } }"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
            try:
                answer = _graphql(port, query)
                if answer.get("data", {}).get("assetNodes"):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "webserver did not answer in time"
            time.sleep(2)
        nodes = {"/".join(n["assetKey"]["path"]): n for n in answer["data"]["assetNodes"]}
        assert {"osm_extract", "cell_features"} <= set(nodes)
        assert set(nodes["cell_features"]["partitionKeys"]) >= {"liechtenstein", "monaco"}
        assert nodes["cell_features"]["hasAssetChecks"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
