"""Hand-made representations of image cells from `cell_features`: the baselines a sceptic would pick.

- `contextual_counts`: the cell's own channel totals plus the totals of its neighbourhood rings, as
  srai's ContextualCountEmbedder (does an embedding know more than "what is around"?);
- `spatial_statistics`: simple statistics of the arrangement inside the cell from its pixel rows
  (occupancy, dispersion, concentration, autocorrelation, co-occurrence, distance to roads): does an
  embedding know more about layout than a few numbers an analyst would write by hand?

Both return `cell_id` (UInt64) keyed Float64 frames over the image cells of `cell_features`, like
`evaluate.raw_channel_totals`, with fixed columns (the same in every region, so they transfer).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from s2vec_core import s2
from s2vec_core.neighbours import gather, ring_sums
from s2vec_core.taxonomy import CHANNELS, Channel

POI_KEYS: tuple[str, ...] = (
    "amenity",
    "shop",
    "tourism",
    "leisure",
    "office",
    "craft",
    "healthcare",
    "historic",
)
"""OSM keys whose `count` channels are points of interest (the taxonomy's POI section)."""
TOP_SHARE = 0.1
"""`top10` statistic: share of the cell's total in its busiest 10% of pixels."""


def _level_rows(
    cell_features: pl.DataFrame, level: int, columns: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted uint64 ids, float64 matrix[ids, columns]) of the rows at `level`."""
    rows = cell_features.filter(pl.col("level") == level)
    ids = s2.as_uint64(rows["cell_id"].to_numpy())
    order = np.argsort(ids)
    matrix = rows.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()
    return ids[order], matrix[order]


def _frame(cells: np.ndarray, columns: dict[str, np.ndarray]) -> pl.DataFrame:
    return pl.DataFrame({"cell_id": pl.Series(cells, dtype=pl.UInt64), **columns})


def contextual_counts(
    cell_features: pl.DataFrame, image_level: int, channels: Sequence[str], rings: Sequence[int] = (1, 2)
) -> pl.DataFrame:
    """log1p of each image cell's channel totals, and per ring radius `r` of the totals over the
    `(2r+1)^2 - 1` image cells within `r` steps on the face grid (the cell excluded; cells without a
    row count as empty). Columns `<channel>` and `<channel>_r<r>`.
    """
    ids, own = _level_rows(cell_features, image_level, channels)
    columns = {c: np.log1p(own[:, i]) for i, c in enumerate(channels)}
    for r in rings:
        around, _ = ring_sums(ids, own, image_level, r)
        columns |= {f"{c}_r{r}": np.log1p(around[:, i]) for i, c in enumerate(channels)}
    return _frame(ids, columns)


# ---------------------------------------------------------------------------------------------------
# arrangement statistics


def _keys(ch: Channel) -> set[str]:
    return {k for k, _ in ch.rules}


def _union_of_key(kind: str, key: str, channels: Sequence[str]) -> tuple[str, ...]:
    """Channels of `kind` fed by `key` alone: its any-value channel where there is one (the union,
    so sub-categories are not counted twice), else all of them (disjoint values)."""
    family = [ch for ch in CHANNELS if ch.kind == kind and _keys(ch) == {key} and ch.name in channels]
    wildcard = [ch.name for ch in family if any(v is None for _, v in ch.rules)]
    return tuple(wildcard[:1] or [ch.name for ch in family])


def arrangement_groups(channels: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Channel groups whose arrangement `spatial_statistics` describes, from the taxonomy's kinds and keys.

    `poi`: POI counts; `buildings`: building footprint area; `roads`: road length; `land_use`: land use
    and cover (spread areas); plus, singly, the any-value count channel of each key the taxonomy
    splits into sub-categories (the busy ones: amenities, shops, buildings, ...).
    """
    groups = {
        "poi": tuple(c for key in POI_KEYS for c in _union_of_key("count", key, channels)),
        "buildings": _union_of_key("area_m2", "building", channels),
        "roads": _union_of_key("length_m", "highway", channels),
        "land_use": tuple(ch.name for ch in CHANNELS if ch.spread and ch.name in channels),
    }
    count_keys = [next(iter(_keys(ch))) for ch in CHANNELS if ch.kind == "count" and len(_keys(ch)) == 1]
    split_keys = sorted({k for k in count_keys if count_keys.count(k) > 1})
    for key in split_keys:
        family = _union_of_key("count", key, channels)
        if len(family) == 1 and family[0] not in groups:
            groups[family[0]] = family
    return {name: cols for name, cols in groups.items() if cols}


def _occupancy(v: np.ndarray) -> np.ndarray:
    return (v > 0).mean(axis=1)


def _dispersion(v: np.ndarray) -> np.ndarray:
    """log1p(variance / mean) over the pixels, zeros included (0 for an empty cell)."""
    mean = v.mean(axis=1)
    return np.log1p(np.divide(v.var(axis=1), mean, out=np.zeros_like(mean), where=mean > 0))


def _top_share(v: np.ndarray) -> np.ndarray:
    top = max(1, int(np.ceil(TOP_SHARE * v.shape[1])))
    total = v.sum(axis=1)
    busiest = -np.sort(-v, axis=1)[:, :top].sum(axis=1)
    return np.divide(busiest, total, out=np.zeros_like(total), where=total > 0)


def _morans_i(img: np.ndarray) -> np.ndarray:
    """Moran's I with rook neighbours on each cell's pixel grid `img[n, s, s]` (0 where constant)."""
    n, s, _ = img.shape
    z = img - img.mean(axis=(1, 2), keepdims=True)
    pairs = (z[:, 1:, :] * z[:, :-1, :]).sum(axis=(1, 2)) + (z[:, :, 1:] * z[:, :, :-1]).sum(axis=(1, 2))
    denom = (z**2).sum(axis=(1, 2))
    weight = 4.0 * s * (s - 1)  # directed rook pairs
    ratio = np.divide(2.0 * pairs, denom, out=np.zeros(n), where=denom > 0)
    return (s * s / weight) * ratio


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean grid distance from every pixel to the nearest True pixel of its cell (`s` when none):
    the exact two-pass transform, one step per row or column, vectorised over cells."""
    s = mask.shape[1]
    idx = np.arange(s, dtype=np.float64)
    along = np.full(mask.shape, np.inf)
    for j in range(s):
        along = np.minimum(along, np.where(mask[:, :, j : j + 1], np.abs(idx - j)[None, None, :], np.inf))
    d2 = np.full(mask.shape, np.inf)
    for i in range(s):
        d2 = np.minimum(d2, ((idx - i) ** 2)[None, :, None] + along[:, i : i + 1, :] ** 2)
    return np.minimum(np.sqrt(d2), float(s))


def _mass_share(mass: np.ndarray, where: np.ndarray) -> np.ndarray:
    total = mass.sum(axis=1)
    return np.divide((mass * where).sum(axis=1), total, out=np.zeros_like(total), where=total > 0)


def spatial_statistics(
    cell_features: pl.DataFrame, image_level: int, pixel_level: int, channels: Sequence[str]
) -> pl.DataFrame:
    """Arrangement statistics of each image cell from its `2^k x 2^k` pixel rows (`k = pixel - image`).

    Per `arrangement_groups` group: `<g>_occupancy` (share of pixels with a non-zero value),
    `<g>_dispersion` (log1p variance/mean), `<g>_top10` (share of the total in the busiest 10% of
    pixels), `<g>_morans_i` (rook). Across groups: `poi_on_roads` / `poi_in_buildings` (share of POI mass
    in pixels that also have road length / building footprint) and `poi_road_distance` (mean grid
    distance, in pixels, from POI mass to the nearest road pixel of the cell; the image side when the
    cell has no road). Statistics of an empty group are 0.
    """
    k = pixel_level - image_level
    if k < 1:
        raise ValueError(f"pixel level {pixel_level} must be finer than the image level {image_level}")
    groups = arrangement_groups(channels)
    cells = np.sort(s2.as_uint64(cell_features.filter(pl.col("level") == image_level)["cell_id"].to_numpy()))
    side = 1 << k
    pixels = s2.grid_window(cells, pixel_level, 0, side).reshape(-1)
    wanted = sorted({c for cols in groups.values() for c in cols})
    ids, matrix = _level_rows(cell_features, pixel_level, wanted)
    member = np.array([[c in cols for cols in groups.values()] for c in wanted], dtype=np.float64)
    # Group sums per pixel, then one gather; one contiguous row per group keeps the reductions fast.
    values = np.ascontiguousarray(gather(ids, matrix @ member, pixels)[0].T)
    columns: dict[str, np.ndarray] = {}
    imgs: dict[str, np.ndarray] = {}
    for g, name in enumerate(groups):
        img = values[g].reshape(len(cells), side, side)
        flat = img.reshape(len(cells), -1)
        columns |= {
            f"{name}_occupancy": _occupancy(flat),
            f"{name}_dispersion": _dispersion(flat),
            f"{name}_top10": _top_share(flat),
            f"{name}_morans_i": _morans_i(img),
        }
        imgs[name] = img
    if {"poi", "roads", "buildings"} <= imgs.keys():
        poi = imgs["poi"].reshape(len(cells), -1)
        roads = imgs["roads"] > 0
        columns["poi_on_roads"] = _mass_share(poi, roads.reshape(len(cells), -1))
        columns["poi_in_buildings"] = _mass_share(poi, imgs["buildings"].reshape(len(cells), -1) > 0)
        columns["poi_road_distance"] = _mass_share(poi, _distance_to(roads).reshape(len(cells), -1))
    return _frame(cells, columns)
