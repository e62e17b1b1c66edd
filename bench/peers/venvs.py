"""Per-peer virtual environments under bench/venvs/, cached by their pinned requirement list.

A peer's environment is never a project dependency: the benchmark builds it on first use with uv
(pip fallback) and reuses it while the pinned list (and the Python minor version) is unchanged. The
directory name carries a hash of that list, so changing a pin builds a fresh environment beside the
old one instead of mutating it. A marker file written last means "complete": a half-built environment
(killed install) is rebuilt, not trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

VENV_ROOT = Path(__file__).resolve().parents[1] / "venvs"
MARKER = ".s2vec-bench-complete"
# The CPU torch wheel lies here on this kind of machine; elsewhere the index serves it.
WHEELS = Path("/opt/wheels")


class VenvError(RuntimeError):
    """A peer environment could not be built; the message carries the installer's tail."""


def venv_key(steps: list[list[str]]) -> str:
    """Stable hash of the install steps (each a pinned requirement list) and the Python minor version."""
    blob = json.dumps({"py": f"{sys.version_info[0]}.{sys.version_info[1]}", "steps": steps})
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def venv_path(name: str, steps: list[list[str]], root: Path = VENV_ROOT) -> Path:
    return root / f"{name}-{venv_key(steps)}"


def _uv() -> list[str] | None:
    uv = Path(sys.executable).with_name("uv")
    if uv.exists():
        return [str(uv)]
    found = shutil.which("uv")
    return [found] if found else None


def ensure_venv(
    name: str, steps: list[list[str]], *, root: Path = VENV_ROOT, timeout: float = 1800, log=None
) -> Path:
    """Return the python of `name`'s environment, building it (steps in order) when not cached."""
    path = venv_path(name, steps, root)
    python = path / "bin" / "python"
    if (path / MARKER).exists() and python.exists():
        return python
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    uv = _uv()
    t0 = time.perf_counter()
    # Closed in the finally below only when opened here: a caller's log stays open.
    logf = open(path.parent / f"{path.name}.log", "w") if log is None else log  # noqa: SIM115
    try:
        _run(
            uv + ["venv", "--python", sys.executable, str(path)]
            if uv
            else [sys.executable, "-m", "venv", str(path)],
            logf,
            timeout,
        )
        links = ["--find-links", str(WHEELS)] if WHEELS.is_dir() else []
        for reqs in steps:
            left = timeout - (time.perf_counter() - t0)
            if uv:
                cmd = uv + ["pip", "install", "--python", str(python), *links, *reqs]
            else:
                cmd = [str(python), "-m", "pip", "install", "-q", *links, *reqs]
            _run(cmd, logf, max(left, 1))
    except VenvError:
        shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        if log is None:
            logf.close()
    (path / MARKER).write_text(json.dumps({"steps": steps, "seconds": round(time.perf_counter() - t0, 1)}))
    return python


def _run(cmd: list[str], logf, timeout: float) -> None:
    logf.write("$ " + " ".join(cmd) + "\n")
    logf.flush()
    try:
        p = subprocess.run(
            cmd,
            check=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env={**os.environ, "VIRTUAL_ENV": ""},
        )
    except subprocess.TimeoutExpired as e:
        raise VenvError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from e
    logf.write(p.stdout)
    logf.flush()
    if p.returncode != 0:
        tail = "\n".join(p.stdout.strip().splitlines()[-15:])
        raise VenvError(f"exit {p.returncode}: {' '.join(cmd)}\n{tail}")
