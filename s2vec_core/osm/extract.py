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
from itertools import chain
from pathlib import Path

import numpy as np
import polars as pl

from s2vec_core.grid import MAX_LEVEL
from s2vec_core.osm import wkb
from s2vec_core.osm.aggregate import Aggregate, wide
from s2vec_core.osm.geometry import (
    M_PER_DEG,
    MAX_PIECES_PER_AREA,
    area_box,
    grid_spacing,
    haversine_m,
    piece_length_m,
    scanline_spans,
    split_on_grid,
    spread_on_grid,
    wrap_deg,
)
from s2vec_core.osm.ragged import ranges
from s2vec_core.osm.reader import Chunks, OSMFileError, check_path, read
from s2vec_core.s2 import latlng_to_cell_id, latlng_to_face_xy
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


def _expand_channels(owner: np.ndarray, ch_start: np.ndarray, ch_count: np.ndarray, ch_flat: np.ndarray):
    """Rows owned by objects -> one row per (row, channel of its object): (row index, channel)."""
    rep, pos = ranges(ch_count[owner])
    return rep, ch_flat[ch_start[owner[rep]] + pos]


def _flat_channels(chans: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    count = np.fromiter(map(len, chans), np.int64, len(chans))
    flat = np.fromiter(chain.from_iterable(chans), np.int64, int(count.sum()))
    return np.cumsum(count) - count, count, flat


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
        self.step = piece_length_m(level)
        self.agg = Aggregate(level)
        self.chunks = Chunks(self)
        self.stats = self.chunks.stats
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2vec-osm-chunks")
        self.pending: deque[Future] = deque()

    def cells(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        # Interpolated points and samples near the antimeridian may step past +-180.
        return latlng_to_cell_id(lat, wrap_deg(lon), self.level)

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
        self.agg.add(self.cells(lat, lon), ch, np.ones(lon.size))

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
        lon, lat, line = wkb.decode_lines(hexes)
        a = np.flatnonzero(line[1:] == line[:-1])
        b = a + 1
        length = haversine_m(lat[a], lon[a], lat[b], lon[b])
        face, gx, gy = latlng_to_face_xy(lat, lon, self.level)
        on_face = face[a] == face[b]
        seg, cells, frac = split_on_grid(face[a], gx[a], gy[a], gx[b], gy[b], on_face, self.level)
        across = np.flatnonzero(~on_face)
        if across.size:  # segments over a cube-face edge (rare): short pieces, each at its midpoint
            x_seg, x_cells, x_frac = self._split_in_pieces(
                lat[a[across]], lon[a[across]], lat[b[across]], lon[b[across]], length[across]
            )
            seg = np.concatenate([seg, across[x_seg]])
            cells = np.concatenate([cells, x_cells])
            frac = np.concatenate([frac, x_frac])
        ch_start, ch_count, ch_flat = _flat_channels(chans)
        rep, ch = _expand_channels(line[a][seg], ch_start, ch_count, ch_flat)
        self.agg.add(cells[rep], ch, (length[seg] * frac)[rep])

    def _split_in_pieces(self, lat0, lon0, lat1, lon1, length):
        """Segments -> pieces shorter than half the smallest cell edge: (segment, cell of the piece's
        midpoint, fraction of the segment)."""
        pieces = np.maximum(1, np.ceil(length / self.step)).astype(np.int64)
        seg, pos = ranges(pieces)
        t = (pos + 0.5) / pieces[seg]
        plat = lat0[seg] + t * (lat1 - lat0)[seg]
        # Longitude differences wrap so segments across the antimeridian take the short way round.
        plon = lon0[seg] + t * wrap_deg(lon1 - lon0)[seg]
        return seg, self.cells(plat, plon), 1.0 / pieces[seg]

    def _areas(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None:
        if self.owns is not None:
            hexes, chans = self._owned(hexes, chans, wkb.POLYGON_FIRST_POINT, "tagged_areas")
            if not hexes:
                return
        lon, lat, ring, ring_area, ring_outer = wkb.decode_polygons(hexes)
        n_areas = len(hexes)
        # Local equirectangular metres around each area's first point: equal-area enough at area scale.
        first = np.searchsorted(ring_area[ring], np.arange(n_areas))
        lon_ref, lat_ref = lon[first], lat[first]
        kx = np.cos(np.radians(lat_ref)) * M_PER_DEG
        pa = ring_area[ring]
        x = wrap_deg(lon - lon_ref[pa]) * kx[pa]
        y = (lat - lat_ref[pa]) * M_PER_DEG
        same = ring[1:] == ring[:-1]
        x0, y0, x1, y1 = x[:-1][same], y[:-1][same], x[1:][same], y[1:][same]
        e_ring = ring[:-1][same]
        cross = x0 * y1 - x1 * y0
        n_rings = ring_area.size
        ring_a2 = np.bincount(e_ring, cross, n_rings)  # twice the signed ring area
        ring_cx6 = np.bincount(e_ring, (x0 + x1) * cross, n_rings)
        ring_cy6 = np.bincount(e_ring, (y0 + y1) * cross, n_rings)
        # Outer rings add, holes subtract, whatever their orientation.
        sign = np.where(ring_outer, 1.0, -1.0) * np.sign(ring_a2)
        area2 = np.bincount(ring_area, sign * ring_a2, n_areas)
        cx = np.bincount(ring_area, sign * ring_cx6, n_areas)
        cy = np.bincount(ring_area, sign * ring_cy6, n_areas)
        area_m2 = np.abs(area2) / 2
        ok = area2 > 0
        cx = np.where(ok, cx / np.where(ok, 3 * area2, 1), x[first])
        cy = np.where(ok, cy / np.where(ok, 3 * area2, 1), y[first])
        c_lon = lon_ref + cx / kx
        c_lat = lat_ref + cy / M_PER_DEG
        c_cell = self.cells(c_lat, c_lon)

        ch_start, ch_count, ch_flat = _flat_channels(chans)
        owner, ch = _expand_channels(np.arange(n_areas), ch_start, ch_count, ch_flat)
        spread = _SPREAD[ch]
        n_samples = np.zeros(n_areas, np.int64)
        wanted = np.zeros(n_areas, bool)
        wanted[owner[spread]] = True
        if wanted.any():
            face, gx, gy = latlng_to_face_xy(lat, lon, self.level)
            # An area lies on one cube face unless a face edge runs through it (rare).
            face_lo = np.full(n_areas, 6, np.int8)
            face_hi = np.full(n_areas, -1, np.int8)
            np.minimum.at(face_lo, pa, face)
            np.maximum.at(face_hi, pa, face)
            on_face = wanted & (face_lo == face_hi)
            across = wanted & ~on_face
            box = area_box(gx, gy, pa, n_areas)
            spacing = grid_spacing(box)
            # Areas in batches of about SPREAD_BATCH_PIECES (row, cell) pieces: fine levels and big
            # polygons would otherwise hold tens of millions of pieces of one chunk at once.
            pieces = np.where(on_face, ((box[3] - box[2]) / spacing + 1) * (box[1] - box[0] + 2), 0.0)
            batch = (np.cumsum(pieces) // SPREAD_BATCH_PIECES).astype(np.int64)
            for b in np.unique(batch[on_face]):
                self._add_spread(
                    spread_on_grid(
                        face, gx, gy, ring, pa, on_face & (batch == b), area_m2, self.level, spacing
                    ),
                    owner,
                    ch,
                    spread,
                    n_samples,
                )
            if across.any():
                self._add_spread(
                    self._spread_sampled(x, y, ring, pa, across, area_m2, lon_ref, lat_ref, kx),
                    owner,
                    ch,
                    spread,
                    n_samples,
                )
        at_centroid = _CENTROID_AREA[ch] | (spread & (n_samples[owner] == 0))
        value = np.where(_COUNT[ch], 1.0, area_m2[owner])
        keep = _COUNT[ch] | at_centroid
        self.agg.add(c_cell[owner[keep]], ch[keep], value[keep])

    def _add_spread(self, pieces, owner, ch, spread, n_samples) -> None:
        """Fold spread pieces (cells, area, value) into the aggregate under each spread channel of their
        area, and count them per area in `n_samples` (areas left at 0 stay at their centroid)."""
        s_cells, s_area, s_value = pieces
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
            self.agg.add(s_cells[k], ch[rows][rep], s_value[k])

    def _spread_sampled(self, x, y, ring, pa, wanted, area_m2, lon_ref, lat_ref, kx):
        """Areas over a cube-face edge: scanline-fill a sample grid in local metres, finer than the
        cell, and give each sample's cell an equal share -> (cells, area, value) per sample."""
        n_areas = area_m2.size
        same = (ring[1:] == ring[:-1]) & wanted[pa[:-1]]
        x0, y0, x1, y1 = x[:-1][same], y[:-1][same], x[1:][same], y[1:][same]
        e_area = pa[:-1][same]
        box = area_box(x, y, pa, n_areas)
        xmin, ymin = box[0], box[2]
        spacing = np.maximum(self.step, np.sqrt(area_m2 / MAX_PIECES_PER_AREA))
        span_area, span_row, xs, xe = scanline_spans(x0, y0, x1, y1, e_area, ymin, spacing)
        sp = spacing[span_area]
        c_lo = np.ceil((xs - xmin[span_area]) / sp - 0.5).astype(np.int64)
        c_hi = np.ceil((xe - xmin[span_area]) / sp - 0.5).astype(np.int64)
        span, cpos = ranges(np.maximum(c_hi - c_lo, 0))
        s_area = span_area[span]
        sx = xmin[s_area] + (c_lo[span] + cpos + 0.5) * spacing[s_area]
        sy = ymin[s_area] + (span_row[span] + 0.5) * spacing[s_area]
        cells = self.cells(lat_ref[s_area] + sy / M_PER_DEG, lon_ref[s_area] + sx / kx[s_area])
        n_samples = np.bincount(s_area, minlength=n_areas)
        return cells, s_area, area_m2[s_area] / n_samples[s_area]

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


def _area_worker(path: str, level: str, out: str, parent: str) -> None:
    """Entry point of the area worker process: summed (key, value) rows and stats to files at `out`; an
    unreadable file exits with status 3 and the message on stderr. It exits too once
    `parent` (the caller's pid) is no longer its parent: a caller killed outright cannot stop it."""

    def exit_with_parent() -> None:
        while os.getppid() == int(parent):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    ex = Extractor(int(level))
    try:
        ex.run(Path(path), "areas")
    except RuntimeError as e:
        sys.stderr.write(f"{path}: unreadable OSM file ({e})")
        sys.exit(3)
    key, values = ex.agg.folded()
    np.save(f"{out}.key.npy", key)
    np.save(f"{out}.value.npy", values)
    Path(f"{out}.stats.json").write_text(json.dumps(ex.stats))


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
