"""The OSM proxy targets leak nothing into the feature vector and count what they claim."""

from pathlib import Path

import numpy as np
import osmium
import polars as pl
import pytest

from s2vec_core import s2
from s2vec_core.osm import extract_cells
from s2vec_core.proxy import PROXY_TARGET_KEYS, osm_proxy_points, osm_proxy_targets
from s2vec_core.targets import cell_area_km2
from s2vec_core.taxonomy import CHANNELS, FILTER_KEYS, RESERVED_TARGET_KEYS

MONACO = Path(__file__).resolve().parents[1] / "data" / "osm" / "monaco-2023.osm.pbf"
LEVEL = 13
TARGET_TAGS = {
    "addr:housenumber": "12",
    "addr:street": "Rue Grimaldi",
    "building:levels": "5",
    "height": "17",
}


def reserved(key: str) -> bool:
    return any(key == r or (r.endswith(":") and key.startswith(r)) for r in RESERVED_TARGET_KEYS)


def test_target_keys_are_reserved_and_no_channel_reads_them():
    assert all(reserved(k) for k in PROXY_TARGET_KEYS)
    rule_keys = {k for ch in CHANNELS for k, _ in ch.rules}
    assert not [k for k in rule_keys | set(FILTER_KEYS) if reserved(k)]


def square(lat, lng, d=0.0002):
    return [(lat, lng), (lat, lng + d), (lat + d, lng + d), (lat + d, lng)]


def write_pbf(path: Path, with_target_tags: bool) -> None:
    """Nodes and closed ways near Monaco; the target tags are the only difference between the two files."""
    extra = TARGET_TAGS if with_target_tags else {}
    nodes, ways = [], []
    lat0, lng0 = 43.7300, 7.4200
    for i in range(6):
        lat, lng = lat0 + 0.002 * i, lng0 + 0.001 * i
        nodes.append(({"amenity": "restaurant", **extra}, lat, lng))  # a POI with an address
        nodes.append((dict(extra), lat + 0.0005, lng))  # an address point and nothing else
        ring = []
        for la, lo in square(lat + 0.001, lng):
            nodes.append(({}, la, lo))
            ring.append(len(nodes))
        ways.append(({"building": "apartments", **extra}, ring + ring[:1]))
        ring = []
        for la, lo in square(lat + 0.0015, lng + 0.0005):
            nodes.append(({}, la, lo))
            ring.append(len(nodes))
        ways.append((dict(extra), ring + ring[:1]))  # a closed way with target tags only
    with osmium.SimpleWriter(str(path)) as w:
        for i, (tags, la, lo) in enumerate(nodes, 1):
            w.add_node(osmium.osm.mutable.Node(id=i, version=1, location=(lo, la), tags=tags))
        for i, (tags, refs) in enumerate(ways, 1):
            w.add_way(osmium.osm.mutable.Way(id=i, version=1, nodes=refs, tags=tags))


def test_extraction_ignores_target_tags(tmp_path):
    plain, tagged = tmp_path / "plain.osm.pbf", tmp_path / "tagged.osm.pbf"
    write_pbf(plain, False)
    write_pbf(tagged, True)
    a, b = extract_cells(plain, 17), extract_cells(tagged, 17)
    assert a.height > 0 and a.equals(b)
    # ... while the proxy does see them: 6 POIs + 6 address points + 6 buildings + 6 bare areas.
    pts = osm_proxy_points(tagged)
    assert pts["address"].sum() == 24
    assert osm_proxy_points(plain).height == 0


def test_objects_with_only_target_tags_feed_no_channel(tmp_path):
    path = tmp_path / "only.osm.pbf"
    with osmium.SimpleWriter(str(path)) as w:
        for i in range(5):
            w.add_node(
                osmium.osm.mutable.Node(
                    id=i + 1, version=1, location=(7.42 + 0.001 * i, 43.73), tags=TARGET_TAGS
                )
            )
        w.add_way(osmium.osm.mutable.Way(id=1, version=1, nodes=[1, 2, 3, 1], tags=TARGET_TAGS))
    assert extract_cells(path, 17).height == 0


def test_floor_area_is_levels_times_footprint(tmp_path):
    path = tmp_path / "tagged.osm.pbf"
    write_pbf(path, True)
    pts = osm_proxy_points(path).filter(pl.col("floor_area_m2") > 0)
    assert pts.height == 6  # only the closed ways tagged building
    lat = 43.7300 + 0.001
    side_ns = 0.0002 * 6_371_008.8 * np.pi / 180
    expected = 5 * side_ns * side_ns * np.cos(np.radians(lat))
    assert np.allclose(pts["floor_area_m2"].to_numpy(), expected, rtol=2e-3)


def test_monaco_proxy_targets_per_cell():
    features = extract_cells(MONACO, 17)
    cells = np.unique(s2.parent(features["cell_id"].to_numpy(), LEVEL))
    t = osm_proxy_targets(MONACO, LEVEL, cells=cells)
    assert t["cell_id"].to_list() == cells.tolist()
    assert t.null_count().sum_horizontal().item() == 0
    # Independent count of addressed objects: nodes directly, ways/relations as the closed ones.
    n_nodes = n_other = 0
    for o in osmium.FileProcessor(str(MONACO)).with_filter(osmium.filter.KeyFilter("addr:housenumber")):
        if o.is_node():
            n_nodes += 1
        elif o.is_way() and o.is_closed() or o.is_relation():
            n_other += 1
    total = float((t["address_density"] * cell_area_km2(t["cell_id"].to_numpy())).sum())
    in_cells = osm_proxy_targets(MONACO, LEVEL)
    all_total = float((in_cells["address_density"] * cell_area_km2(in_cells["cell_id"].to_numpy())).sum())
    assert all_total == pytest.approx(n_nodes + n_other, abs=5)  # a few relations may fail to assemble
    assert 0 < total <= all_total
    assert (t["floor_area_density"] > 0).sum() > 0
