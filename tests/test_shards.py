"""Sharded extraction (s2vec_core.shards) gives the whole-file rows, on the real Liechtenstein extract
forced into shards whose edges lines and areas cross. Needs osmium-tool (`osmium` on PATH)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import osmium
import polars as pl
import pytest

from s2vec_core import osm, s2, shards
from s2vec_core.osm.reader import AREA_TABLE, WAY_TABLE, channels

PBF = Path(__file__).resolve().parents[1] / "data" / "osm" / "liechtenstein-2013-08-03.osm.pbf"
LEVEL = 17
# 592 KB at 150 KB per shard at most: 10 cells of levels 5 to 10, plus the rest shard.
TARGET = 150_000
# Float sums folded in another order: measured, 27 of 52,841 values differ, by at most 3.1e-16 relative.
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
        if channels(w, WAY_TABLE):
            self._add("ways", [n.location for n in w.nodes if n.location.valid()])

    def area(self, a) -> None:
        if channels(a, AREA_TABLE):
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


def test_sharded_equals_whole():
    plan = shards.plan_shards(PBF, TARGET)
    assert len(plan.shards()) >= 8, plan
    crossing, outside = crossings(plan)
    # Shard edges are crossed by lines and areas (121 and 37), and the extract reaches past its header
    # bbox (1 object starts outside every shard cell).
    assert crossing["ways"] >= 100 and crossing["areas"] >= 25, crossing
    assert outside > 0

    whole_stats: dict = {}
    sharded_stats: dict = {}
    whole = osm.extract_cells_long(PBF, LEVEL, stats=whole_stats, workers=1)
    progress: list[tuple[int, int]] = []
    sharded = shards.extract_sharded(
        PBF,
        LEVEL,
        workers=2,
        stats=sharded_stats,
        target_bytes=TARGET,
        on_progress=lambda *p: progress.append(p),
    )
    n = len(plan.shards())
    assert progress == [(done, n) for done in range(n + 1)]

    assert sharded["cell_id"].is_sorted()
    assert sharded.select("cell_id", "channel").equals(whole.select("cell_id", "channel"))
    np.testing.assert_allclose(sharded["value"].to_numpy(), whole["value"].to_numpy(), rtol=RTOL, atol=0)
    for k in ("tagged_nodes", "tagged_ways", "tagged_areas"):
        assert sharded_stats[k] == whole_stats[k], k


def test_small_file_is_one_shard():
    assert shards.plan_shards(PBF).cells.size == 0
    progress: list[tuple[int, int]] = []
    frames = list(shards.iter_sharded(PBF, 12, on_progress=lambda *p: progress.append(p)))
    assert len(frames) == 1 and progress == [(0, 1), (1, 1)]
    assert frames[0].equals(osm.extract_cells_long(PBF, 12))


def test_shard_cells_fit_the_target():
    bbox = (9.0, 47.0, 15.0, 53.0)
    target = 48 << 20
    assert shards.shard_cells(10 << 20, bbox, target).size == 0
    leaves, _ = shards._samples(bbox)
    counts = []
    for size in (100 << 20, 400 << 20, 1600 << 20):
        cells = shards.shard_cells(size, bbox, target)
        share = shards._counts(cells, leaves) / leaves.size
        # Every sample in exactly one cell, each cell within the target, some parent not.
        assert share.sum() == 1 and (share > 0).all()
        assert (share * size <= target).all()
        parents = np.unique(s2.parent(cells, int(s2.cell_level(cells).min()) - 1))
        assert (shards._counts(parents, leaves) / leaves.size * size > target).any()
        counts.append(cells.size)
    assert counts == sorted(counts) and counts[0] < counts[-1]


def inside(ring: list[list[float]], lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Even-odd point in polygon in the lon/lat plane, as osmium-tool tests its regions."""
    xy = np.array(ring)
    x0, y0, x1, y1 = xy[:-1, 0], xy[:-1, 1], xy[1:, 0], xy[1:, 1]
    crosses = (y0[:, None] > lat) != (y1[:, None] > lat)
    dy = np.where(y1 == y0, 1, y1 - y0)
    x_at = x0[:, None] + (lat - y0[:, None]) * ((x1 - x0) / dy)[:, None]
    return (crosses & (lon < x_at)).sum(axis=0) % 2 == 1


def test_every_point_has_one_owner_inside_its_region():
    plan = shards.plan_shards(PBF, TARGET)
    rng = np.random.default_rng(14)
    x0, y0, x1, y1 = plan.bbox
    lon = rng.uniform(x0 - 0.3, x1 + 0.3, 20_000)
    lat = rng.uniform(y0 - 0.3, y1 + 0.3, 20_000)
    owners = np.array([s.owner(lat, lon) for s in plan.shards()])
    np.testing.assert_array_equal(owners.sum(axis=0), 1)
    # Each shard's region holds every point it owns, so its file holds every object it adds.
    for s, own in zip(plan.shards(), owners, strict=True):
        if "bbox" in s.region:
            bx0, by0, bx1, by1 = s.region["bbox"]
            held = (lon >= bx0) & (lon <= bx1) & (lat >= by0) & (lat <= by1)
        else:
            rings = s.region["polygon"]
            held = inside(rings[0], lon, lat)
            if len(rings) > 1:
                held &= ~inside(rings[1], lon, lat)
        assert held[own].all(), s.name


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


def test_a_failing_shard_stops_the_others_and_cleans_up(monkeypatch, tmp_path):
    real_step = shards._split_step
    broken = []

    def step_with_a_broken_shard(group, directory, source, max_extracts):
        ready, groups = real_step(group, directory, source, max_extracts)
        cells = [s for s in ready if not s.owner.rest]
        if cells and not broken:
            broken.append(directory / f"{cells[0].name}.osm.pbf")
            broken[0].write_bytes(b"not a pbf")
        return ready, groups

    monkeypatch.setattr(shards, "_split_step", step_with_a_broken_shard)
    with pytest.raises(osm.OSMFileError, match=r"shard-[0-9a-f]{16}\.osm\.pbf: unreadable"):
        shards.extract_sharded(PBF, LEVEL, workers=2, target_bytes=TARGET, tmp_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_split_in_levels_writes_the_same_files(tmp_path):
    """More shards than one osmium-tool run may write are split under ancestor cells first."""
    plan = shards.plan_shards(PBF, 60_000)
    assert len(plan.shards()) > 25
    one, levels = tmp_path / "one", tmp_path / "levels"
    one.mkdir(), levels.mkdir()
    a = shards.split(PBF, plan.shards(), one, max_extracts=64)
    b = shards.split(PBF, plan.shards(), levels, max_extracts=5)
    for x, y in zip(a, b, strict=True):
        assert subprocess.run(["osmium", "diff", "-q", str(x), str(y)], check=False).returncode == 0, x.name
    assert sorted(p.name for p in levels.iterdir()) == sorted(p.name for p in b)  # group files removed


@pytest.mark.parametrize("steps", [1, 2, 3, 50])
def test_groups_cut_the_shards_in_order_into_balanced_runs(steps):
    plan = shards.plan_shards(PBF, TARGET)
    groups = plan.groups(steps)
    assert [s for g in groups for s in g] == plan.shards()  # every shard once, in the plan's order
    assert (
        all(groups)
        and len(groups) <= steps
        and (len(groups) == plan.cells.size) == (steps >= plan.cells.size)
    )
    assert groups[-1][-1].owner.rest
    if steps == 2:  # the sample grid's weight splits in two near halves
        leaves, _ = shards._samples(plan.bbox)
        share = [
            shards._counts(
                np.array([s.owner.cells[0] for s in g if not s.owner.rest], np.uint64), leaves
            ).sum()
            for g in groups
        ]
        assert min(share) / max(share) > 0.5, share
    whole = shards.plan_shards(PBF).groups(steps)
    assert [[s.name for s in g] for g in whole] == [[shards.WHOLE]]


def test_groups_extracted_apart_merge_into_the_same_rows(tmp_path):
    """What the Dagster fan-out runs: each group extracted into its own directory (another machine's),
    then all merged in one place, equals the region extracted in one go, bit for bit."""
    plan = shards.plan_shards(PBF, TARGET)
    stats: dict = {}
    directories: dict = {}
    for i, group in enumerate(plan.groups(3)):
        part = shards.extract_shards(PBF, group, LEVEL, tmp_path / f"group-{i}", workers=1)
        stats = {k: stats.get(k, 0) + v for k, v in part.items()}
        directories.update({s.name: tmp_path / f"group-{i}" for s in group})
        # Only the rows stay: the directory is what a step uploads.
        assert {p.name.split(".")[-2] for p in (tmp_path / f"group-{i}").iterdir()} == {"key", "value"}
    merged = pl.concat(shards.merge_shards(plan, LEVEL, directories))
    at_once_stats: dict = {}
    at_once = shards.extract_sharded(PBF, LEVEL, workers=2, stats=at_once_stats, target_bytes=TARGET)
    assert merged.equals(at_once)
    assert stats == at_once_stats
