"""A run SIGKILLed while it holds the `gpu` pool slot no longer wedges later training: the reaper (and the
sensor `dagster dev` runs) marks it failed and frees the slot. Real processes, a real instance."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from s2vec_assets import run as make_run
from s2vec_assets.definitions import defs as load_defs
from s2vec_assets.defs.maintenance.sensors import reap_dead_runs as sensor
from s2vec_assets.stale_runs import dead_runs, reap_dead_runs

REPO = Path(__file__).resolve().parents[1]

JOB = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import dagster as dg

    @dg.op(pool="gpu")
    def train(context):
        Path(sys.argv[1]).write_text("holding the gpu slot")
        time.sleep(float(sys.argv[2]))

    @dg.job
    def training():
        train()

    with dg.DagsterInstance.get() as instance:
        assert training.execute_in_process(instance=instance).success
    """
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _start(tmp_path: Path, seconds: float) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    script = tmp_path / "job.py"
    script.write_text(JOB)
    proc = subprocess.Popen([sys.executable, str(script), str(ready), str(seconds)], env=os.environ.copy())
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the training job never started"
        time.sleep(0.2)
    return proc, ready


def test_a_killed_run_holding_the_gpu_slot_is_reaped_and_the_next_one_runs(home, tmp_path):
    proc, _ = _start(tmp_path, 600)
    with dg.DagsterInstance.get() as instance:
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        assert dead_runs(instance) == []  # alive: never touched
        # `make run` says why its training stage waits, instead of sitting silent.
        (holder,) = {c.run_id for c in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots}
        waiting = make_run._pool_holders(instance, load_defs(), [dg.AssetKey("mae_model")])
        assert "pool 'gpu' is full" in waiting and holder in waiting
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (run,) = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert [r.run_id for r, pid in dead_runs(instance)] == [run.run_id]

        # The sensor `dagster dev` runs every minute does the reaping.
        result = sensor(dg.build_sensor_context(instance=instance))
        assert "reaped 1" in str(result.skip_message)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        assert reap_dead_runs(instance) == []

    # The next training gets the slot and finishes (it would wait forever before).
    again, _ = _start(tmp_path, 0)
    assert again.wait(timeout=120) == 0
