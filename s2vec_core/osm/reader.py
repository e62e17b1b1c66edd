"""Reading PBFs with pyosmium: file checks, header and counts, and the per-object callbacks of extraction.

The osm package's only module that touches pyosmium objects. The callbacks are extraction's one
per-object Python, so they read tags through pyosmium's private C++ accessors (`_pyosmium_data`),
fenced here: a pyosmium upgrade that moves them breaks this module only."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import osmium

from s2vec_core.catalog import sha256_file
from s2vec_core.osm import wkb
from s2vec_core.taxonomy import AREA_KEYS, AREA_LOOKUP, NEGATIVE_VALUES, NODE_LOOKUP, WAY_LOOKUP, WILDCARD

# Chunk sizes: how many buffered objects trigger a flush into the sink.
FLUSH_POINTS = 100_000
FLUSH_LINES = 10_000
FLUSH_AREAS = 10_000


class OSMFileError(ValueError):
    """A missing, truncated or corrupt OSM file; the message names the file."""


def check_path(pbf_path: str | Path) -> Path:
    """`pbf_path` as a Path, checked before pyosmium opens it: its errors do not name the file."""
    path = Path(pbf_path)
    if not path.is_file():
        raise OSMFileError(f"{path}: no such OSM file")
    if path.stat().st_size == 0:
        raise OSMFileError(f"{path}: empty OSM file")
    return path


def _header(path: Path) -> osmium.io.Header:
    try:
        reader = osmium.io.Reader(str(path), osmium.osm.NOTHING)
        header = reader.header()
        reader.close()
    except RuntimeError as e:
        raise OSMFileError(f"{path}: unreadable OSM file ({e})") from e
    return header


def _bbox(box: osmium.osm.Box) -> tuple[float, float, float, float] | None:
    if not box.valid():
        return None
    return (box.bottom_left.lon, box.bottom_left.lat, box.top_right.lon, box.top_right.lat)


def header_bbox(pbf_path: str | Path) -> tuple[float, float, float, float] | None:
    """The bbox (lon_min, lat_min, lon_max, lat_max) the file's header declares; None if it has none.
    Only the header is read, so it is free on any size of file."""
    return _bbox(_header(check_path(pbf_path)).box())


def pbf_info(pbf_path: str | Path) -> dict:
    """sha256, size, bbox (header, else computed from nodes), object counts and replication timestamp."""
    path = check_path(pbf_path)
    sha = sha256_file(path)

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

    header = _header(path)
    bbox = _bbox(header.box())
    need_box = bbox is None
    counter = _Count()
    try:
        counter.apply_file(str(path))
    except RuntimeError as e:
        raise OSMFileError(f"{path}: unreadable OSM file ({e})") from e
    if need_box:
        bbox = tuple(counter.box) if counter.n else None
    return {
        "path": str(path),
        "sha256": sha,
        "size_bytes": path.stat().st_size,
        "bbox": bbox,  # (lon_min, lat_min, lon_max, lat_max)
        "nodes": counter.n,
        "ways": counter.w,
        "relations": counter.r,
        "replication_timestamp": header.get("osmosis_replication_timestamp") or None,
    }


# Keys in the order tags are probed: the most frequent first, so the early exit in `channels` (all of
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


NODE_TABLE = _key_table(NODE_LOOKUP)
WAY_TABLE = _key_table(WAY_LOOKUP)
AREA_TABLE = _key_table(AREA_LOOKUP)
NODE_KEYS = tuple(k for k, _, _ in NODE_TABLE)
WAY_KEYS = tuple(k for k, _, _ in WAY_TABLE)


def channels(obj, table) -> tuple[int, ...]:
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


class ChunkSink(Protocol):
    """Where full chunks go (the extractor): each call hands over the lists, which are not reused."""

    def points(self, lons: list[float], lats: list[float], chans: list[int]) -> None: ...

    def lines(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None: ...

    def areas(self, hexes: list[str], chans: list[tuple[int, ...]]) -> None: ...


class Chunks:
    """The readers' buffers of matched objects and the counts of what they met.

    Points are buffered one row per (point, channel); lines and areas as hex WKB (made in C++) with
    their channels. Plain lists, appended to straight from the callbacks: a method call per object
    would cost as much as the tag matching."""

    def __init__(self, sink: ChunkSink) -> None:
        self.sink = sink
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

    def flush_points(self) -> None:
        if self.p_ch:
            self.sink.points(self.p_lon, self.p_lat, self.p_ch)
        self.p_lon, self.p_lat, self.p_ch = [], [], []

    def flush_lines(self) -> None:
        if self.l_wkb:
            self.sink.lines(self.l_wkb, self.l_ch)
        self.l_wkb, self.l_ch = [], []

    def flush_areas(self) -> None:
        if self.a_wkb:
            self.sink.areas(self.a_wkb, self.a_ch)
        self.a_wkb, self.a_ch = [], []

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
                self.l_wkb.append(wkb.linestring(run))
                self.l_ch.append(chans)


class _ReaderBase(osmium.SimpleHandler):
    """pyosmium callbacks: match tags and append to the buffers (the only per-object Python).
    pyosmium reads a file once per handler and assembles areas only if the handler has `area`, so the
    geometry kinds a pass handles are chosen by class: `_PointLineReader`, `_AreaReader` or both."""

    def __init__(self, chunks: Chunks) -> None:
        super().__init__()
        self.chunks = chunks
        self.fab = osmium.geom.WKBFactory()


class _PointLineReader(_ReaderBase):
    def node(self, n) -> None:
        chans = channels(n, NODE_TABLE)
        if not chans:
            return
        c = self.chunks
        loc = n.location
        k = len(chans)
        c.p_lon.extend((loc.lon,) * k)
        c.p_lat.extend((loc.lat,) * k)
        c.p_ch.extend(chans)
        c.stats["tagged_nodes"] += 1
        if len(c.p_ch) >= FLUSH_POINTS:
            c.flush_points()

    def way(self, w) -> None:
        chans = channels(w, WAY_TABLE)
        if not chans:
            return
        c = self.chunks
        if w._pyosmium_data.tags_get_value_by_key("area", None) == "yes" and w.is_closed():
            c.stats["ways_skipped"] += 1
            return
        try:
            c.l_wkb.append(self.fab.create_linestring(w))
            c.l_ch.append(chans)
        except (osmium.InvalidLocationError, RuntimeError):
            c.partial_way(w, chans)
        c.stats["tagged_ways"] += 1
        if len(c.l_wkb) >= FLUSH_LINES:
            c.flush_lines()


class _AreaReader(_ReaderBase):
    def area(self, a) -> None:
        chans = channels(a, AREA_TABLE)
        if not chans:
            return
        c = self.chunks
        try:
            c.a_wkb.append(self.fab.create_multipolygon(a))
            c.a_ch.append(chans)
            c.stats["tagged_areas"] += 1
        except (osmium.InvalidLocationError, RuntimeError):
            c.stats["areas_invalid"] += 1
        if len(c.a_wkb) >= FLUSH_AREAS:
            c.flush_areas()


class _Reader(_PointLineReader, _AreaReader):
    pass


_READERS: dict[str, Callable[[Chunks], _ReaderBase]] = {
    "all": _Reader,
    "points_lines": _PointLineReader,
    "areas": _AreaReader,
}
PARTS = tuple(_READERS)


def read(path: Path, part: str, chunks: Chunks) -> None:
    """Read the file into `chunks` with the reader for `part` (one of PARTS), then flush them.
    pyosmium's RuntimeError on a bad file propagates."""
    # Per-type C++ filters: only objects with a key that can feed a channel of their geometry
    # reach Python (relations only feed the area assembler, which sees them before these).
    filters = {
        "points_lines": [
            osmium.filter.KeyFilter(*NODE_KEYS).enable_for(osmium.osm.NODE),
            osmium.filter.KeyFilter(*WAY_KEYS).enable_for(osmium.osm.WAY),
        ],
        "areas": [osmium.filter.KeyFilter(*AREA_KEYS).enable_for(osmium.osm.AREA | osmium.osm.RELATION)],
    }
    _READERS[part](chunks).apply_file(
        str(path),
        locations=True,
        filters=[f for k, fs in filters.items() if part in ("all", k) for f in fs],
    )
    chunks.flush_points()
    chunks.flush_lines()
    chunks.flush_areas()
