"""Lookups of cell-keyed rows at other cells: gather, ring sums and means, across cube-face edges."""

from __future__ import annotations

import numpy as np

from s2vec_core import s2
from s2vec_core.neighbours import gather, ring_mean, ring_sums

LEVEL = 10


def test_gather_fills_absent_cells_with_zeros_in_the_query_shape():
    ids = s2.latlng_to_cell_id(np.array([47.1, 43.7, -33.9]), np.array([9.5, 7.4, 151.2]), LEVEL)
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    query = np.array([[ids[2], ids[0]], [ids[1], s2.parent(ids[0], LEVEL - 1)]])
    rows, found = gather(ids, values, query)
    assert rows.shape == (2, 2, 2) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[0], [[4, 5], [0, 1]])
    np.testing.assert_array_equal(rows[1], [[2, 3], [0, 0]])
    assert found.tolist() == [[True, True], [True, False]]
    empty, none = gather(ids[:0], values[:0], query)
    assert empty.shape == (2, 2, 2) and not none.any()


def test_ring_sums_and_means_over_the_present_neighbours():
    centre = s2.latlng_to_cell_id(np.array([47.1]), np.array([9.5]), LEVEL)
    block = s2.grid_window(centre, LEVEL, -1, 3).reshape(-1)  # the centre and its 8 neighbours
    ids = np.delete(block, 0)  # the north-west corner has no row
    values = np.arange(1, 9, dtype=np.float64)[:, None] * np.array([[1.0, 10.0]])
    sums, counts = ring_sums(ids, values, LEVEL, 1)
    middle = int(np.flatnonzero(ids == centre[0])[0])
    assert counts[middle] == 7  # 8 neighbours, one absent
    np.testing.assert_allclose(sums[middle], (values.sum(axis=0) - values[middle]))
    mean = ring_mean(ids, values, LEVEL, 1)
    np.testing.assert_allclose(mean[middle], sums[middle] / 7, rtol=1e-6)
    lone = ring_mean(centre, np.ones((1, 2)), LEVEL, 1)
    np.testing.assert_array_equal(lone, np.zeros((1, 2)))  # no neighbour: zeros, not NaN


def test_a_neighbour_across_a_cube_face_edge_is_found():
    # Face 0 ends at longitude 45 on the equator; its neighbour across the edge is on face 1.
    west = s2.latlng_to_cell_id(np.array([0.0]), np.array([44.99]), LEVEL)
    east = s2.latlng_to_cell_id(np.array([0.0]), np.array([45.01]), LEVEL)
    assert s2.face_ij(west)[0][0] != s2.face_ij(east)[0][0]
    ids = np.concatenate([west, east])
    sums, counts = ring_sums(ids, np.array([[1.0], [2.0]]), LEVEL, 1)
    assert counts.tolist() == [1, 1] and sums[:, 0].tolist() == [2.0, 1.0]
