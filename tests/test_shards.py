"""Sharded extraction (s2vec_core.shards) gives the whole-file rows, on the real Liechtenstein extract
forced into shards whose edges lines and areas cross. Needs osmium-tool (`osmium` on PATH)."""

import shutil
from pathlib import Path

import numpy as np
import osmium
import pytest

from s2vec_core import osm, s2, shards

PBF = Path(__file__).resolve().parents[1] / "data" / "osm" / "liechtenstein-2013-08-03.osm.pbf"
LEVEL = 17
# 592 KB at 100 KB per shard: level-12 cells (~2 km) packed into 9 shards, plus the rest shard.
TARGET = 100_000
# Float sums folded in another order: the measured largest relative difference is ~3e-16.
RTOL = 1e-12


class Points(osmium.SimpleHandler):
    """The node locations of every tagged way and area (outer ring), with the object's index."""

    def __init__(self) -> None:
        super().__init__()
        self.lon: list[float] = []
        self.lat: list[float] = []
        self.obj: list[int] = []
        self.kind: list[str] = []

    def _add(self, kind: str, locs) -> None:
        n = len(self.kind)
        self.kind.append(kind)
        for loc in locs:
            self.lon.append(loc.lon)
            self.lat.append(loc.lat)
            self.obj.append(n)

    def way(self, w) -> None:
        if osm._channels(w, osm._WAY_TABLE):
            self._add("ways", [n.location for n in w.nodes if n.location.valid()])

    def area(self, a) -> None:
        if osm._channels(a, osm._AREA_TABLE):
            self._add("areas", list(next(iter(a.outer_rings()))))


def crossings(plan: shards.ShardPlan) -> tuple[dict[str, int], int]:
    """How many tagged ways and areas have nodes in more than one shard, and how many objects only the
    rest shard adds (first point outside every shard cell)."""
    pts = Points()
    pts.apply_file(str(PBF), locations=True)
    lat, lon, obj = np.array(pts.lat), np.array(pts.lon), np.array(pts.obj)
    owners = [s.owner for s in plan.shards()]
    shard = np.argmax([owner(lat, lon) for owner in owners], axis=0)
    pairs = np.unique(np.stack([obj, shard]), axis=1)
    n_shards = np.bincount(pairs[0], minlength=len(pts.kind))
    kind = np.array(pts.kind)
    first = np.unique(obj, return_index=True)[1]
    crossing = {k: int(((n_shards > 1) & (kind == k)).sum()) for k in ("ways", "areas")}
    return crossing, int((shard[first] == len(owners) - 1).sum())


@pytest.mark.slow  # ~10 s quiet, 25 s on a loaded machine: 10 shard processes
def test_sharded_equals_whole():
    plan = shards.plan_shards(PBF, TARGET)
    assert len(plan.shards()) >= 8, plan
    crossing, outside = crossings(plan)
    # Shard edges are crossed by lines and areas (184 and 50), and the extract reaches past its header
    # bbox (2 objects start outside it).
    assert crossing["ways"] >= 100 and crossing["areas"] >= 25, crossing
    assert outside > 0

    whole_stats: dict = {}
    sharded_stats: dict = {}
    whole = osm.extract_cells_long(PBF, LEVEL, stats=whole_stats, workers=1)
    sharded = shards.extract_sharded(PBF, LEVEL, workers=2, stats=sharded_stats, target_bytes=TARGET)

    assert sharded["cell_id"].is_sorted()
    assert sharded.select("cell_id", "channel").equals(whole.select("cell_id", "channel"))
    np.testing.assert_allclose(sharded["value"].to_numpy(), whole["value"].to_numpy(), rtol=RTOL, atol=0)
    for k in ("tagged_nodes", "tagged_ways", "tagged_areas"):
        assert sharded_stats[k] == whole_stats[k], k


def test_small_file_is_one_shard():
    assert shards.plan_shards(PBF).cells.size == 0
    frames = list(shards.iter_sharded(PBF, 12))
    assert len(frames) == 1
    assert frames[0].equals(osm.extract_cells_long(PBF, 12))


def test_shard_level_follows_size():
    bbox = (9.0, 47.0, 15.0, 53.0)
    target = 48 << 20
    assert shards.shard_level(10 << 20, bbox, target) is None
    cap = target / shards.PACK
    sizes = [s << 20 for s in (100, 400, 1600, 6400)]
    levels = [shards.shard_level(size, bbox, target) for size in sizes]
    assert levels == sorted(levels) and levels[0] < levels[-1]

    def largest_share(lv: int) -> float:
        return shards._shares(s2.cover_bbox(bbox[1], bbox[0], bbox[3], bbox[2], lv), lv, bbox).max()

    # Each chosen level is the coarsest whose largest expected shard fits the target.
    for size, level in zip(sizes, levels, strict=True):
        assert largest_share(level) * size <= cap < largest_share(level - 1) * size


def test_every_point_has_one_owner():
    plan = shards.plan_shards(PBF, TARGET)
    rng = np.random.default_rng(14)
    x0, y0, x1, y1 = plan.bbox
    lon = rng.uniform(x0 - 0.3, x1 + 0.3, 20_000)
    lat = rng.uniform(y0 - 0.3, y1 + 0.3, 20_000)
    owners = np.array([s.owner(lat, lon) for s in plan.shards()])
    np.testing.assert_array_equal(owners.sum(axis=0), 1)
    # Each cell's shard region holds every point the cell owns.
    for s, own in zip(plan.shards()[:-1], owners[:-1], strict=True):
        bx0, by0, bx1, by1 = s.region["bbox"]
        assert ((lon[own] >= bx0) & (lon[own] <= bx1) & (lat[own] >= by0) & (lat[own] <= by1)).all()


def test_key_ranges_split_keys_by_shard():
    cells = np.sort(s2.cover_bbox(47.0, 9.4, 47.3, 9.7, 10))
    keys = np.sort(s2.latlng_to_cell_id(np.linspace(47.0, 47.3, 500), np.linspace(9.4, 9.7, 500), LEVEL))
    edges = shards._key_ranges(cells)
    group = np.searchsorted(edges, keys, "right")
    parent = s2.parent(keys, 10)
    # Keys in one range share their shard cell; each shard cell's keys fall in one range.
    for g in np.unique(group):
        assert np.unique(parent[group == g]).size == 1
    for c in np.unique(parent):
        assert np.unique(group[parent == c]).size == 1


def test_missing_osmium_tool_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(shards.ShardError, match=r"apt-get install -y osmium-tool"):
        shards.extract_sharded(PBF, LEVEL, target_bytes=TARGET, tmp_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # temporary files removed


def test_split_failure_names_the_file_and_cleans_up(tmp_path):
    bad = tmp_path / "truncated.osm.pbf"
    bad.write_bytes(PBF.read_bytes()[:300_000])
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(shards.ShardError, match=r"truncated\.osm\.pbf.*osmium extract"):
        shards.extract_sharded(bad, LEVEL, target_bytes=TARGET, tmp_dir=work)
    assert not list(work.iterdir())
