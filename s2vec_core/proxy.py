"""Proxy targets for regions without user targets, from OSM tags the feature vector never reads.

- `address_density`: objects (nodes or areas) with `addr:housenumber` per km2 of the image cell, a proxy
  for where people live and work;
- `floor_area_density`: sum of `building:levels` x footprint (m2) of buildings tagged with levels, per km2
  of the image cell, a proxy for built floor space.

These are proxies, not socioeconomic truth: they measure OSM mapping as much as the world. The keys are
in `taxonomy.RESERVED_TARGET_KEYS`, so no channel uses them (tests check both the taxonomy and an
extraction).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import osmium
import polars as pl

from s2vec_core import s2
from s2vec_core.osm import wkb
from s2vec_core.osm.geometry import footprints
from s2vec_core.targets import cell_area_km2

PROXY_TARGETS = ("address_density", "floor_area_density")
PROXY_TARGET_KEYS = ("addr:housenumber", "building:levels")
# Areas are measured in batches of this many: vectorised, without holding a whole region's WKB.
AREA_BATCH = 10_000


def _levels(value: str | None) -> float:
    try:
        levels = float(value) if value is not None else float("nan")
    except ValueError:
        return float("nan")  # "2;3", "two": not a usable number, so the building adds no floor area
    return levels if 0 < levels < 500 else float("nan")


def osm_proxy_points(pbf_path: str | Path) -> pl.DataFrame:
    """One row per object with an address or a levelled building: `lat`, `lng`, `address` (0/1),
    `floor_area_m2` (levels x footprint, 0 when not a building with levels).

    Areas are placed at their centroid and measured as the extraction measures them
    (`s2vec_core.osm.geometry.footprints`); areas without a positive footprint are left out."""
    fab = osmium.geom.WKBFactory()
    lat, lng, addr, floor = [], [], [], []
    # Areas wait here as (row, WKB, levels) until a batch is measured; their rows hold NaN till then.
    pending: list[tuple[int, str, float]] = []

    def measure() -> None:
        shape = footprints(wkb.decode_polygons([h for _, h, _ in pending]))
        for (row, _, levels), area, clat, clng in zip(
            pending, shape.area_m2.tolist(), shape.lat.tolist(), shape.lon.tolist(), strict=True
        ):
            if area > 0:
                lat[row], lng[row] = clat, clng
                floor[row] = 0.0 if math.isnan(levels) else levels * area
        pending.clear()

    processor = (
        osmium.FileProcessor(str(pbf_path))
        .with_areas(osmium.filter.KeyFilter("building", "addr:housenumber"))
        .with_filter(osmium.filter.KeyFilter(*PROXY_TARGET_KEYS))
    )
    for obj in processor:
        has_addr = "addr:housenumber" in obj.tags
        if obj.is_node():
            if has_addr and obj.location.valid():
                (
                    lat.append(obj.location.lat),
                    lng.append(obj.location.lon),
                    addr.append(1.0),
                    floor.append(0.0),
                )
            continue
        if not obj.is_area():
            continue  # ways/relations arrive again as areas when closed; open ones have no footprint
        levels = _levels(obj.tags.get("building:levels")) if "building" in obj.tags else float("nan")
        if not has_addr and math.isnan(levels):
            continue
        try:
            pending.append((len(lat), fab.create_multipolygon(obj), levels))
        except RuntimeError:
            continue  # invalid ring geometry: libosmium cannot build it
        lat.append(math.nan), lng.append(math.nan), addr.append(1.0 if has_addr else 0.0), floor.append(0.0)
        if len(pending) >= AREA_BATCH:
            measure()
    if pending:
        measure()
    return pl.DataFrame(
        {"lat": lat, "lng": lng, "address": addr, "floor_area_m2": floor},
        schema={"lat": pl.Float64, "lng": pl.Float64, "address": pl.Float64, "floor_area_m2": pl.Float64},
    ).filter(pl.col("lat").is_not_nan())


def osm_proxy_targets(
    pbf_path: str | Path, image_level: int, cells: np.ndarray | None = None
) -> pl.DataFrame:
    """Proxy targets per image cell: `cell_id` (UInt64) and one Float64 column per `PROXY_TARGETS`.

    With `cells` (e.g. the image cells that have features) every one of them gets a row, zero where
    nothing was mapped; otherwise only cells with some value are returned.
    """
    points = osm_proxy_points(pbf_path)
    ids = s2.latlng_to_cell_id(points["lat"].to_numpy(), points["lng"].to_numpy(), image_level)
    sums = (
        points.select("address", "floor_area_m2")
        .with_columns(cell_id=pl.Series(ids, dtype=pl.UInt64))
        .group_by("cell_id")
        .agg(pl.all().sum())
    )
    if cells is not None:
        keys = pl.DataFrame({"cell_id": pl.Series(np.unique(s2.as_uint64(cells)), dtype=pl.UInt64)})
        sums = keys.join(sums, on="cell_id", how="left").with_columns(pl.exclude("cell_id").fill_null(0.0))
    sums = sums.sort("cell_id")
    area = cell_area_km2(sums["cell_id"].to_numpy())
    return sums.select(
        "cell_id",
        address_density=pl.col("address") / area,
        floor_area_density=pl.col("floor_area_m2") / area,
    )
