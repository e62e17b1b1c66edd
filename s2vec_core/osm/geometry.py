"""Vectorised geometry kernels: lengths, areas and centroids, and cutting geometry into S2 cells.

Two planes are used: the face grid of `latlng_to_face_xy` (cells are unit squares there, so cutting
is exact) and local equirectangular metres around each area (for areas and centroids, and for the
rare geometry over a cube-face edge, which no single face grid holds)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from s2vec_core.osm.ragged import ranges
from s2vec_core.osm.wkb import Lines, Polygons
from s2vec_core.s2 import EARTH_RADIUS_M, face_ij_to_cell_id, latlng_to_cell_id, latlng_to_face_xy

M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
# Smallest S2 cell edge at level L is S2_MIN_EDGE / 2**L radians (quadratic projection).
S2_MIN_EDGE = 2.0 * math.sqrt(2.0) / 3.0
# Pieces / samples per smallest cell edge: finer than the cell so the split follows cell boundaries.
SAMPLES_PER_EDGE = 2
# Scanline rows per cell row when spreading an area over the cells it covers.
SUBROWS = 2
# One polygon never yields more (row, cell) pieces than about this (a huge one gets sparser rows).
MAX_PIECES_PER_AREA = 2_000_000


def piece_length_m(level: int) -> float:
    """Length of line pieces and spacing of area samples at `level`: half the smallest cell edge."""
    return S2_MIN_EDGE / (1 << level) * EARTH_RADIUS_M / SAMPLES_PER_EDGE


def haversine_m(lat0, lon0, lat1, lon1) -> np.ndarray:
    p0, p1 = np.radians(lat0), np.radians(lat1)
    dlat = p1 - p0
    dlon = np.radians(lon1 - lon0)
    h = np.sin(dlat / 2) ** 2 + np.cos(p0) * np.cos(p1) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(h, 1.0)))


def wrap_deg(d: np.ndarray) -> np.ndarray:
    """Longitude differences into [-180, 180)."""
    return (d + 180.0) % 360.0 - 180.0


def cells_at(lat: np.ndarray, lon: np.ndarray, level: int) -> np.ndarray:
    # Interpolated points and samples near the antimeridian may step past +-180.
    return latlng_to_cell_id(lat, wrap_deg(lon), level)


@dataclass(frozen=True)
class GridPoints:
    """Points on the face grid of `level` (`latlng_to_face_xy`): cube face, x and y in cell units."""

    face: np.ndarray
    x: np.ndarray
    y: np.ndarray
    level: int

    @classmethod
    def at(cls, lat: np.ndarray, lon: np.ndarray, level: int) -> GridPoints:
        face, x, y = latlng_to_face_xy(lat, lon, level)
        return cls(face, x, y, level)

    def take(self, idx: np.ndarray) -> GridPoints:
        return GridPoints(self.face[idx], self.x[idx], self.y[idx], self.level)


@dataclass(frozen=True)
class Pieces:
    """Geometry cut into cells: per piece the object it came from (a segment or an area, by index),
    its cell, and its value (a fraction of the segment, or m2 of the area)."""

    owner: np.ndarray
    cell: np.ndarray
    value: np.ndarray


@dataclass(frozen=True)
class Box:
    """Per area, the bounds of its points in one plane."""

    x_lo: np.ndarray
    x_hi: np.ndarray
    y_lo: np.ndarray
    y_hi: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, polys: Polygons) -> Box:
        box = np.empty((4, polys.n))
        box[0::2] = np.inf
        box[1::2] = -np.inf
        for k, a in enumerate((x, y)):
            np.minimum.at(box[2 * k], polys.point_area, a)
            np.maximum.at(box[2 * k + 1], polys.point_area, a)
        return cls(*box)


@dataclass(frozen=True)
class Edges:
    """Ring edges (x0, y0) -> (x1, y1) in one plane, with the area each belongs to."""

    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    area: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, polys: Polygons, wanted: np.ndarray) -> Edges:
        """The edges of the `wanted` areas, given their points' coordinates `x`, `y`."""
        pa = polys.point_area
        same = (polys.ring[1:] == polys.ring[:-1]) & wanted[pa[:-1]]
        return cls(x[:-1][same], y[:-1][same], x[1:][same], y[1:][same], pa[:-1][same])


@dataclass(frozen=True)
class Spans:
    """Scanline spans inside areas: per span its area, row, and x where the row enters and exits."""

    area: np.ndarray
    row: np.ndarray
    x_enter: np.ndarray
    x_exit: np.ndarray


@dataclass(frozen=True)
class Local:
    """Local equirectangular metres around each area's first point: equal-area enough at area scale.
    `x`, `y` per point; the frame (`lon_ref`, `lat_ref`, `kx` metres per degree of longitude) per area."""

    x: np.ndarray
    y: np.ndarray
    lon_ref: np.ndarray
    lat_ref: np.ndarray
    kx: np.ndarray

    @classmethod
    def of(cls, polys: Polygons) -> Local:
        first = polys.first
        lon_ref, lat_ref = polys.lon[first], polys.lat[first]
        kx = np.cos(np.radians(lat_ref)) * M_PER_DEG
        pa = polys.point_area
        x = wrap_deg(polys.lon - lon_ref[pa]) * kx[pa]
        y = (polys.lat - lat_ref[pa]) * M_PER_DEG
        return cls(x, y, lon_ref, lat_ref, kx)


@dataclass(frozen=True)
class Footprints:
    """Per area: m2 (outer rings minus holes) and centroid, measured in `local`."""

    area_m2: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    local: Local


def footprints(polys: Polygons) -> Footprints:
    """Area and centroid of each multipolygon (shoelace sums per ring). A degenerate area (no positive
    area) has its first point as centroid."""
    local = Local.of(polys)
    x, y, ring, n = local.x, local.y, polys.ring, polys.n
    same = ring[1:] == ring[:-1]
    x0, y0, x1, y1 = x[:-1][same], y[:-1][same], x[1:][same], y[1:][same]
    e_ring = ring[:-1][same]
    cross = x0 * y1 - x1 * y0
    n_rings = polys.ring_area.size
    ring_a2 = np.bincount(e_ring, cross, n_rings)  # twice the signed ring area
    ring_cx6 = np.bincount(e_ring, (x0 + x1) * cross, n_rings)
    ring_cy6 = np.bincount(e_ring, (y0 + y1) * cross, n_rings)
    # Outer rings add, holes subtract, whatever their orientation.
    sign = np.where(polys.ring_outer, 1.0, -1.0) * np.sign(ring_a2)
    area2 = np.bincount(polys.ring_area, sign * ring_a2, n)
    cx = np.bincount(polys.ring_area, sign * ring_cx6, n)
    cy = np.bincount(polys.ring_area, sign * ring_cy6, n)
    ok = area2 > 0
    first = polys.first
    cx = np.where(ok, cx / np.where(ok, 3 * area2, 1), x[first])
    cy = np.where(ok, cy / np.where(ok, 3 * area2, 1), y[first])
    lon = local.lon_ref + cx / local.kx
    lat = local.lat_ref + cy / M_PER_DEG
    return Footprints(np.abs(area2) / 2, lat, lon, local)


def split_on_grid(start: GridPoints, end: GridPoints) -> Pieces:
    """Cut the segments `start[k]` -> `end[k]` (both ends on start's face) where they cross cell edges:
    per piece, the segment index, the cell, and the fraction of the segment.

    A straight line in face coordinates is how S2 draws the segment's cells; the piece lengths are
    fractions of the segment's haversine length, so they sum to it exactly."""
    x0, y0, x1, y1 = start.x, start.y, end.x, end.y
    cuts = []
    for a0, a1 in ((x0, x1), (y0, y1)):
        f0, f1 = np.floor(a0), np.floor(a1)
        seg, k = ranges(np.abs(f1 - f0).astype(np.int64))
        edge = np.minimum(f0, f1)[seg] + 1 + k
        t = (edge - a0[seg]) / (a1 - a0)[seg]
        keep = t < 1.0  # a cut at the segment's end (it ends on a cell edge) cuts nothing off
        cuts.append((seg[keep], t[keep]))
    n = x0.size
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
    cells = face_ij_to_cell_id(start.face[seg], i, j, start.level)
    return Pieces(seg, cells, t_end - t)


def split_in_pieces(lines: Lines, a: np.ndarray, b: np.ndarray, length: np.ndarray, level: int) -> Pieces:
    """Segments from point `a[k]` to point `b[k]` of `lines` (`length[k]` m) -> pieces shorter than
    half the smallest cell edge, each in the cell of its midpoint: for segments no face grid holds."""
    lat0, lon0, lat1, lon1 = lines.lat[a], lines.lon[a], lines.lat[b], lines.lon[b]
    pieces = np.maximum(1, np.ceil(length / piece_length_m(level))).astype(np.int64)
    seg, pos = ranges(pieces)
    t = (pos + 0.5) / pieces[seg]
    plat = lat0[seg] + t * (lat1 - lat0)[seg]
    # Longitude differences wrap so segments across the antimeridian take the short way round.
    plon = lon0[seg] + t * wrap_deg(lon1 - lon0)[seg]
    return Pieces(seg, cells_at(plat, plon, level), 1.0 / pieces[seg])


def scanline_spans(edges: Edges, y_origin: np.ndarray, spacing: np.ndarray) -> Spans:
    """Even-odd scanline fill: rows at y_origin + (r + 0.5) * spacing of each edge's area; sorted
    crossings of one (area, row) pair up as enter / exit."""
    x0, y0, x1, y1, e_area = edges.x0, edges.y0, edges.x1, edges.y1, edges.area
    s = spacing[e_area]
    # Row r lies at y = origin + (r + 0.5) * s; an edge crosses rows with lo <= y < hi.
    y_lo = (np.minimum(y0, y1) - y_origin[e_area]) / s
    y_hi = (np.maximum(y0, y1) - y_origin[e_area]) / s
    r_lo = np.ceil(y_lo - 0.5).astype(np.int64)
    r_hi = np.ceil(y_hi - 0.5).astype(np.int64)
    edge, pos = ranges(np.maximum(r_hi - r_lo, 0))
    row = r_lo[edge] + pos
    yr = y_origin[e_area[edge]] + (row + 0.5) * s[edge]
    xi = x0[edge] + (yr - y0[edge]) * (x1 - x0)[edge] / (y1 - y0)[edge]
    xa = e_area[edge]
    order = np.lexsort((xi, row, xa))
    xi, row, xa = xi[order], row[order], xa[order]
    grp_start = np.flatnonzero(np.r_[True, (row[1:] != row[:-1]) | (xa[1:] != xa[:-1])])
    grp_len = np.diff(np.r_[grp_start, row.size])
    g, gpos = ranges(grp_len)
    i_in = np.flatnonzero((gpos % 2 == 0) & (gpos + 1 < grp_len[g]))
    return Spans(xa[i_in], row[i_in], xi[i_in], xi[i_in + 1])


def grid_spacing(box: Box) -> np.ndarray:
    """Scanline row spacing per area: SUBROWS rows per cell row; a huge polygon gets sparser rows so its
    (row, cell) pieces stay near MAX_PIECES_PER_AREA (its shares still sum to its area)."""
    extent = (box.y_hi - box.y_lo) * (box.x_hi - box.x_lo + 1)
    return np.maximum(1.0 / SUBROWS, extent / MAX_PIECES_PER_AREA)


def spread_on_grid(
    polys: Polygons, grid: GridPoints, wanted: np.ndarray, area_m2: np.ndarray, spacing: np.ndarray
) -> Pieces:
    """Spread the `wanted` areas (each with all its points on one face of `grid`) over the cells they
    cover: scanline rows `spacing` apart (in cell rows) give every cell of a span the span length
    inside it; each area's `area_m2` is shared out by those lengths. One piece per (span, cell)."""
    n_areas = polys.n
    pa = polys.point_area
    # Rows on a grid anchored at 0, so they sit at the same heights inside every cell row.
    spans = scanline_spans(Edges.of(grid.x, grid.y, polys, wanted), np.zeros(n_areas), spacing)
    xs, xe = spans.x_enter, spans.x_exit
    c_lo = np.floor(xs).astype(np.int64)
    span, k = ranges(np.floor(xe).astype(np.int64) - c_lo + 1)
    c = c_lo[span] + k
    weight = np.minimum(xe[span], c + 1) - np.maximum(xs[span], c)
    s_area = spans.area[span]
    cy = np.floor((spans.row[span] + 0.5) * spacing[s_area]).astype(np.int64)
    cells = face_ij_to_cell_id(grid.face[np.minimum(polys.first, pa.size - 1)][s_area], c, cy, grid.level)
    keep = weight > 0
    s_area, cells, weight = s_area[keep], cells[keep], weight[keep]
    total = np.bincount(s_area, weight, n_areas)
    return Pieces(s_area, cells, area_m2[s_area] * weight / total[s_area])


def spread_sampled(
    polys: Polygons, local: Local, wanted: np.ndarray, area_m2: np.ndarray, level: int
) -> Pieces:
    """Spread the `wanted` areas, which may lie over a cube-face edge: scanline-fill a sample grid in
    local metres, finer than the cell, and give each sample's cell an equal share of the area."""
    n_areas = polys.n
    box = Box.of(local.x, local.y, polys)
    xmin, ymin = box.x_lo, box.y_lo
    spacing = np.maximum(piece_length_m(level), np.sqrt(area_m2 / MAX_PIECES_PER_AREA))
    spans = scanline_spans(Edges.of(local.x, local.y, polys, wanted), ymin, spacing)
    span_area = spans.area
    sp = spacing[span_area]
    c_lo = np.ceil((spans.x_enter - xmin[span_area]) / sp - 0.5).astype(np.int64)
    c_hi = np.ceil((spans.x_exit - xmin[span_area]) / sp - 0.5).astype(np.int64)
    span, cpos = ranges(np.maximum(c_hi - c_lo, 0))
    s_area = span_area[span]
    sx = xmin[s_area] + (c_lo[span] + cpos + 0.5) * spacing[s_area]
    sy = ymin[s_area] + (spans.row[span] + 0.5) * spacing[s_area]
    lat = local.lat_ref[s_area] + sy / M_PER_DEG
    lon = local.lon_ref[s_area] + sx / local.kx[s_area]
    n_samples = np.bincount(s_area, minlength=n_areas)
    return Pieces(s_area, cells_at(lat, lon, level), area_m2[s_area] / n_samples[s_area])
