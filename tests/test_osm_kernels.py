"""The osm package's kernels on hand-built inputs whose answers are known: WKB bytes written here with
struct (not by pyosmium), shapes whose area and centroid follow from school geometry, and small long
frames for the aggregation and the pivot."""

import math
import struct

import numpy as np
import polars as pl
import pytest

from s2vec_core import s2
from s2vec_core.osm import Aggregate, pivot, wide, wkb
from s2vec_core.osm.geometry import M_PER_DEG, GridPoints, footprints, spread_on_grid
from s2vec_core.taxonomy import CHANNEL_NAMES


def ring_bytes(points) -> bytes:
    return struct.pack("<I", len(points)) + b"".join(struct.pack("<dd", lon, lat) for lon, lat in points)


def polygon_bytes(rings) -> bytes:
    return struct.pack("<BII", 1, 3, len(rings)) + b"".join(ring_bytes(r) for r in rings)


def multipolygon_hex(polygons) -> str:
    return (struct.pack("<BII", 1, 6, len(polygons)) + b"".join(polygon_bytes(p) for p in polygons)).hex()


def square(lon, lat, d, clockwise=False):
    ring = [(lon, lat), (lon + d, lat), (lon + d, lat + d), (lon, lat + d), (lon, lat)]
    return ring[::-1] if clockwise else ring


OUTER = square(10.0, 0.0, 0.01)
HOLE = square(10.002, 0.002, 0.004, clockwise=True)
FAR = square(20.0, 1.0, 0.001)
NEAR = square(10.5, 0.5, 0.002)


def test_polygons_with_holes_and_several_parts_decode_in_order():
    # A polygon with a hole, a plain polygon (the decoder's fast path) and a two-part multipolygon.
    hexes = [multipolygon_hex([[OUTER, HOLE]]), multipolygon_hex([[FAR]]), multipolygon_hex([[NEAR], [FAR]])]
    polys = wkb.decode_polygons(hexes)
    assert polys.n == 3
    assert polys.ring_area.tolist() == [0, 0, 1, 2, 2]
    assert polys.ring_outer.tolist() == [True, False, True, True, True]
    expected = [*OUTER, *HOLE, *FAR, *NEAR, *FAR]
    np.testing.assert_array_equal(polys.lon, [p[0] for p in expected])
    np.testing.assert_array_equal(polys.lat, [p[1] for p in expected])
    assert polys.ring.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5 + [4] * 5
    assert polys.point_area.tolist() == [0] * 10 + [1] * 5 + [2] * 10
    assert polys.first.tolist() == [0, 10, 15]
    lon, lat = wkb.first_points(hexes, wkb.POLYGON_FIRST_POINT)
    assert lon.tolist() == [10.0, 20.0, 10.5] and lat.tolist() == [0.0, 1.0, 0.5]


def test_lines_decode_and_round_trip():
    a, b = [(1.0, 2.0), (3.0, 4.0)], [(-179.5, 60.0), (179.5, 60.5), (179.0, 61.0)]
    lines = wkb.decode_lines([wkb.linestring(a), wkb.linestring(b)])
    assert lines.line.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(np.stack([lines.lon, lines.lat], 1), np.array(a + b))
    lon, lat = wkb.first_points([wkb.linestring(b)], wkb.LINE_FIRST_POINT)
    assert (lon.item(), lat.item()) == b[0]


def test_square_area_and_centroid_whatever_the_orientation():
    d = 0.01
    shape = footprints(
        wkb.decode_polygons([multipolygon_hex([[square(10.0, 0.0, d, cw)]]) for cw in (False, True)])
    )
    # At the equator the local frame's metres per degree are the same both ways.
    np.testing.assert_allclose(shape.area_m2, (d * M_PER_DEG) ** 2, rtol=1e-12)
    np.testing.assert_allclose(shape.lon, 10.0 + d / 2, rtol=1e-12)
    np.testing.assert_allclose(shape.lat, d / 2, atol=1e-12)


def test_a_hole_is_subtracted_and_moves_the_centroid():
    shape = footprints(wkb.decode_polygons([multipolygon_hex([[OUTER, HOLE]])]))
    m = M_PER_DEG
    outer, hole = (0.01 * m) ** 2, (0.004 * m) ** 2
    assert shape.area_m2[0] == pytest.approx(outer - hole, rel=1e-12)
    # Composite centroid: (A_outer c_outer - A_hole c_hole) / (A_outer - A_hole), per axis.
    cx = (outer * 0.005 - hole * 0.004) / (outer - hole)
    assert shape.lon[0] == pytest.approx(10.0 + cx, rel=1e-12)
    assert shape.lat[0] == pytest.approx(cx, rel=1e-9)


def test_multipolygon_parts_add_up():
    shape = footprints(
        wkb.decode_polygons([multipolygon_hex([[square(0.0, 0.0, 0.001)], [square(0.003, 0.0, 0.001)]])])
    )
    assert shape.area_m2[0] == pytest.approx(2 * (0.001 * M_PER_DEG) ** 2, rel=1e-9)
    assert shape.lon[0] == pytest.approx(0.002, rel=1e-12)
    assert shape.lat[0] == pytest.approx(0.0005, rel=1e-9)


def test_triangle_centroid_is_its_vertex_mean_and_area_is_spherical_at_latitude():
    lat0 = 47.0
    tri = [(9.5, lat0), (9.502, lat0), (9.5, lat0 + 0.001), (9.5, lat0)]
    shape = footprints(wkb.decode_polygons([multipolygon_hex([[tri]])]))
    assert shape.lon[0] == pytest.approx(9.5 + 0.002 / 3, rel=1e-12)
    assert shape.lat[0] == pytest.approx(lat0 + 0.001 / 3, rel=1e-12)
    # Spherical excess area of a ~150 m x 110 m triangle: the local plane is good to ~1e-5 there.
    lo, la = np.radians([p[0] for p in tri[:-1]]), np.radians([p[1] for p in tri[:-1]])
    r = 6_371_008.8
    spherical = abs(sum((lo[(i + 2) % 3] - lo[i]) * math.sin(la[(i + 1) % 3]) for i in range(3))) * r * r / 2
    assert shape.area_m2[0] == pytest.approx(spherical, rel=1e-4)


def test_degenerate_area_has_no_area_and_its_first_point_as_centroid():
    flat = [(5.0, 5.0), (5.001, 5.0), (5.002, 5.0), (5.0, 5.0)]
    shape = footprints(wkb.decode_polygons([multipolygon_hex([[flat]])]))
    assert shape.area_m2[0] == 0.0
    assert (shape.lon[0], shape.lat[0]) == (5.0, 5.0)


def test_aggregate_sums_per_cell_and_channel_and_pivots_wide():
    level = 10
    cells = s2.latlng_to_cell_id(np.array([0.0, 10.0, 20.0]), np.array([0.0, 10.0, 20.0]), level)
    agg = Aggregate(level)
    agg.add(cells[[2, 0, 2, 0]], np.array([3, 1, 3, 0]), np.array([1.0, 2.0, 4.0, 8.0]))
    agg.add(cells[[0, 1, 1]], np.array([1, 5, 5]), np.array([16.0, -1.0, 1.0]))
    long = agg.long()
    # Sorted by cell then channel; cell 1's sum is 0 and is left out.
    c0, c2 = (int(c) for c in cells[[0, 2]])
    assert [(r["cell_id"], r["channel"], r["value"]) for r in long.iter_rows(named=True)] == sorted(
        [(c0, 0, 8.0), (c0, 1, 18.0), (c2, 3, 5.0)]
    )
    assert long.schema == pl.Schema({"cell_id": pl.UInt64, "channel": pl.UInt16, "value": pl.Float64})

    frame = wide(long)
    assert frame.columns == ["cell_id", *CHANNEL_NAMES]
    assert frame["cell_id"].to_list() == sorted([c0, c2])
    values = frame.select(CHANNEL_NAMES).to_numpy()
    expected = np.zeros((2, len(CHANNEL_NAMES)))
    row = {c: i for i, c in enumerate(sorted([c0, c2]))}
    expected[row[c0], 0], expected[row[c0], 1], expected[row[c2], 3] = 8.0, 18.0, 5.0
    np.testing.assert_array_equal(values, expected)


def test_a_square_of_four_cells_spreads_a_quarter_on_each():
    xs, ys = np.array([2.0, 4.0, 4.0, 2.0, 2.0]), np.array([3.0, 3.0, 5.0, 5.0, 3.0])
    zero = np.zeros(5, np.int64)
    polys = wkb.Polygons(1, xs, ys, zero, zero, np.zeros(1, np.int64), np.ones(1, bool))
    level = 12
    pieces = spread_on_grid(
        polys,
        GridPoints(np.full(5, 1, np.int8), xs, ys, level),
        np.ones(1, bool),
        np.array([100.0]),
        np.array([0.5]),
    )
    per_cell = {int(c): float(pieces.value[pieces.cell == c].sum()) for c in np.unique(pieces.cell)}
    expected = s2.face_ij_to_cell_id(np.full(4, 1), np.array([2, 3, 2, 3]), np.array([3, 3, 4, 4]), level)
    assert sorted(per_cell) == sorted(int(c) for c in expected)
    assert all(v == pytest.approx(25.0) for v in per_cell.values())


def test_pivot_gives_every_channel_a_column_zero_where_a_cell_has_no_row():
    cells = np.array([30, 10, 30, 20], np.uint64)
    channel = np.array([len(CHANNEL_NAMES) - 1, 0, 0, 2], np.uint16)
    unique, columns = pivot(cells, channel, np.array([1.5, 2.5, 3.5, 4.5]))
    cols = list(columns)
    assert unique.tolist() == [10, 20, 30] and len(cols) == len(CHANNEL_NAMES)
    table = np.stack(cols, 1)
    expected = np.zeros((3, len(CHANNEL_NAMES)))
    expected[2, -1], expected[0, 0], expected[2, 0], expected[1, 2] = 1.5, 2.5, 3.5, 4.5
    np.testing.assert_array_equal(table, expected)
    empty, none = pivot(np.zeros(0, np.uint64), np.zeros(0, np.uint16), np.zeros(0))
    assert empty.size == 0 and all(c.size == 0 for c in none)
