"""Little-endian WKB (as pyosmium's WKBFactory writes it, hex-encoded) <-> flat numpy arrays.

Decoding is vectorised over a whole chunk of objects: one `bytes.fromhex` and fancy indexing instead
of a struct call per point."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from s2vec_core.osm.ragged import ranges

# Hex characters before the first point: a linestring has byte order, type and point count (9 bytes);
# a multipolygon has its 9-byte header, the first polygon's 9-byte header and the first ring's 4-byte
# point count (22 bytes).
LINE_FIRST_POINT = 18
POLYGON_FIRST_POINT = 44


def first_points(hexes: list[str], offset: int) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) of the first point of each hex WKB geometry whose first point is at hex `offset`."""
    xy = np.frombuffer(bytes.fromhex("".join(h[offset : offset + 32] for h in hexes)), "<f8")
    return xy[0::2], xy[1::2]


def linestring(points: list[tuple[float, float]]) -> str:
    """Hex WKB of a linestring through (lon, lat) `points`, as pyosmium would write it."""
    return (struct.pack("<BII", 1, 2, len(points)) + np.array(points, "<f8").tobytes()).hex()


@dataclass(frozen=True)
class Lines:
    """Linestrings as flat arrays: every point's lon, lat and line (index into the input), in order."""

    lon: np.ndarray
    lat: np.ndarray
    line: np.ndarray


@dataclass(frozen=True)
class Polygons:
    """`n` multipolygons as flat arrays. Per point: lon, lat, ring, and the multipolygon it belongs to
    (`point_area`, index into the input); points are grouped by ring and rings by multipolygon, in
    input order. Per ring: its multipolygon (`ring_area`) and whether it is an outer ring."""

    n: int
    lon: np.ndarray
    lat: np.ndarray
    ring: np.ndarray
    point_area: np.ndarray
    ring_area: np.ndarray
    ring_outer: np.ndarray

    @cached_property
    def first(self) -> np.ndarray:
        """Index of each multipolygon's first point (of its first outer ring)."""
        return np.searchsorted(self.point_area, np.arange(self.n))


def decode_lines(hexes: list[str]) -> Lines:
    """Hex WKB linestrings -> their points."""
    buf = np.frombuffer(bytes.fromhex("".join(hexes)), np.uint8)
    nbytes = np.fromiter(map(len, hexes), np.int64, len(hexes)) // 2
    start = np.cumsum(nbytes) - nbytes
    keep = np.ones(buf.size, bool)
    keep[(start[:, None] + np.arange(9)).ravel()] = False
    xy = buf[keep].view("<f8").reshape(-1, 2)
    line = np.repeat(np.arange(len(hexes)), (nbytes - 9) // 16)
    return Lines(xy[:, 0], xy[:, 1], line)


def decode_polygons(hexes: list[str]) -> Polygons:
    """Hex WKB multipolygons -> their rings' points (rings in WKB order: each polygon's outer ring,
    then its holes)."""
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
    ring, pos = ranges(ring_npts)
    byte_idx = (ring_pt_start[ring] + 16 * pos)[:, None] + np.arange(16)
    xy = buf[byte_idx.ravel()].view("<f8").reshape(-1, 2)
    return Polygons(len(hexes), xy[:, 0], xy[:, 1], ring, ring_area[ring], ring_area, ring_outer)
