"""OSM extraction on the real Liechtenstein extract, checked against independent pyosmium handlers.

The reference handlers below match tags with their own plain code straight from the CHANNELS table
(not the compiled lookups) and measure geometry with their own formulas (haversine over node pairs,
spherical ring area), so they share only pyosmium's reading and area assembly with s2vec_core.osm.
"""

import hashlib
import math
from pathlib import Path

import numpy as np
import osmium
import polars as pl
import pytest

from s2vec_core import s2
from s2vec_core.osm import OSMFileError, extract_cells, extract_cells_long, pbf_info
from s2vec_core.taxonomy import CHANNEL_NAMES, CHANNELS

PBF = Path(__file__).resolve().parents[1] / "data" / "osm" / "liechtenstein-2013-08-03.osm.pbf"
LEVEL = 17
R = 6_371_008.8
# Largest S2 cell area at a level: kMaxArea.deriv / 4**level steradians (quadratic projection).
S2_MAX_AREA_DERIV = 2.635799256963161


def rule_matches(channel, tags: dict) -> bool:
    for key, values in channel.rules:
        v = tags.get(key)
        if v is not None and (v in values if values is not None else v != "no"):
            return True
    return False


def haversine(lat0, lon0, lat1, lon1):
    p0, p1 = np.radians(lat0), np.radians(lat1)
    h = np.sin((p1 - p0) / 2) ** 2 + np.cos(p0) * np.cos(p1) * np.sin(np.radians(lon1 - lon0) / 2) ** 2
    return 2 * R * np.arcsin(np.sqrt(h))


def ring_area_m2(lons, lats) -> float:
    """Spherical ring area (the geojson-area formula), closed ring given."""
    lo, la = np.radians(lons[:-1]), np.radians(lats[:-1])
    n = len(lo)
    s = sum((lo[(i + 2) % n] - lo[i]) * math.sin(la[(i + 1) % n]) for i in range(n))
    return abs(s) * R * R / 2


class Reference(osmium.SimpleHandler):
    """Counts per count channel, length per length channel, area per area channel."""

    def __init__(self):
        super().__init__()
        self.value = {c.name: 0.0 for c in CHANNELS}
        self.largest_spread = (0.0, 0)  # (m2, way id) of the largest spread-channel polygon from a way

    def node(self, n):
        tags = dict(n.tags)
        for c in CHANNELS:
            if c.kind == "count" and rule_matches(c, tags):
                self.value[c.name] += 1

    def way(self, w):
        tags = dict(w.tags)
        if w.is_closed() and tags.get("area") == "yes":
            return
        chans = [c for c in CHANNELS if c.kind == "length_m" and rule_matches(c, tags)]
        if not chans:
            return
        pts = [(n.location.lat, n.location.lon) if n.location.valid() else (np.nan, np.nan) for n in w.nodes]
        a = np.array(pts)
        d = haversine(a[:-1, 0], a[:-1, 1], a[1:, 0], a[1:, 1])
        length = float(np.nansum(d))  # pairs with a missing node are NaN: skipped
        for c in chans:
            self.value[c.name] += length

    def area(self, a):
        tags = dict(a.tags)
        chans = [c for c in CHANNELS if c.kind in ("count", "area_m2") and rule_matches(c, tags)]
        if not chans or a.num_rings()[0] == 0:
            return
        m2 = 0.0
        for outer in a.outer_rings():
            m2 += ring_area_m2(np.array([n.lon for n in outer]), np.array([n.lat for n in outer]))
            for inner in a.inner_rings(outer):
                m2 -= ring_area_m2(np.array([n.lon for n in inner]), np.array([n.lat for n in inner]))
        for c in chans:
            self.value[c.name] += 1 if c.kind == "count" else m2
            if c.spread and a.from_way():
                self.largest_spread = max(self.largest_spread, (m2, a.orig_id()))


@pytest.fixture(scope="module")
def extracted():
    stats = {}
    df = extract_cells(PBF, LEVEL, stats=stats)
    return df, stats


@pytest.fixture(scope="module")
def reference():
    ref = Reference()
    ref.apply_file(str(PBF), locations=True)
    return ref


def test_schema_sorted_unique_nonempty_cells_at_level(extracted):
    df, stats = extracted
    assert df.columns == ["cell_id", *CHANNEL_NAMES]
    assert df.schema["cell_id"] == pl.UInt64
    assert all(df.schema[n] == pl.Float64 for n in CHANNEL_NAMES)
    ids = df["cell_id"].to_numpy()
    assert np.all(np.diff(ids.astype(np.float64)) >= 0) and np.unique(ids).size == ids.size
    assert np.all(ids[1:] > ids[:-1])
    assert set(s2.cell_level(ids).tolist()) == {LEVEL}
    assert df.select(pl.sum_horizontal(pl.col(CHANNEL_NAMES).abs()) > 0).to_series().all()
    assert stats["tagged_nodes"] > 500 and stats["tagged_ways"] > 2000 and stats["tagged_areas"] > 3000


def test_count_channels_equal_an_independent_count(extracted, reference):
    df, _ = extracted
    counts = [c.name for c in CHANNELS if c.kind == "count"]
    got = df.select(counts).sum().row(0, named=True)
    assert sum(reference.value[n] for n in counts) > 5000
    assert got == {n: reference.value[n] for n in counts}


def test_line_lengths_within_1_percent_of_haversine_over_node_pairs(extracted, reference):
    df, _ = extracted
    lengths = [c.name for c in CHANNELS if c.kind == "length_m"]
    got = df.select(lengths).sum().row(0, named=True)
    roads = [n for n in lengths if n.startswith(("road_", "path_"))]
    total_ref = sum(reference.value[n] for n in roads)
    assert total_ref > 500_000  # Liechtenstein has > 500 km of highways in OSM
    assert sum(got[n] for n in roads) == pytest.approx(total_ref, rel=0.01)
    for n in lengths:
        assert got[n] == pytest.approx(reference.value[n], rel=0.01, abs=1.0), n


def test_area_channels_match_independent_spherical_areas(extracted, reference):
    df, _ = extracted
    for c in CHANNELS:
        if c.kind == "area_m2":
            assert df[c.name].sum() == pytest.approx(reference.value[c.name], rel=0.005, abs=1.0), c.name
    assert reference.value["building_footprint_m2"] > 1e5


def test_large_polygons_are_spread_over_many_cells_never_one_hot_pixel(extracted, reference, tmp_path):
    df, _ = extracted
    max_cell_m2 = S2_MAX_AREA_DERIV / 4**LEVEL * R * R
    m2, way_id = reference.largest_spread
    assert m2 > 100 * max_cell_m2
    # That polygon alone, in its own file: its area must land on at least area / max-cell-area cells,
    # no cell holding much more than its own area (the sample grid is finer than a cell).
    single = tmp_path / "one_polygon.osm.pbf"
    way = next(
        osmium.osm.mutable.Way(id=o.id, nodes=[n.ref for n in o.nodes], tags=dict(o.tags))
        for o in osmium.FileProcessor(str(PBF), osmium.osm.WAY)
        if o.id == way_id
    )
    refs = set(way.nodes)
    with osmium.SimpleWriter(str(single)) as w:
        for o in osmium.FileProcessor(str(PBF), osmium.osm.NODE):
            if o.id in refs:
                w.add_node(o.replace(tags={}))
        w.add_way(way)
    one = extract_cells(single, LEVEL)
    spread = [c.name for c in CHANNELS if c.spread]
    values = one.select(spread).to_numpy()
    fed = values.sum(axis=0) > 0
    assert fed.any()
    for col in values[:, fed].T:
        assert col.sum() == pytest.approx(m2, rel=0.005)
        assert (col > 0).sum() >= m2 / max_cell_m2
        assert col.max() <= 1.5 * max_cell_m2
    # Across the whole extract, too: every spread channel covers enough cells to hold its area.
    for name in spread:
        col = df[name].to_numpy()
        assert (col > 0).sum() * max_cell_m2 >= col.sum(), name


def test_line_length_is_split_over_the_cells_a_road_crosses(extracted):
    df, _ = extracted
    # A 70 m cell cannot hold a long straight road: many cells carry a little road length each.
    roads = df.select(pl.sum_horizontal(pl.col("^road_.*_m$"))).to_series().to_numpy()
    assert (roads > 0).sum() > 5000
    assert np.median(roads[roads > 0]) < 500


def test_long_form_agrees_with_wide(extracted):
    df, _ = extracted
    long = extract_cells_long(PBF, LEVEL)
    assert long.columns == ["cell_id", "channel", "value"]
    wide_sums = df.select(CHANNEL_NAMES).sum().row(0)
    long_sums = long.group_by("channel").agg(pl.col("value").sum())
    by_ch = dict(zip(long_sums["channel"].to_list(), long_sums["value"].to_list()))
    assert [by_ch.get(i, 0.0) for i in range(len(CHANNEL_NAMES))] == pytest.approx(wide_sums, rel=1e-9)
    assert long["cell_id"].n_unique() == df.height


def test_clipped_extract_keeps_located_parts_and_counts_the_missing(tmp_path):
    clipped = tmp_path / "clipped.osm.pbf"
    with osmium.SimpleWriter(str(clipped)) as w:
        for o in osmium.FileProcessor(str(PBF)):
            # Drop a strip of nodes across the country: ways crossing it lose node locations.
            if o.is_node() and 9.52 < o.location.lon < 9.53:
                continue
            w.add(o)
    stats = {}
    df = extract_cells(clipped, LEVEL, stats=stats)
    assert stats["ways_missing_nodes"] > 10 and stats["missing_node_refs"] > stats["ways_missing_nodes"]
    ref = Reference()
    ref.apply_file(str(clipped), locations=True)
    roads = [c.name for c in CHANNELS if c.kind == "length_m"]
    assert df.select(roads).sum().row(0) == pytest.approx([ref.value[n] for n in roads], rel=0.01, abs=1.0)


def test_levels_out_of_range_are_refused():
    for level in (-1, 27):
        with pytest.raises(ValueError, match="level"):
            extract_cells(PBF, level)


@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage"])
def test_bad_files_raise_osm_file_error_naming_the_file(tmp_path, damage):
    bad = tmp_path / f"{damage}.osm.pbf"
    data = PBF.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) * 6 // 10])
    elif damage == "garbage":
        bad.write_bytes(bytes(range(256)) * 100)
    for fn in (lambda p: extract_cells(p, LEVEL), lambda p: extract_cells(p, LEVEL, workers=2), pbf_info):
        with pytest.raises(OSMFileError, match=str(bad)):
            fn(bad)


def test_two_processes_give_the_same_cells_as_one(extracted):
    df, stats = extracted
    two_stats = {}
    two = extract_cells(PBF, LEVEL, stats=two_stats, workers=2)
    assert two_stats == stats
    assert two["cell_id"].to_list() == df["cell_id"].to_list()
    np.testing.assert_allclose(
        two.select(CHANNEL_NAMES).to_numpy(), df.select(CHANNEL_NAMES).to_numpy(), rtol=1e-9, atol=1e-6
    )


def test_pbf_info_matches_the_file(tmp_path):
    info = pbf_info(PBF)
    assert info["sha256"] == hashlib.sha256(PBF.read_bytes()).hexdigest()
    assert info["size_bytes"] == PBF.stat().st_size
    counts = {"n": 0, "w": 0, "r": 0}
    for o in osmium.FileProcessor(str(PBF)):
        counts[o.type_str()] += 1
    assert (info["nodes"], info["ways"], info["relations"]) == (counts["n"], counts["w"], counts["r"])
    lon_min, lat_min, lon_max, lat_max = info["bbox"]
    assert 9.4 < lon_min < lon_max < 9.7 and 47.0 < lat_min < lat_max < 47.3
    assert info["replication_timestamp"].startswith("2013-08-03")


def test_geometry_across_the_antimeridian_takes_the_short_way(tmp_path):
    # A 222 m road and a 222 m x 222 m forest straddling lon 180 on the equator (synthetic: no bundled
    # extract crosses it).
    pbf = tmp_path / "antimeridian.osm.pbf"
    west, east, d = 179.999, -179.999, 0.001
    corners = [(west, -d), (east, -d), (east, d), (west, d)]
    with osmium.SimpleWriter(str(pbf)) as w:
        w.add_node(osmium.osm.mutable.Node(id=1, location=(west, 0.0)))
        w.add_node(osmium.osm.mutable.Node(id=2, location=(east, 0.0)))
        for i, (lon, lat) in enumerate(corners, start=3):
            w.add_node(osmium.osm.mutable.Node(id=i, location=(lon, lat)))
        w.add_way(osmium.osm.mutable.Way(id=1, nodes=[1, 2], tags={"highway": "residential"}))
        w.add_way(osmium.osm.mutable.Way(id=2, nodes=[3, 4, 5, 6, 3], tags={"landuse": "forest"}))
    df = extract_cells(pbf, LEVEL)
    lat, lng = s2.cell_center(df["cell_id"].to_numpy())
    assert np.all(np.abs(lng) > 179.99) and np.all(np.abs(lat) < 0.01)
    width = haversine(0.0, west, 0.0, east)
    assert width < 250
    assert df["road_residential_m"].sum() == pytest.approx(width, rel=1e-6)
    assert df["forest_m2"].sum() == pytest.approx(width * haversine(-d, 0.0, d, 0.0), rel=0.01)
    assert (df["forest_m2"] > 0).sum() >= 4  # spread over the cells on both sides


def test_geometry_across_a_cube_face_edge_is_split_on_both_faces(tmp_path):
    # Faces 0 and 2 meet at lat 45 on lon 0: a road and a forest straddling that edge (synthetic).
    pbf = tmp_path / "face_edge.osm.pbf"
    south, north, d = 44.999, 45.001, 0.001
    corners = [(-d, south), (d, south), (d, north), (-d, north)]
    with osmium.SimpleWriter(str(pbf)) as w:
        w.add_node(osmium.osm.mutable.Node(id=1, location=(0.0, south)))
        w.add_node(osmium.osm.mutable.Node(id=2, location=(0.0, north)))
        for i, loc in enumerate(corners, start=3):
            w.add_node(osmium.osm.mutable.Node(id=i, location=loc))
        w.add_way(osmium.osm.mutable.Way(id=1, nodes=[1, 2], tags={"highway": "residential"}))
        w.add_way(osmium.osm.mutable.Way(id=2, nodes=[3, 4, 5, 6, 3], tags={"landuse": "forest"}))
    df = extract_cells(pbf, LEVEL)
    faces = s2.face_ij(df["cell_id"].to_numpy())[0]
    road = df["road_residential_m"].to_numpy() > 0
    forest = df["forest_m2"].to_numpy() > 0
    assert set(faces[road]) == set(faces[forest]) == {0, 2}
    assert df["road_residential_m"].sum() == pytest.approx(haversine(south, 0.0, north, 0.0), rel=1e-6)
    width = haversine(45.0, -d, 45.0, d)
    assert df["forest_m2"].sum() == pytest.approx(width * haversine(south, 0.0, north, 0.0), rel=0.01)


def test_roads_and_areas_split_on_the_cell_grid_match_the_cells_they_cross(tmp_path):
    # A straight road along a meridian inside one face: every piece's cell holds a point of the road
    # and the pieces add up to the road; a forest's shares follow how much of each cell it covers.
    pbf = tmp_path / "grid.osm.pbf"
    lat0, lat1, lon = 47.10, 47.12, 9.5
    with osmium.SimpleWriter(str(pbf)) as w:
        w.add_node(osmium.osm.mutable.Node(id=1, location=(lon, lat0)))
        w.add_node(osmium.osm.mutable.Node(id=2, location=(lon, lat1)))
        w.add_way(osmium.osm.mutable.Way(id=1, nodes=[1, 2], tags={"highway": "residential"}))
    df = extract_cells(pbf, LEVEL)
    lats = np.linspace(lat0, lat1, 20_001)
    crossed = set(s2.latlng_to_cell_id(lats, np.full_like(lats, lon), LEVEL).tolist())
    assert set(df["cell_id"].to_list()) == crossed
    lengths = df["road_residential_m"].to_numpy()
    assert lengths.sum() == pytest.approx(haversine(lat0, lon, lat1, lon), rel=1e-9)
    # Interior cells hold about one cell's worth of road; none more than a cell diagonal.
    max_edge = math.sqrt(S2_MAX_AREA_DERIV / 4**LEVEL) * R
    assert lengths.max() < 1.5 * max_edge


def test_segments_ending_on_cell_edges_keep_their_length():
    # Grid coordinates chosen to land exactly on cell edges, increasing and decreasing.
    from s2vec_core.osm.geometry import GridPoints, split_on_grid

    x0 = np.array([0.5, 3.0, 2.0, 7.25])
    y0 = np.array([0.5, 1.0, 2.0, 5.5])
    x1 = np.array([2.0, 1.0, 2.0, 4.0])
    y1 = np.array([3.0, 1.0, 5.0, 2.0])
    face = np.full(4, 2, np.int8)
    pieces = split_on_grid(GridPoints(face, x0, y0, 10), GridPoints(face, x1, y1, 10))
    seg, cells, frac = pieces.owner, pieces.cell, pieces.value
    np.testing.assert_allclose(np.bincount(seg, frac, 4), 1.0)
    assert np.all(frac >= 0) and np.all(np.diff(seg) >= 0)
    # Every piece's cell is a cell the segment passes through: its (i, j) within the segment's box.
    _, i, j = s2.face_ij(cells)
    lo_i, hi_i = np.floor(np.minimum(x0, x1)), np.floor(np.maximum(x0, x1))
    lo_j, hi_j = np.floor(np.minimum(y0, y1)), np.floor(np.maximum(y0, y1))
    live = frac > 0
    assert np.all((i >= lo_i[seg]) & (i <= hi_i[seg]) & (j >= lo_j[seg]) & (j <= hi_j[seg]) | ~live)


def _area_workers_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"_area_worker" in cmdline and ppid == pid:
            found.append(int(entry.name))
    return found


def test_area_worker_exits_when_its_caller_is_killed():
    import os
    import signal
    import subprocess
    import sys
    import time

    # At level 22 the area worker needs ~3 s for this file; its caller is killed as soon as it starts.
    code = f"from s2vec_core.osm import extract_cells_long; extract_cells_long({str(PBF)!r}, 22, workers=2)"
    caller = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    workers = []
    while not workers and time.monotonic() < deadline:
        workers = _area_workers_of(caller.pid)
        time.sleep(0.05)
    assert workers, "the area worker never started"
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        alive = []
        for pid in workers:
            try:
                os.kill(pid, 0)
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    alive.append(pid)
            except (ProcessLookupError, FileNotFoundError):
                pass
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"area worker(s) {alive} outlived their killed caller")


def test_spreading_in_small_batches_gives_the_same_cells(extracted, monkeypatch):
    from s2vec_core.osm import extract as extract_module

    df, _ = extracted
    monkeypatch.setattr(extract_module, "SPREAD_BATCH_PIECES", 500)  # many batches per chunk
    batched = extract_cells(PBF, LEVEL, workers=1)
    assert batched["cell_id"].to_list() == df["cell_id"].to_list()
    np.testing.assert_allclose(
        batched.select(CHANNEL_NAMES).to_numpy(), df.select(CHANNEL_NAMES).to_numpy(), rtol=1e-9, atol=1e-6
    )
