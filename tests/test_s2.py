"""s2vec_core.s2 against s2sphere (the reference implementation), plus round trips and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import s2sphere

from s2vec_core import s2

LEVELS = (0, 1, 13, 17, 30)
# atan(1/sqrt(2)): latitude of the cube corners, where faces 2/5 meet the equatorial faces at lng +-45/135.
CORNER_LAT = math.degrees(math.atan(1 / math.sqrt(2)))


def ref_cells(lat: np.ndarray, lng: np.ndarray) -> list[s2sphere.CellId]:
    return [
        s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(float(a), float(b)))
        for a, b in zip(lat, lng)
    ]


def ref_ids(cells: list[s2sphere.CellId], level: int = 30) -> np.ndarray:
    return np.array([c.parent(level).id() for c in cells], dtype=np.uint64)


def assert_matches_s2sphere(lat: np.ndarray, lng: np.ndarray, levels=LEVELS) -> None:
    cells = ref_cells(lat, lng)
    for level in levels:
        ours = s2.latlng_to_cell_id(lat, lng, level)
        ref = ref_ids(cells, level)
        bad = np.flatnonzero(ours != ref)
        assert bad.size == 0, (
            f"level {level}: {bad.size} mismatches, first at lat={lat[bad[0]]!r} lng={lng[bad[0]]!r}"
        )


def random_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)


def edge_points() -> tuple[np.ndarray, np.ndarray]:
    """Points on and within 1e-9 degrees of every cube-face edge, the corners, poles and antimeridian."""
    rng = np.random.default_rng(7)
    offsets = np.array([0.0, 1e-9, -1e-9, 1e-12, -1e-12, 5e-15, -5e-15])
    lats, lngs = [], []
    # Meridian edges between the four equatorial faces.
    for edge_lng in (-180.0, -135.0, -45.0, 45.0, 135.0, 180.0):
        lat = rng.uniform(-CORNER_LAT, CORNER_LAT, 200)
        for off in offsets:
            lats.append(lat)
            lngs.append(np.clip(np.full_like(lat, edge_lng) + off, -180, 180))
    # Edges of the polar faces: |z| == max(|x|, |y|), i.e. lat = atan(max(|cos lng|, |sin lng|)).
    lng = rng.uniform(-180, 180, 400)
    edge_lat = np.degrees(
        np.arctan(np.maximum(np.abs(np.cos(np.radians(lng))), np.abs(np.sin(np.radians(lng)))))
    )
    for sign in (1.0, -1.0):
        for off in offsets:
            lats.append(sign * edge_lat + off)
            lngs.append(lng)
    # Cube corners, poles, antimeridian.
    corner_lng = np.array([-135.0, -45.0, 45.0, 135.0])
    for sign in (1.0, -1.0):
        for off_lat in offsets:
            for off_lng in offsets:
                lats.append(np.full(4, sign * CORNER_LAT + off_lat))
                lngs.append(corner_lng + off_lng)
    pole_lng = np.concatenate([rng.uniform(-180, 180, 50), [-180.0, -90.0, 0.0, 90.0, 180.0]])
    for pole in (90.0, -90.0, 90 - 1e-9, -90 + 1e-9):
        lats.append(np.full_like(pole_lng, pole))
        lngs.append(pole_lng)
    anti_lat = np.concatenate([rng.uniform(-90, 90, 200), [-90.0, 0.0, 90.0]])
    for edge_lng in (-180.0, 180.0, -180 + 1e-9, 180 - 1e-9):
        lats.append(anti_lat)
        lngs.append(np.full_like(anti_lat, edge_lng))
    return np.clip(np.concatenate(lats), -90, 90), np.concatenate(lngs)


def test_latlng_to_cell_id_matches_s2sphere_on_100k_random_points():
    lat, lng = random_points(100_000, seed=42)
    cells = ref_cells(lat, lng)
    leaf = s2.latlng_to_cell_id(lat, lng)
    assert leaf.dtype == np.uint64
    np.testing.assert_array_equal(leaf, ref_ids(cells))
    for level in LEVELS:
        np.testing.assert_array_equal(s2.latlng_to_cell_id(lat, lng, level), ref_ids(cells, level))
    # The sample really covers the whole sphere.
    faces = np.unique(leaf >> np.uint64(61))
    np.testing.assert_array_equal(faces, np.arange(6, dtype=np.uint64))


def test_face_centres_land_on_each_face():
    lat = np.array([0.0, 0.0, 90.0, 0.0, 0.0, -90.0])
    lng = np.array([0.0, 90.0, 0.0, 180.0, -90.0, 0.0])
    np.testing.assert_array_equal(s2.latlng_to_cell_id(lat, lng, 0) >> np.uint64(61), np.arange(6))
    assert_matches_s2sphere(lat, lng)


def test_face_edges_corners_poles_antimeridian_match_s2sphere():
    lat, lng = edge_points()
    assert lat.size > 10_000
    assert_matches_s2sphere(lat, lng)
    # The edge sample straddles faces: all six occur.
    assert np.unique(s2.latlng_to_cell_id(lat, lng, 0)).size == 6


def test_level_parent_children_match_s2sphere():
    lat, lng = random_points(3000, seed=3)
    cells = ref_cells(lat, lng)
    for level in (0, 5, 13, 29, 30):
        ids = s2.latlng_to_cell_id(lat, lng, level)
        np.testing.assert_array_equal(s2.cell_level(ids), np.full(ids.shape, level))
        for target in (0, level // 2, level):
            np.testing.assert_array_equal(s2.parent(ids, target), [c.parent(target).id() for c in cells])
        for target in sorted({level, min(level + 3, 30), 30}):
            first, last = s2.children_range(ids, target)
            ref = [c.parent(level) for c in cells]
            np.testing.assert_array_equal(first, [c.child_begin(target).id() for c in ref])
            np.testing.assert_array_equal(last, [c.child_end(target).prev().id() for c in ref])
            # Inclusive range: every leaf of the cell lies within [first.range_min, last.range_max].
            leaf = s2.latlng_to_cell_id(lat, lng)
            assert (s2.parent(leaf, target) >= first).all() and (s2.parent(leaf, target) <= last).all()


def test_face_ij_matches_s2sphere():
    lat, lng = random_points(3000, seed=4)
    cells = ref_cells(lat, lng)
    ref = np.array([c.to_face_ij_orientation()[:3] for c in cells])
    leaf = s2.latlng_to_cell_id(lat, lng)
    for level in (0, 1, 13, 17, 30):
        ids = s2.parent(leaf, level)
        for face, i, j in (s2.face_ij(ids), s2.face_ij(leaf, level)):
            assert face.dtype == np.int8 and i.dtype == np.int64
            np.testing.assert_array_equal(face, ref[:, 0])
            np.testing.assert_array_equal(i, ref[:, 1] >> (30 - level))
            np.testing.assert_array_equal(j, ref[:, 2] >> (30 - level))
            assert (i >= 0).all() and (i < 2**level).all()
    with pytest.raises(ValueError, match="level"):
        s2.face_ij(s2.parent(leaf, 10), 11)


def test_tokens_match_s2sphere_and_round_trip():
    lat, lng = random_points(2000, seed=5)
    cells = ref_cells(lat, lng)
    for level in (0, 1, 13, 30):
        ids = s2.latlng_to_cell_id(lat, lng, level)
        tokens = s2.to_token(ids)
        assert list(tokens) == [c.parent(level).to_token() for c in cells]
        np.testing.assert_array_equal(s2.from_token(tokens), ids)
        np.testing.assert_array_equal(s2.from_token(np.char.upper(tokens)), ids)
    assert list(s2.to_token(np.array([0], dtype=np.uint64))) == ["X"]
    np.testing.assert_array_equal(s2.from_token(["X", "1", "b"]), [0, 1 << 60, 0xB << 60])


def test_cell_center_and_vertices_match_s2sphere():
    lat, lng = random_points(1500, seed=6)
    e_lat, e_lng = edge_points()
    lat, lng = np.concatenate([lat, e_lat[::20]]), np.concatenate([lng, e_lng[::20]])
    cells = ref_cells(lat, lng)
    for level in (0, 1, 13, 30):
        ids = s2.latlng_to_cell_id(lat, lng, level)
        ref = [c.parent(level) for c in cells]
        c_lat, c_lng = s2.cell_center(ids)
        ref_ll = [c.to_lat_lng() for c in ref]
        # numpy's SIMD arctan2 may round the last bit differently from libm's atan2.
        np.testing.assert_array_max_ulp(c_lat, [p.lat().degrees for p in ref_ll], maxulp=2)
        np.testing.assert_array_max_ulp(c_lng, [p.lng().degrees for p in ref_ll], maxulp=2)
        v_lat, v_lng = s2.cell_vertices(ids)
        assert v_lat.shape == (ids.size, 4)
        ref_v = [[s2sphere.LatLng.from_point(s2sphere.Cell(c).get_vertex(k)) for k in range(4)] for c in ref]
        np.testing.assert_array_max_ulp(v_lat, [[p.lat().degrees for p in r] for r in ref_v], maxulp=2)
        np.testing.assert_array_max_ulp(v_lng, [[p.lng().degrees for p in r] for r in ref_v], maxulp=2)
        if level > 0:
            # Round trip: a cell's centre lies in the cell.
            np.testing.assert_array_equal(s2.latlng_to_cell_id(c_lat, c_lng, level), ids)


def test_is_valid_matches_s2sphere_and_invalid_ids_are_refused():
    rng = np.random.default_rng(8)
    crafted = [0, 1, 2, 4, 1 << 60, (1 << 61) | 4, 6 << 61 | 1, 7 << 61 | 1, (1 << 64) - 1, 0x1 << 59]
    ids = np.concatenate(
        [np.array(crafted, dtype=np.uint64), rng.integers(0, 2**64, 2000, dtype=np.uint64, endpoint=False)]
    )
    np.testing.assert_array_equal(s2.is_valid(ids), [s2sphere.CellId(int(i)).is_valid() for i in ids])
    good = s2.latlng_to_cell_id(*random_points(100, seed=9), level=12)
    assert s2.is_valid(good).all()
    assert s2.is_valid(s2.as_int64(good)).all()
    bad = np.array([good[0], 0], dtype=np.uint64)
    for call in (
        s2.cell_level,
        s2.cell_center,
        s2.cell_vertices,
        s2.face_ij,
        lambda x: s2.parent(x, 3),
        lambda x: s2.children_range(x, 20),
    ):
        with pytest.raises(ValueError, match="invalid S2 cell id"):
            call(bad)


def test_int64_storage_round_trip():
    ids = s2.latlng_to_cell_id(*random_points(1000, seed=10), level=17)
    stored = s2.as_int64(ids)
    assert stored.dtype == np.int64 and (stored < 0).any()  # faces 4, 5 have the top bit set
    np.testing.assert_array_equal(s2.as_uint64(stored), ids)
    np.testing.assert_array_equal(s2.cell_level(stored), 17)
    np.testing.assert_array_equal(s2.parent(stored, 3), s2.parent(ids, 3))


@pytest.mark.parametrize("level", [-1, 31, 2.0, True, "13", None])
def test_bad_levels_are_refused(level):
    ids = s2.latlng_to_cell_id([1.0], [2.0], 10)
    for call in (
        lambda: s2.latlng_to_cell_id([1.0], [2.0], level),
        lambda: s2.parent(ids, level),
        lambda: s2.children_range(ids, level),
    ):
        with pytest.raises(ValueError, match="level"):
            call()


def test_parent_and_children_refuse_wrong_direction():
    ids = s2.latlng_to_cell_id([1.0, 50.0], [2.0, 8.0], 10)
    with pytest.raises(ValueError, match="level"):
        s2.parent(ids, 11)
    with pytest.raises(ValueError, match="level"):
        s2.children_range(ids, 9)


def test_bad_coordinates_are_refused():
    with pytest.raises(ValueError, match="shape"):
        s2.latlng_to_cell_id([1.0, 2.0], [3.0])
    with pytest.raises(ValueError, match="non-finite"):
        s2.latlng_to_cell_id([np.nan], [3.0])
    with pytest.raises(ValueError, match="latitude"):
        s2.latlng_to_cell_id([90.5], [3.0])
    with pytest.raises(ValueError, match="longitude"):
        s2.latlng_to_cell_id([10.0], [-181.0])


@pytest.mark.parametrize("token", ["", "xyz", "12345678901234567", "é1", "0x1"])
def test_bad_tokens_are_refused(token):
    with pytest.raises(ValueError):
        s2.from_token([token])


def ref_cover(lat_min, lng_min, lat_max, lng_max, level) -> np.ndarray:
    coverer = s2sphere.RegionCoverer()
    coverer.min_level = coverer.max_level = level
    coverer.max_cells = 10**7
    rect = s2sphere.LatLngRect(
        s2sphere.LatLng.from_degrees(lat_min, lng_min), s2sphere.LatLng.from_degrees(lat_max, lng_max)
    )
    return np.array(sorted(c.id() for c in coverer.get_covering(rect)), dtype=np.uint64)


def points_in_box(lat_min, lng_min, lat_max, lng_max, n=20_000, seed=11):
    """Random points inside the box and on its four edges (where a superset is easiest to miss)."""
    rng = np.random.default_rng(seed)
    span = lng_max - lng_min if lng_max >= lng_min else lng_max - lng_min + 360  # across the antimeridian
    lat = lat_min + rng.uniform(0, 1, n) * (lat_max - lat_min)
    lng = lng_min + rng.uniform(0, 1, n) * span
    edge = n // 4
    lat[:edge] = lat_min
    lat[edge : 2 * edge] = lat_max
    lng[2 * edge : 3 * edge] = lng_min
    lng[3 * edge :] = lng_min + span
    lng = np.where(lng > 180, lng - 360, lng)
    return lat, lng


BOXES = [
    ((47.04, 9.47, 47.27, 9.64), 13),  # Liechtenstein
    ((43.72, 7.40, 43.76, 7.44), 16),  # Monaco
    ((30.0, 40.0, 40.0, 50.0), 6),  # across the lng 45 edge and the lat ~35.26 corner
    ((-40.0, 170.0, -30.0, -170.0), 6),  # across the antimeridian (lng_min > lng_max)
    ((80.0, -180.0, 90.0, 180.0), 4),  # north pole cap
    ((-90.0, -10.0, -85.0, 10.0), 5),  # south pole
    ((-1.0, -1.0, 1.0, 1.0), 0),
    ((-50.0, 130.0, 50.0, 140.0), 3),  # across faces 1/3
]


@pytest.mark.parametrize(("box", "level"), BOXES)
def test_cover_bbox_equals_s2sphere_coverer_and_contains_every_point(box, level):
    cover = s2.cover_bbox(*box, level)
    assert cover.dtype == np.uint64
    assert (np.diff(cover) > 0).all()
    np.testing.assert_array_equal(cover, ref_cover(*box, level))
    np.testing.assert_array_equal(s2.cell_level(cover), level)
    cells = s2.latlng_to_cell_id(*points_in_box(*box), level)
    assert np.isin(cells, cover).all()


def test_cover_bbox_refuses_bad_boxes():
    with pytest.raises(ValueError, match="lat_min"):
        s2.cover_bbox(10, 0, 5, 1, 10)
    with pytest.raises(ValueError, match="longitudes"):
        s2.cover_bbox(0, -190, 5, 1, 10)
    with pytest.raises(ValueError, match="finite"):
        s2.cover_bbox(0, np.nan, 5, 1, 10)
    with pytest.raises(ValueError, match="level"):
        s2.cover_bbox(0, 0, 5, 1, 31)


def test_cover_bbox_refuses_huge_covers():
    with pytest.raises(ValueError, match="too large"):
        s2.cover_bbox(-90, -180, 90, 180, 20)


def test_as_uint64_refuses_non_integer_ids():
    with pytest.raises(ValueError, match="uint64 or int64"):
        s2.as_uint64(np.array([1.5]))
    with pytest.raises(ValueError, match="64-bit"):
        s2.as_uint64(np.array([1 << 64], dtype=object))
    np.testing.assert_array_equal(s2.as_uint64([(1 << 64) - 1]), [np.iinfo(np.uint64).max])


def test_face_xy_and_face_ij_to_cell_id_agree_with_latlng_to_cell_id():
    rng = np.random.default_rng(7)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 50_000)))
    lng = rng.uniform(-180, 180, 50_000)
    for level in (0, 5, 13, 17, 30):
        face, x, y = s2.latlng_to_face_xy(lat, lng, level)
        assert ((x >= 0) & (x <= 2**level) & (y >= 0) & (y <= 2**level)).all()
        got = s2.face_ij_to_cell_id(face, np.floor(x).astype(np.int64), np.floor(y).astype(np.int64), level)
        np.testing.assert_array_equal(got, s2.latlng_to_cell_id(lat, lng, level))
        f2, i2, _ = s2.face_ij(got)
        np.testing.assert_array_equal(f2, face)
        np.testing.assert_array_equal(i2, np.floor(x).astype(np.int64))


def test_face_ij_to_cell_id_refuses_bad_faces():
    with pytest.raises(ValueError, match="face"):
        s2.face_ij_to_cell_id([6], [0], [0], 10)


def test_grid_window_of_own_children_is_the_image_in_face_ij_order():
    cells = s2.latlng_to_cell_id([46.0, -33.9, 37.77], [8.0, 18.4, -122.42], 13)
    window = s2.grid_window(cells, 17, 0, 16)
    assert window.shape == (3, 16, 16)
    assert (s2.parent(window.reshape(3, -1), 13) == cells[:, None]).all()
    _, i, j = s2.face_ij(window.reshape(-1))
    _, i0, j0 = s2.face_ij(np.repeat(cells, 256), 13)
    rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    assert (i - (i0 << 4) == np.tile(rows.ravel(), 3)).all()
    assert (j - (j0 << 4) == np.tile(cols.ravel(), 3)).all()


def test_grid_window_rings_are_the_neighbours_inside_a_face():
    cell = s2.latlng_to_cell_id([46.0], [8.0], 13)
    ring = s2.grid_window(cell, 13, -2, 5)[0]
    face, i, j = s2.face_ij(cell)
    expected = s2.face_ij_to_cell_id(
        np.full((5, 5), face[0]), i[0] + np.arange(-2, 3)[:, None], j[0] + np.arange(-2, 3)[None, :], 13
    )
    assert (ring == expected).all()
    assert ring[2, 2] == cell[0]


@pytest.mark.parametrize("lat,lng", [(0.0, 44.999), (0.0, 45.001), (45.0, 0.0), (35.26, 45.0), (-89.9, 10.0)])
def test_grid_window_across_face_edges_continues_on_the_sphere(lat, lng):
    """Across a cube-face edge the window keeps stepping one cell at a time over the sphere."""
    cell = s2.latlng_to_cell_id([lat], [lng], 13)
    window = s2.grid_window(cell, 13, -3, 7)[0]
    assert s2.is_valid(window.ravel()).all() and (s2.cell_level(window.ravel()) == 13).all()
    assert window[3, 3] == cell[0]
    clat, clng = s2.cell_center(window.ravel())
    xyz = np.stack(
        [
            np.cos(np.radians(clat)) * np.cos(np.radians(clng)),
            np.cos(np.radians(clat)) * np.sin(np.radians(clng)),
            np.sin(np.radians(clat)),
        ],
        -1,
    ).reshape(7, 7, 3)
    edge = 2 * np.pi / 4 / 2**13  # a level-13 cell is about a quarter face / 2^13 radians across
    steps = np.concatenate(
        [
            np.linalg.norm(np.diff(xyz, axis=0), axis=-1).ravel(),
            np.linalg.norm(np.diff(xyz, axis=1), axis=-1).ravel(),
        ]
    )
    # Cells shrink to ~1/3 and grow to ~1.7 of the mean across a face; a wrap gone wrong jumps far.
    assert steps.max() < 2.5 * edge
    faces = s2.face_ij(window.ravel())[0]
    if lat == 0.0:
        assert len(np.unique(faces)) == 2  # the window really crossed an edge
    assert len(np.unique(window)) >= 0.9 * window.size


def test_grid_window_refuses_finer_cells_and_empty_windows():
    cell = s2.latlng_to_cell_id([46.0], [8.0], 17)
    with pytest.raises(ValueError, match="at or above level"):
        s2.grid_window(cell, 13, 0, 1)
    with pytest.raises(ValueError, match="size"):
        s2.grid_window(cell, 17, 0, 0)
