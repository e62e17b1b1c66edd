"""`make run` (s2vec_assets.run): stage planning over the asset graph, and its argument checks."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from s2vec_assets import run
from s2vec_assets.definitions import defs as load_defs

REPO = Path(__file__).resolve().parent.parent
P = dg.StaticPartitionsDefinition(["x", "y"])


@dg.asset(partitions_def=P)
def a(): ...


@dg.asset(partitions_def=P, deps=[a])
def b(): ...


@dg.asset(deps=[b])
def model(): ...


@dg.asset(partitions_def=P, deps=[model, b])
def embed(): ...


@dg.asset(partitions_def=P, deps=[embed])
def report(): ...


@dg.asset(deps=[embed])
def cross(): ...


def _names(stages):
    return [(pdef is not None, [k.to_user_string() for k in keys]) for pdef, keys in stages]


def test_stages_merge_partitioned_levels_until_the_model_then_wait_for_every_region():
    graph = dg.Definitions(assets=[a, b, model, embed, report, cross]).resolve_asset_graph()
    # After the all-region model, `report` runs only once every region is embedded (the version complete).
    assert _names(run.plan_stages(graph)) == [
        (True, ["a", "b"]), (False, ["model"]), (True, ["embed"]), (True, ["report"]), (False, ["cross"])
    ]


def test_a_config_file_gives_each_stage_its_own_assets_ops():
    config = {"ops": {"a": {"config": {"x": 1}}, "model": {"config": {"y": 2}}}}
    assert run.stage_config(config, [dg.AssetKey("a"), dg.AssetKey("b")])["ops"] == {"a": {"config": {"x": 1}}}
    assert "ops" not in run.stage_config(config, [dg.AssetKey("cross")])
    assert run.stage_config(None, [dg.AssetKey("a")])["loggers"]["console"]["config"]["log_level"] == "INFO"


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


HOLD_GPU = """
import time, dagster as dg
from s2vec_assets.run import run_tags

@dg.asset(pool="gpu")
def training():
    time.sleep(600)

with dg.DagsterInstance.get() as instance:
    dg.materialize([training], instance=instance, tags=run_tags())
"""


@pytest.mark.timeout(120)
def test_a_killed_run_gives_its_gpu_slot_back_on_the_next_make_run(tmp_path, monkeypatch):
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_GPU], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        try:
            deadline = time.monotonic() + 90
            while not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots:
                assert holder.poll() is None and time.monotonic() < deadline, "the run never took the gpu slot"
                time.sleep(0.5)
        finally:
            holder.kill()
            holder.wait()
        (run_id,) = [s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots]
        assert run.reap_dead_runs(instance) == [run_id]
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        assert run.reap_dead_runs(instance) == []
