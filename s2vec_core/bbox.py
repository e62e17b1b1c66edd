"""A region's bounding box clips what it covers: cells whose centre lies outside are not written.

Extracts overshoot their region (a river or a road followed out of the country); the catalog's `bbox`
says what the region means. Clipping happens on the finest cells, before coarser levels are summed,
so every level describes the same area.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

from s2vec_core import s2

BBox = tuple[float, float, float, float]
"""(lon_min, lat_min, lon_max, lat_max), degrees."""


def inside(ids: npt.ArrayLike, bbox: BBox) -> np.ndarray:
    """True where the cell's centre lies within `bbox` (edges included)."""
    lon0, lat0, lon1, lat1 = bbox
    lat, lng = s2.cell_center(ids)
    return (lng >= lon0) & (lng <= lon1) & (lat >= lat0) & (lat <= lat1)


def clip(cells: pl.DataFrame, bbox: BBox | None) -> pl.DataFrame:
    """The rows of `cells` (a `cell_id` column, uint64 or int64) whose cell centre lies in `bbox`."""
    if bbox is None or cells.height == 0:
        return cells
    return cells.filter(pl.Series(inside(cells["cell_id"].to_numpy(), bbox)))
