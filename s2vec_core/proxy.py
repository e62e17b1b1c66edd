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
import struct
from pathlib import Path

import numpy as np
import osmium
import polars as pl

from s2vec_core import s2
from s2vec_core.targets import cell_area_km2

PROXY_TARGETS = ("address_density", "floor_area_density")
PROXY_TARGET_KEYS = ("addr:housenumber", "building:levels")
_M_PER_DEG = 6_371_008.8 * math.pi / 180.0


def _ring_area_centroid(wkb_hex: str) -> tuple[float, float, float]:
    """(area m2, lat, lng) of a WKB multipolygon: outer rings minus holes, centroid of the outer rings.

    Areas use a local equirectangular projection, accurate for building-sized polygons.
    """
    buf = bytes.fromhex(wkb_hex)
    (n_polys,) = struct.unpack_from("<I", buf, 5)
    off, area, cx, cy, w = 9, 0.0, 0.0, 0.0, 0.0
    for _ in range(n_polys):
        (n_rings,) = struct.unpack_from("<I", buf, off + 5)
        off += 9
        for r in range(n_rings):
            (n,) = struct.unpack_from("<I", buf, off)
            xy = np.frombuffer(buf, "<f8", 2 * n, off + 4).reshape(n, 2)
            off += 4 + 16 * n
            lon, lat = xy[:, 0], xy[:, 1]
            kx = _M_PER_DEG * math.cos(math.radians(float(lat.mean())))
            x, y = (lon - lon[0]) * kx, (lat - lat[0]) * _M_PER_DEG
            a = 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))
            if r == 0:
                area += a
                cx += float(lon.mean()) * a
                cy += float(lat.mean()) * a
                w += a
            else:
                area -= a
    if w == 0:
        return 0.0, float("nan"), float("nan")
    return max(area, 0.0), cy / w, cx / w


def _levels(value: str | None) -> float:
    try:
        levels = float(value) if value is not None else float("nan")
    except ValueError:
        return float("nan")  # "2;3", "two": not a usable number, so the building adds no floor area
    return levels if 0 < levels < 500 else float("nan")


def osm_proxy_points(pbf_path: str | Path) -> pl.DataFrame:
    """One row per object with an address or a levelled building: `lat`, `lng`, `address` (0/1),
    `floor_area_m2` (levels x footprint, 0 when not a building with levels)."""
    wkb = osmium.geom.WKBFactory()
    lat, lng, addr, floor = [], [], [], []
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
            area, clat, clng = _ring_area_centroid(wkb.create_multipolygon(obj))
        except RuntimeError:
            continue  # invalid ring geometry: libosmium cannot build it
        if math.isnan(clat):
            continue
        lat.append(clat), lng.append(clng), addr.append(1.0 if has_addr else 0.0)
        floor.append(0.0 if math.isnan(levels) else levels * area)
    return pl.DataFrame(
        {"lat": lat, "lng": lng, "address": addr, "floor_area_m2": floor},
        schema={"lat": pl.Float64, "lng": pl.Float64, "address": pl.Float64, "floor_area_m2": pl.Float64},
    )


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
