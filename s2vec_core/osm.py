"""OSM PBF -> per-cell channel values (see DESIGN.md "Taxonomy" for the geometry rules).

pyosmium streams the file; C++ KeyFilters drop every object without a taxonomy key for its geometry,
and libosmium assembles areas (closed ways, multipolygon relations). Python only matches tags and
appends each object's geometry as WKB (made in C++) or a point to chunk buffers. A worker thread turns
each full chunk into `(cell, channel, value)` rows with numpy and folds them into a running sum, so
memory stays bounded by the number of non-empty (cell, channel) pairs, not by the number of features.

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

import hashlib
import json
import logging
import math
import os
import struct
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
import osmium
import polars as pl

from s2vec_core.grid import MAX_LEVEL
from s2vec_core.s2 import face_ij_to_cell_id, latlng_to_cell_id, latlng_to_face_xy
from s2vec_core.taxonomy import (
    AREA_KEYS,
    AREA_LOOKUP,
    CHANNEL_NAMES,
    CHANNELS,
    NEGATIVE_VALUES,
    NODE_LOOKUP,
    WAY_LOOKUP,
    WILDCARD,
)

log = logging.getLogger(__name__)

EARTH_RADIUS_M = 6_371_008.8
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
# Smallest S2 cell edge at level L is S2_MIN_EDGE / 2**L radians (quadratic projection).
S2_MIN_EDGE = 2.0 * math.sqrt(2.0) / 3.0
# Pieces / samples per smallest cell edge: finer than the cell so the split follows cell boundaries.
SAMPLES_PER_EDGE = 2
# Scanline rows per cell row when spreading an area over the cells it covers.
SUBROWS = 2
# One polygon never yields more (row, cell) pieces than about this (a huge one gets sparser rows).
MAX_PIECES_PER_AREA = 2_000_000
# Areas of a chunk are spread in batches of about this many pieces (bounds memory at fine levels).
SPREAD_BATCH_PIECES = 4_000_000
# Chunk sizes: how many buffered objects trigger a flush into the aggregate.
FLUSH_POINTS = 100_000
FLUSH_LINES = 10_000
FLUSH_AREAS = 10_000
# Chunks queued for the worker thread before the reader waits.
MAX_PENDING = 2
# Files from this size on are read by two processes (see extract_cells_long).
PARALLEL_MIN_BYTES = 16 << 20
# Aggregate rows held before they are re-aggregated.
REAGGREGATE_ROWS = 2_000_000

_SPREAD = np.array([c.kind == "area_m2" and c.spread for c in CHANNELS])
_CENTROID_AREA = np.array([c.kind == "area_m2" and not c.spread for c in CHANNELS])
_COUNT = np.array([c.kind == "count" for c in CHANNELS])


class OSMFileError(ValueError):
    """A missing, truncated or corrupt OSM file; the message names the file."""


def piece_length_m(level: int) -> float:
    """Length of line pieces and spacing of area samples at `level`: half the smallest cell edge."""
    return S2_MIN_EDGE / (1 << level) * EARTH_RADIUS_M / SAMPLES_PER_EDGE


def _check_path(pbf_path: str | Path) -> Path:
    path = Path(pbf_path)
    if not path.is_file():
        raise OSMFileError(f"{path}: no such OSM file")
    if path.stat().st_size == 0:
        raise OSMFileError(f"{path}: empty OSM file")
    return path


def pbf_info(pbf_path: str | Path) -> dict:
    """sha256, size, bbox (header, else computed from nodes), object counts and replication timestamp."""
    path = _check_path(pbf_path)
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)

    class _Count(osmium.SimpleHandler):
        def __init__(self) -> None:
            super().__init__()
            self.n = self.w = self.r = 0
            self.box = [math.inf, math.inf, -math.inf, -math.inf]

        def node(self, n) -> None:
            self.n += 1
            if need_box and n.location.valid():
                b, lon, lat = self.box, n.location.lon, n.location.lat
                b[0], b[1], b[2], b[3] = min(b[0], lon), min(b[1], lat), max(b[2], lon), max(b[3], lat)

        def way(self, w) -> None:
            self.w += 1

        def relation(self, r) -> None:
            self.r += 1

    try:
        reader = osmium.io.Reader(str(path), osmium.osm.NOTHING)
        header = reader.header()
        reader.close()
        box = header.box()
        need_box = not box.valid()
        counter = _Count()
        counter.apply_file(str(path))
    except RuntimeError as e:
        raise OSMFileError(f"{path}: unreadable OSM file ({e})") from e
    if need_box:
        bbox = tuple(counter.box) if counter.n else None
    else:
        bbox = (box.bottom_left.lon, box.bottom_left.lat, box.top_right.lon, box.top_right.lat)
    return {
        "path": str(path),
        "sha256": sha.hexdigest(),
        "size_bytes": path.stat().st_size,
        "bbox": bbox,  # (lon_min, lat_min, lon_max, lat_max)
        "nodes": counter.n,
        "ways": counter.w,
        "relations": counter.r,
        "replication_timestamp": header.get("osmosis_replication_timestamp") or None,
    }


# ---------------------------------------------------------------- geometry helpers (vectorised)


def _haversine_m(lat0, lon0, lat1, lon1) -> np.ndarray:
    p0, p1 = np.radians(lat0), np.radians(lat1)
    dlat = p1 - p0
    dlon = np.radians(lon1 - lon0)
    h = np.sin(dlat / 2) ** 2 + np.cos(p0) * np.cos(p1) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(h, 1.0)))


def _wrap_deg(d: np.ndarray) -> np.ndarray:
    """Longitude differences into [-180, 180)."""
    return (d + 180.0) % 360.0 - 180.0


def _ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts c_i: (owner index repeated c_i times, position 0..c_i-1 within the owner)."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(owner.size) - starts[owner]


def _expand_channels(owner: np.ndarray, ch_start: np.ndarray, ch_count: np.ndarray, ch_flat: np.ndarray):
    """Rows owned by objects -> one row per (row, channel of its object): (row index, channel)."""
    rep, pos = _ranges(ch_count[owner])
    return rep, ch_flat[ch_start[owner[rep]] + pos]


def _flat_channels(chans: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    count = np.fromiter(map(len, chans), np.int64, len(chans))
    flat = np.fromiter(chain.from_iterable(chans), np.int64, int(count.sum()))
    return np.cumsum(count) - count, count, flat


def _wkb_lines(hexes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hex WKB linestrings -> (lon, lat, line index) of all points, in order."""
    buf = np.frombuffer(bytes.fromhex("".join(hexes)), np.uint8)
    nbytes = np.fromiter(map(len, hexes), np.int64, len(hexes)) // 2
    start = np.cumsum(nbytes) - nbytes
    keep = np.ones(buf.size, bool)
    keep[(start[:, None] + np.arange(9)).ravel()] = False
    xy = buf[keep].view("<f8").reshape(-1, 2)
    line = np.repeat(np.arange(len(hexes)), (nbytes - 9) // 16)
    return xy[:, 0], xy[:, 1], line


def _wkb_polygons(hexes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hex WKB multipolygons -> (lon, lat, ring index) of all points, plus per ring (area index, is_outer)."""
    raw = bytes.fromhex("".join(hexes))
    nbytes = np.fromiter(map(len, hexes), np.int64, len(hexes)) // 2
    start = np.cumsum(nbytes) - nbytes
    buf = np.frombuffer(raw, np.uint8)

    def u32(off: np.ndarray) -> np.ndarray:
        return buf[off[:, None] + np.arange(4)].copy().view("<u4").ravel()

    # Fast path: one polygon with one ring (nearly every area) has a fixed 22-byte header.
    simple = (u32(start + 5) == 1) & (u32(start + 14) == 1)
    s_idx = np.flatnonzero(simple)
    s_n = u32(start[s_idx] + 18)
    parts = [(s_idx, start[s_idx] + 22, s_n, np.ones(s_idx.size, bool))]
    c_area, c_off, c_n, c_outer = [], [], [], []
    for a in np.flatnonzero(~simple).tolist():
        off = int(start[a]) + 5
        (npolys,) = struct.unpack_from("<I", raw, off)
        off += 4
        for _ in range(npolys):
            (nrings,) = struct.unpack_from("<I", raw, off + 5)
            off += 9
            for r in range(nrings):
                (n,) = struct.unpack_from("<I", raw, off)
                c_area.append(a), c_off.append(off + 4), c_n.append(n), c_outer.append(r == 0)
                off += 4 + 16 * n
    if c_area:
        parts.append((np.array(c_area), np.array(c_off), np.array(c_n, np.int64), np.array(c_outer)))
    ring_area = np.concatenate([p[0] for p in parts]).astype(np.int64)
    ring_pt_start = np.concatenate([p[1] for p in parts]).astype(np.int64)
    ring_npts = np.concatenate([p[2] for p in parts]).astype(np.int64)
    ring_outer = np.concatenate([p[3] for p in parts])
    # Group rings by area (the fast path put simple areas first).
    order = np.argsort(ring_area, kind="stable")
    ring_area, ring_pt_start, ring_npts, ring_outer = (
        ring_area[order],
        ring_pt_start[order],
        ring_npts[order],
        ring_outer[order],
    )
    ring, pos = _ranges(ring_npts)
    byte_idx = (ring_pt_start[ring] + 16 * pos)[:, None] + np.arange(16)
    xy = buf[byte_idx.ravel()].view("<f8").reshape(-1, 2)
    return xy[:, 0], xy[:, 1], ring, ring_area, ring_outer


def _split_on_grid(face, x0, y0, x1, y1, use, level):
    """Cut the segments marked `use` (both ends on one face, in `latlng_to_face_xy` grid coordinates)
    where they cross cell edges: (segment index, cell id, fraction of the segment) per piece.

    A straight line in face coordinates is how S2 draws the segment's cells; the piece lengths are
    fractions of the segment's haversine length, so they sum to it exactly."""
    idx = np.flatnonzero(use)
    x0, y0, x1, y1 = x0[idx], y0[idx], x1[idx], y1[idx]
    cuts = []
    for a0, a1 in ((x0, x1), (y0, y1)):
        f0, f1 = np.floor(a0), np.floor(a1)
        seg, k = _ranges(np.abs(f1 - f0).astype(np.int64))
        edge = np.minimum(f0, f1)[seg] + 1 + k
        t = (edge - a0[seg]) / (a1 - a0)[seg]
        keep = t < 1.0  # a cut at the segment's end (it ends on a cell edge) cuts nothing off
        cuts.append((seg[keep], t[keep]))
    n = idx.size
    seg = np.concatenate([np.arange(n), cuts[0][0], cuts[1][0]])
    t = np.concatenate([np.zeros(n), cuts[0][1], cuts[1][1]])
    # One float key orders pieces by segment, then along it (t < 1 keeps segments apart; 2**-32
    # resolution at a million segments is far below a cut's width).
    order = np.argsort(seg + t)
    seg, t = seg[order], t[order]
    t_end = np.empty_like(t)
    t_end[:-1] = t[1:]
    last = np.ones(seg.size, bool)
    np.not_equal(seg[1:], seg[:-1], out=last[:-1])
    t_end[last] = 1.0
    mid = 0.5 * (t + t_end)
    i = np.floor(x0[seg] + mid * (x1 - x0)[seg]).astype(np.int64)
    j = np.floor(y0[seg] + mid * (y1 - y0)[seg]).astype(np.int64)
    cells = face_ij_to_cell_id(face[idx][seg], i, j, level)
    return idx[seg], cells, t_end - t


def _scanline_spans(x0, y0, x1, y1, e_area, y_origin, spacing):
    """Even-odd scanline fill: rows at y_origin + (r + 0.5) * spacing of each edge's area; sorted
    crossings of one (area, row) pair up as enter / exit. Returns (area, row, x_enter, x_exit) per span."""
    s = spacing[e_area]
    # Row r lies at y = origin + (r + 0.5) * s; an edge crosses rows with lo <= y < hi.
    y_lo = (np.minimum(y0, y1) - y_origin[e_area]) / s
    y_hi = (np.maximum(y0, y1) - y_origin[e_area]) / s
    r_lo = np.ceil(y_lo - 0.5).astype(np.int64)
    r_hi = np.ceil(y_hi - 0.5).astype(np.int64)
    edge, pos = _ranges(np.maximum(r_hi - r_lo, 0))
    row = r_lo[edge] + pos
    yr = y_origin[e_area[edge]] + (row + 0.5) * s[edge]
    xi = x0[edge] + (yr - y0[edge]) * (x1 - x0)[edge] / (y1 - y0)[edge]
    xa = e_area[edge]
    order = np.lexsort((xi, row, xa))
    xi, row, xa = xi[order], row[order], xa[order]
    grp_start = np.flatnonzero(np.r_[True, (row[1:] != row[:-1]) | (xa[1:] != xa[:-1])])
    grp_len = np.diff(np.r_[grp_start, row.size])
    g, gpos = _ranges(grp_len)
    i_in = np.flatnonzero((gpos % 2 == 0) & (gpos + 1 < grp_len[g]))
    return xa[i_in], row[i_in], xi[i_in], xi[i_in + 1]


def _area_box(x, y, pa, n_areas):
    """Per area (x min, x max, y min, y max) of its points (`pa` = area of each point)."""
    box = np.empty((4, n_areas))
    box[0::2] = np.inf
    box[1::2] = -np.inf
    for k, a in enumerate((x, y)):
        np.minimum.at(box[2 * k], pa, a)
        np.maximum.at(box[2 * k + 1], pa, a)
    return box


def _grid_spacing(box) -> np.ndarray:
    """Scanline row spacing per area: SUBROWS rows per cell row; a huge polygon gets sparser rows so its
    (row, cell) pieces stay near MAX_PIECES_PER_AREA (its shares still sum to its area)."""
    extent = (box[3] - box[2]) * (box[1] - box[0] + 1)
    return np.maximum(1.0 / SUBROWS, extent / MAX_PIECES_PER_AREA)


def _spread_on_grid(face, gx, gy, ring, pa, wanted, area_m2, level, spacing):
    """Spread the `wanted` areas (all points on one face; `gx, gy` grid coordinates, `pa` the area of
    each point) over the cells they cover: scanline rows `spacing` apart (in cell rows) give every
    cell of a span the span length inside it; each area's value is shared out by those lengths.
    Returns (cells, area, value) per (span, cell) piece."""
    n_areas = area_m2.size
    same = (ring[1:] == ring[:-1]) & wanted[pa[:-1]]
    x0, y0, x1, y1 = gx[:-1][same], gy[:-1][same], gx[1:][same], gy[1:][same]
    e_area = pa[:-1][same]
    # Rows on a grid anchored at 0, so they sit at the same heights inside every cell row.
    span_area, span_row, xs, xe = _scanline_spans(x0, y0, x1, y1, e_area, np.zeros(n_areas), spacing)
    c_lo = np.floor(xs).astype(np.int64)
    span, k = _ranges(np.floor(xe).astype(np.int64) - c_lo + 1)
    c = c_lo[span] + k
    weight = np.minimum(xe[span], c + 1) - np.maximum(xs[span], c)
    s_area = span_area[span]
    cy = np.floor((span_row[span] + 0.5) * spacing[s_area]).astype(np.int64)
    first = np.searchsorted(pa, np.arange(n_areas))
    cells = face_ij_to_cell_id(face[np.minimum(first, pa.size - 1)][s_area], c, cy, level)
    keep = weight > 0
    s_area, cells, weight = s_area[keep], cells[keep], weight[keep]
    total = np.bincount(s_area, weight, n_areas)
    return cells, s_area, area_m2[s_area] * weight / total[s_area]


# ---------------------------------------------------------------- accumulation


def _sum_by_key(key: np.ndarray, values: np.ndarray):
    """Sum values per unique key; returns (sorted unique keys, sums).

    Adjacent equal keys are merged first: pieces of a line and samples along a scanline mostly repeat
    their neighbour's cell, so the sort has far fewer rows to order."""
    if key.size == 0:
        return key, values
    new = np.empty(key.size, bool)
    new[0] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    key, values = key[starts], np.add.reduceat(values, starts)
    order = np.argsort(key, kind="stable")  # timsort: cheap on the sorted runs of folded parts
    key, values = key[order], values[order]
    del order
    np.not_equal(key[1:], key[:-1], out=new[1 : key.size])
    starts = np.flatnonzero(new[: key.size])
    return key[starts], np.add.reduceat(values, starts)


class _Aggregate:
    """Running sum of values per (cell, channel), folded chunk by chunk with numpy.

    A cell id at level L has 2 * (30 - L) zero bits below its trailing 1 bit; the channel index goes
    there, so a row is one uint64 key (cell | channel) and one float64: 16 bytes, sorted by cell then
    channel by a plain sort, no hash tables."""

    def __init__(self, level: int) -> None:
        self.low = np.uint64((1 << (2 * (30 - level))) - 1)
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.rows = 0
        self.fold_at = REAGGREGATE_ROWS

    def add(self, cells: np.ndarray, channels: np.ndarray, values: np.ndarray) -> None:
        if cells.size == 0:
            return
        key = cells.astype(np.uint64) | channels.astype(np.uint64)
        part = _sum_by_key(key, values.astype(np.float64))
        self.parts.append(part)
        self.rows += part[0].size
        if self.rows > self.fold_at and len(self.parts) > 1:
            self.parts = [self._fold()]
            self.rows = self.parts[0][0].size
            # Fold again once the parts have grown by half: amortised, not a re-sort on every chunk.
            self.fold_at = max(REAGGREGATE_ROWS, self.rows * 3 // 2)

    def _fold(self) -> tuple[np.ndarray, np.ndarray]:
        """Merge the parts into one sorted, reduced part; temporaries are dropped as soon as possible
        because this is where extraction peaks in memory."""
        key = np.concatenate([p[0] for p in self.parts])
        values = np.concatenate([p[1] for p in self.parts])
        self.parts = []
        order = np.argsort(key, kind="stable")  # timsort: merges the parts' sorted runs
        key = key[order]
        values = values[order]
        del order
        new = np.empty(key.size, bool)
        new[:1] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        del new
        if starts.size == key.size:
            return key, values
        return key[starts], np.add.reduceat(values, starts)

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows as one sorted, reduced (key, value) pair."""
        return self._fold() if self.parts else (np.zeros(0, np.uint64), np.zeros(0))

    def add_folded(self, key: np.ndarray, values: np.ndarray) -> None:
        """Add another aggregate's `folded()` rows (same level)."""
        if key.size:
            self.parts.append((key, values))
            self.rows += key.size

    def long(self) -> pl.DataFrame:
        """Columns cell_id (UInt64), channel (UInt16, index into CHANNEL_NAMES), value (Float64), sorted."""
        key, values = self.folded()
        nz = values != 0
        key, values = key[nz], values[nz]
        channel = (key & self.low).astype(np.uint16)
        key &= ~self.low
        return pl.DataFrame(
            [
                pl.Series("cell_id", key, pl.UInt64),
                pl.Series("channel", channel, pl.UInt16),
                pl.Series("value", values, pl.Float64),
            ]
        )


def _wide(long: pl.DataFrame) -> pl.DataFrame:
    """Long (cell_id, channel, value) -> cell_id then one Float64 column per channel, built column by
    column so peak memory is the output plus the long frame, not twice the output."""
    cells, inv = np.unique(long["cell_id"].to_numpy(), return_inverse=True)
    channel = long["channel"].to_numpy()
    value = long["value"].to_numpy()
    order = np.argsort(channel, kind="stable")
    bounds = np.searchsorted(channel[order], np.arange(len(CHANNEL_NAMES) + 1))
    cols = [pl.Series("cell_id", cells, pl.UInt64)]
    for i, name in enumerate(CHANNEL_NAMES):
        rows = order[bounds[i] : bounds[i + 1]]
        col = np.zeros(cells.size)
        col[inv[rows]] = value[rows]
        cols.append(pl.Series(name, col, pl.Float64))
    return pl.DataFrame(cols)


# Keys in the order tags are probed: the most frequent first, so the early exit in _channels (all of
# an object's tags accounted for) comes soon. Keys not listed follow alphabetically.
_KEY_ORDER = (
    "building",
    "highway",
    "landuse",
    "natural",
    "amenity",
    "barrier",
    "waterway",
    "leisure",
    "power",
    "railway",
    "shop",
    "man_made",
    "tourism",
    "public_transport",
    "historic",
    "office",
)


def _key_table(lookup) -> tuple[tuple[str, dict[str, tuple[int, ...]], tuple[int, ...]], ...]:
    """(key, value -> channels incl. the key's wildcard ones, wildcard channels) per key, in probe order.
    Tags are read by key: pyosmium answers TagList.get much faster than it iterates tags."""
    rank = {k: i for i, k in enumerate(_KEY_ORDER)}
    table = []
    for key in sorted(lookup, key=lambda k: (rank.get(k, len(rank)), k)):
        wild = lookup[key].get(WILDCARD, ())
        merged = {
            v: tuple(sorted(set(chans) | (set(wild) if v not in NEGATIVE_VALUES else set())))
            for v, chans in lookup[key].items()
            if v != WILDCARD
        }
        merged.update({v: () for v in NEGATIVE_VALUES if v not in merged})
        table.append((key, merged, wild))
    return tuple(table)


_NODE_TABLE = _key_table(NODE_LOOKUP)
_WAY_TABLE = _key_table(WAY_LOOKUP)
_AREA_TABLE = _key_table(AREA_LOOKUP)
_NODE_KEYS = tuple(k for k, _, _ in _NODE_TABLE)
_WAY_KEYS = tuple(k for k, _, _ in _WAY_TABLE)


def _channels(obj, table) -> tuple[int, ...]:
    """Channels (sorted, unique) that the tags of `obj` (a pyosmium object) feed under `table`.

    Reads the tags through the C++ object behind pyosmium 4's Python wrapper: TagList adds a Python
    frame to every probe, a fifth of the callback time at ~3 probes per object."""
    found: tuple[int, ...] = ()
    several = False
    data = obj._pyosmium_data
    get = data.tags_get_value_by_key
    left = data.tags_size()
    for key, per_value, wild in table:
        v = get(key, None)
        if v is None:
            continue
        hit = per_value.get(v, wild)
        if hit:
            if found:
                several = True
            found = found + hit
        left -= 1
        if not left:  # every tag of the object is accounted for
            break
    if several:
        found = tuple(sorted(set(found)))
    return found


class _ReaderBase(osmium.SimpleHandler):
    """pyosmium callbacks: match tags and append to the extractor's buffers (the only per-object Python).
    pyosmium reads a file once per handler and assembles areas only if the handler has `area`, so the
    geometry kinds a pass handles are chosen by class: `_PointLineReader`, `_AreaReader` or both."""

    def __init__(self, ex: _Extractor) -> None:
        super().__init__()
        self.ex = ex
        self.fab = osmium.geom.WKBFactory()


class _PointLineReader(_ReaderBase):
    def node(self, n) -> None:
        chans = _channels(n, _NODE_TABLE)
        if not chans:
            return
        ex = self.ex
        loc = n.location
        k = len(chans)
        ex.p_lon.extend((loc.lon,) * k)
        ex.p_lat.extend((loc.lat,) * k)
        ex.p_ch.extend(chans)
        ex.stats["tagged_nodes"] += 1
        if len(ex.p_ch) >= FLUSH_POINTS:
            ex.flush_points()

    def way(self, w) -> None:
        chans = _channels(w, _WAY_TABLE)
        if not chans:
            return
        ex = self.ex
        if w._pyosmium_data.tags_get_value_by_key("area", None) == "yes" and w.is_closed():
            ex.stats["ways_skipped"] += 1
            return
        try:
            ex.l_wkb.append(self.fab.create_linestring(w))
            ex.l_ch.append(chans)
        except (osmium.InvalidLocationError, RuntimeError):
            ex.partial_way(w, chans)
        ex.stats["tagged_ways"] += 1
        if len(ex.l_wkb) >= FLUSH_LINES:
            ex.flush_lines()


class _AreaReader(_ReaderBase):
    def area(self, a) -> None:
        chans = _channels(a, _AREA_TABLE)
        if not chans:
            return
        ex = self.ex
        try:
            ex.a_wkb.append(self.fab.create_multipolygon(a))
            ex.a_ch.append(chans)
            ex.stats["tagged_areas"] += 1
        except (osmium.InvalidLocationError, RuntimeError):
            ex.stats["areas_invalid"] += 1
        if len(ex.a_wkb) >= FLUSH_AREAS:
            ex.flush_areas()


class _Reader(_PointLineReader, _AreaReader):
    pass


_READERS = {"all": _Reader, "points_lines": _PointLineReader, "areas": _AreaReader}


class _Extractor:
    """Buffers matched objects and turns full buffers into (cell, channel, value) rows.

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
        self.agg = _Aggregate(level)
        self.stats = {
            "tagged_nodes": 0,
            "tagged_ways": 0,
            "tagged_areas": 0,
            "ways_missing_nodes": 0,
            "missing_node_refs": 0,
            "ways_skipped": 0,
            "areas_invalid": 0,
        }
        self.p_lon: list[float] = []
        self.p_lat: list[float] = []
        self.p_ch: list[int] = []
        self.l_wkb: list[str] = []
        self.l_ch: list[tuple[int, ...]] = []
        self.a_wkb: list[str] = []
        self.a_ch: list[tuple[int, ...]] = []
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2vec-osm-chunks")
        self.pending: deque[Future] = deque()

    def cells(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        # Interpolated points and samples near the antimeridian may step past +-180.
        return latlng_to_cell_id(lat, _wrap_deg(lon), self.level)

    def _submit(self, fn, *args) -> None:
        """Run a chunk's numpy work on the worker thread (numpy releases the GIL, so it overlaps with
        the per-object callbacks); at most MAX_PENDING chunks wait, which bounds memory."""
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > MAX_PENDING or (self.pending and self.pending[0].done()):
            self.pending.popleft().result()

    def flush_points(self) -> None:
        if self.p_ch:
            self._submit(self._points, self.p_lon, self.p_lat, self.p_ch)
        self.p_lon, self.p_lat, self.p_ch = [], [], []

    def flush_lines(self) -> None:
        if self.l_wkb:
            self._submit(self._lines, self.l_wkb, self.l_ch)
        self.l_wkb, self.l_ch = [], []

    def flush_areas(self) -> None:
        if self.a_wkb:
            self._submit(self._areas, self.a_wkb, self.a_ch)
        self.a_wkb, self.a_ch = [], []

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
        """The objects whose first point (hex WKB characters first..first+32) `owns` accepts."""
        xy = np.frombuffer(bytes.fromhex("".join(h[first : first + 32] for h in hexes)), "<f8")
        keep = self.owns(xy[1::2], xy[0::2])
        self.dropped[stat] += int(keep.size - keep.sum())
        idx = np.flatnonzero(keep).tolist()
        return [hexes[i] for i in idx], [chans[i] for i in idx]

    def _lines(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None:
        if self.owns is not None:
            # Linestring WKB: 1 byte order + 4 type + 4 count, then the points.
            hexes, chans = self._owned(hexes, chans, 18, "tagged_ways")
            if not hexes:
                return
        lon, lat, line = _wkb_lines(hexes)
        a = np.flatnonzero(line[1:] == line[:-1])
        b = a + 1
        length = _haversine_m(lat[a], lon[a], lat[b], lon[b])
        face, gx, gy = latlng_to_face_xy(lat, lon, self.level)
        on_face = face[a] == face[b]
        seg, cells, frac = _split_on_grid(face[a], gx[a], gy[a], gx[b], gy[b], on_face, self.level)
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
        seg, pos = _ranges(pieces)
        t = (pos + 0.5) / pieces[seg]
        plat = lat0[seg] + t * (lat1 - lat0)[seg]
        # Longitude differences wrap so segments across the antimeridian take the short way round.
        plon = lon0[seg] + t * _wrap_deg(lon1 - lon0)[seg]
        return seg, self.cells(plat, plon), 1.0 / pieces[seg]

    def _areas(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None:
        if self.owns is not None:
            # Multipolygon WKB: 9-byte header, then the first polygon's 9-byte header and its first
            # ring's 4-byte count: the first point is at byte 22.
            hexes, chans = self._owned(hexes, chans, 44, "tagged_areas")
            if not hexes:
                return
        lon, lat, ring, ring_area, ring_outer = _wkb_polygons(hexes)
        n_areas = len(hexes)
        # Local equirectangular metres around each area's first point: equal-area enough at area scale.
        first = np.searchsorted(ring_area[ring], np.arange(n_areas))
        lon_ref, lat_ref = lon[first], lat[first]
        kx = np.cos(np.radians(lat_ref)) * _M_PER_DEG
        pa = ring_area[ring]
        x = _wrap_deg(lon - lon_ref[pa]) * kx[pa]
        y = (lat - lat_ref[pa]) * _M_PER_DEG
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
        c_lat = lat_ref + cy / _M_PER_DEG
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
            box = _area_box(gx, gy, pa, n_areas)
            spacing = _grid_spacing(box)
            # Areas in batches of about SPREAD_BATCH_PIECES (row, cell) pieces: fine levels and big
            # polygons would otherwise hold tens of millions of pieces of one chunk at once.
            pieces = np.where(on_face, ((box[3] - box[2]) / spacing + 1) * (box[1] - box[0] + 2), 0.0)
            batch = (np.cumsum(pieces) // SPREAD_BATCH_PIECES).astype(np.int64)
            for b in np.unique(batch[on_face]):
                self._add_spread(
                    _spread_on_grid(
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
            rep, pos = _ranges(hi - lo)
            k = s_order[lo[rep] + pos]
            self.agg.add(s_cells[k], ch[rows][rep], s_value[k])

    def _spread_sampled(self, x, y, ring, pa, wanted, area_m2, lon_ref, lat_ref, kx):
        """Areas over a cube-face edge: scanline-fill a sample grid in local metres, finer than the
        cell, and give each sample's cell an equal share -> (cells, area, value) per sample."""
        n_areas = area_m2.size
        same = (ring[1:] == ring[:-1]) & wanted[pa[:-1]]
        x0, y0, x1, y1 = x[:-1][same], y[:-1][same], x[1:][same], y[1:][same]
        e_area = pa[:-1][same]
        box = _area_box(x, y, pa, n_areas)
        xmin, ymin = box[0], box[2]
        spacing = np.maximum(self.step, np.sqrt(area_m2 / MAX_PIECES_PER_AREA))
        span_area, span_row, xs, xe = _scanline_spans(x0, y0, x1, y1, e_area, ymin, spacing)
        sp = spacing[span_area]
        c_lo = np.ceil((xs - xmin[span_area]) / sp - 0.5).astype(np.int64)
        c_hi = np.ceil((xe - xmin[span_area]) / sp - 0.5).astype(np.int64)
        span, cpos = _ranges(np.maximum(c_hi - c_lo, 0))
        s_area = span_area[span]
        sx = xmin[s_area] + (c_lo[span] + cpos + 0.5) * spacing[s_area]
        sy = ymin[s_area] + (span_row[span] + 0.5) * spacing[s_area]
        cells = self.cells(lat_ref[s_area] + sy / _M_PER_DEG, lon_ref[s_area] + sx / kx[s_area])
        n_samples = np.bincount(s_area, minlength=n_areas)
        return cells, s_area, area_m2[s_area] / n_samples[s_area]

    def run(self, path: Path, part: str = "all") -> None:
        """Read the file with the reader for `part` (see _READERS) and fold everything into self.agg."""
        # Per-type C++ filters: only objects with a key that can feed a channel of their geometry
        # reach Python (relations only feed the area assembler, which sees them before these).
        filters = {
            "points_lines": [
                osmium.filter.KeyFilter(*_NODE_KEYS).enable_for(osmium.osm.NODE),
                osmium.filter.KeyFilter(*_WAY_KEYS).enable_for(osmium.osm.WAY),
            ],
            "areas": [osmium.filter.KeyFilter(*AREA_KEYS).enable_for(osmium.osm.AREA | osmium.osm.RELATION)],
        }
        try:
            _READERS[part](self).apply_file(
                str(path),
                locations=True,
                filters=[f for k, fs in filters.items() if part in ("all", k) for f in fs],
            )
            self.flush_points()
            self.flush_lines()
            self.flush_areas()
            while self.pending:
                self.pending.popleft().result()
        finally:
            for f in self.pending:
                f.cancel()
            self.pool.shutdown(wait=True)

    def partial_way(self, way, chans: tuple[int, ...]) -> None:
        """A way with missing node locations keeps each run of >= 2 located nodes as its own line."""
        runs: list[list[tuple[float, float]]] = [[]]
        missing = 0
        for n in way.nodes:
            loc = n.location
            if loc.valid():
                runs[-1].append((loc.lon, loc.lat))
            else:
                missing += 1
                if runs[-1]:
                    runs.append([])
        if missing:
            self.stats["ways_missing_nodes"] += 1
            self.stats["missing_node_refs"] += missing
        for run in runs:
            if len(run) >= 2:
                wkb = struct.pack("<BII", 1, 2, len(run)) + np.array(run, "<f8").tobytes()
                self.l_wkb.append(wkb.hex())
                self.l_ch.append(chans)


def _default_workers(path: Path) -> int:
    """Two processes (areas in the second) where there are two cores and the file is big enough to
    repay starting a Python process (~0.4 s)."""
    return 2 if (os.cpu_count() or 1) >= 2 and path.stat().st_size >= PARALLEL_MIN_BYTES else 1


def _start_area_worker(path: Path, level: int, out: Path) -> subprocess.Popen:
    """A separate interpreter (not multiprocessing: no re-import of the caller's __main__, no fork of
    a process that may hold polars or torch threads) that extracts the areas into `out`."""
    code = "import sys; from s2vec_core.osm import _area_worker; _area_worker(*sys.argv[1:])"
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
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
    ex = _Extractor(int(level))
    try:
        ex.run(Path(path), "areas")
    except RuntimeError as e:
        sys.stderr.write(f"{path}: unreadable OSM file ({e})")
        sys.exit(3)
    key, values = ex.agg.folded()
    np.save(f"{out}.key.npy", key)
    np.save(f"{out}.value.npy", values)
    Path(f"{out}.stats.json").write_text(json.dumps(ex.stats))


def _finish_area_worker(proc: subprocess.Popen, path: Path, out: Path, ex: _Extractor) -> None:
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
    path = _check_path(pbf_path)
    if workers is None:
        workers = _default_workers(path)
    if workers not in (1, 2):
        raise ValueError(f"workers must be 1 or 2, got {workers}")
    ex = _Extractor(level)
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
    return _wide(extract_cells_long(pbf_path, level, stats, workers))
