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
# 592 KB at 200 KB per shard at most: level 10 (~8 km cells), 11 shards, plus the rest shard.
TARGET = 200_000
# Float sums folded in another order: the measured largest relative difference is ~3e-16.
RTOL = 1e-12


class Crossings(osmium.SimpleHandler):
    """Per tagged way and area: the shard cells its nodes lie in, and whether its first point lies
    outside every shard cell (then only the rest shard adds it)."""

    def __init__(self, owner: shards.Owner) -> None:
        super().__init__()
        self.owner = owner
        self.crossing = {"ways": 0, "areas": 0}
        self.outside = 0

    def _add(self, kind: str, lons: list[float], lats: list[float]) -> None:
        cells = s2.latlng_to_cell_id(np.array(lats), np.array(lons), self.owner.level)
        self.crossing[kind] += np.unique(cells).size > 1
        self.outside += not self.owner(np.array(lats[:1]), np.array(lons[:1]))[0]

    def way(self, w) -> None:
        if osm._channels(w, osm._WAY_TABLE):
            locs = [n.location for n in w.nodes if n.location.valid()]
            self._add("ways", [p.lon for p in locs], [p.lat for p in locs])

    def area(self, a) -> None:
        if osm._channels(a, osm._AREA_TABLE):
            ring = next(iter(a.outer_rings()))
            self._add("areas", [n.lon for n in ring], [n.lat for n in ring])


@pytest.mark.slow  # ~13 s quiet, 30 s on a loaded machine: 12 shard processes
def test_sharded_equals_whole():
    plan = shards.plan_shards(PBF, TARGET)
    assert plan.cells.size >= 8, plan
    seen = Crossings(shards.Owner(plan.level, tuple(plan.cells.tolist())))
    seen.apply_file(str(PBF), locations=True)
    # Shard edges are crossed by lines and areas, and the extract reaches past its header bbox.
    assert seen.crossing["ways"] >= 100 and seen.crossing["areas"] >= 10, seen.crossing
    assert seen.outside > 0

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
    sizes = [s << 20 for s in (100, 400, 1600, 6400)]
    levels = [shards.shard_level(size, bbox, target) for size in sizes]
    assert levels == sorted(levels) and levels[0] < levels[-1]

    def largest_share(lv: int) -> float:
        return shards._shares(s2.cover_bbox(bbox[1], bbox[0], bbox[3], bbox[2], lv), lv, bbox).max()

    # Each chosen level is the coarsest whose largest expected shard fits the target.
    for size, level in zip(sizes, levels, strict=True):
        assert largest_share(level) * size <= target < largest_share(level - 1) * size


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
