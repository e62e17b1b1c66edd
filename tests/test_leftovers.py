"""Crash leftovers: a writer SIGKILLed mid-write leaves its temporary sibling; the next write removes it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl

from s2vec_core import leftovers, s2
from s2vec_core.raster import META_FILE, open_shards, rasterize, write_shards

IMAGE_LEVEL, PIXEL_LEVEL = 10, 14


def _features() -> pl.DataFrame:
    """A few real pixel cells of one image cell near Vaduz, one channel."""
    image = s2.latlng_to_cell_id([47.14], [9.52], IMAGE_LEVEL)
    pixels = s2.grid_window(image, PIXEL_LEVEL, 0, 1 << (PIXEL_LEVEL - IMAGE_LEVEL)).reshape(-1)[:8]
    return pl.DataFrame(
        {"level": [PIXEL_LEVEL] * 8, "cell_id": s2.as_int64(pixels), "x": np.arange(1.0, 9.0)}
    )


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (then, then), follow_symlinks=False)


def test_a_raster_write_killed_midway_is_cleaned_by_the_next_write(tmp_path):
    target = tmp_path / "rasters" / "vaduz"
    write_shards(rasterize(_features(), IMAGE_LEVEL, PIXEL_LEVEL), target, shard_size=1)
    before = (target / META_FILE).read_text()
    # A real process writes the same directory again and is SIGKILLed after its first shard file.
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np, polars as pl
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_leftovers import _features
        from s2vec_core import raster
        save = np.save
        def save_then_die(*args, **kwargs):
            save(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        raster.np.save = save_then_die
        raster.write_shards(raster.rasterize(_features(), {IMAGE_LEVEL}, {PIXEL_LEVEL}), {str(target)!r}, shard_size=1)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], check=False)
    assert killed.returncode == -9
    left = [p for p in target.parent.iterdir() if p.name.startswith(".vaduz.tmp-")]
    assert len(left) == 1 and any(left[0].iterdir())
    # The previous shards stay readable.
    assert (target / META_FILE).read_text() == before and len(open_shards(target)) > 0

    # Fresh (it might be a writer on another host): kept. Old and dead: removed by the next write.
    write_shards(rasterize(_features(), IMAGE_LEVEL, PIXEL_LEVEL), target, shard_size=1)
    assert left[0].exists()
    _age(left[0], 2 * leftovers.MIN_AGE_S)
    write_shards(rasterize(_features(), IMAGE_LEVEL, PIXEL_LEVEL), target, shard_size=1)
    assert not left[0].exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["vaduz"]


def test_sweep_keeps_live_writers_and_other_targets(tmp_path):
    target = tmp_path / "checkpoint.pt"
    dead, live = _dead_pid(), os.getppid()
    names = [
        f".checkpoint.pt.tmp-{dead}",  # removed
        f".checkpoint.pt.tmp-{dead}.k3x_9q",  # removed: mkstemp-style suffix
        f".checkpoint.pt.old-{live}",  # kept: its process is alive
        f".other.pt.tmp-{dead}",  # kept: another target's
        f".checkpoint.pt.tmp-{dead}x",  # kept: not a leftover name
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
        _age(tmp_path / name, 2 * leftovers.MIN_AGE_S)
    removed = leftovers.sweep(target)
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
    assert leftovers.temporary_sibling(target).name == f".checkpoint.pt.tmp-{os.getpid()}"
