"""A snapshot of the asset graph: keys, deps, partitioning, code versions, groups, kinds, ops, check specs,
jobs, sensors and schedules. A change to any of them shows up in review as a diff of
`tests/snapshots/asset_graph.json`; accept it with `S2VEC_UPDATE_SNAPSHOTS=1 make test-fast`."""

import json
import os
from pathlib import Path

import pytest

from s2vec_assets.definitions import defs as load_defs
from s2vec_assets.defs.partitions import region_partitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def _partitioning(partitions_def) -> str | None:
    if partitions_def is None:
        return None
    # The regions come from the catalog; what the graph fixes is that the asset is split by region.
    return "region" if partitions_def == region_partitions else type(partitions_def).__name__


def graph_snapshot() -> dict:
    defs = load_defs()
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "partitioned_by": _partitioning(node.partitions_def),
            "code_version": node.code_version,
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "pools": sorted(node.pools or ()),
            # The steps a run makes of the asset: one op, or a graph's (cell_features fans out).
            "ops": sorted(op.name for op in node.assets_def.node_def.iterate_op_defs()),
        }
    checks = {}
    for check in defs.asset_checks:
        for spec in check.check_specs:
            checks[spec.key.to_user_string()] = {
                "blocking": spec.blocking,
                "partitioned_by": _partitioning(spec.partitions_def),
                "step": check.node_def.name,
            }
    return {
        "assets": assets,
        "checks": dict(sorted(checks.items())),
        "jobs": sorted(j.name for j in defs.jobs or []),
        "sensors": sorted(s.name for s in defs.sensors or []),
        "schedules": sorted(s.name for s in defs.schedules or []),
    }


def test_the_asset_graph_matches_its_snapshot():
    current = graph_snapshot()
    if os.environ.get("S2VEC_UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=2) + "\n")
        pytest.skip(f"snapshot rewritten: {SNAPSHOT}")
    assert SNAPSHOT.exists(), f"no snapshot yet: run with S2VEC_UPDATE_SNAPSHOTS=1 to write {SNAPSHOT}"
    assert current == json.loads(SNAPSHOT.read_text()), (
        "the asset graph changed; if that is intended, rerun with S2VEC_UPDATE_SNAPSHOTS=1 and commit "
        f"{SNAPSHOT.name}"
    )
