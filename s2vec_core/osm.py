"""OSM PBF -> per-cell channel values (see DESIGN.md "Taxonomy" for the geometry rules).

pyosmium streams the file; C++ KeyFilters drop every object without a taxonomy key for its geometry,
and libosmium assembles areas (closed ways, multipolygon relations). Python only matches tags and
appends each object's geometry as WKB (made in C++) or a point to chunk buffers. A worker thread turns
each full chunk into `(cell, channel, value)` rows with numpy and folds them into a running sum, so
memory stays bounded by the number of non-empty (cell, channel) pairs, not by the number of features.

- points: count at the cell of the location;
- ways: length (haversine) split over the cells they cross: each segment is cut into pieces shorter
  than half the smallest cell edge and each piece's length goes to the cell of its midpoint;
- areas: counts and building footprints at the cell of the area centroid; land-use-like channels
  (`spread`) spread the area over the cells of a scanline sample grid inside the polygon, finer than
  the cell (areas too small to hold a sample fall back to the centroid).
Ways with missing node locations (clipped extracts) keep their located runs; the rest is counted.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import osmium
import polars as pl

from s2vec_core.s2 import latlng_to_cell_id
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
# One polygon never yields more samples than this (a huge polygon gets a coarser grid instead).
MAX_SAMPLES_PER_AREA = 2_000_000
# Chunk sizes: how many buffered objects trigger a flush into the aggregate.
FLUSH_POINTS = 100_000
FLUSH_LINES = 10_000
FLUSH_AREAS = 10_000
# Finest extraction level: the channel index must fit below the trailing bit of a cell id.
MAX_LEVEL = 26
# Chunks queued for the worker thread before the reader waits.
MAX_PENDING = 2
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
    count = np.fromiter((len(c) for c in chans), np.int64, len(chans))
    flat = np.fromiter((i for c in chans for i in c), np.int64, int(count.sum()))
    return np.cumsum(count) - count, count, flat


def _wkb_lines(hexes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hex WKB linestrings -> (lon, lat, line index) of all points, in order."""
    buf = np.frombuffer(bytes.fromhex("".join(hexes)), np.uint8)
    nbytes = np.fromiter((len(h) for h in hexes), np.int64, len(hexes)) // 2
    start = np.cumsum(nbytes) - nbytes
    keep = np.ones(buf.size, bool)
    keep[(start[:, None] + np.arange(9)).ravel()] = False
    xy = buf[keep].view("<f8").reshape(-1, 2)
    line = np.repeat(np.arange(len(hexes)), (nbytes - 9) // 16)
    return xy[:, 0], xy[:, 1], line


def _wkb_polygons(hexes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hex WKB multipolygons -> (lon, lat, ring index) of all points, plus per ring (area index, is_outer)."""
    raw = bytes.fromhex("".join(hexes))
    nbytes = np.fromiter((len(h) for h in hexes), np.int64, len(hexes)) // 2
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
        ring_area[order], ring_pt_start[order], ring_npts[order], ring_outer[order]
    )
    ring, pos = _ranges(ring_npts)
    byte_idx = (ring_pt_start[ring] + 16 * pos)[:, None] + np.arange(16)
    xy = buf[byte_idx.ravel()].view("<f8").reshape(-1, 2)
    return xy[:, 0], xy[:, 1], ring, ring_area, ring_outer


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

    def long(self) -> pl.DataFrame:
        """Columns cell_id (UInt64), channel (UInt16, index into CHANNEL_NAMES), value (Float64), sorted."""
        key, values = self._fold() if self.parts else (np.zeros(0, np.uint64), np.zeros(0))
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
_KEY_ORDER = ("building", "highway", "landuse", "natural", "amenity", "barrier", "waterway", "leisure",
              "power", "railway", "shop", "man_made", "tourism", "public_transport", "historic", "office")


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


def _channels(tags, table) -> tuple[int, ...]:
    """Channels (sorted, unique) that `tags` (a pyosmium TagList) feed under `table`."""
    found: tuple[int, ...] = ()
    several = False
    left = len(tags)
    get = tags.get
    for key, per_value, wild in table:
        v = get(key)
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


class _Reader(osmium.SimpleHandler):
    """pyosmium callbacks: match tags and append to the extractor's buffers (the only per-object Python)."""

    def __init__(self, ex: "_Extractor") -> None:
        super().__init__()
        self.ex = ex
        self.fab = osmium.geom.WKBFactory()

    def node(self, n) -> None:
        chans = _channels(n.tags, _NODE_TABLE)
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
        tags = w.tags
        chans = _channels(tags, _WAY_TABLE)
        if not chans:
            return
        ex = self.ex
        if w.is_closed() and tags.get("area") == "yes":
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

    def area(self, a) -> None:
        chans = _channels(a.tags, _AREA_TABLE)
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


class _Extractor:
    """Buffers matched objects and turns full buffers into (cell, channel, value) rows."""

    def __init__(self, level: int) -> None:
        self.level = level
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
        lon, lat = np.array(lons), np.array(lats)
        self.agg.add(self.cells(lat, lon), np.array(chans), np.ones(lon.size))

    def _lines(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None:
        lon, lat, line = _wkb_lines(hexes)
        same = line[1:] == line[:-1]
        lon0, lat0, lon1, lat1 = lon[:-1][same], lat[:-1][same], lon[1:][same], lat[1:][same]
        seg_line = line[:-1][same]
        length = _haversine_m(lat0, lon0, lat1, lon1)
        pieces = np.maximum(1, np.ceil(length / self.step)).astype(np.int64)
        seg, pos = _ranges(pieces)
        t = (pos + 0.5) / pieces[seg]
        plat = lat0[seg] + t * (lat1 - lat0)[seg]
        # Longitude differences wrap so segments across the antimeridian take the short way round.
        plon = lon0[seg] + t * _wrap_deg(lon1 - lon0)[seg]
        cells = self.cells(plat, plon)
        value = (length / pieces)[seg]
        ch_start, ch_count, ch_flat = _flat_channels(chans)
        rep, ch = _expand_channels(seg_line[seg], ch_start, ch_count, ch_flat)
        self.agg.add(cells[rep], ch, value[rep])

    def _areas(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None:
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
        spread_areas = np.unique(owner[spread])
        if spread_areas.size:
            s_cells, s_area, s_value, n_samples = self._spread(
                x, y, ring, ring_area, spread_areas, area_m2, lon_ref, lat_ref, kx
            )
            sel = np.flatnonzero(spread)
            # Only rows of areas that got samples are spread; the others stay at the centroid below.
            sampled = n_samples[owner[sel]] > 0
            rows = sel[sampled]
            if rows.size:
                # Join sample rows (per area) with the spread channels of that area.
                s_order = np.argsort(s_area, kind="stable")
                s_area_sorted = s_area[s_order]
                lo = np.searchsorted(s_area_sorted, owner[rows], "left")
                hi = np.searchsorted(s_area_sorted, owner[rows], "right")
                rep, pos = _ranges(hi - lo)
                k = s_order[lo[rep] + pos]
                self.agg.add(s_cells[k], ch[rows][rep], s_value[k])
        at_centroid = _CENTROID_AREA[ch] | (spread & (n_samples[owner] == 0))
        value = np.where(_COUNT[ch], 1.0, area_m2[owner])
        keep = _COUNT[ch] | at_centroid
        self.agg.add(c_cell[owner[keep]], ch[keep], value[keep])

    def _spread(self, x, y, ring, ring_area, areas, area_m2, lon_ref, lat_ref, kx):
        """Scanline-fill sample grids inside the given areas -> per sample (cell, area, share of area)."""
        n_areas = area_m2.size
        wanted = np.zeros(n_areas, bool)
        wanted[areas] = True
        pa = ring_area[ring]
        same = (ring[1:] == ring[:-1]) & wanted[pa[:-1]]
        x0, y0, x1, y1 = x[:-1][same], y[:-1][same], x[1:][same], y[1:][same]
        e_area = pa[:-1][same]
        xmin = np.full(n_areas, np.inf)
        ymin = np.full(n_areas, np.inf)
        np.minimum.at(xmin, e_area, np.minimum(x0, x1))
        np.minimum.at(ymin, e_area, np.minimum(y0, y1))
        spacing = np.maximum(self.step, np.sqrt(area_m2 / MAX_SAMPLES_PER_AREA))
        s = spacing[e_area]
        # Row r of an area lies at y = ymin + (r + 0.5) * s; an edge crosses rows with lo <= y < hi.
        ey_lo, ey_hi = np.minimum(y0, y1), np.maximum(y0, y1)
        r_lo = np.ceil((ey_lo - ymin[e_area]) / s - 0.5).astype(np.int64)
        r_hi = np.ceil((ey_hi - ymin[e_area]) / s - 0.5).astype(np.int64)
        edge, pos = _ranges(np.maximum(r_hi - r_lo, 0))
        row = r_lo[edge] + pos
        yr = ymin[e_area[edge]] + (row + 0.5) * s[edge]
        xi = x0[edge] + (yr - y0[edge]) * (x1 - x0)[edge] / (y1 - y0)[edge]
        xa = e_area[edge]
        order = np.lexsort((xi, row, xa))
        xi, row, xa = xi[order], row[order], xa[order]
        # Even-odd rule: sorted crossings of one (area, row) pair up as enter / exit.
        grp_start = np.flatnonzero(np.r_[True, (row[1:] != row[:-1]) | (xa[1:] != xa[:-1])])
        grp_len = np.diff(np.r_[grp_start, row.size])
        g, gpos = _ranges(grp_len)
        enter = (gpos % 2 == 0) & (gpos + 1 < grp_len[g])
        i_in = np.flatnonzero(enter)
        span_area, span_row = xa[i_in], row[i_in]
        sp = spacing[span_area]
        c_lo = np.ceil((xi[i_in] - xmin[span_area]) / sp - 0.5).astype(np.int64)
        c_hi = np.ceil((xi[i_in + 1] - xmin[span_area]) / sp - 0.5).astype(np.int64)
        span, cpos = _ranges(np.maximum(c_hi - c_lo, 0))
        s_area = span_area[span]
        sx = xmin[s_area] + (c_lo[span] + cpos + 0.5) * spacing[s_area]
        sy = ymin[s_area] + (span_row[span] + 0.5) * spacing[s_area]
        s_lat = lat_ref[s_area] + sy / _M_PER_DEG
        s_lon = lon_ref[s_area] + sx / kx[s_area]
        n_samples = np.bincount(s_area, minlength=n_areas)
        cells = self.cells(s_lat, s_lon)
        # Each sample carries an equal share of its area.
        return cells, s_area, area_m2[s_area] / n_samples[s_area], n_samples

    def run(self, path: Path) -> None:
        try:
            _Reader(self).apply_file(
                str(path),
                locations=True,
                # Per-type C++ filters: only objects with a key that can feed a channel of their geometry
                # reach Python (relations only feed the area assembler, which sees them before these).
                filters=[
                    osmium.filter.KeyFilter(*_NODE_KEYS).enable_for(osmium.osm.NODE),
                    osmium.filter.KeyFilter(*_WAY_KEYS).enable_for(osmium.osm.WAY),
                    osmium.filter.KeyFilter(*AREA_KEYS).enable_for(osmium.osm.AREA | osmium.osm.RELATION),
                ],
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


def extract_cells_long(pbf_path: str | Path, level: int, stats: dict | None = None) -> pl.DataFrame:
    """Non-zero channel values per S2 cell at `level`, long form: `cell_id` (UInt64), `channel` (UInt16,
    index into CHANNEL_NAMES), `value` (Float64), sorted by cell then channel.

    Sparse, so it stays small where the wide frame would not (most cells feed few channels). If `stats`
    is given it receives counts of tagged objects and of skipped geometry.
    """
    if not 0 <= level <= MAX_LEVEL:
        # Above 26 (cells < 15 cm) the channel index no longer fits below the cell id's trailing bit.
        raise ValueError(f"extraction level must be within 0..{MAX_LEVEL}, got {level}")
    path = _check_path(pbf_path)
    ex = _Extractor(level)
    try:
        ex.run(path)
    except RuntimeError as e:
        raise OSMFileError(f"{path}: unreadable OSM file ({e})") from e
    if ex.stats["ways_missing_nodes"] or ex.stats["areas_invalid"]:
        log.warning(
            "%s: %d ways with %d missing node locations kept only their located parts; "
            "%d invalid areas skipped",
            path, ex.stats["ways_missing_nodes"], ex.stats["missing_node_refs"], ex.stats["areas_invalid"],
        )
    if stats is not None:
        stats.update(ex.stats)
    return ex.agg.long()


def extract_cells(pbf_path: str | Path, level: int, stats: dict | None = None) -> pl.DataFrame:
    """Channel values per S2 cell at `level` for the PBF at `pbf_path` (see module docstring).

    Returns `cell_id` (UInt64, unique, sorted) then one Float64 column per channel in CHANNEL_NAMES
    order, only cells with some value. `stats` as in `extract_cells_long`.
    """
    return _wide(extract_cells_long(pbf_path, level, stats))
