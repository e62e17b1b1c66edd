"""Run one benchmark stage in its own process and measure it: wall time, peak RSS, exit, timeout.

Each stage is a fresh child process (a peer's venv python, the project's python, or a binary), started
through a small wrapper process (`rusage_wrap.py`) that measures its wall time and peak RSS with
`os.wait4` (Linux reports the max RSS of the child and of any children it waited for), so stages never
see each other's memory, nor the harness's. A worker prints its own findings as
one JSON line prefixed with `RESULT ` on stdout; anything else on stdout/stderr goes to a log file.
A failing or hanging stage becomes a `StageResult` with status "failed"/"timeout" and the error tail;
it never raises, so one broken peer cannot stop the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULT_PREFIX = "RESULT "
HERE = Path(__file__).resolve().parent
WORKERS = HERE / "workers"
WRAPPER = HERE / "rusage_wrap.py"


@dataclass
class StageResult:
    """One measured stage. `detail` is what the worker reported (its own timers, counts)."""

    tool: str
    stage: str
    input: str
    status: str  # ok | failed | timeout | skipped
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    detail: dict = field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def run_stage(
    tool: str,
    stage: str,
    input_name: str,
    cmd: list[str],
    *,
    timeout: float,
    env: dict | None = None,
    cwd: str | Path | None = None,
    log_dir: Path | None = None,
    expect_result: bool = True,
) -> StageResult:
    """Run `cmd` as its own process group; kill the group after `timeout` seconds."""
    log_dir = Path(log_dir or tempfile.gettempdir())
    log_dir.mkdir(parents=True, exist_ok=True)
    safe = f"{tool}-{stage}-{input_name}".replace("/", "_")
    out_path, err_path = log_dir / f"{safe}.out", log_dir / f"{safe}.err"
    usage_path = log_dir / f"{safe}.rusage.json"
    usage_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-I", "-S", str(WRAPPER), str(usage_path), *cmd]
    res = StageResult(tool, stage, input_name, "failed")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        except OSError as e:
            res.error = f"could not start {cmd[0]}: {e}"
            return res
        # Reap with wait4 ourselves (Popen.wait would discard the rusage); a thread lets the main
        # thread enforce the timeout.
        reaped: dict = {}

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(status=status, usage=usage, t=time.perf_counter())

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        waiter.join(timeout)
        timed_out = waiter.is_alive()
        if timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            waiter.join()
        proc.returncode = os.waitstatus_to_exitcode(reaped["status"])  # keeps Popen from reaping again
    if usage_path.exists():  # the wrapper's figures: the command alone
        usage = json.loads(usage_path.read_text())
        # Linux reports KiB; the tree sum counts helper processes alive at the same time.
        res.wall_s = usage["wall_s"]
        res.peak_rss_mb = max(usage["maxrss_kib"], usage.get("tree_rss_kib", 0)) / 1024
    else:  # killed, or the command could not start: the wrapper's own figures
        res.wall_s, res.peak_rss_mb = reaped["t"] - t0, reaped["usage"].ru_maxrss / 1024
    stdout = out_path.read_text(errors="replace")
    if timed_out:
        res.status = "timeout"
        res.error = f"killed after {timeout:.0f} s"
        return res
    if proc.returncode != 0:
        res.error = f"exit {proc.returncode}: " + _tail(err_path.read_text(errors="replace") or stdout)
        return res
    if expect_result:
        lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
        if not lines:
            res.error = "worker printed no RESULT line: " + _tail(err_path.read_text(errors="replace"))
            return res
        res.detail = json.loads(lines[-1][len(RESULT_PREFIX) :])
    res.status = "ok"
    return res


def run_worker(
    tool: str,
    stage: str,
    input_name: str,
    python: str | Path,
    worker: str,
    job: dict,
    *,
    timeout: float,
    env: dict | None = None,
    cwd: str | Path | None = None,
    log_dir: Path | None = None,
) -> StageResult:
    """Run `workers/<worker>.py` under `python` with `job` (JSON) as its only argument."""
    cmd = [str(python), str(WORKERS / f"{worker}.py"), json.dumps(job)]
    return run_stage(tool, stage, input_name, cmd, timeout=timeout, env=env, cwd=cwd, log_dir=log_dir)


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:])[-800:]
