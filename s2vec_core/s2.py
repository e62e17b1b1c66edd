"""Vectorised S2 cell ids on numpy arrays, bit-identical to s2sphere.

Cell ids are ``uint64`` arrays; every function that takes ids also accepts ``int64`` (the bit pattern
tables store, see :func:`as_int64`). Lat/lng are degrees. Levels are 0..30.

The arithmetic follows s2sphere step by step (degrees -> radians -> xyz -> face/uv -> quadratic st ->
ij -> Hilbert position through the 4-bit lookup table) in float64 with the same operation order, so
``latlng_to_cell_id`` gives exactly s2sphere's ids. ``cell_center`` / ``cell_vertices`` match
s2sphere to the last bit except where numpy's SIMD ``arctan2`` rounds differently from libm (1 ulp).
Tokens are s2sphere's (lowercase hex, trailing zeros stripped) except id 0, which is 'X' as in S2 C++
(s2sphere gives ''). ``cover_bbox`` returns what s2sphere's RegionCoverer does at a fixed level.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
import numpy.typing as npt

MAX_LEVEL = 30
EARTH_RADIUS_M = 6_371_008.8
"""Mean Earth radius (IUGG): the sphere every distance and area in s2vec is measured on."""
MAX_SIZE = 1 << MAX_LEVEL
_POS_BITS = 2 * MAX_LEVEL + 1
_LOOKUP_BITS = 4
_SWAP_MASK = 0x01
_INVERT_MASK = 0x02
_NUM_FACES = 6

_U64 = np.uint64
_ONE = _U64(1)
_VALID_LSB_MASK = _U64(0x1555555555555555)
# Rounding margin s2sphere's Cell.get_rect_bound adds to a cell's lat/lng bound.
_RECT_MAX_ERROR = 1.0 / (1 << 51)
# s2sphere MIN_WIDTH metric (quadratic projection): min cell width at level L is this * 2**-L radians.
_MIN_WIDTH_DERIV = 2.0 * np.sqrt(2.0) / 3.0


def _build_lookup() -> tuple[np.ndarray, np.ndarray]:
    """The (ij, orientation) <-> (Hilbert pos, orientation) tables of s2sphere, for 4-bit blocks."""
    pos_to_ij = ((0, 1, 3, 2), (0, 2, 3, 1), (3, 2, 0, 1), (3, 1, 0, 2))
    pos_to_orientation = (_SWAP_MASK, 0, 0, _INVERT_MASK | _SWAP_MASK)
    size = 1 << (2 * _LOOKUP_BITS + 2)
    lookup_pos = np.zeros(size, dtype=np.int64)
    lookup_ij = np.zeros(size, dtype=np.int64)
    # Built once at import on 4 x 256 entries; iterative form of s2sphere's _init_lookup_cell.
    for orig in range(4):
        stack = [(0, 0, 0, 0, orig)]
        while stack:
            level, i, j, pos, orientation = stack.pop()
            if level == _LOOKUP_BITS:
                ij = (i << _LOOKUP_BITS) + j
                lookup_pos[(ij << 2) + orig] = (pos << 2) + orientation
                lookup_ij[(pos << 2) + orig] = (ij << 2) + orientation
                continue
            r = pos_to_ij[orientation]
            for index in range(4):
                stack.append(
                    (
                        level + 1,
                        (i << 1) + (r[index] >> 1),
                        (j << 1) + (r[index] & 1),
                        (pos << 2) + index,
                        orientation ^ pos_to_orientation[index],
                    )
                )
    return lookup_pos, lookup_ij


_LOOKUP_POS, _LOOKUP_IJ = _build_lookup()


# ----------------------------------------------------------------------------------------------
# input checks


def _check_level(level: object, name: str = "level") -> int:
    if isinstance(level, bool) or not isinstance(level, Integral):
        # ValueError, as for a level out of range: callers catch one error for a bad level.
        raise ValueError(f"{name} must be an integer in 0..{MAX_LEVEL}, got {level!r}")  # noqa: TRY004
    level = int(level)
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"{name} must be in 0..{MAX_LEVEL}, got {level}")
    return level


def as_uint64(ids: npt.ArrayLike) -> np.ndarray:
    """Cell ids as ``uint64`` (an ``int64`` array is reinterpreted bit for bit, not converted)."""
    arr = np.asarray(ids)
    if arr.dtype == np.uint64:
        return arr
    if arr.dtype == np.int64:
        return arr.view(np.uint64)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.uint64)
    if arr.dtype.kind == "i":
        return arr.astype(np.int64).view(np.uint64)
    if arr.dtype.kind == "u" or arr.dtype == object:
        # Python ints (e.g. s2sphere's CellId.id()) up to 2**64 - 1.
        try:
            return arr.astype(np.uint64)
        except (OverflowError, TypeError, ValueError) as exc:
            raise ValueError(f"cell ids must be 64-bit integers: {exc}") from None
    raise ValueError(f"cell ids must be uint64 or int64, got dtype {arr.dtype}")


def as_int64(ids: npt.ArrayLike) -> np.ndarray:
    """Cell ids as ``int64`` with the same bit pattern (how tables store them)."""
    return as_uint64(ids).view(np.int64)


def _valid_ids(ids: npt.ArrayLike) -> np.ndarray:
    arr = as_uint64(ids)
    ok = is_valid(arr)
    if not ok.all():
        bad = arr[~ok]
        raise ValueError(f"{bad.size} invalid S2 cell id(s), e.g. {int(bad.flat[0]):#018x}")
    return arr


# ----------------------------------------------------------------------------------------------
# id bit arithmetic


def _lsb(ids: np.ndarray) -> np.ndarray:
    return ids & (~ids + _ONE)


def _lsb_for_level(level: int) -> np.uint64:
    return _U64(1 << (2 * (MAX_LEVEL - level)))


def is_valid(ids: npt.ArrayLike) -> np.ndarray:
    """True where the id is a valid S2 cell id (face < 6 and the trailing 1 bit at an even position)."""
    arr = as_uint64(ids)
    return ((arr >> _U64(_POS_BITS)) < _NUM_FACES) & ((_lsb(arr) & _VALID_LSB_MASK) != 0)


def _levels(ids: np.ndarray) -> np.ndarray:
    trailing_zeros = np.bitwise_count(_lsb(ids) - _ONE)
    return (MAX_LEVEL - (trailing_zeros >> 1)).astype(np.int64)


def cell_level(ids: npt.ArrayLike) -> np.ndarray:
    """Level (0..30) of each cell id; ValueError on invalid ids."""
    return _levels(_valid_ids(ids)).astype(np.int8)


def _check_not_finer(ids: np.ndarray, level: int, what: str) -> None:
    levels = _levels(ids)
    if (levels < level).any():
        raise ValueError(
            f"{what} at level {level} needs cells at level >= {level}; got cells at level {int(levels.min())}"
        )


def parent(ids: npt.ArrayLike, level: int) -> np.ndarray:
    """Ancestor of each cell at ``level`` (which must be <= every cell's level)."""
    level = _check_level(level)
    arr = _valid_ids(ids)
    _check_not_finer(arr, level, "parent")
    new_lsb = _lsb_for_level(level)
    return (arr & ~(new_lsb - _ONE)) | new_lsb


def children_range(ids: npt.ArrayLike, level: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last (inclusive) descendant ids at ``level`` (>= every cell's level)."""
    level = _check_level(level)
    arr = _valid_ids(ids)
    levels = _levels(arr)
    if (levels > level).any():
        raise ValueError(
            f"children at level {level} need cells at level <= {level}; "
            f"got cells at level {int(levels.max())}"
        )
    lsb = _lsb(arr)
    child_lsb = _lsb_for_level(level)
    return arr - lsb + child_lsb, arr + lsb - child_lsb


# ----------------------------------------------------------------------------------------------
# projection (s2sphere's float order kept on purpose: bit identity depends on it)


def _st_to_uv(s: np.ndarray) -> np.ndarray:
    one_minus = 1 - s
    return np.where(s >= 0.5, (1.0 / 3.0) * (4 * s * s - 1), (1.0 / 3.0) * (1 - 4 * one_minus * one_minus))


def _uv_to_st(u: np.ndarray) -> np.ndarray:
    # For u < 0, 1 - 3*u equals 1 + 3*|u| exactly, so one sqrt serves both branches.
    root = 0.5 * np.sqrt(1 + 3 * np.abs(u))
    return np.where(u >= 0, root, 1 - root)


def _st_to_ij(s: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(MAX_SIZE * s), 0, MAX_SIZE - 1).astype(np.int64)


def _xyz_to_face_uv(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
    ax, ay, az = np.abs(x), np.abs(y), np.abs(z)
    # s2sphere largest_abs_component breaks ties towards z, then y.
    zwin = (az >= ax) & (az >= ay)
    xwin = (ax > ay) & ~zwin
    den = np.where(xwin, x, np.where(zwin, z, y))
    neg = den < 0
    face = np.where(xwin, 0, np.where(zwin, 2, 1)).astype(np.int8) + 3 * neg.astype(np.int8)
    # Numerators per face (s2sphere valid_face_xyz_to_uv); negative faces swap u and v.
    a = np.where(xwin, y, -x)
    b = np.where(zwin, -y, z)
    u = np.where(neg, b, a)
    u /= den
    v = np.where(neg, a, b)
    v /= den
    return face, u, v


def _face_uv_to_xyz(face: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    face = face.astype(np.intp)
    one = np.ones_like(u)
    x = np.choose(face, (one, -u, -u, -one, v, v))
    y = np.choose(face, (u, one, -v, -v, -one, u))
    z = np.choose(face, (v, v, one, -u, -u, -one))
    return x, y, z


def _xyz_to_latlng_deg(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lat = np.arctan2(z, np.sqrt(x * x + y * y))
    lng = np.arctan2(y, x)
    return np.degrees(lat), np.degrees(lng)


def _face_ij_to_leaf(face: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Leaf cell ids from face and leaf (i, j): the Hilbert curve walked 4 bits at a time."""
    face64 = face.astype(np.int64)
    bits = face64 & _SWAP_MASK
    n = face64.astype(np.uint64) << _U64(_POS_BITS - 1)
    for k in range(7, -1, -1):
        shift = k * _LOOKUP_BITS
        bits = bits + (((i >> shift) & 15) << (_LOOKUP_BITS + 2)) + (((j >> shift) & 15) << 2)
        bits = _LOOKUP_POS.take(bits)
        n |= (bits >> 2).astype(np.uint64) << _U64(2 * shift)
        bits = bits & (_SWAP_MASK | _INVERT_MASK)
    return n * _U64(2) + _ONE


def _to_face_ij(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face, leaf i, leaf j) of each id, as s2sphere's to_face_ij_orientation."""
    face = (ids >> _U64(_POS_BITS)).astype(np.int64)
    bits = face & _SWAP_MASK
    i = np.zeros(ids.shape, dtype=np.int64)
    j = np.zeros(ids.shape, dtype=np.int64)
    for k in range(7, -1, -1):
        nbits = MAX_LEVEL - 7 * _LOOKUP_BITS if k == 7 else _LOOKUP_BITS
        chunk = ((ids >> _U64(k * 2 * _LOOKUP_BITS + 1)) & _U64((1 << (2 * nbits)) - 1)).astype(np.int64)
        bits = _LOOKUP_IJ.take(bits + (chunk << 2))
        i += (bits >> (_LOOKUP_BITS + 2)) << (k * _LOOKUP_BITS)
        j += ((bits >> 2) & 15) << (k * _LOOKUP_BITS)
        bits = bits & (_SWAP_MASK | _INVERT_MASK)
    return face, i, j


# ----------------------------------------------------------------------------------------------
# public API


def _latlng_arrays(lat: npt.ArrayLike, lng: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    lat_a = np.asarray(lat, dtype=np.float64)
    lng_a = np.asarray(lng, dtype=np.float64)
    if lat_a.shape != lng_a.shape:
        raise ValueError(f"lat and lng shapes differ: {lat_a.shape} vs {lng_a.shape}")
    finite = np.isfinite(lat_a) & np.isfinite(lng_a)
    if not finite.all():
        raise ValueError(f"{int((~finite).sum())} non-finite lat/lng value(s)")
    if (np.abs(lat_a) > 90).any():
        raise ValueError(f"latitude outside [-90, 90]: e.g. {lat_a[np.abs(lat_a) > 90].flat[0]}")
    if (np.abs(lng_a) > 180).any():
        raise ValueError(f"longitude outside [-180, 180]: e.g. {lng_a[np.abs(lng_a) > 180].flat[0]}")
    return lat_a, lng_a


def _latlng_to_face_uv(lat: np.ndarray, lng: np.ndarray) -> tuple[np.ndarray, ...]:
    phi = np.radians(lat)
    theta = np.radians(lng)
    cosphi = np.cos(phi)
    return _xyz_to_face_uv(np.cos(theta) * cosphi, np.sin(theta) * cosphi, np.sin(phi))


def _leaf_ids(lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
    face, u, v = _latlng_to_face_uv(lat, lng)
    return _face_ij_to_leaf(face, _st_to_ij(_uv_to_st(u)), _st_to_ij(_uv_to_st(v)))


def latlng_to_cell_id(lat: npt.ArrayLike, lng: npt.ArrayLike, level: int = MAX_LEVEL) -> np.ndarray:
    """Cell id at ``level`` containing each (lat, lng) in degrees; same as s2sphere
    ``CellId.from_lat_lng(LatLng.from_degrees(lat, lng)).parent(level)``."""
    level = _check_level(level)
    lat_a, lng_a = _latlng_arrays(lat, lng)
    leaf = _leaf_ids(lat_a, lng_a)
    if level == MAX_LEVEL:
        return leaf
    new_lsb = _lsb_for_level(level)
    return (leaf & ~(new_lsb - _ONE)) | new_lsb


def latlng_to_face_xy(lat: npt.ArrayLike, lng: npt.ArrayLike, level: int) -> tuple[np.ndarray, ...]:
    """(face int8, x, y float64): each point's face and continuous position in that face's
    2**level x 2**level cell grid, so the cell holding it is (floor(x), floor(y)) (see
    `face_ij_to_cell_id`). Straight lines in (x, y) are how geometry is cut along cell edges."""
    level = _check_level(level)
    face, u, v = _latlng_to_face_uv(*_latlng_arrays(lat, lng))
    # Scaling by a power of two is exact: floor(x) is the leaf i shifted down, as latlng_to_cell_id.
    scale = float(1 << level)
    return face, _uv_to_st(u) * scale, _uv_to_st(v) * scale


def face_ij_to_cell_id(face: npt.ArrayLike, i: npt.ArrayLike, j: npt.ArrayLike, level: int) -> np.ndarray:
    """Cell ids at `level` of cells (i, j) in their face's 2**level grid; i and j are clipped to it."""
    level = _check_level(level)
    size = 1 << level
    face_a = np.asarray(face, dtype=np.int64)
    if face_a.size and (face_a.min() < 0 or face_a.max() >= _NUM_FACES):
        raise ValueError("face must be within 0..5")
    shift = MAX_LEVEL - level
    i_a = np.clip(np.asarray(i, dtype=np.int64), 0, size - 1) << shift
    j_a = np.clip(np.asarray(j, dtype=np.int64), 0, size - 1) << shift
    leaf = _face_ij_to_leaf(face_a, i_a, j_a)
    if level == MAX_LEVEL:
        return leaf
    new_lsb = _lsb_for_level(level)
    return (leaf & ~(new_lsb - _ONE)) | new_lsb


def face_ij(ids: npt.ArrayLike, level: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face int8, i int64, j int64) of each cell in the face's 2**level x 2**level grid.

    ``level`` defaults to each cell's own level and must not exceed it."""
    arr = _valid_ids(ids)
    if level is None:
        levels = _levels(arr)
    else:
        level = _check_level(level)
        _check_not_finer(arr, level, "face_ij")
        levels = level
    face, i, j = _to_face_ij(arr)
    shift = MAX_LEVEL - levels
    return face.astype(np.int8), i >> shift, j >> shift


def grid_window(ids: npt.ArrayLike, level: int, start: int, size: int) -> np.ndarray:
    """uint64[n, size, size]: the cells at `level` of a square window on each cell's face grid.

    Cell (i0, j0) at its own level L spans `2**(level - L)` cells of `level` per side from
    (i0, j0) * 2**(level - L); window entry [a, b] is the cell at offset (start + a, start + b) from
    that corner. `start=0, size=2**(level - L)` are the cell's own children in face (i, j) order (an
    image); a negative `start` reaches into the neighbours, so `grid_window(ids, L, -r, 2 * r + 1)` is
    each cell with `r` rings around it. Offsets past the face edge take the cell at that place on the
    sphere: the window's continuous face coordinates (the quadratic st->uv extended beyond the face)
    projected onto the neighbouring face. Grid lines bend there, so a cell may repeat or be skipped near
    cube corners, as on any flat map of the cube.
    """
    arr = _valid_ids(ids)
    level = _check_level(level)
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    own = _levels(arr)
    if arr.size and (own > level).any():
        raise ValueError(f"grid_window: cells must be at or above level {level}")
    face, i, j = _to_face_ij(arr)
    shift = MAX_LEVEL - level
    i0 = (i >> shift) & -(np.int64(1) << (level - own))
    j0 = (j >> shift) & -(np.int64(1) << (level - own))
    offsets = start + np.arange(size, dtype=np.int64)
    wi = np.broadcast_to(i0[:, None, None] + offsets[None, :, None], (arr.size, size, size))
    wj = np.broadcast_to(j0[:, None, None] + offsets[None, None, :], (arr.size, size, size))
    wface = np.broadcast_to(face[:, None, None], wi.shape)
    n = 1 << level
    inside = (wi >= 0) & (wi < n) & (wj >= 0) & (wj < n)
    out = np.empty(wi.shape, dtype=np.uint64)
    out[inside] = face_ij_to_cell_id(wface[inside], wi[inside], wj[inside], level)
    if not inside.all():
        scale = 1.0 / n
        u = _st_to_uv((wi[~inside] + 0.5) * scale)
        v = _st_to_uv((wj[~inside] + 0.5) * scale)
        x, y, z = _face_uv_to_xyz(wface[~inside], u, v)
        f2, u2, v2 = _xyz_to_face_uv(x, y, z)
        out[~inside] = face_ij_to_cell_id(f2, np.floor(_uv_to_st(u2) * n), np.floor(_uv_to_st(v2) * n), level)
    return out


def cell_center(ids: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lng) in degrees of each cell's centre, as s2sphere ``CellId.to_lat_lng()``."""
    arr = _valid_ids(ids)
    face, i, j = _to_face_ij(arr)
    # s2sphere get_center_si_ti: the decoded leaf is a corner-adjacent leaf; delta moves to the centre.
    leaf = (arr & _ONE) != 0
    odd = ((i ^ (arr >> _U64(2)).astype(np.int64)) & 1) != 0
    delta = np.where(leaf, 1, np.where(odd, 2, 0))
    scale = 0.5 / MAX_SIZE
    u = _st_to_uv(scale * (2 * i + delta))
    v = _st_to_uv(scale * (2 * j + delta))
    return _xyz_to_latlng_deg(*_face_uv_to_xyz(face, u, v))


def _cell_uv_bounds(ids: np.ndarray) -> tuple[np.ndarray, ...]:
    face, i, j = _to_face_ij(ids)
    size = np.left_shift(1, MAX_LEVEL - _levels(ids))
    scale = 1.0 / MAX_SIZE
    i_lo = i & -size
    j_lo = j & -size
    return (
        face,
        _st_to_uv(scale * i_lo),
        _st_to_uv(scale * (i_lo + size)),
        _st_to_uv(scale * j_lo),
        _st_to_uv(scale * (j_lo + size)),
    )


def cell_vertices(ids: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(lat[n, 4], lng[n, 4]) in degrees of each cell's corners, in s2sphere
    ``Cell.get_vertex(0..3)`` order (counter-clockwise)."""
    arr = _valid_ids(ids)
    face, u0, u1, v0, v1 = _cell_uv_bounds(arr)
    us = np.stack([u0, u1, u1, u0], axis=-1)
    vs = np.stack([v0, v0, v1, v1], axis=-1)
    x, y, z = _face_uv_to_xyz(np.broadcast_to(face[..., None], us.shape), us, vs)
    norm = np.sqrt(x * x + y * y + z * z)
    inv = 1.0 / norm
    return _xyz_to_latlng_deg(x * inv, y * inv, z * inv)


# ----------------------------------------------------------------------------------------------
# tokens

_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _value, _char in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_char] = _value
    _HEX_VALUE[bytes([_char]).upper()[0]] = _value
del _value, _char
_NIBBLE_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)


def to_token(ids: npt.ArrayLike) -> np.ndarray:
    """Token strings: 16-digit lowercase hex with trailing zeros stripped ('X' for id 0, as S2 C++).

    A pure format conversion: any 64-bit value has a token, valid cell or not."""
    arr = as_uint64(ids)
    nibbles = ((arr[..., None] >> _NIBBLE_SHIFTS) & _U64(15)).astype(np.uint8)
    raw = np.ascontiguousarray(_HEX_DIGITS[nibbles]).view("S16")[..., 0]
    tokens = np.strings.rstrip(raw, b"0").astype(np.str_)
    return np.where(tokens == "", "X", tokens)


def from_token(tokens: npt.ArrayLike) -> np.ndarray:
    """Cell ids from tokens (hex, 1-16 digits, right-padded with zeros; 'X' is id 0)."""
    arr = np.asarray(tokens)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.uint64)
    if arr.dtype.kind not in "US" and arr.dtype != object:
        raise ValueError(f"tokens must be strings, got dtype {arr.dtype}")
    try:
        raw = arr.astype("S17")
    except (UnicodeEncodeError, ValueError, TypeError):
        raise ValueError("tokens must be ASCII hex strings") from None
    lengths = np.strings.str_len(raw)  # 17 means longer than 16: astype truncated it
    if (lengths == 0).any() or (lengths > 16).any():
        raise ValueError("tokens must have 1 to 16 hex digits")
    is_zero = (raw == b"X") | (raw == b"x")
    padded = np.strings.ljust(np.where(is_zero, b"0", raw), 16, b"0").astype("S16")
    values = _HEX_VALUE[np.ascontiguousarray(padded).view(np.uint8).reshape(*arr.shape, 16)]
    if (values == 255).any():
        bad = arr[(values == 255).any(axis=-1)]
        raise ValueError(f"{bad.size} token(s) are not hex, e.g. {bad.flat[0]!r}")
    return (values.astype(np.uint64) << _NIBBLE_SHIFTS).sum(axis=-1, dtype=np.uint64)


# ----------------------------------------------------------------------------------------------
# bbox cover

# Rows of samples handled per step, so a large bbox never holds more than a few million samples.
_COVER_CHUNK_SAMPLES = 2_000_000
# About 10 samples per cell: this refuses covers beyond ~100M cells (minutes of work, GBs of ids).
_COVER_MAX_SAMPLES = 1_000_000_000


def _face_ij_wrap_leaf(face: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Leaf ids for leaf (i, j) that may lie one step beyond the face (s2sphere from_face_ij_wrap)."""
    inside = (i >= 0) & (i < MAX_SIZE) & (j >= 0) & (j < MAX_SIZE)
    ic = np.clip(i, -1, MAX_SIZE)
    jc = np.clip(j, -1, MAX_SIZE)
    scale = 1.0 / MAX_SIZE
    # Linear st<->uv as s2sphere: only needs to land in the right leaf next to the edge.
    x, y, z = _face_uv_to_xyz(face, scale * ((ic << 1) + 1 - MAX_SIZE), scale * ((jc << 1) + 1 - MAX_SIZE))
    wface, u, v = _xyz_to_face_uv(x, y, z)
    return _face_ij_to_leaf(
        np.where(inside, face, wface),
        np.where(inside, i, _st_to_ij(0.5 * (u + 1))),
        np.where(inside, j, _st_to_ij(0.5 * (v + 1))),
    )


def _with_neighbours(ids: np.ndarray, level: int) -> np.ndarray:
    """The cells plus their 8 edge/vertex neighbours at ``level`` (fewer at cube corners), unique."""
    face, i, j = _to_face_ij(ids)
    size = 1 << (MAX_LEVEL - level)
    i_lo, j_lo = i & -size, j & -size
    d = np.array([-size, 0, size])
    di, dj = np.meshgrid(d, d, indexing="ij")
    leaf = _face_ij_wrap_leaf(
        np.repeat(face, 9), (i_lo[:, None] + di.ravel()).ravel(), (j_lo[:, None] + dj.ravel()).ravel()
    )
    lsb = _lsb_for_level(level)
    return np.unique((leaf & ~(lsb - _ONE)) | lsb)


def _interval_intersects_lng(lo: np.ndarray, hi: np.ndarray, b_lo: float, b_hi: float) -> np.ndarray:
    """s2sphere SphereInterval.intersects(bbox lng, cell lng) for arrays of cell intervals."""
    cell_inv = lo > hi
    if b_lo > b_hi:
        return cell_inv | (lo <= b_hi) | (hi >= b_lo)
    return np.where(cell_inv, (lo <= b_hi) | (hi >= b_lo), (lo <= b_hi) & (hi >= b_lo))


def _rect_bound(ids: np.ndarray, level: int) -> tuple[np.ndarray, ...]:
    """(lat_lo, lat_hi, lng_lo, lng_hi) radians per cell, as s2sphere Cell.get_rect_bound."""
    half_pi = np.pi / 2
    if level == 0:
        face = (ids >> _U64(_POS_BITS)).astype(np.intp)
        pole = math.asin(math.sqrt(1.0 / 3.0))
        q = np.pi / 4
        lat_lo = np.array([-q, -q, pole, -q, -q, -half_pi])[face]
        lat_hi = np.array([q, q, half_pi, q, q, -pole])[face]
        lng_lo = np.array([-q, q, -np.pi, 3 * q, -3 * q, -np.pi])[face]
        lng_hi = np.array([q, 3 * q, np.pi, -3 * q, -q, np.pi])[face]
        return lat_lo, lat_hi, lng_lo, lng_hi
    face, u0, u1, v0, v1 = _cell_uv_bounds(ids)
    u_sum, v_sum = u0 + u1, v0 + v1
    # Faces whose u (v) axis has no z component pick the corner by the opposite sign.
    u_flat = np.isin(face, (0, 1, 2, 5))
    v_flat = np.isin(face, (2, 3, 4, 5))
    i = np.where(u_flat, u_sum < 0, u_sum > 0)
    j = np.where(v_flat, v_sum < 0, v_sum > 0)

    def corner(ci: np.ndarray, cj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y, z = _face_uv_to_xyz(face, np.where(ci, u1, u0), np.where(cj, v1, v0))
        return np.arctan2(z, np.sqrt(x * x + y * y)), np.arctan2(y, x)

    lat_a, _ = corner(i, j)
    lat_b, _ = corner(~i, ~j)
    _, lng_a = corner(i, ~j)
    _, lng_b = corner(~i, j)
    lat_lo = np.maximum(np.minimum(lat_a, lat_b) - _RECT_MAX_ERROR, -half_pi)
    lat_hi = np.minimum(np.maximum(lat_a, lat_b) + _RECT_MAX_ERROR, half_pi)
    lng_a = np.where(lng_a == -np.pi, np.pi, lng_a)
    lng_b = np.where(lng_b == -np.pi, np.pi, lng_b)
    dist = lng_b - lng_a
    dist = np.where(dist >= 0, dist, (lng_b + np.pi) - (lng_a - np.pi))
    lng_lo = np.where(dist <= np.pi, lng_a, lng_b) - _RECT_MAX_ERROR
    lng_hi = np.where(dist <= np.pi, lng_b, lng_a) + _RECT_MAX_ERROR
    lng_lo = np.where(lng_lo < -np.pi, lng_lo + 2 * np.pi, lng_lo)
    lng_lo = np.where(lng_lo <= -np.pi, np.pi, lng_lo)
    lng_hi = np.where(lng_hi > np.pi, lng_hi - 2 * np.pi, lng_hi)
    full = (lat_lo == -half_pi) | (lat_hi == half_pi)
    return lat_lo, lat_hi, np.where(full, -np.pi, lng_lo), np.where(full, np.pi, lng_hi)


def _sample_rows(
    lat_lo: float, lat_hi: float, lng_lo: float, lng_hi: float, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """Row latitudes and per-row sample counts so no bbox point is further than ~step from a sample."""
    n_rows = math.ceil((lat_hi - lat_lo) / step) + 1
    rows = np.linspace(lat_lo, lat_hi, n_rows)
    # Widest parallel within half a row of this row sets the longitude spacing.
    cos_max = np.cos(np.clip(np.abs(rows) - step, 0.0, np.pi / 2))
    counts = np.ceil((lng_hi - lng_lo) * cos_max / step).astype(np.int64) + 1
    return rows, counts


def cover_bbox(lat_min: float, lng_min: float, lat_max: float, lng_max: float, level: int) -> np.ndarray:
    """Sorted ids of the cells at ``level`` touching the lat/lng box (degrees, edges included).

    ``lng_min > lng_max`` means the box crosses the antimeridian. The result is the set s2sphere's
    ``RegionCoverer`` (min_level = max_level = level) returns for the same ``LatLngRect``: cells whose
    lat/lng bound meets the box. That is a superset of the cells containing a point of the box, and may
    hold a few cells next to it whose bound, not the cell, touches the box.

    Method: sample the box at spacing below half the minimum cell width (so every cell meeting the box
    is the sample cell or one of its 8 neighbours, across faces too), add neighbours, then keep cells
    whose bound intersects the box.
    """
    level = _check_level(level)
    box = np.array([lat_min, lng_min, lat_max, lng_max], dtype=np.float64)
    if not np.isfinite(box).all():
        raise ValueError(f"bbox must be finite, got {box.tolist()}")
    if not (-90 <= lat_min <= lat_max <= 90):
        raise ValueError(f"need -90 <= lat_min <= lat_max <= 90, got {lat_min}, {lat_max}")
    if not (-180 <= lng_min <= 180 and -180 <= lng_max <= 180):
        raise ValueError(f"longitudes must be in [-180, 180], got {lng_min}, {lng_max}")
    b_lat_lo, b_lng_lo, b_lat_hi, b_lng_hi = np.radians(box)
    # s2sphere SphereInterval clamping: -pi stands for +pi unless the interval is full.
    b_lng_lo, b_lng_hi = (
        np.pi if b_lng_lo == -np.pi and b_lng_hi != np.pi else b_lng_lo,
        np.pi if b_lng_hi == -np.pi and b_lng_lo != np.pi else b_lng_hi,
    )
    wraps = b_lng_lo > b_lng_hi
    spans = [(b_lng_lo, np.pi), (-np.pi, b_lng_hi)] if wraps else [(b_lng_lo, b_lng_hi)]

    step = _MIN_WIDTH_DERIV * 2.0**-level / 2.5
    sampling = [(*_sample_rows(b_lat_lo, b_lat_hi, lo, hi, step), lo, hi) for lo, hi in spans]
    n_samples = sum(int(counts.sum()) for _, counts, _, _ in sampling)
    if n_samples > _COVER_MAX_SAMPLES:
        raise ValueError(
            f"bbox too large for level {level}: ~{n_samples // 10:,} cells; "
            "use a coarser level or a smaller bbox"
        )
    found: list[np.ndarray] = []
    for rows, counts, lng_lo, lng_hi in sampling:
        bounds = np.concatenate([[0], np.cumsum(counts)])
        start = 0
        while start < rows.size:
            stop = int(np.searchsorted(bounds, bounds[start] + _COVER_CHUNK_SAMPLES, side="right")) - 1
            stop = max(stop, start + 1)
            n = counts[start:stop]
            lat = np.repeat(rows[start:stop], n)
            # Position of each sample within its row, from 0 to 1 inclusive.
            k = np.arange(lat.size) - np.repeat(bounds[start:stop] - bounds[start], n)
            frac = k / np.maximum(np.repeat(n, n) - 1, 1)
            lng = lng_lo + (lng_hi - lng_lo) * frac
            ids = np.unique(
                latlng_to_cell_id(np.degrees(lat).clip(-90, 90), np.degrees(lng).clip(-180, 180), level)
            )
            found.append(_with_neighbours(ids, level))
            start = stop
    cand = np.unique(np.concatenate(found))
    c_lat_lo, c_lat_hi, c_lng_lo, c_lng_hi = _rect_bound(cand, level)
    keep = (c_lat_lo <= b_lat_hi) & (c_lat_hi >= b_lat_lo)
    keep &= _interval_intersects_lng(c_lng_lo, c_lng_hi, b_lng_lo, b_lng_hi)
    return cand[keep]
