"""Crash leftovers: the temporary siblings an atomic write leaves behind when its process is killed.

Writers here build a file or directory beside its target under a name carrying their pid
(`.<target>.tmp-<pid>`, and `.<target>.old-<pid>` for the one being replaced) and rename it into
place. A SIGKILL or an OOM kill leaves it behind: a half-written raster directory can hold hundreds of
MB. `sweep` removes a target's leftovers whose process is gone, so the next write of the same target
cleans up after the crash. A leftover is kept while its pid is alive on this host, or while it was
touched in the last `min_age_s` (a writer on another host sharing the warehouse looks dead from here).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

LEFTOVER = re.compile(r"\.(?P<target>.+)\.(?:tmp|old)-(?P<pid>\d+)(?:\.\w+)?")
"""`.<target>.tmp-<pid>`, optionally with a random suffix (`tempfile.mkstemp(prefix=...)`)."""
MIN_AGE_S = 600.0


def temporary_sibling(target: Path, kind: str = "tmp") -> Path:
    """Where this process builds (`tmp`) or parks (`old`) `target` during an atomic replace."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}")


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(target: Path, min_age_s: float = MIN_AGE_S) -> list[Path]:
    """Remove the leftovers of `target` whose writer is dead and that nobody touched for `min_age_s`."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed = []
    now = time.time()
    for path in target.parent.glob(f".{target.name}.*-*"):
        match = LEFTOVER.fullmatch(path.name)
        if match is None or match["target"] != target.name:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or process_alive(pid) or now - path.lstat().st_mtime < min_age_s:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
