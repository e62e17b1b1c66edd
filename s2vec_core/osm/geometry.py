"""Vectorised geometry kernels: lengths, and cutting segments and areas into S2 cells.

Two planes are used: the face grid of `latlng_to_face_xy` (cells are unit squares there, so cutting
is exact) and local equirectangular metres around an area (for areas and centroids, and for the rare
geometry over a cube-face edge, where no single face grid holds it)."""

from __future__ import annotations

import math

import numpy as np

from s2vec_core.osm.ragged import ranges
from s2vec_core.s2 import face_ij_to_cell_id

EARTH_RADIUS_M = 6_371_008.8
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


def split_on_grid(face, x0, y0, x1, y1, use, level):
    """Cut the segments marked `use` (both ends on one face, in `latlng_to_face_xy` grid coordinates)
    where they cross cell edges: (segment index, cell id, fraction of the segment) per piece.

    A straight line in face coordinates is how S2 draws the segment's cells; the piece lengths are
    fractions of the segment's haversine length, so they sum to it exactly."""
    idx = np.flatnonzero(use)
    x0, y0, x1, y1 = x0[idx], y0[idx], x1[idx], y1[idx]
    cuts = []
    for a0, a1 in ((x0, x1), (y0, y1)):
        f0, f1 = np.floor(a0), np.floor(a1)
        seg, k = ranges(np.abs(f1 - f0).astype(np.int64))
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


def scanline_spans(x0, y0, x1, y1, e_area, y_origin, spacing):
    """Even-odd scanline fill: rows at y_origin + (r + 0.5) * spacing of each edge's area; sorted
    crossings of one (area, row) pair up as enter / exit. Returns (area, row, x_enter, x_exit) per span."""
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
    return xa[i_in], row[i_in], xi[i_in], xi[i_in + 1]


def area_box(x, y, pa, n_areas):
    """Per area (x min, x max, y min, y max) of its points (`pa` = area of each point)."""
    box = np.empty((4, n_areas))
    box[0::2] = np.inf
    box[1::2] = -np.inf
    for k, a in enumerate((x, y)):
        np.minimum.at(box[2 * k], pa, a)
        np.maximum.at(box[2 * k + 1], pa, a)
    return box


def grid_spacing(box) -> np.ndarray:
    """Scanline row spacing per area: SUBROWS rows per cell row; a huge polygon gets sparser rows so its
    (row, cell) pieces stay near MAX_PIECES_PER_AREA (its shares still sum to its area)."""
    extent = (box[3] - box[2]) * (box[1] - box[0] + 1)
    return np.maximum(1.0 / SUBROWS, extent / MAX_PIECES_PER_AREA)


def spread_on_grid(face, gx, gy, ring, pa, wanted, area_m2, level, spacing):
    """Spread the `wanted` areas (all points on one face; `gx, gy` grid coordinates, `pa` the area of
    each point) over the cells they cover: scanline rows `spacing` apart (in cell rows) give every
    cell of a span the span length inside it; each area's value is shared out by those lengths.
    Returns (cells, area, value) per (span, cell) piece."""
    n_areas = area_m2.size
    same = (ring[1:] == ring[:-1]) & wanted[pa[:-1]]
    x0, y0, x1, y1 = gx[:-1][same], gy[:-1][same], gx[1:][same], gy[1:][same]
    e_area = pa[:-1][same]
    # Rows on a grid anchored at 0, so they sit at the same heights inside every cell row.
    span_area, span_row, xs, xe = scanline_spans(x0, y0, x1, y1, e_area, np.zeros(n_areas), spacing)
    c_lo = np.floor(xs).astype(np.int64)
    span, k = ranges(np.floor(xe).astype(np.int64) - c_lo + 1)
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
