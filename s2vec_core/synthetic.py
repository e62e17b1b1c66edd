"""A synthetic world with known truth: latent fields -> OSM objects -> a PBF, plus the fields per image cell.

Three smooth latent fields (seeded, independent of each other) drive everything: `population` (people
per km2: a few Gaussian urban cores on a rural background), `income` (a log-normal random field) and
`arrangement` (in (0, 1), about uniform: a logistic of a Gaussian field). OSM objects are inhomogeneous
Poisson processes on the pixel cells whose intensities follow the fields:

- POIs (nodes): rate ~ population x income**e, with e > 0 for restaurants, fashion, offices, e < 0 for
  fast food, convenience shops, bus stops: income shows in the *mix* of POIs, not in their number.
  `arrangement` changes only their *layout* inside each image cell: a share `arrangement_strength x
  arrangement` of every POI type's intensity moves from the diffuse shape onto a few compact hot spots
  ("high streets": peaks of a short-scale random field), at fixed expected counts per image cell. So
  channel totals carry no trace of `arrangement`; only the arrangement of POIs over pixels does;
- buildings (closed ways): count ~ population; apartments where dense, houses elsewhere; house footprint
  grows with income; `building:levels` and `addr:housenumber` (target-only tags) are set too;
- roads (ways): short segments, length ~ population, class by density; footways/cycleways ~ income;
- land cover (areas): forest and farmland where population is low, parks where income is high.

Targets per image cell are the fields' means over the cell's pixel centres, plus `population_3km`: the
mean population density within `neighbourhood_km` (3 km) of the cell's centre, from the analytic field.
So a test can ask whether a representation recovers `income` (compositional) beyond `population` (mostly
a count), `arrangement` (layout inside the cell, invisible in its totals) and `population_3km` (the
neighbourhood beyond the cell). Everything is seeded; the same spec writes the same objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import osmium
import polars as pl

from s2vec_core import s2

_KM_PER_DEG = s2.EARTH_RADIUS_M / 1000 * math.pi / 180.0
_CHUNK = 512  # image cells generated at once: bounds memory at any world size
_HOT_SCALE_KM = 0.2  # length scale of the hot-spot field: a few compact hot spots per image cell
_HOT_SHARPNESS = 2.0  # hot-spot shape exp(2 z), z standardised per cell: top 10% of pixels hold ~2/3
_DISC_POINTS = 144  # sunflower points averaging population over the neighbourhood disc

# (tags, rate per 1000 people, income exponent)
POI_TYPES: tuple[tuple[dict[str, str], float, float], ...] = (
    ({"amenity": "restaurant"}, 1.0, 1.5),
    ({"amenity": "cafe"}, 0.7, 1.2),
    ({"amenity": "fast_food"}, 0.7, -1.2),
    ({"amenity": "bar"}, 0.4, 0.5),
    ({"shop": "supermarket"}, 0.3, 0.0),
    ({"shop": "convenience"}, 0.6, -1.2),
    ({"shop": "clothes"}, 0.4, 2.0),
    ({"shop": "jewelry"}, 0.08, 3.0),
    ({"shop": "hairdresser"}, 0.4, 0.0),
    ({"amenity": "bank"}, 0.15, 1.0),
    ({"amenity": "pharmacy"}, 0.2, 0.0),
    ({"amenity": "school"}, 0.12, 0.0),
    ({"tourism": "hotel"}, 0.08, 1.5),
    ({"office": "company"}, 0.4, 1.5),
    ({"highway": "bus_stop"}, 0.8, -0.8),
    ({"amenity": "bench"}, 0.8, 0.5),
)


@dataclass(frozen=True)
class WorldSpec:
    """Size and seed of a synthetic world (about `n_image_cells` image cells around `center`)."""

    n_image_cells: int = 400
    image_level: int = 13
    pixel_level: int = 17
    center: tuple[float, float] = (46.0, 8.0)
    """(lat, lng) in degrees."""
    n_cities: int | None = None
    """Urban cores; default one per ~80 image cells."""
    scale: float = 1.0
    """Multiplies every object intensity (size of the PBF, not of the world)."""
    arrangement_strength: float = 1.0
    """In [0, 1]: share of a cell's POI intensity on hot spots = strength x arrangement; 0 = no effect."""
    neighbourhood_km: float = 3.0
    """Radius of the disc that `population_<r>km` averages over."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_image_cells < 1:
            raise ValueError("n_image_cells must be positive")
        if not 0 <= self.image_level < self.pixel_level <= 30:
            raise ValueError(
                f"need 0 <= image_level < pixel_level <= 30, got {self.image_level}/{self.pixel_level}"
            )
        if self.scale <= 0:
            raise ValueError("scale must be positive")
        if not 0 <= self.arrangement_strength <= 1:
            raise ValueError("arrangement_strength must be within [0, 1]")
        if self.neighbourhood_km <= 0:
            raise ValueError("neighbourhood_km must be positive")


class LatentFields:
    """Smooth seeded fields: `population` (people/km2), `income` (currency units), `arrangement` (0..1),
    and `hot_spots` (Gaussian, short scale: where POIs cluster when arranged)."""

    def __init__(self, spec: WorldSpec, half_width_km: float) -> None:
        rng = np.random.default_rng([spec.seed, 1])
        self.lat0, self.lng0 = spec.center
        self.kx = _KM_PER_DEG * math.cos(math.radians(self.lat0))
        n_cities = spec.n_cities or max(2, spec.n_image_cells // 80)
        self.city_xy = rng.uniform(-half_width_km, half_width_km, (n_cities, 2))
        self.city_peak = rng.lognormal(math.log(6000), 0.5, n_cities)
        self.city_sigma = rng.uniform(1.0, 3.5, n_cities)
        # Random Fourier features: stationary Gaussian fields with ~3 km length scale (neighbourhoods).
        m = 64
        self.rff_w = rng.normal(0, 1 / 3.0, (2, m, 2))
        self.rff_b = rng.uniform(0, 2 * math.pi, (2, m))
        # A separate stream, so population and income are the same as in worlds without arrangement.
        rng = np.random.default_rng([spec.seed, 3])
        self.arr_w, self.arr_b = rng.normal(0, 1 / 3.0, (m, 2)), rng.uniform(0, 2 * math.pi, m)
        self.hot_w, self.hot_b = rng.normal(0, 1 / _HOT_SCALE_KM, (m, 2)), rng.uniform(0, 2 * math.pi, m)

    def _xy(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        return np.stack([(lng - self.lng0) * self.kx, (lat - self.lat0) * _KM_PER_DEG], axis=-1)

    @staticmethod
    def _grf(xy: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Standard Gaussian field (approximately) with squared-exponential covariance, scale 1/std(w)."""
        proj = xy @ w.T + b
        return np.sqrt(2.0 / proj.shape[-1]) * np.cos(proj).sum(axis=-1)

    def _population_xy(self, xy: np.ndarray) -> np.ndarray:
        d2 = ((xy[:, None, :] - self.city_xy[None]) ** 2).sum(-1)
        urban = (self.city_peak * np.exp(-d2 / (2 * self.city_sigma**2))).sum(-1)
        return urban + 40.0 * np.exp(0.7 * self._grf(xy, self.rff_w[0], self.rff_b[0]))

    def population(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        return self._population_xy(self._xy(lat, lng))

    def population_within(self, lat: np.ndarray, lng: np.ndarray, radius_km: float) -> np.ndarray:
        """Mean population density over the disc of `radius_km` around each point (fixed sunflower
        points: evenly spread by area, the same for every centre, so the mean is deterministic)."""
        k = np.arange(_DISC_POINTS)
        r = radius_km * np.sqrt((k + 0.5) / _DISC_POINTS)
        theta = k * math.pi * (3 - math.sqrt(5))
        offsets = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=-1)
        xy = (self._xy(lat, lng)[:, None, :] + offsets[None]).reshape(-1, 2)
        return self._population_xy(xy).reshape(len(lat), _DISC_POINTS).mean(1)

    def income(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        return 40_000.0 * np.exp(0.6 * self._grf(self._xy(lat, lng), self.rff_w[1], self.rff_b[1]))

    def arrangement(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        """How clustered POIs are, in (0, 1): logistic(1.7 g) of a standard Gaussian field is ~uniform."""
        return 1.0 / (1.0 + np.exp(-1.7 * self._grf(self._xy(lat, lng), self.arr_w, self.arr_b)))

    def hot_spots(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        """A short-scale Gaussian field whose peaks are where POIs cluster when arranged."""
        return self._grf(self._xy(lat, lng), self.hot_w, self.hot_b)


def _edge_km(level: int) -> float:
    return math.sqrt(4 * math.pi * (s2.EARTH_RADIUS_M / 1000) ** 2 / (6 * 4**level))


def _cover(spec: WorldSpec, half_km: float) -> np.ndarray:
    lat0, lng0 = spec.center
    dlat, dlng = half_km / _KM_PER_DEG, half_km / (_KM_PER_DEG * math.cos(math.radians(lat0)))
    cells = s2.cover_bbox(lat0 - dlat, lng0 - dlng, lat0 + dlat, lng0 + dlng, spec.image_level)
    # The cover includes a ring of cells cut by the bbox; keep cells whose centre is inside it.
    clat, clng = s2.cell_center(cells)
    return cells[(np.abs(clat - lat0) <= dlat) & (np.abs(clng - lng0) <= dlng)]


def world_half_width_km(spec: WorldSpec) -> float:
    """Half the side of the square world, calibrated so it holds about `n_image_cells` image cells."""
    half_km = 0.5 * math.sqrt(spec.n_image_cells) * _edge_km(spec.image_level)
    # Cells near the centre differ in size from the global mean; one correction gets within a few %.
    n = max(len(_cover(spec, half_km)), 1)
    return half_km * math.sqrt(spec.n_image_cells / n)


def world_cells(spec: WorldSpec) -> np.ndarray:
    """The world's image cells (sorted): those whose centre lies in the world's square."""
    return _cover(spec, world_half_width_km(spec))


def _pixels(image_cells: np.ndarray, pixel_level: int) -> np.ndarray:
    first, _ = s2.children_range(image_cells, pixel_level)
    step = np.uint64(2) << np.uint64(2 * (30 - pixel_level))
    n = 4 ** (pixel_level - int(s2.cell_level(image_cells[:1])[0])) if len(image_cells) else 0
    return (first[:, None] + step * np.arange(n, dtype=np.uint64)[None, :]).ravel()


def _in_cells(vlat: np.ndarray, vlng: np.ndarray, idx: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Uniform-ish points inside the quads `idx` (bilinear on the four vertices)."""
    u, v = rng.random(len(idx)), rng.random(len(idx))
    w = np.stack([(1 - u) * (1 - v), u * (1 - v), u * v, (1 - u) * v], axis=-1)
    return (w * vlat[idx]).sum(-1), (w * vlng[idx]).sum(-1)


class _Objects:
    """Accumulates nodes (lat, lng, tag index) and ways (node-id lists, tag index) with sequential ids."""

    def __init__(self) -> None:
        self.tags: list[dict[str, str]] = [{}]
        self._tag_index: dict[tuple, int] = {(): 0}
        self.node_lat: list[np.ndarray] = []
        self.node_lng: list[np.ndarray] = []
        self.node_tag: list[np.ndarray] = []
        self.way_nodes: list[np.ndarray] = []  # each: (n_ways, nodes_per_way) of node ids
        self.way_tag: list[np.ndarray] = []
        self.n_nodes = 0

    def tag(self, tags: dict[str, str]) -> int:
        key = tuple(sorted(tags.items()))
        if key not in self._tag_index:
            self._tag_index[key] = len(self.tags)
            self.tags.append(dict(tags))
        return self._tag_index[key]

    def nodes(self, lat: np.ndarray, lng: np.ndarray, tag: np.ndarray) -> np.ndarray:
        ids = self.n_nodes + 1 + np.arange(len(lat), dtype=np.int64)
        self.node_lat.append(lat), self.node_lng.append(lng), self.node_tag.append(tag)
        self.n_nodes += len(lat)
        return ids

    def ways(self, node_ids: np.ndarray, tag: np.ndarray) -> None:
        self.way_nodes.append(node_ids), self.way_tag.append(tag)

    def write(self, path: Path) -> dict[str, int]:
        lat, lng = np.concatenate(self.node_lat), np.concatenate(self.node_lng)
        ntag = np.concatenate(self.node_tag)
        path.unlink(missing_ok=True)
        n_ways = 0
        with osmium.SimpleWriter(str(path)) as w:
            for i, (la, lo, t) in enumerate(zip(lat.tolist(), lng.tolist(), ntag.tolist()), 1):
                w.add_node(osmium.osm.mutable.Node(id=i, version=1, location=(lo, la), tags=self.tags[t]))
            for nodes, tags in zip(self.way_nodes, self.way_tag):
                for refs, t in zip(nodes.tolist(), tags.tolist()):
                    n_ways += 1
                    w.add_way(osmium.osm.mutable.Way(id=n_ways, version=1, nodes=refs, tags=self.tags[t]))
        return {"nodes": len(lat), "ways": n_ways}


class PixelModel(NamedTuple):
    """The fields and POI intensities on the pixels of some image cells (rows: image cells, columns:
    their pixels)."""

    pixels: np.ndarray
    population: np.ndarray
    income: np.ndarray
    arrangement: np.ndarray
    poi: np.ndarray
    """Poisson mean per POI type, pixel: (len(POI_TYPES), n_cells, n_pixels)."""


def pixel_model(fields: LatentFields, spec: WorldSpec, image_cells: np.ndarray) -> PixelModel:
    """Fields on the pixels, and POI intensities with a share strength x (cell's arrangement) of each
    type moved onto the hot spots, rescaled so every image cell keeps its expected total per type."""
    pixels = _pixels(image_cells, spec.pixel_level).reshape(len(image_cells), -1)
    plat, plng = s2.cell_center(pixels.ravel())
    shape = pixels.shape
    pop, inc = fields.population(plat, plng).reshape(shape), fields.income(plat, plng).reshape(shape)
    arr = fields.arrangement(plat, plng).reshape(shape)
    rate = np.array([r for _, r, _ in POI_TYPES])[:, None, None]
    expo = np.array([e for _, _, e in POI_TYPES])[:, None, None]
    people = pop * _edge_km(spec.pixel_level) ** 2
    diffuse = spec.scale * rate / 1000 * people * (inc / 40_000.0) ** expo
    # Standardised per cell, so every cell's hot spots are about equally compact.
    g = fields.hot_spots(plat, plng).reshape(shape)
    g = (g - g.mean(1, keepdims=True)) / g.std(1, keepdims=True)
    hot = diffuse * np.exp(_HOT_SHARPNESS * g)
    hot *= diffuse.sum(-1, keepdims=True) / hot.sum(-1, keepdims=True)
    w = spec.arrangement_strength * arr.mean(1)[:, None]
    return PixelModel(pixels, pop, inc, arr, (1 - w) * diffuse + w * hot)


def _poisson_points(rng, lam: np.ndarray) -> np.ndarray:
    """Pixel index of every point of an inhomogeneous Poisson process with per-pixel means `lam`."""
    return np.repeat(np.arange(len(lam)), rng.poisson(lam))


def _chunk(
    objs: _Objects, fields: LatentFields, spec: WorldSpec, image_cells: np.ndarray, rng
) -> pl.DataFrame:
    model = pixel_model(fields, spec, image_cells)
    vlat, vlng = s2.cell_vertices(model.pixels.ravel())
    pop, inc = model.population.ravel(), model.income.ravel()
    rel_inc = inc / 40_000.0
    area_km2 = _edge_km(spec.pixel_level) ** 2
    s = spec.scale

    # POIs
    for (tags, _, _), lam in zip(POI_TYPES, model.poi):
        idx = _poisson_points(rng, lam.ravel())
        la, lo = _in_cells(vlat, vlng, idx, rng)
        objs.nodes(la, lo, np.full(len(idx), objs.tag(tags)))

    # Buildings: rectangles around Poisson centres
    idx = _poisson_points(rng, s * (0.04 * pop + 6.0) * area_km2)
    dense = pop[idx] / (pop[idx] + 4000.0)
    u = rng.random(len(idx))
    kind = np.where(
        u < 0.75 * dense,
        0,
        np.where(u < 0.85, 1, np.where(u < 0.85 + 0.1 * np.minimum(rel_inc[idx], 1.5), 2, 3)),
    )
    # 0 apartments, 1 house, 2 commercial, 3 industrial/agricultural by density
    footprint = np.select(
        [kind == 0, kind == 1, kind == 2],
        [
            400.0 * rng.lognormal(0, 0.3, len(idx)),
            90.0 * rel_inc[idx] ** 1.2 * rng.lognormal(0, 0.3, len(idx)),
            600.0 * rng.lognormal(0, 0.4, len(idx)),
        ],
        800.0 * rng.lognormal(0, 0.5, len(idx)),
    )
    levels = np.where(
        kind == 0,
        3 + rng.poisson(3 * dense),
        np.where(kind == 1, 1 + (rng.random(len(idx)) < 0.5), 1 + rng.poisson(1.0, len(idx))),
    )
    has_addr = (kind <= 1) & (rng.random(len(idx)) < 0.6)
    rural = pop[idx] < 300
    btype = np.array(["apartments", "house", "commercial", "industrial", "barn"])
    kind_name = np.where((kind == 3) & rural, 4, kind)
    tag = np.array(
        [
            objs.tag(
                {"building": btype[k], "building:levels": str(lv), **({"addr:housenumber": "1"} if a else {})}
            )
            for k, lv, a in zip(kind_name.tolist(), levels.tolist(), has_addr.tolist())
        ],
        dtype=np.int64,
    )
    cla, clo = _in_cells(vlat, vlng, idx, rng)
    objs.ways(
        _rectangles(
            objs,
            cla,
            clo,
            np.sqrt(footprint) * rng.uniform(0.7, 1.3, len(idx)),
            np.sqrt(footprint) / rng.uniform(0.7, 1.3, len(idx)),
            rng,
        ),
        tag,
    )

    # Roads: short two-segment pieces, class by density and income
    idx = _poisson_points(rng, s * (10.0 + 0.03 * pop) * area_km2)
    d = pop[idx]
    u = rng.random(len(idx))
    cls = np.select(
        [
            u < 0.03,
            u < 0.1,
            u < 0.1 + 0.8 * d / (d + 800),
            u < 0.1 + 0.8 * d / (d + 800) + 0.12 * np.minimum(rel_inc[idx], 2),
        ],
        ["primary", "secondary", "residential", "footway"],
        "track",
    )
    tag = np.array([objs.tag({"highway": c}) for c in cls.tolist()], dtype=np.int64)
    la, lo = _in_cells(vlat, vlng, idx, rng)
    objs.ways(_polyline(objs, la, lo, fields.kx, rng), tag)

    # Land cover on blocks two levels above the pixels (4x4 pixels): forest/farmland rural, parks rich.
    blocks = _pixels(image_cells, spec.pixel_level - 2)
    blat, blng = s2.cell_center(blocks)
    bpop, binc = fields.population(blat, blng), fields.income(blat, blng) / 40_000.0
    u = rng.random(len(blocks))
    p_forest = 0.45 * np.exp(-bpop / 300.0)
    p_farm = p_forest + 0.35 * np.exp(-bpop / 600.0)
    p_park = p_farm + 0.04 * np.minimum(binc, 2.5) * (bpop > 500)
    cover = np.select([u < p_forest, u < p_farm, u < p_park], [0, 1, 2], -1)
    keep = cover >= 0
    if keep.any():
        qlat, qlng = s2.cell_vertices(blocks[keep])
        names = [{"natural": "wood"}, {"landuse": "farmland"}, {"leisure": "park"}]
        tag = np.array([objs.tag(names[c]) for c in cover[keep].tolist()], dtype=np.int64)
        corner_ids = objs.nodes(qlat.ravel(), qlng.ravel(), np.zeros(qlat.size, np.int64)).reshape(-1, 4)
        objs.ways(np.concatenate([corner_ids, corner_ids[:, :1]], axis=1), tag)

    clat, clng = s2.cell_center(image_cells)
    return pl.DataFrame(
        {
            "cell_id": pl.Series(image_cells, dtype=pl.UInt64),
            "population": model.population.mean(1),
            "income": model.income.mean(1),
            "arrangement": model.arrangement.mean(1),
            neighbourhood_column(spec): fields.population_within(clat, clng, spec.neighbourhood_km),
        }
    )


def neighbourhood_column(spec: WorldSpec) -> str:
    """Name of the neighbourhood target: `population_3km` at the default radius."""
    return f"population_{spec.neighbourhood_km:g}km"


def _rectangles(objs: _Objects, lat, lng, w_m, h_m, rng) -> np.ndarray:
    """Closed 5-node ways of rotated rectangles (metres) centred at lat/lng; returns node-id rows."""
    theta = rng.uniform(0, math.pi, len(lat))
    cx, cy = np.array([-0.5, 0.5, 0.5, -0.5]), np.array([-0.5, -0.5, 0.5, 0.5])
    dx = (cx[None] * w_m[:, None]) * np.cos(theta)[:, None] - (cy[None] * h_m[:, None]) * np.sin(theta)[
        :, None
    ]
    dy = (cx[None] * w_m[:, None]) * np.sin(theta)[:, None] + (cy[None] * h_m[:, None]) * np.cos(theta)[
        :, None
    ]
    kx = _KM_PER_DEG * 1000 * np.cos(np.radians(lat))[:, None]
    clat = lat[:, None] + dy / (_KM_PER_DEG * 1000)
    clng = lng[:, None] + dx / kx
    ids = objs.nodes(clat.ravel(), clng.ravel(), np.zeros(clat.size, np.int64)).reshape(-1, 4)
    return np.concatenate([ids, ids[:, :1]], axis=1)


def _polyline(objs: _Objects, lat, lng, kx_km: float, rng) -> np.ndarray:
    """3-node lines of 40-120 m starting at lat/lng with a small bend; returns node-id rows."""
    n = len(lat)
    theta = rng.uniform(0, 2 * math.pi, n)
    seg = rng.uniform(20, 60, n) / 1000.0
    pts_lat, pts_lng = [lat], [lng]
    for _ in range(2):
        theta = theta + rng.normal(0, 0.3, n)
        pts_lat.append(pts_lat[-1] + seg * np.sin(theta) / _KM_PER_DEG)
        pts_lng.append(pts_lng[-1] + seg * np.cos(theta) / kx_km)
    la, lo = np.stack(pts_lat, 1), np.stack(pts_lng, 1)
    return objs.nodes(la.ravel(), lo.ravel(), np.zeros(la.size, np.int64)).reshape(-1, 3)


def write_world(path: str | Path, spec: WorldSpec = WorldSpec()) -> pl.DataFrame:
    """Write the world's PBF to `path` and return its targets per image cell: `cell_id` (UInt64, image
    level), `population` (people/km2), `income`, `arrangement` (0..1) and `population_3km` (people/km2
    within `neighbourhood_km` of the cell's centre; the name follows the radius)."""
    path = Path(path)
    half_km = world_half_width_km(spec)
    cells = _cover(spec, half_km)
    fields = LatentFields(spec, half_km)
    rng = np.random.default_rng([spec.seed, 2])
    objs = _Objects()
    targets = [_chunk(objs, fields, spec, cells[i : i + _CHUNK], rng) for i in range(0, len(cells), _CHUNK)]
    objs.write(path)
    return pl.concat(targets).sort("cell_id")
