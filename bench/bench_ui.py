"""`make run` against the UI path: the same assets over the same regions, timed, in one process tree.

1. `s2vec run` (what `make run` calls) on the bundled regions, in a temporary DAGSTER_HOME + warehouse.
2. `dagster dev` in another temporary home + warehouse; once its code location answers, one asset
   backfill of every asset over every region is launched through the webserver's GraphQL API (the
   mutation the UI's "Materialize all" sends); the daemon turns it into runs, each launched by the run
   launcher in its own process, like a click in the UI. Timed from the launch to the backfill's end
   (the server's start-up is not counted: a UI user has it running already).

Prints both wall times and the ratio UI / script (goal <= 1.5 with the default in-process executor).

    .venv/bin/python bench/bench_ui.py [--executor in_process|multiprocess] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from s2vec_assets import webserver

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""
STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions }
    ... on PythonError { message }
  }
}
"""
ASSETS = "{ assetNodes { assetKey { path } isPartitioned } }"
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def _home(root: Path, name: str) -> dict[str, str]:
    home = root / name / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return {
        "DAGSTER_HOME": str(home),
        "S2VEC_WAREHOUSE": str(root / name / "warehouse"),
        "S2VEC_REPORTS": str(root / name / "reports"),
    }


def time_script(env: dict[str, str], log: Path) -> tuple[float, int]:
    """(wall seconds, exit status) of `s2vec run`; a failing stage stops it, as it stops `make run`."""
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            [str(BIN / "s2vec"), "run"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    return time.perf_counter() - started, done.returncode


def _runs(home: str) -> list[tuple[str, str, float]]:
    """(job, status, seconds) of every run in `home`, oldest first."""
    os.environ["DAGSTER_HOME"] = home
    import dagster as dg

    with dg.DagsterInstance.from_config(home) as instance:
        records = instance.get_run_records()
        return [
            (r.dagster_run.job_name, r.dagster_run.status.value, (r.end_time or 0) - (r.start_time or 0))
            for r in reversed(records)
        ]


def time_ui(env: dict[str, str], log: Path, timeout_s: float) -> tuple[float, float, str]:
    """(seconds from backfill launch to its end, dagster dev start-up seconds, final status)."""
    started = time.perf_counter()
    with webserver.serving(
        [str(BIN / "dagster"), "dev"], env, REPO, log, webserver.has_assets, timeout_s
    ) as port:
        startup = time.perf_counter() - started
        nodes = webserver.graphql(port, ASSETS)["data"]["assetNodes"]
        params = {
            "assetSelection": [{"path": n["assetKey"]["path"]} for n in nodes],
            "allPartitions": True,
        }
        launched = time.perf_counter()
        answer = webserver.graphql(port, LAUNCH, {"params": params})["data"]["launchPartitionBackfill"]
        if answer["__typename"] != "LaunchBackfillSuccess":
            sys.exit(f"backfill not launched: {answer}")
        backfill = answer["backfillId"]
        status = None
        while time.perf_counter() - launched < timeout_s:
            state = webserver.graphql(port, STATUS, {"id": backfill})["data"]["partitionBackfillOrError"]
            status = state.get("status")
            if status in DONE:
                break
            time.sleep(1)
        return time.perf_counter() - launched, startup, str(status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executor", default="in_process", choices=["in_process", "multiprocess"])
    parser.add_argument("--timeout", type=float, default=3600, help="give up on the backfill after this")
    parser.add_argument("--keep", help="keep homes, warehouses and logs in this directory")
    args = parser.parse_args(argv)

    root = Path(args.keep or tempfile.mkdtemp(prefix="s2vec-bench-ui-"))
    root.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "S2VEC_"))}
    load_before = os.getloadavg()
    try:
        script_env = {**base, **_home(root, "script")}
        script_s, rc = time_script(script_env, root / "s2vec_run.log")
        print(f"s2vec run (make run):       {script_s:7.1f} s  (exit status {rc})", flush=True)

        ui_env = {**base, **_home(root, "ui"), "S2VEC_EXECUTOR": args.executor}
        ui_s, startup_s, status = time_ui(ui_env, root / "dagster_dev.log", args.timeout)
        print(
            f"UI backfill ({args.executor}): {ui_s:7.1f} s  (status {status}; dagster dev up in {startup_s:.0f} s)"
        )
        print(f"ratio UI / script:          {ui_s / script_s:7.2f}  (goal <= 1.5)")
        print(
            f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)"
        )
        for label, env in (("script", script_env), ("ui", ui_env)):
            runs = _runs(env["DAGSTER_HOME"])
            print(f"{label} runs: {len(runs)}: " + ", ".join(f"{job} {s:.0f}s {st}" for job, st, s in runs))
        if rc or status != "COMPLETED_SUCCESS":
            print(f"not every run succeeded: compare the run lists above (logs under {root}, see --keep)")
        return 0 if rc == 0 and status == "COMPLETED_SUCCESS" else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
