"""Sharded extraction: a large PBF split into S2 shards, each extracted in its own process.

Extraction memory grows with the file (node location index, area assembly, the running aggregate), so
a large region is cut into shards: S2 cells over its bounding box, each split into its four children
while it would hold more than `TARGET_SHARD_BYTES` of PBF (the file's density taken as uniform over the
bbox, measured on a grid of samples), so shards are cells of mixed levels. osmium-tool splits the file
(`osmium extract --strategy smart`, at most `MAX_EXTRACTS` outputs a run, so many shards are split in
groups first): each shard file holds everything with a node in the shard cell (its (u, v) square as a
lat/lng polygon, grown a little), ways and multipolygon / boundary relations reference-complete. A
last `rest` file holds what lies outside the header bbox (real extracts keep ways crossing their border
complete, past the bbox). Splitting and extraction run as one pipeline: a shard is extracted as soon as
its file is written, while other groups are still being split.

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
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from s2vec_core import osm
from s2vec_core.osm.extract import run_or_exit, save_folded, watch_parent
from s2vec_core.s2 import (
    _cell_uv_bounds,
    _face_uv_to_xyz,
    _rect_bound,
    _xyz_to_latlng_deg,
    cell_level,
    children_range,
    cover_bbox,
    latlng_to_cell_id,
    parent,
)

# PBF bytes per shard: a shard process then peaks at a few hundred MB (bench/bench_shards.py).
TARGET_SHARD_BYTES = 48 << 20
# Finest shard level (~2.5 km cells): finer shards would be mostly overlap with their neighbours.
MAX_SHARD_LEVEL = 12
# Shard boxes grow by this much (degrees) so points on a cell's edge are surely inside its file.
BBOX_PAD_DEG = 1e-4
# A shard's polygon: its cell's edges sampled this often (S2 edges are geodesics, straight in the face's
# (u, v); between samples a lat/lng chord strays < 1 km from it on a whole face, metres at level 4),
# pushed out by this share of the cell's width in (u, v) to keep the chords outside the cell.
EDGE_SAMPLES = 64
EDGE_GROW = 1e-4
# Grid points per bbox side standing in for the data when sizing shards.
SAMPLES = 256
# Extracts per osmium-tool run: its memory grows with them (~50 MB each over a 600 MB file's ids).
MAX_EXTRACTS = 8
# Relation types osmium-tool makes reference-complete: those libosmium assembles into areas.
COMPLETE_TYPES = "multipolygon,boundary"
SHARD_FORMAT = "pbf,pbf_compression=lz4"
INSTALL_HINT = "install osmium-tool (Debian/Ubuntu: `apt-get install -y osmium-tool`) so `osmium` is on PATH"


class ShardError(RuntimeError):
    """Splitting or a shard's extraction failed; the message names the file and what to do."""


@dataclass(frozen=True)
class Owner:
    """Which objects a shard adds: those whose first point lies in one of `cells` (S2 cells of any
    levels, disjoint), or, for the rest shard (`rest=True`), in none of them."""

    cells: tuple[int, ...]
    rest: bool = False

    def __call__(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        leaf = latlng_to_cell_id(lat, osm.wrap_deg(lon))
        cells = np.sort(np.array(self.cells, np.uint64))
        lsb = cells & (~cells + np.uint64(1))
        lo, hi = cells - (lsb - np.uint64(1)), cells + (lsb - np.uint64(1))
        i = np.maximum(np.searchsorted(lo, leaf, "right") - 1, 0)
        inside = (leaf >= lo[i]) & (leaf <= hi[i]) if cells.size else np.zeros(leaf.size, bool)
        return inside != self.rest


@dataclass(frozen=True)
class Shard:
    """One shard: its output file name, its region for osmium-tool's config, and what it owns."""

    name: str
    region: dict
    owner: Owner


@dataclass(frozen=True)
class ShardPlan:
    """The shard cells for one file (sorted, of mixed levels); none means one shard: the whole file."""

    cells: np.ndarray
    bbox: tuple[float, float, float, float]  # (lon_min, lat_min, lon_max, lat_max)

    def shards(self) -> list[Shard]:
        """One shard per cell, then the rest shard (outside the bbox, usually nearly empty); a file not
        split is the one shard `whole`, which owns everything."""
        if not self.cells.size:
            return [Shard(WHOLE, {}, Owner((), rest=True))]
        out = [Shard(f"shard-{c:016x}", _cell_region(c), Owner((c,))) for c in self.cells.tolist()]
        x0, y0, x1, y1 = self.bbox
        _, (dx, dy) = _samples(self.bbox)
        # The hole is the bbox shrunk by a sample spacing: cells without a sample have their part of
        # the bbox in that strip; points there fall in two files, harmlessly (one owner).
        pad = BBOX_PAD_DEG
        hole = _ring(x0 + dx + pad, y0 + dy + pad, x1 - dx - pad, y1 - dy - pad)
        world = _ring(-180.0, -90.0, 180.0, 90.0)
        rest = Shard("rest", {"polygon": [world, hole[::-1]]}, Owner(tuple(self.cells.tolist()), True))
        return [*out, rest]

    def groups(self, steps: int) -> list[list[Shard]]:
        """`shards()` cut into at most `steps` runs of consecutive cells holding about equal shares of
        the file (by the sample grid `shard_cells` sized them with), the rest shard in the last: work
        units for separate machines (`extract_shards` each, `merge_shards` all)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        shards = self.shards()
        if not self.cells.size:
            return [shards]
        if steps >= self.cells.size:
            return [[s] for s in shards[:-2]] + [shards[-2:]]
        weight = np.maximum(_counts(self.cells, _samples(self.bbox)[0]), 1).astype(np.float64)
        # Cell i goes to the group its weight's midpoint falls in: contiguous, balanced, none empty.
        mid = np.cumsum(weight) - weight / 2
        group = np.minimum((mid / weight.sum() * steps).astype(np.int64), steps - 1)
        cuts = np.flatnonzero(np.diff(group)) + 1
        out = [list(g) for g in np.split(np.array(shards[:-1], dtype=object), cuts)]
        out[-1].append(shards[-1])
        return out


WHOLE = "whole"
"""The one shard of a file not split."""


def _ring(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _cell_region(cell: int) -> dict:
    """osmium-tool region holding the cell: its (u, v) square, grown a little, as a lat/lng polygon;
    a cell over the antimeridian or around a pole gets its lat/lng bound as a box (all longitudes)."""
    ids = np.array([cell], np.uint64)
    lat_lo, lat_hi, lng_lo, lng_hi = (
        float(np.degrees(b[0])) for b in _rect_bound(ids, int(cell_level(ids)[0]))
    )
    pad = BBOX_PAD_DEG
    if lng_lo > lng_hi or lng_hi - lng_lo >= 180.0:
        return {"bbox": [-180.0, max(lat_lo - pad, -90.0), 180.0, min(lat_hi + pad, 90.0)]}
    face, u0, u1, v0, v1 = (float(b[0]) for b in _cell_uv_bounds(ids))
    grow = EDGE_GROW * (u1 - u0)
    u0, u1, v0, v1 = u0 - grow, u1 + grow, v0 - grow, v1 + grow
    t = np.linspace(0.0, 1.0, EDGE_SAMPLES, endpoint=False)
    u = np.concatenate([u0 + (u1 - u0) * t, np.full(t.size, u1), u1 - (u1 - u0) * t, np.full(t.size, u0)])
    v = np.concatenate([np.full(t.size, v0), v0 + (v1 - v0) * t, np.full(t.size, v1), v1 - (v1 - v0) * t])
    lat, lng = _xyz_to_latlng_deg(*_face_uv_to_xyz(np.full(u.size, int(face)), u, v))
    ring = np.stack([lng, lat], axis=1).tolist()
    return {"polygon": [[*ring, ring[0]]]}


def _samples(bbox: tuple[float, float, float, float]) -> tuple[np.ndarray, tuple[float, float]]:
    """Sorted leaf cell ids of a SAMPLES x SAMPLES grid over the bbox (edges included), and its
    spacing (lon, lat): stands in for the file's objects, taken as uniform over the bbox."""
    lon0, lat0, lon1, lat1 = bbox
    lon, lat = np.meshgrid(np.linspace(lon0, lon1, SAMPLES), np.linspace(lat0, lat1, SAMPLES))
    leaves = np.sort(latlng_to_cell_id(lat.ravel(), lon.ravel()))
    return leaves, ((lon1 - lon0) / (SAMPLES - 1), (lat1 - lat0) / (SAMPLES - 1))


def _counts(cells: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """Sorted leaves inside each cell."""
    lsb = cells & (~cells + np.uint64(1))
    lo, hi = cells - (lsb - np.uint64(1)), cells + (lsb - np.uint64(1))
    return np.searchsorted(leaves, hi, "right") - np.searchsorted(leaves, lo, "left")


def shard_cells(size_bytes: int, bbox: tuple[float, float, float, float], target_bytes: int) -> np.ndarray:
    """Cells covering the bbox, each split into its four children while it would hold more than
    `target_bytes` of the file (its share of a sample grid over the bbox), down to MAX_SHARD_LEVEL;
    sorted. Cells without a sample only touch the bbox's edge (the rest shard takes that strip).
    None when the file fits one shard (then nothing is split)."""
    if size_bytes <= target_bytes:
        return np.zeros(0, np.uint64)
    lon0, lat0, lon1, lat1 = bbox
    leaves, _ = _samples(bbox)
    cells = cover_bbox(lat0, lon0, lat1, lon1, 0)
    done = []
    for level in range(MAX_SHARD_LEVEL + 1):
        count = _counts(cells, leaves)
        cells = cells[count > 0]
        big = count[count > 0] / leaves.size * size_bytes > target_bytes
        if level == MAX_SHARD_LEVEL or not big.any():
            done.append(cells)
            break
        done.append(cells[~big])
        lo, _ = children_range(cells[big], level + 1)
        step = np.uint64(2) * (lo & (~lo + np.uint64(1)))  # children are 2 * their lsb apart
        cells = (lo[:, None] + step[:, None] * np.arange(4, dtype=np.uint64)).ravel()
    return np.sort(np.concatenate(done))


def _header_bbox(path: Path) -> tuple[float, float, float, float]:
    """The header's bbox, else the data's (osmium-tool reads the whole file for it)."""
    box = osm.header_bbox(path)
    if box is not None:
        return box
    proc = _osmium(["fileinfo", "-e", "-g", "data.bbox", str(path)], path)
    x0, y0, x1, y1 = (float(v) for v in proc.stdout.strip("() \n").split(","))
    return (x0, y0, x1, y1)


def plan_shards(pbf_path: str | Path, target_bytes: int = TARGET_SHARD_BYTES) -> ShardPlan:
    """Shard cells for the file at `pbf_path` (none: one shard)."""
    path = osm.check_path(pbf_path)
    size = path.stat().st_size
    if size <= target_bytes:
        return ShardPlan(np.zeros(0, np.uint64), (0.0, 0.0, 0.0, 0.0))
    bbox = _header_bbox(path)
    return ShardPlan(shard_cells(size, bbox, target_bytes), bbox)


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


def _extract(path: Path, regions: list[tuple[str, dict]], directory: Path, source: Path) -> None:
    """One osmium-tool run writing `name.osm.pbf` per (name, region) into `directory`."""
    config = directory / f"{path.name}.json"
    # LZ4 blocks: a quarter less CPU than zlib to write and read for ~15% more bytes; the files are
    # temporary and read once.
    extracts = [{"output": f"{n}.osm.pbf", "output_format": SHARD_FORMAT, **r} for n, r in regions]
    config.write_text(json.dumps({"directory": str(directory), "extracts": extracts}))
    _osmium(
        ["extract", "--config", str(config), "--strategy", "smart", "-S", f"types={COMPLETE_TYPES}"]
        + ["--overwrite", "--no-progress", str(path)],
        source,
    )
    config.unlink()


Group = tuple[Path, list[Shard], int]
"""A file still to split: its path, the shards inside it, and the level its shards' ancestors start at."""


def _split_step(
    group: Group, directory: Path, source: Path, max_extracts: int
) -> tuple[list[Shard], list[Group]]:
    """One osmium-tool run over a group's file: the shards it wrote into `directory` (ready to extract)
    and the group files it wrote instead, for the shards more than one run may write."""
    path, shards, top = group
    cells = np.array([s.owner.cells[0] for s in shards if not s.owner.rest], np.uint64)
    n_rest = len(shards) - cells.size
    if len(shards) <= max_extracts:
        _extract(path, [(s.name, s.region) for s in shards], directory, source)
        return shards, []
    # The finest ancestor level, below `path`'s own cell, with few enough groups.
    fits = [
        lv
        for lv in range(top, int(cell_level(cells).min()) + 1)
        if np.unique(parent(cells, lv)).size + n_rest <= max_extracts
    ]
    if not fits:
        raise ShardError(f"{source}: cannot group {cells.size} shards into {max_extracts} extracts")
    anc = parent(cells, fits[-1])
    by_anc: dict[int, list[Shard]] = {}
    for s, a in zip([s for s in shards if not s.owner.rest], anc.tolist(), strict=True):
        by_anc.setdefault(a, []).append(s)
    ready = [g[0] for g in by_anc.values() if len(g) == 1] + [s for s in shards if s.owner.rest]
    multi = {a: g for a, g in by_anc.items() if len(g) > 1}
    regions = [(s.name, s.region) for s in ready]
    regions += [(f"group-{a:016x}", _cell_region(a)) for a in multi]
    _extract(path, regions, directory, source)
    return ready, [(directory / f"group-{a:016x}.osm.pbf", g, fits[-1] + 1) for a, g in multi.items()]


def split(
    pbf_path: str | Path, shards: list[Shard], directory: Path, max_extracts: int = MAX_EXTRACTS
) -> list[Path]:
    """Write one PBF per shard into `directory`; returns their paths, in `shards` order.

    osmium-tool's memory grows with the extracts of one run (id sets over the whole file's id range
    each), so a run writes at most `max_extracts`: more shards are first grouped under ancestor cells,
    split into one file per group, then each group file into its shards (one more pass per level).
    `iter_sharded` runs the same steps as a pipeline (groups split while shards extract)."""
    if max_extracts < 5:
        raise ValueError("max_extracts must be >= 5: a cell's four children and the rest shard")
    source = Path(pbf_path)
    todo: list[Group] = [(source, shards, 0)]
    while todo:
        group = todo.pop()
        todo += _split_step(group, directory, source, max_extracts)[1]
        if group[0] != source:
            group[0].unlink()  # free the disk as soon as its shards are out
    return [directory / f"{s.name}.osm.pbf" for s in shards]


def _shard_worker(level: str, parent: str) -> None:
    """Entry point of a shard process. It extracts the shards sent on stdin, one JSON line each (file,
    owner, out): the owned objects' summed (key, value) rows and stats to files at `out`, then "done" on
    stdout; one process serves many shards, so the interpreter starts once per worker, not per shard.
    An unreadable file exits with status 3 and the message on stderr. Exits too once its parent is gone."""
    watch_parent(int(parent))
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to the error file, not into the replies
    for line in sys.stdin:
        job = json.loads(line)
        ex = osm.Extractor(int(level), Owner(tuple(job["cells"]), job["rest"]))
        run_or_exit(ex, Path(job["path"]), "all")
        save_folded(ex, job["out"], {k: v - ex.dropped.get(k, 0) for k, v in ex.stats.items()})
        del ex  # before the next shard is read: memory stays that of one shard
        reply.write("done\n")
        reply.flush()


class _Runner:
    """Shard processes (separate interpreters, as osm's area worker), one per pool thread, each fed
    shard after shard; killed on failure."""

    def __init__(self, level: int, tmp: Path) -> None:
        self.level = level
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.stopped = False
        self.local = threading.local()

    def _start(self) -> tuple[subprocess.Popen, Path]:
        code = "import sys; from s2vec_core.shards import _shard_worker; _shard_worker(*sys.argv[1:])"
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        err_path = self.tmp / f"worker-{len(self.procs)}.err"
        # Errors go to a file, not a pipe: nothing the worker prints can block it.
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", code, str(self.level), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                text=True,
            )
        self.procs.append(proc)
        return proc, err_path

    def run(self, shard: Shard, path: Path, out: Path) -> dict:
        with self.lock:
            if self.stopped:
                return {}
            if getattr(self.local, "worker", None) is None:
                self.local.worker = self._start()
        proc, err_path = self.local.worker
        job = {"path": str(path), "cells": shard.owner.cells, "rest": shard.owner.rest, "out": str(out)}
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            reply = proc.stdout.readline()
        except BrokenPipeError:
            reply = ""
        if reply != "done\n":
            proc.wait()
            message = err_path.read_text(errors="replace").strip()
            if proc.returncode == 3:
                raise osm.OSMFileError(message.splitlines()[-1])
            raise ShardError(f"{path}: shard process failed (exit {proc.returncode}): {message[-2000:]}")
        return json.loads(Path(f"{out}.stats.json").read_text())

    def close(self) -> None:
        """Let the workers exit (end of their input) and wait for them."""
        for proc in self.procs:
            proc.stdin.close()
            proc.wait()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


class _Rows:
    """One shard's saved (key, value) rows, read range by range from the files: a memory map would
    keep every page it has read resident, so the merge would hold all rows by the end."""

    def __init__(self, out: Path, edges: np.ndarray) -> None:
        self.paths = (f"{out}.key.npy", f"{out}.value.npy")
        keys = np.load(self.paths[0], mmap_mode="r")
        self.bounds = np.searchsorted(keys, edges)  # touches ~log2(n) pages per edge
        self.offsets = tuple(np.load(p, mmap_mode="r").offset for p in self.paths)
        del keys

    def read(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Range r's rows (8-byte keys and values)."""
        start, count = int(self.bounds[r]), int(self.bounds[r + 1] - self.bounds[r])
        key = np.fromfile(self.paths[0], np.uint64, count, offset=self.offsets[0] + 8 * start)
        value = np.fromfile(self.paths[1], np.float64, count, offset=self.offsets[1] + 8 * start)
        return key, value


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
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[pl.DataFrame]:
    """The long rows of `extract_cells_long(pbf_path, level)`, range of cells by range in cell order,
    from shards extracted by up to `workers` processes at once (default: one per core). Only one
    range's rows are in memory here at a time; a file within `target_bytes` is extracted whole.
    `tmp_dir` holds the shard files (about the input's size) and the shards' rows. `stats` sums the
    shards': tagged_* count each object once, the skipped / invalid / missing counts once per shard
    that reads the object. `on_progress(done, total)` is called as each shard's extraction ends (a
    file extracted whole is one shard). `extract_shards` and `merge_shards` are its two halves, for
    running groups of shards on separate machines."""
    if not 0 <= level <= osm.MAX_LEVEL:
        raise ValueError(f"extraction level must be within 0..{osm.MAX_LEVEL}, got {level}")
    path = osm.check_path(pbf_path)
    plan = plan_shards(path, target_bytes)
    with tempfile.TemporaryDirectory(prefix="s2vec-shards-", dir=tmp_dir) as tmp:
        shards = plan.shards()
        total = extract_shards(path, shards, level, Path(tmp), workers, on_progress)
        if stats is not None:
            stats.update(total)
        yield from merge_shards(plan, level, {s.name: Path(tmp) for s in shards})


def extract_shards(
    pbf_path: str | Path,
    shards: list[Shard],
    level: int,
    directory: Path,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Split `shards` (some or all of a plan's, e.g. one of `ShardPlan.groups`) out of the file and
    extract each by up to `workers` processes; each shard's summed rows go to `directory` as
    `<name>.rows.{key,value}.npy`, for `merge_shards`. The `whole` shard is the file read whole.
    Returns the shards' stats, summed (see `iter_sharded`)."""
    report = on_progress or (lambda done, total: None)
    path = osm.check_path(pbf_path)
    directory.mkdir(parents=True, exist_ok=True)
    if [s.name for s in shards] == [WHOLE]:
        report(0, 1)
        stats: dict[str, int] = {}
        rows = osm.extract_cells_long(path, level, stats)
        channel = rows["channel"].to_numpy().astype(np.uint64)
        np.save(directory / f"{WHOLE}.rows.key.npy", rows["cell_id"].to_numpy() | channel)
        np.save(directory / f"{WHOLE}.rows.value.npy", rows["value"].to_numpy())
        report(1, 1)
        return stats
    outs = {s.name: directory / f"{s.name}.rows" for s in shards}
    runner = _Runner(level, directory)
    parts = _split_and_extract(path, shards, directory, outs, runner, workers or os.cpu_count() or 1, report)
    runner.close()
    # What stays is the rows: a group's directory may be uploaded whole for another machine to merge.
    for leftover in [*(Path(f"{out}.stats.json") for out in outs.values()), *directory.glob("worker-*.err")]:
        leftover.unlink()
    return {k: sum(p.get(k, 0) for p in parts) for k in parts[0]}


def merge_shards(plan: ShardPlan, level: int, directories: dict[str, Path]) -> Iterator[pl.DataFrame]:
    """The plan's long rows range by range in cell order, summed over the shards' rows that
    `extract_shards` wrote (`directories`: where each of `plan.shards()` has its rows). Every shard's
    rows of a range are added in the plan's order, so the values are the same however the shards were
    grouped."""
    edges = _key_ranges(plan.cells)
    rows = [_Rows(directories[s.name] / f"{s.name}.rows", edges) for s in plan.shards()]
    for r in range(edges.size - 1):
        agg = osm.Aggregate(level)
        for part in rows:
            agg.add_folded(*part.read(r))
        if agg.rows:
            yield agg.long()


def _split_and_extract(
    source: Path,
    shards: list[Shard],
    directory: Path,
    outs: dict[str, Path],
    runner: _Runner,
    workers: int,
    report: Callable[[int, int], None],
) -> list[dict]:
    """Split `source` into `shards` and extract each, as one pipeline on `workers` threads: a shard is
    extracted as soon as the osmium-tool run that writes it ends, while other group files are still
    being split (the split alone was ~70% of the wall, single-threaded; see BENCHMARKS.md). Each task is
    a process (osmium-tool or a shard worker), so `workers` bounds the CPUs in use. Returns the shards'
    stats; the first failure stops the shard processes and raises."""

    def split_group(group: Group) -> tuple[list[Shard], list[Group]]:
        ready, groups = _split_step(group, directory, source, MAX_EXTRACTS)
        if group[0] != source:
            group[0].unlink()  # free the disk as soon as its shards are out
        return ready, groups

    def extract(shard: Shard) -> dict:
        path = directory / f"{shard.name}.osm.pbf"
        result = runner.run(shard, path, outs[shard.name])
        path.unlink()
        return result

    parts: list[dict] = []
    report(0, len(shards))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s2vec-shard") as pool:
        pending: dict[Future, bool] = {pool.submit(split_group, (source, shards, 0)): True}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    if not pending.pop(future):
                        parts.append(future.result())
                        report(len(parts), len(shards))
                        continue
                    ready, groups = future.result()
                    # Splits first: they make more work ready. Then the largest files, so the last
                    # shards to finish are short.
                    for group in groups:
                        pending[pool.submit(split_group, group)] = True
                    size = {s.name: (directory / f"{s.name}.osm.pbf").stat().st_size for s in ready}
                    for shard in sorted(ready, key=lambda s: -size[s.name]):
                        pending[pool.submit(extract, shard)] = False
        except BaseException:
            for future in pending:
                future.cancel()
            runner.stop()
            raise
    return parts


def extract_sharded(
    pbf_path: str | Path,
    level: int,
    workers: int | None = None,
    stats: dict | None = None,
    target_bytes: int = TARGET_SHARD_BYTES,
    tmp_dir: str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """`extract_cells_long(pbf_path, level)` by shards (see `iter_sharded`): the same frame, sorted by
    cell then channel. It holds all rows at the end; stream `iter_sharded` to stay within a shard."""
    frames = list(iter_sharded(pbf_path, level, workers, stats, target_bytes, tmp_dir, on_progress))
    return pl.concat(frames) if len(frames) > 1 else frames[0]
