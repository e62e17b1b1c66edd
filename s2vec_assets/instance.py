"""The local Dagster instance, opened one process at a time on a fresh home.

Two Dagster processes starting on a new `DAGSTER_HOME` both create its SQLite schema and race on
`alembic_version`; `open_instance` holds a file lock in the home while the instance is first opened,
so `make run` and `make dev` started together take turns (the second finds the schema made).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

LOCK_FILE = ".s2vec-instance.lock"


@contextlib.contextmanager
def open_instance(home: str | os.PathLike | None = None) -> Iterator[dg.DagsterInstance]:
    """`DagsterInstance.get()` for `home` (default `$DAGSTER_HOME`), created under the home's lock."""
    root = Path(home or os.environ["DAGSTER_HOME"])
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        instance = dg.DagsterInstance.from_config(str(root))
        fcntl.flock(lock, fcntl.LOCK_UN)
    with instance:
        yield instance
