"""`make run` (s2vec_assets.run): stage planning over the asset graph, and its argument checks."""

import dagster as dg
import pytest

from s2vec_assets import run
from s2vec_assets.definitions import defs as load_defs

P = dg.StaticPartitionsDefinition(["x", "y"])


@dg.asset(partitions_def=P)
def a(): ...


@dg.asset(partitions_def=P, deps=[a])
def b(): ...


@dg.asset(deps=[b])
def model(): ...


@dg.asset(partitions_def=P, deps=[model, b])
def embed(): ...


def _names(stages):
    return [(pdef is not None, [k.to_user_string() for k in keys]) for pdef, keys in stages]


def test_stages_merge_partitioned_levels_and_run_unpartitioned_assets_once_in_between():
    graph = dg.Definitions(assets=[a, b, model, embed]).resolve_asset_graph()
    assert _names(run.plan_stages(graph)) == [(True, ["a", "b"]), (False, ["model"]), (True, ["embed"])]


def test_every_stage_of_the_real_graph_comes_after_its_upstream_assets():
    graph = load_defs().resolve_asset_graph()
    stages = run.plan_stages(graph)
    stage_of = {key: i for i, (_, keys) in enumerate(stages) for key in keys}
    assert set(stage_of) == set(graph.get_all_asset_keys())
    for key, i in stage_of.items():
        for parent in graph.get(key).parent_keys:
            assert stage_of[parent] <= i  # one run executes a stage's assets in dependency order
    assert [k.to_user_string() for k in stages[0][1]][:2] == ["osm_extract", "cell_features"]


def test_unknown_region_is_refused_before_anything_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        run.main(["--regions", "atlantis"])
    assert exc.value.code == 2
    assert "atlantis" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no runs, no storage
