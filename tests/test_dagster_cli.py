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

import polars as pl
import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return {**os.environ, "DAGSTER_HOME": str(home), "S2VEC_WAREHOUSE": str(tmp_path / "warehouse")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_materialises_one_region(env):
    cmd = [
        str(BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        "s2vec_assets.definitions",
        "--select",
        "cell_features",
        "--partition",
        "liechtenstein",
    ]
    done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pl.read_delta(str(Path(env["S2VEC_WAREHOUSE"]) / "cell_features"))
    assert table["region"].unique().to_list() == ["liechtenstein"]
    assert table.height > 0
    assert "ASSET_CHECK_EVALUATION" in done.stderr + done.stdout  # the checks ran with it
    assert (Path(env["DAGSTER_HOME"]) / "history" / "runs.db").is_file()


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
