"""OSM PBF -> per-cell channel values (see DESIGN.md "Taxonomy" for the geometry rules).

pyosmium streams the file (`reader`); C++ KeyFilters drop every object without a taxonomy key for its
geometry, and libosmium assembles areas (closed ways, multipolygon relations). Python only matches tags
and appends each object's geometry as WKB (made in C++) or a point to chunk buffers. A worker thread
turns each full chunk into `(cell, channel, value)` rows with numpy (`wkb`, `geometry`) and folds them
into a running sum (`aggregate`), so memory stays bounded by the number of non-empty (cell, channel)
pairs, not by the number of features.

- points: count at the cell of the location;
- ways: length (haversine) split over the cells they cross: each segment is cut where its straight
  line in S2 face coordinates crosses a cell edge, and each piece gets its share of the length
  (segments over a cube-face edge are cut into pieces shorter than half a cell instead);
- areas: counts and building footprints at the cell of the area centroid; land-use-like channels
  (`spread`) spread the area over the cells it covers: scanline rows through the face grid, two per
  cell row, give each cell the span length inside it (areas too small to meet a row fall back to the
  centroid).
Ways with missing node locations (clipped extracts) keep their located runs; the rest is counted.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import polars as pl

from s2vec_core.grid import MAX_LEVEL
from s2vec_core.osm import wkb
from s2vec_core.osm.aggregate import Aggregate, wide
from s2vec_core.osm.geometry import (
    Box,
    GridPoints,
    Pieces,
    cells_at,
    footprints,
    grid_spacing,
    haversine_m,
    split_in_pieces,
    split_on_grid,
    spread_on_grid,
    spread_sampled,
)
from s2vec_core.osm.ragged import ranges
from s2vec_core.osm.reader import Chunks, OSMFileError, check_path, read
from s2vec_core.taxonomy import CHANNELS

log = logging.getLogger(__name__)

# Areas of a chunk are spread in batches of about this many pieces (bounds memory at fine levels).
SPREAD_BATCH_PIECES = 4_000_000
# Chunks queued for the worker thread before the reader waits.
MAX_PENDING = 2
# Files from this size on are read by two processes (see extract_cells_long).
PARALLEL_MIN_BYTES = 16 << 20

_SPREAD = np.array([c.kind == "area_m2" and c.spread for c in CHANNELS])
_CENTROID_AREA = np.array([c.kind == "area_m2" and not c.spread for c in CHANNELS])
_COUNT = np.array([c.kind == "count" for c in CHANNELS])


@dataclass(frozen=True)
class Channels:
    """The channels of each object of a chunk, flattened: object k's are flat[start[k] : start[k] + count[k]]."""

    start: np.ndarray
    count: np.ndarray
    flat: np.ndarray

    @classmethod
    def of(cls, chans: list[tuple[int, ...]]) -> Channels:
        count = np.fromiter(map(len, chans), np.int64, len(chans))
        flat = np.fromiter(chain.from_iterable(chans), np.int64, int(count.sum()))
        return cls(np.cumsum(count) - count, count, flat)

    def expand(self, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows owned by objects -> one row per (row, channel of its object): (row index, channel)."""
        rep, pos = ranges(self.count[owner])
        return rep, self.flat[self.start[owner[rep]] + pos]


class Extractor:
    """Turns the readers' full chunks into (cell, channel, value) rows, folded into `agg`.

    `owns(lat, lon) -> bool array`, if given, keeps only the objects whose first point it accepts (see
    s2vec_core.shards: a shard reads every object touching it complete, but adds only those it owns, so
    each object is counted by exactly one shard); `dropped` counts the others, for the stats."""

    def __init__(
        self, level: int, owns: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    ) -> None:
        self.level = level
        self.owns = owns
        self.dropped = {"tagged_nodes": 0, "tagged_ways": 0, "tagged_areas": 0}
        self.agg = Aggregate(level)
        self.chunks = Chunks(self)
        self.stats = self.chunks.stats
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2vec-osm-chunks")
        self.pending: deque[Future] = deque()

    def _submit(self, fn, *args) -> None:
        """Run a chunk's numpy work on the worker thread (numpy releases the GIL, so it overlaps with
        the per-object callbacks); at most MAX_PENDING chunks wait, which bounds memory."""
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > MAX_PENDING or (self.pending and self.pending[0].done()):
            self.pending.popleft().result()

    def points(self, lons: list[float], lats: list[float], chans: list[int]) -> None:
        self._submit(self._points, lons, lats, chans)

    def lines(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None:
        self._submit(self._lines, hexes, chans)

    def areas(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None:
        self._submit(self._areas, hexes, chans)

    def _points(self, lons: list[float], lats: list[float], chans: list[int]) -> None:
        lon, lat, ch = np.array(lons), np.array(lats), np.array(chans)
        if self.owns is not None:
            keep = self.owns(lat, lon)
            lo, la, c = lon[~keep], lat[~keep], ch[~keep]
            # A node's rows are adjacent, at one location, with increasing channels: a new node starts
            # where that breaks (two tagged nodes on one spot in a row count as one: only a stat).
            starts = (lo[1:] != lo[:-1]) | (la[1:] != la[:-1]) | (c[1:] <= c[:-1])
            self.dropped["tagged_nodes"] += int(starts.sum()) + (c.size > 0)
            lon, lat, ch = lon[keep], lat[keep], ch[keep]
        self.agg.add(cells_at(lat, lon, self.level), ch, np.ones(lon.size))

    def _owned(self, hexes: list[str], chans: list[tuple[int, ...]], first: int, stat: str):
        """The objects whose first point (at hex WKB offset `first`) `owns` accepts."""
        lon, lat = wkb.first_points(hexes, first)
        keep = self.owns(lat, lon)
        self.dropped[stat] += int(keep.size - keep.sum())
        idx = np.flatnonzero(keep).tolist()
        return [hexes[i] for i in idx], [chans[i] for i in idx]

    def _lines(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None:
        if self.owns is not None:
            hexes, chans = self._owned(hexes, chans, wkb.LINE_FIRST_POINT, "tagged_ways")
            if not hexes:
                return
        lines = wkb.decode_lines(hexes)
        lat, lon = lines.lat, lines.lon
        a = np.flatnonzero(lines.line[1:] == lines.line[:-1])
        b = a + 1
        length = haversine_m(lat[a], lon[a], lat[b], lon[b])
        grid = GridPoints.at(lat, lon, self.level)
        start, end = grid.take(a), grid.take(b)
        on_face = np.flatnonzero(start.face == end.face)
        pieces = split_on_grid(start.take(on_face), end.take(on_face))
        seg, cells, frac = on_face[pieces.owner], pieces.cell, pieces.value
        across = np.flatnonzero(start.face != end.face)
        if across.size:  # segments over a cube-face edge (rare): short pieces, each at its midpoint
            x = split_in_pieces(lines, a[across], b[across], length[across], self.level)
            seg = np.concatenate([seg, across[x.owner]])
            cells = np.concatenate([cells, x.cell])
            frac = np.concatenate([frac, x.value])
        rep, ch = Channels.of(chans).expand(lines.line[a][seg])
        self.agg.add(cells[rep], ch, (length[seg] * frac)[rep])

    def _areas(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None:
        if self.owns is not None:
            hexes, chans = self._owned(hexes, chans, wkb.POLYGON_FIRST_POINT, "tagged_areas")
            if not hexes:
                return
        polys = wkb.decode_polygons(hexes)
        n_areas = polys.n
        shape = footprints(polys)
        area_m2 = shape.area_m2
        c_cell = cells_at(shape.lat, shape.lon, self.level)

        owner, ch = Channels.of(chans).expand(np.arange(n_areas))
        spread = _SPREAD[ch]
        n_samples = np.zeros(n_areas, np.int64)
        wanted = np.zeros(n_areas, bool)
        wanted[owner[spread]] = True
        if wanted.any():
            grid = GridPoints.at(polys.lat, polys.lon, self.level)
            # An area lies on one cube face unless a face edge runs through it (rare).
            face_lo = np.full(n_areas, 6, np.int8)
            face_hi = np.full(n_areas, -1, np.int8)
            np.minimum.at(face_lo, polys.point_area, grid.face)
            np.maximum.at(face_hi, polys.point_area, grid.face)
            on_face = wanted & (face_lo == face_hi)
            across = wanted & ~on_face
            box = Box.of(grid.x, grid.y, polys)
            spacing = grid_spacing(box)
            # Areas in batches of about SPREAD_BATCH_PIECES (row, cell) pieces: fine levels and big
            # polygons would otherwise hold tens of millions of pieces of one chunk at once.
            rows = (box.y_hi - box.y_lo) / spacing + 1
            pieces = np.where(on_face, rows * (box.x_hi - box.x_lo + 2), 0.0)
            batch = (np.cumsum(pieces) // SPREAD_BATCH_PIECES).astype(np.int64)
            for b in np.unique(batch[on_face]):
                batch_pieces = spread_on_grid(polys, grid, on_face & (batch == b), area_m2, spacing)
                self._add_spread(batch_pieces, owner, ch, spread, n_samples)
            if across.any():
                sampled = spread_sampled(polys, shape.local, across, area_m2, self.level)
                self._add_spread(sampled, owner, ch, spread, n_samples)
        at_centroid = _CENTROID_AREA[ch] | (spread & (n_samples[owner] == 0))
        value = np.where(_COUNT[ch], 1.0, area_m2[owner])
        keep = _COUNT[ch] | at_centroid
        self.agg.add(c_cell[owner[keep]], ch[keep], value[keep])

    def _add_spread(
        self, pieces: Pieces, owner: np.ndarray, ch: np.ndarray, spread: np.ndarray, n_samples: np.ndarray
    ) -> None:
        """Fold an area chunk's spread pieces into the aggregate under each spread channel of their area
        (`owner`, `ch`: the chunk's (area, channel) rows, `spread` those of spread channels), and count
        them per area in `n_samples` (areas left at 0 stay at their centroid)."""
        s_area = pieces.owner
        n_samples += np.bincount(s_area, minlength=n_samples.size)
        sel = np.flatnonzero(spread)
        rows = sel[np.isin(owner[sel], s_area)]
        if rows.size:
            # Join piece rows (per area) with the spread channels of that area.
            s_order = np.argsort(s_area, kind="stable")
            s_area_sorted = s_area[s_order]
            lo = np.searchsorted(s_area_sorted, owner[rows], "left")
            hi = np.searchsorted(s_area_sorted, owner[rows], "right")
            rep, pos = ranges(hi - lo)
            k = s_order[lo[rep] + pos]
            self.agg.add(pieces.cell[k], ch[rows][rep], pieces.value[k])

    def run(self, path: Path, part: str = "all") -> None:
        """Read the file's `part` (one of reader.PARTS) and fold everything into self.agg."""
        try:
            read(path, part, self.chunks)
            while self.pending:
                self.pending.popleft().result()
        finally:
            for f in self.pending:
                f.cancel()
            self.pool.shutdown(wait=True)


def _default_workers(path: Path) -> int:
    """Two processes (areas in the second) where there are two cores and the file is big enough to
    repay starting a Python process (~0.4 s)."""
    return 2 if (os.cpu_count() or 1) >= 2 and path.stat().st_size >= PARALLEL_MIN_BYTES else 1


def _start_area_worker(path: Path, level: int, out: Path) -> subprocess.Popen:
    """A separate interpreter (not multiprocessing: no re-import of the caller's __main__, no fork of
    a process that may hold polars or torch threads) that extracts the areas into `out`."""
    code = "import sys; from s2vec_core.osm.extract import _area_worker; _area_worker(*sys.argv[1:])"
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # Output goes to files, not pipes: nothing the worker prints can block it while this process reads.
    with open(f"{out}.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(level), str(out), str(os.getpid())],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )


def watch_parent(parent: int) -> None:
    """Exits this worker process once `parent` (the caller's pid) is no longer its parent: a caller
    killed outright cannot stop it."""

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


def run_or_exit(ex: Extractor, path: Path, part: str) -> None:
    """`ex.run` in a worker process: an unreadable file exits with status 3 and the message on stderr,
    which the caller raises as OSMFileError."""
    try:
        ex.run(path, part)
    except RuntimeError as e:
        sys.stderr.write(f"{path}: unreadable OSM file ({e})")
        sys.exit(3)


def save_folded(ex: Extractor, out: str, stats: dict) -> None:
    """A worker's summed (key, value) rows and `stats` to the files at `out` the caller reads back."""
    key, values = ex.agg.folded()
    np.save(f"{out}.key.npy", key)
    np.save(f"{out}.value.npy", values)
    Path(f"{out}.stats.json").write_text(json.dumps(stats))


def _area_worker(path: str, level: str, out: str, parent: str) -> None:
    """Entry point of the area worker process: summed (key, value) rows and stats to files at `out`; an
    unreadable file exits with status 3 and the message on stderr. It exits too once
    `parent` (the caller's pid) is no longer its parent: a caller killed outright cannot stop it."""
    watch_parent(int(parent))
    ex = Extractor(int(level))
    run_or_exit(ex, Path(path), "areas")
    save_folded(ex, out, ex.stats)


def _finish_area_worker(proc: subprocess.Popen, path: Path, out: Path, ex: Extractor) -> None:
    proc.wait()
    message = Path(f"{out}.err").read_text(errors="replace").strip()
    if proc.returncode == 3:
        raise OSMFileError(message.splitlines()[-1])
    if proc.returncode:
        raise RuntimeError(f"{path}: area worker failed (exit {proc.returncode}): {message[-2000:]}")
    ex.agg.add_folded(np.load(f"{out}.key.npy"), np.load(f"{out}.value.npy"))
    for k, v in json.loads(Path(f"{out}.stats.json").read_text()).items():
        ex.stats[k] += v


def extract_cells_long(
    pbf_path: str | Path, level: int, stats: dict | None = None, workers: int | None = None
) -> pl.DataFrame:
    """Non-zero channel values per S2 cell at `level`, long form: `cell_id` (UInt64), `channel` (UInt16,
    index into CHANNEL_NAMES), `value` (Float64), sorted by cell then channel.

    Sparse, so it stays small where the wide frame would not (most cells feed few channels). If `stats`
    is given it receives counts of tagged objects and of skipped geometry. `workers=2` reads areas in a
    second process while this one reads points and lines (default: 2 on big files with 2+ cores).
    """
    if not 0 <= level <= MAX_LEVEL:
        # Above 26 (cells < 15 cm) the channel index no longer fits below the cell id's trailing bit.
        raise ValueError(f"extraction level must be within 0..{MAX_LEVEL}, got {level}")
    path = check_path(pbf_path)
    if workers is None:
        workers = _default_workers(path)
    if workers not in (1, 2):
        raise ValueError(f"workers must be 1 or 2, got {workers}")
    ex = Extractor(level)
    with tempfile.TemporaryDirectory(prefix="s2vec-osm-") as tmp:
        out = Path(tmp) / "areas"
        proc = _start_area_worker(path, level, out) if workers == 2 else None
        try:
            ex.run(path, "points_lines" if proc else "all")
        except RuntimeError as e:
            raise OSMFileError(f"{path}: unreadable OSM file ({e})") from e
        finally:
            if proc is not None and sys.exc_info()[0] is not None:
                proc.kill()
                proc.wait()
        if proc is not None:
            _finish_area_worker(proc, path, out, ex)
    if ex.stats["ways_missing_nodes"] or ex.stats["areas_invalid"]:
        log.warning(
            "%s: %d ways with %d missing node locations kept only their located parts; "
            "%d invalid areas skipped",
            path,
            ex.stats["ways_missing_nodes"],
            ex.stats["missing_node_refs"],
            ex.stats["areas_invalid"],
        )
    if stats is not None:
        stats.update(ex.stats)
    return ex.agg.long()


def extract_cells(
    pbf_path: str | Path, level: int, stats: dict | None = None, workers: int | None = None
) -> pl.DataFrame:
    """Channel values per S2 cell at `level` for the PBF at `pbf_path` (see module docstring).

    Returns `cell_id` (UInt64, unique, sorted) then one Float64 column per channel in CHANNEL_NAMES
    order, only cells with some value. `stats` and `workers` as in `extract_cells_long`.
    """
    return wide(extract_cells_long(pbf_path, level, stats, workers))
