"""Sharded extraction: a large PBF split into S2 shards, each extracted in its own process.

Extraction memory grows with the file (node location index, area assembly, the running aggregate), so
a large region is cut into shards: the cells at a coarse `shard level` that its bounding box covers,
chosen so each shard holds about `TARGET_SHARD_BYTES` of PBF. osmium-tool splits the file once, in one
run for all shards (`osmium extract --strategy smart`): each shard file holds everything with a node in
the shard cell's lat/lng bound, ways and multipolygon / boundary relations reference-complete. A last
`rest` file holds what lies outside the header bbox (real extracts keep ways crossing their border
complete, past the bbox).

Shard boundaries change nothing: every object is added by exactly one shard, the one whose cell holds
its first point (a node's location, a line's first point, an area's first outer-ring point), which
reads it complete; its rows go wherever its geometry goes. The shards' rows are then summed per
(cell, channel) range by range, so only one shard's rows are in memory at a time
(`iter_sharded`). Values match the whole-file extraction up to float summation order.

pyosmium could split too, but only object by object in Python: all objects, not just the tagged ones,
several times slower than the extraction itself; osmium-tool splits in C++ in about the time of one
pyosmium read (see bench/bench_shards.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import osmium
import polars as pl

from s2vec_core import osm
from s2vec_core.s2 import _rect_bound, cover_bbox, latlng_to_cell_id

# PBF bytes per shard: a shard process then peaks at a few hundred MB (bench/bench_shards.py).
TARGET_SHARD_BYTES = 48 << 20
# Cells per shard, about: cells a level finer than one per shard pack into evener shards (a level
# is 4x the cells) and a shard of several cells costs one process and one osmium-tool output.
PACK = 4
# Finest shard level (~2.5 km cells): finer shards would be mostly overlap with their neighbours.
MAX_SHARD_LEVEL = 12
# Shard boxes grow by this much (degrees) so points on a cell's edge are surely inside its file.
BBOX_PAD_DEG = 1e-4
# Relation types osmium-tool makes reference-complete: those libosmium assembles into areas.
COMPLETE_TYPES = "multipolygon,boundary"
SHARD_FORMAT = "pbf,pbf_compression=lz4"
INSTALL_HINT = "install osmium-tool (Debian/Ubuntu: `apt-get install -y osmium-tool`) so `osmium` is on PATH"


class ShardError(RuntimeError):
    """Splitting or a shard's extraction failed; the message names the file and what to do."""


@dataclass(frozen=True)
class Owner:
    """Which objects a shard adds: those whose first point's cell at `level` is one of `cells`, or, for
    the rest shard (`rest=True`), none of them."""

    level: int
    cells: tuple[int, ...]
    rest: bool = False

    def __call__(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        cell = latlng_to_cell_id(lat, osm._wrap_deg(lon), self.level)
        return np.isin(cell, np.array(self.cells, np.uint64)) != self.rest


@dataclass(frozen=True)
class Shard:
    """One shard: its output file name, its region for osmium-tool's config, and what it owns."""

    name: str
    region: dict
    owner: Owner


@dataclass(frozen=True)
class ShardPlan:
    """The shard level and cells for one file; `cells` empty means one shard: the whole-file path."""

    level: int
    cells: np.ndarray
    bbox: tuple[float, float, float, float]  # (lon_min, lat_min, lon_max, lat_max)
    size_bytes: int
    target_bytes: int

    def shards(self) -> list[Shard]:
        """Runs of consecutive cells (S2 order keeps them near each other) packed up to `target_bytes`
        of expected PBF each, then the rest shard (outside the bbox, usually nearly empty)."""
        lat_lo, lat_hi, lng_lo, lng_hi = (np.degrees(b) for b in _rect_bound(self.cells, self.level))
        expected = _shares(self.cells, self.level, self.bbox) * self.size_bytes
        groups: list[list[int]] = []
        load = 0.0
        for i, e in enumerate(expected.tolist()):
            if not groups or load + e > self.target_bytes:
                groups.append([])
                load = 0.0
            groups[-1].append(i)
            load += e
        pad = BBOX_PAD_DEG
        # A bound over the antimeridian (lng_lo > lng_hi) widens its shard's box to all longitudes.
        wraps = lng_lo > lng_hi
        lng_lo, lng_hi = np.where(wraps, -180.0, lng_lo), np.where(wraps, 180.0, lng_hi)
        out = []
        for g in groups:
            # One box around the run's bounds: osmium-tool reads overlapping polygons of a
            # multipolygon as holes in each other, so the bounds cannot go in one by one.
            box = [
                max(lng_lo[g].min() - pad, -180.0),
                max(lat_lo[g].min() - pad, -90.0),
                min(lng_hi[g].max() + pad, 180.0),
                min(lat_hi[g].max() + pad, 90.0),
            ]
            cells = tuple(self.cells[g].tolist())
            out.append(Shard(f"shard-{cells[0]:016x}", {"bbox": box}, Owner(self.level, cells)))
        x0, y0, x1, y1 = self.bbox
        # The hole is the bbox shrunk a little: points near its edge fall in both files, harmlessly.
        hole = _ring(x0 + pad, y0 + pad, x1 - pad, y1 - pad)
        world = _ring(-180.0, -90.0, 180.0, 90.0)
        rest = Shard(
            "rest", {"polygon": [world, hole[::-1]]}, Owner(self.level, tuple(self.cells.tolist()), True)
        )
        return [*out, rest]


def _ring(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _shares(cells: np.ndarray, level: int, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """Each cell's share of the bbox: the lat/lng overlap of its bound with the bbox over the bbox's
    area (a bound can overlap its neighbours', so shares may sum past 1)."""
    lat_lo, lat_hi, lng_lo, lng_hi = (np.degrees(b) for b in _rect_bound(cells, level))
    lon0, lat0, lon1, lat1 = bbox
    # A bound over the antimeridian (lng_lo > lng_hi) is taken as the full circle: an upper bound.
    wraps = lng_lo > lng_hi
    lng_lo, lng_hi = np.where(wraps, -180.0, lng_lo), np.where(wraps, 180.0, lng_hi)
    dx = np.clip(np.minimum(lng_hi, lon1) - np.maximum(lng_lo, lon0), 0, None)
    dy = np.clip(np.minimum(lat_hi, lat1) - np.maximum(lat_lo, lat0), 0, None)
    eps = 1e-9  # a bbox of one point or one line still has shares
    return (dx + eps) * (dy + eps) / ((lon1 - lon0 + eps) * (lat1 - lat0 + eps))


def shard_level(size_bytes: int, bbox: tuple[float, float, float, float], target_bytes: int) -> int | None:
    """The coarsest level at which no cell holds more than `target_bytes / PACK` of the file, taking
    its density as uniform over the bbox; None when the file fits one shard (then nothing is split)."""
    if size_bytes <= target_bytes:
        return None
    lon0, lat0, lon1, lat1 = bbox
    for level in range(MAX_SHARD_LEVEL + 1):
        cells = cover_bbox(lat0, lon0, lat1, lon1, level)
        if cells.size > 1 and _shares(cells, level, bbox).max() * size_bytes * PACK <= target_bytes:
            return level
    return MAX_SHARD_LEVEL


def _header_bbox(path: Path) -> tuple[float, float, float, float]:
    """The header's bbox, else the data's (osmium-tool reads the whole file for it)."""
    try:
        reader = osmium.io.Reader(str(path), osmium.osm.NOTHING)
        box = reader.header().box()
        reader.close()
    except RuntimeError as e:
        raise osm.OSMFileError(f"{path}: unreadable OSM file ({e})") from e
    if box.valid():
        return (box.bottom_left.lon, box.bottom_left.lat, box.top_right.lon, box.top_right.lat)
    proc = _osmium(["fileinfo", "-e", "-g", "data.bbox", str(path)], path)
    x0, y0, x1, y1 = (float(v) for v in proc.stdout.strip("() \n").split(","))
    return (x0, y0, x1, y1)


def plan_shards(pbf_path: str | Path, target_bytes: int = TARGET_SHARD_BYTES) -> ShardPlan:
    """Shard level and cells for the file at `pbf_path` (cells empty: one shard)."""
    path = osm._check_path(pbf_path)
    size = path.stat().st_size
    if size <= target_bytes:
        return ShardPlan(0, np.zeros(0, np.uint64), (0.0, 0.0, 0.0, 0.0), size, target_bytes)
    bbox = _header_bbox(path)
    level = shard_level(size, bbox, target_bytes)
    cells = cover_bbox(bbox[1], bbox[0], bbox[3], bbox[2], level) if level is not None else []
    return ShardPlan(level or 0, np.asarray(cells, np.uint64), bbox, size, target_bytes)


def _osmium(args: list[str], path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("osmium")
    if exe is None:
        raise ShardError(
            f"{path}: sharded extraction splits the file with osmium-tool, but `osmium` is not on PATH; "
            f"{INSTALL_HINT}, or extract the file whole (s2vec_core.osm.extract_cells_long)."
        )
    proc = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise ShardError(
            f"{path}: `osmium {' '.join(args[:2])}` failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-2000:]}. Check the file is a complete, readable PBF "
            "(`osmium fileinfo -e` on it) and that the temporary directory has room for a copy of it."
        )
    return proc


def split(pbf_path: str | Path, shards: list[Shard], directory: Path) -> list[Path]:
    """Write one PBF per shard into `directory` in one osmium-tool run; returns their paths."""
    path = Path(pbf_path)
    config = directory / "shards.json"
    # LZ4 blocks: a quarter less CPU than zlib to write and read for ~15% more bytes; the files are
    # temporary and read once.
    extracts = [{"output": f"{s.name}.osm.pbf", "output_format": SHARD_FORMAT, **s.region} for s in shards]
    config.write_text(json.dumps({"directory": str(directory), "extracts": extracts}))
    _osmium(
        ["extract", "--config", str(config), "--strategy", "smart", "-S", f"types={COMPLETE_TYPES}"]
        + ["--overwrite", "--no-progress", str(path)],
        path,
    )
    return [directory / f"{s.name}.osm.pbf" for s in shards]


def _shard_worker(path: str, level: str, owner: str, out: str, parent: str) -> None:
    """Entry point of a shard process: the owned objects' summed (key, value) rows and stats to files
    at `out`; an unreadable file exits with status 3. Exits too once its parent is gone."""

    def exit_with_parent() -> None:
        while os.getppid() == int(parent):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    spec = json.loads(owner)
    ex = osm._Extractor(int(level), Owner(spec["level"], tuple(spec["cells"]), spec["rest"]))
    try:
        ex.run(Path(path), "all")
    except RuntimeError as e:
        sys.stderr.write(f"{path}: unreadable OSM file ({e})")
        sys.exit(3)
    key, values = ex.agg.folded()
    np.save(f"{out}.key.npy", key)
    np.save(f"{out}.value.npy", values)
    stats = {k: v - ex.dropped.get(k, 0) for k, v in ex.stats.items()}
    Path(f"{out}.stats.json").write_text(json.dumps(stats))


class _Runner:
    """Runs shard processes (separate interpreters, as osm's area worker) and kills them on failure."""

    def __init__(self, level: int) -> None:
        self.level = level
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.stopped = False

    def run(self, shard: Shard, path: Path, out: Path) -> dict:
        code = "import sys; from s2vec_core.shards import _shard_worker; _shard_worker(*sys.argv[1:])"
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        owner = json.dumps({"level": shard.owner.level, "cells": shard.owner.cells, "rest": shard.owner.rest})
        args = [str(path), str(self.level), owner, str(out), str(os.getpid())]
        with self.lock:
            if self.stopped:
                return {}
            with open(f"{out}.err", "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=err, env=env
                )
            self.procs.append(proc)
        proc.wait()
        message = Path(f"{out}.err").read_text(errors="replace").strip()
        if proc.returncode == 3:
            raise osm.OSMFileError(message.splitlines()[-1])
        if proc.returncode:
            raise ShardError(f"{path}: shard process failed (exit {proc.returncode}): {message[-2000:]}")
        return json.loads(Path(f"{out}.stats.json").read_text())

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def _key_ranges(cells: np.ndarray) -> np.ndarray:
    """Sorted boundaries between the key ranges of the shard cells and the gaps around them: every
    key below level 30 of a cell lies in [cell - (lsb - 1), cell + lsb)."""
    lsb = cells & (~cells + np.uint64(1))
    ends = np.array([0, np.iinfo(np.uint64).max], np.uint64)
    return np.unique(np.concatenate([cells - (lsb - np.uint64(1)), cells + lsb, ends]))


def iter_sharded(
    pbf_path: str | Path,
    level: int,
    workers: int | None = None,
    stats: dict | None = None,
    target_bytes: int = TARGET_SHARD_BYTES,
    tmp_dir: str | Path | None = None,
) -> Iterator[pl.DataFrame]:
    """The long rows of `extract_cells_long(pbf_path, level)`, range of cells by range in cell order,
    from shards extracted by up to `workers` processes at once (default: one per core). Only one
    range's rows are in memory here at a time; a file within `target_bytes` is extracted whole.
    `tmp_dir` holds the shard files (about the input's size) and the shards' rows."""
    if not 0 <= level <= osm.MAX_LEVEL:
        raise ValueError(f"extraction level must be within 0..{osm.MAX_LEVEL}, got {level}")
    path = osm._check_path(pbf_path)
    plan = plan_shards(path, target_bytes)
    if plan.cells.size == 0:
        yield osm.extract_cells_long(path, level, stats)
        return
    workers = workers or os.cpu_count() or 1
    shards = plan.shards()
    with tempfile.TemporaryDirectory(prefix="s2vec-shards-", dir=tmp_dir) as tmp:
        files = split(path, shards, Path(tmp))
        outs = [Path(tmp) / f"{s.name}.rows" for s in shards]
        runner = _Runner(level)
        # Largest files first, so the last ones to finish are short.
        order = sorted(range(len(shards)), key=lambda i: -files[i].stat().st_size)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s2vec-shard") as pool:
            futures = [pool.submit(runner.run, shards[i], files[i], outs[i]) for i in order]
            try:
                for f in wait(futures, return_when=FIRST_EXCEPTION).done:
                    f.result()
            except BaseException:
                runner.stop()
                raise
        for f in files:
            f.unlink()  # free the disk before the rows are merged
        total = {k: sum(f.result().get(k, 0) for f in futures) for k in futures[0].result()}
        if stats is not None:
            stats.update(total)
        keys = [np.load(f"{o}.key.npy", mmap_mode="r") for o in outs]
        values = [np.load(f"{o}.value.npy", mmap_mode="r") for o in outs]
        edges = _key_ranges(plan.cells)
        bounds = [np.searchsorted(k, edges) for k in keys]
        for r in range(edges.size - 1):
            agg = osm._Aggregate(level)
            for k, v, b in zip(keys, values, bounds, strict=True):
                agg.add_folded(np.array(k[b[r] : b[r + 1]]), np.array(v[b[r] : b[r + 1]]))
            if agg.rows:
                yield agg.long()
        del keys, values


def extract_sharded(
    pbf_path: str | Path,
    level: int,
    workers: int | None = None,
    stats: dict | None = None,
    target_bytes: int = TARGET_SHARD_BYTES,
    tmp_dir: str | Path | None = None,
) -> pl.DataFrame:
    """`extract_cells_long(pbf_path, level)` by shards (see `iter_sharded`): the same frame, sorted by
    cell then channel. It holds all rows at the end; stream `iter_sharded` to stay within a shard."""
    frames = list(iter_sharded(pbf_path, level, workers, stats, target_bytes, tmp_dir))
    return pl.concat(frames) if len(frames) > 1 else frames[0]
