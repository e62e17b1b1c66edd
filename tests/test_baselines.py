"""Hand-made baselines on hand-made frames with known arrangements."""

import numpy as np
import polars as pl
import pytest

from s2vec_core import baselines as bl
from s2vec_core import s2
from s2vec_core.taxonomy import CHANNEL_NAMES

IMAGE, PIXEL = 13, 15  # 4 x 4 pixels per image cell
SIDE = 1 << (PIXEL - IMAGE)
CHANNELS = ["amenity_any", "road_residential_m", "building_footprint_m2"]
CELL = s2.latlng_to_cell_id(np.array([47.1]), np.array([9.5]), IMAGE)


def frame(level: int, ids: np.ndarray, **values: np.ndarray) -> pl.DataFrame:
    cols = {c: np.asarray(values.get(c, np.zeros(len(ids))), dtype=np.float64) for c in CHANNELS}
    return pl.DataFrame(
        {"level": pl.Series([level] * len(ids), dtype=pl.Int8), "cell_id": s2.as_int64(ids), **cols}
    )


def image_with_pixels(pixels: dict[str, np.ndarray]) -> pl.DataFrame:
    """One image cell whose pixel grid `[SIDE, SIDE]` per channel is given; empty pixels have no row."""
    grid = s2.grid_window(CELL, PIXEL, 0, SIDE)[0].reshape(-1)
    stacked = {c: pixels.get(c, np.zeros((SIDE, SIDE))).reshape(-1) for c in CHANNELS}
    keep = np.any([v > 0 for v in stacked.values()], axis=0)
    totals = {c: np.array([v.sum()]) for c, v in stacked.items()}
    return pl.concat(
        [frame(IMAGE, CELL, **totals), frame(PIXEL, grid[keep], **{c: v[keep] for c, v in stacked.items()})]
    )


def stats(pixels: dict[str, np.ndarray]) -> dict[str, float]:
    out = bl.spatial_statistics(image_with_pixels(pixels), IMAGE, PIXEL, CHANNELS)
    assert out.height == 1 and out["cell_id"].dtype == pl.UInt64
    return out.drop("cell_id").row(0, named=True)


def test_concentrated_vs_spread_pois():
    one = np.zeros((SIDE, SIDE))
    one[1, 2] = 16.0
    spread = np.ones((SIDE, SIDE))
    a, b = stats({"amenity_any": one}), stats({"amenity_any": spread})
    assert a["poi_occupancy"] == pytest.approx(1 / 16) and b["poi_occupancy"] == 1.0
    # variance / mean of one pixel holding T of N: T (N - 1) / N; of an even spread: 0.
    assert np.expm1(a["poi_dispersion"]) == pytest.approx(16 * 15 / 16) and b["poi_dispersion"] == 0.0
    assert a["poi_top10"] == 1.0 and b["poi_top10"] == pytest.approx(2 / 16)  # ceil(10% of 16) = 2 pixels
    assert b["poi_morans_i"] == 0.0  # constant: no autocorrelation, not NaN
    assert a["amenity_any_occupancy"] == a["poi_occupancy"]  # the busy channel on its own


def test_morans_i_signs():
    i, j = np.indices((SIDE, SIDE))
    checker = stats({"amenity_any": ((i + j) % 2).astype(float)})["poi_morans_i"]
    halves = stats({"amenity_any": (i < SIDE // 2).astype(float)})["poi_morans_i"]
    assert checker == pytest.approx(-1.0) and halves > 0.5


def test_co_occurrence_and_distance_to_roads():
    road = np.zeros((SIDE, SIDE))
    road[:, 0] = 100.0  # a road along the first pixel column
    poi = np.zeros((SIDE, SIDE))
    poi[2, 0], poi[2, 3] = 1.0, 3.0  # on the road, and three pixels from it
    house = np.zeros((SIDE, SIDE))
    house[2, 3] = 50.0
    s = stats({"amenity_any": poi, "road_residential_m": road, "building_footprint_m2": house})
    assert s["poi_on_roads"] == pytest.approx(0.25) and s["poi_in_buildings"] == pytest.approx(0.75)
    assert s["poi_road_distance"] == pytest.approx((1 * 0 + 3 * 3) / 4)
    no_road = stats({"amenity_any": poi})
    assert no_road["poi_road_distance"] == SIDE and no_road["roads_occupancy"] == 0.0


def test_contextual_counts_of_a_5x5_block():
    block = s2.grid_window(CELL, IMAGE, -2, 5)[0]  # [5, 5] image cells around CELL
    values = np.arange(25, dtype=np.float64).reshape(5, 5) + 1
    df = frame(IMAGE, block.reshape(-1), amenity_any=values.reshape(-1))
    out = bl.contextual_counts(df, IMAGE, CHANNELS)
    assert out.columns[:4] == ["cell_id", *CHANNELS] and out.height == 25
    by_cell = {
        c: row
        for c, *row in out.select("cell_id", "amenity_any", "amenity_any_r1", "amenity_any_r2").iter_rows()
    }
    own, r1, r2 = by_cell[int(CELL[0])]
    assert np.expm1(own) == pytest.approx(13)
    assert np.expm1(r1) == pytest.approx(values[1:4, 1:4].sum() - 13)
    assert np.expm1(r2) == pytest.approx(values.sum() - 13)
    # A corner cell of the block: its neighbours outside the block have no rows and count as empty.
    _, r1_corner, _ = by_cell[int(block[0, 0])]
    assert np.expm1(r1_corner) == pytest.approx(values[0, 1] + values[1, 0] + values[1, 1])


def test_groups_come_from_the_taxonomy():
    groups = bl.arrangement_groups(CHANNEL_NAMES)
    assert {"poi", "buildings", "roads", "land_use"} <= set(groups)
    assert "amenity_food" not in groups["poi"] and "amenity_any" in groups["poi"]  # no double counting
    assert all(c.endswith("_m") for c in groups["roads"]) and all(
        c.endswith("_m2") for c in groups["land_use"]
    )
    assert {"amenity_any", "shop_any", "building_count"} <= set(groups)
