"""Rows of a table keyed by S2 cell id, looked up at other cells: the gather behind contextual counts
and neighbourhood-pooled embeddings (raster windows use a channel-major one that holds less memory).

Cells are placed on the S2 face grid by `s2.grid_window`, so rings continue across cube-face edges.
"""

from __future__ import annotations

import numpy as np

from s2vec_core import s2


def gather(ids: np.ndarray, values: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`values` rows at the `query` cells, zeros where a cell has no row; bool mask of the found ones).

    `ids` [n] keys the rows of `values` [n, d] (any order, unique); `query` may have any shape."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    flat = np.asarray(query).reshape(-1)
    if sorted_ids.size == 0:
        found = np.zeros(flat.size, dtype=bool)
        return np.zeros((*np.shape(query), values.shape[1]), values.dtype), found.reshape(np.shape(query))
    pos = np.minimum(np.searchsorted(sorted_ids, flat), sorted_ids.size - 1)
    found = sorted_ids[pos] == flat
    out = np.zeros((flat.size, values.shape[1]), values.dtype)
    out[found] = values[order[pos[found]]]
    return out.reshape(*np.shape(query), values.shape[1]), found.reshape(np.shape(query))


def ring_sums(ids: np.ndarray, values: np.ndarray, level: int, ring: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell of `ids` (all at `level`): the sum of `values` over the other cells within `ring` steps
    on the face grid, float64 [n, d], and how many of them have a row, int [n]."""
    ids = s2.as_uint64(ids)
    window = s2.grid_window(ids, level, -ring, 2 * ring + 1).reshape(len(ids), -1)
    sums = np.zeros(values.shape, np.float64)
    counts = np.zeros(len(ids), np.int64)
    for a in range(window.shape[1]):  # one gather per window position, vectorised over cells
        if a == window.shape[1] // 2:  # the centre: the cell itself
            continue
        rows, found = gather(ids, values, window[:, a])
        sums += rows
        counts += found
    return sums, counts


def ring_mean(ids: np.ndarray, values: np.ndarray, level: int, ring: int = 1) -> np.ndarray:
    """float32 [n, d]: the mean of `values` over the cells within `ring` steps that have a row (the cell
    itself excluded; zeros for a cell with no neighbour)."""
    sums, counts = ring_sums(ids, values, level, ring)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
