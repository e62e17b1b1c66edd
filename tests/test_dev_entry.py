"""`make dev` / `s2vec dev` on a busy port fails at once with the fix; processes opening a fresh Dagster
home together do not race on its schema."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
S2VEC = Path(sys.executable).parent / "s2vec"


def test_a_busy_port_is_refused_at_once_with_the_fix(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [str(S2VEC), "dev", "--port", str(port)],
            env={"DAGSTER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in done.stderr and f"PORT={port + 1}" in done.stderr
    assert time.monotonic() - started < 60  # it never starts the webserver
    assert not (tmp_path / "history").exists()


def test_processes_opening_a_fresh_home_together_all_succeed(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        while not Path({str(go)!r}).exists():
            time.sleep(0.01)
        from s2vec_assets.instance import open_instance
        with open_instance({str(home)!r}) as instance:
            assert instance.get_runs() == []
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env={**os.environ, "DAGSTER_HOME": str(home)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(3)  # all four past their imports, waiting on the file
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
