"""`make run` (s2vec_assets.run): stage planning over the asset graph, and its argument checks."""

import os
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
        (True, ["a", "b"]),
        (False, ["model"]),
        (True, ["embed"]),
        (True, ["report"]),
        (False, ["cross"]),
    ]


def test_a_config_file_gives_each_stage_its_own_assets_ops():
    config = {"ops": {"a": {"config": {"x": 1}}, "model": {"config": {"y": 2}}}}
    assert run.stage_config(config, [dg.AssetKey("a"), dg.AssetKey("b")])["ops"] == {
        "a": {"config": {"x": 1}}
    }
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


def test_each_stage_of_the_real_graph_runs_under_a_named_job_not_an_ephemeral_one():
    from s2vec_assets.defs.jobs import MODEL_JOB, REGION_JOB

    defs = load_defs()
    assert {job.name for job in defs.jobs} >= {REGION_JOB, MODEL_JOB}
    for pdef, keys in run.plan_stages(defs.resolve_asset_graph()):
        assert run.job_for(defs, keys).name == (REGION_JOB if pdef is not None else MODEL_JOB)
    # A stage no named job holds falls back to the global asset job (still a named, loadable job).
    toy = dg.Definitions(assets=[a, b, model])
    assert run.job_for(toy, [dg.AssetKey("model")]).name == "__ASSET_JOB"


@pytest.mark.parametrize(("config", "expected"), [("", []), ("deploy/paper_scale.yaml", ["--config"])])
def test_make_run_passes_config_through(config, expected):
    done = subprocess.run(
        ["make", "-n", "--always-make", "run", f"CONFIG={config}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = [x for x in done.stdout.splitlines() if "s2vec run" in x]
    assert line.split()[2:] == [*expected, *([config] if config else [])]


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
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_GPU], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        try:
            deadline = time.monotonic() + 90
            while not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots:
                assert holder.poll() is None and time.monotonic() < deadline, (
                    "the run never took the gpu slot"
                )
                time.sleep(0.5)
        finally:
            holder.kill()
            holder.wait()
        (run_id,) = [s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots]
        assert run.reap_dead_runs(instance) == [run_id]
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        assert run.reap_dead_runs(instance) == []


TINY_RUN = """
ops:
  cell_features: {config: {levels: [14, 18]}}
  raster_tensors: {config: {image_level: 14, pixel_level: 18}}
  mae_model:
    config: {patch_size: 4, width: 16, depth: 1, heads: 2, decoder_width: 8, decoder_depth: 1, decoder_heads: 2,
             epochs: 2, batch_size: 8, lr: 0.01}
  evaluation_report: {config: {learning_curves: false, k: 2}}
  evaluation_cross_region: {config: {learning_curves: false, k: 2}}
"""
MONACO = REPO / "data" / "osm" / "monaco-2023.osm.pbf"


# Two disjoint regions from one extract: the catalog's bbox clips each to its half of Monaco.
HALVES = {"west": [7.409, 43.723, 7.425, 43.752], "east": [7.425, 43.723, 7.449, 43.752]}


def _catalog(path: Path, regions: list[str]) -> Path:
    path.write_text("".join(f'[regions.{r}]\nsource = "{MONACO}"\nbbox = {HALVES[r]}\n' for r in regions))
    return path


def _s2vec(env: dict, *args: str, status: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "s2vec"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    assert done.returncode == status, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_adding_a_region_makes_one_complete_current_version_and_removing_it_leaves_the_rest(tmp_path):
    """`s2vec run`, add a region, `s2vec run --regions <new>`: every region is re-embedded under the new
    model, which becomes current; lookups give one row per point and one version; remove-region cleans up."""
    import json

    import polars as pl

    from s2vec_core import query, registry, warehouse

    home, root = tmp_path / "dagster_home", tmp_path / "warehouse"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    (tmp_path / "tiny.yaml").write_text(TINY_RUN)
    one, two = _catalog(tmp_path / "one.toml", ["west"]), _catalog(tmp_path / "two.toml", ["west", "east"])
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "S2VEC_WAREHOUSE": str(root),
        "S2VEC_CATALOG": str(one),
        "S2VEC_REPORTS": str(tmp_path / "reports"),
    }
    _s2vec(env, "run", "--config", str(tmp_path / "tiny.yaml"))
    first = registry.current(str(root))
    assert first is not None
    # The config file reached the model: its size and schedule are in the registry, not the defaults'.
    (row,) = query.versions(str(root)).rows(named=True)
    model_config, train_config = json.loads(row["model_config"]), json.loads(row["train_config"])
    assert (model_config["width"], model_config["depth"], model_config["patch_size"]) == (16, 1, 4)
    assert train_config["epochs"] == 2
    assert (row["image_level"], row["pixel_level"]) == (14, 18)
    # Every run went through a named job (what the UI lists), none through `__ephemeral_asset_job__`.
    monkey = pytest.MonkeyPatch()
    monkey.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        jobs = [r.job_name for r in instance.get_runs()]
    monkey.undo()
    assert set(jobs) == {"region_pipeline", "model"}
    assert jobs.count("model") == 2  # mae_model, then evaluation_cross_region once all regions are done

    env["S2VEC_CATALOG"] = str(two)
    done = _s2vec(env, "run", "--regions", "east", "--config", str(tmp_path / "tiny.yaml"))
    assert "embedding them as well" in done.stdout
    versions = query.versions(str(root))
    current = registry.current(str(root))
    assert current != first
    assert dict(versions.select("model_version", "status").iter_rows()) == {
        current: "current",
        first: "retired",
    }
    assert registry.embedded_regions(str(root), current) == ["east", "west"]

    lat, lng = [43.731, 43.735, 43.74, 43.745, 43.7385, 43.727], [7.418, 7.425, 7.43, 7.435, 7.4246, 7.417]
    hits = query.lookup(lat, lng, warehouse_root=str(root))
    assert hits.height == 6 and hits["model_version"].unique().to_list() == [current]
    assert set(hits["region"].drop_nulls()) == {"east", "west"}
    lines = [
        json.loads(x)
        for x in _s2vec(
            env, "lookup", *[f"--lat={a}" for a in lat[:1]], *[f"--lng={b}" for b in lng[:1]]
        ).stdout.splitlines()
    ]
    assert len(lines) == 1 and lines[0]["model_version"] == current and lines[0]["embedding"]
    token = hits.filter(pl.col("embedding").is_not_null())["token"][0]
    near = [json.loads(x) for x in _s2vec(env, "similar", "--token", token, "--k", "5").stdout.splitlines()]
    assert len(near) == 5 and token not in {r["token"] for r in near}
    assert {r["model_version"] for r in near} == {current}

    uri = warehouse.table_uri(str(root), "cell_embeddings")
    commits = warehouse.history(uri)
    assert commits["run_id"].null_count() == 0 and set(commits["asset"]) == {"cell_embeddings"}
    kept = {
        t: warehouse.read_table(warehouse.table_uri(str(root), t), {"region": "west"}).sort(pl.all())
        for t in ("cell_features", "cell_embeddings")
    }
    env["S2VEC_CATALOG"] = str(one)
    _s2vec(env, "remove-region", "east")
    for table, rows in kept.items():
        after = warehouse.read_table(warehouse.table_uri(str(root), table))
        assert after["region"].unique().to_list() == ["west"]
        assert after.sort(pl.all()).equals(rows)
    assert not (root / "rasters" / "east").exists()


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_bad_region_fails_alone_and_the_rest_get_model_embeddings_and_evaluation(tmp_path):
    """A truncated extract for one region: `s2vec run` finishes every stage for the other, exits 1 and
    lists what failed, one paragraph each."""
    import polars as pl

    from s2vec_core import registry, warehouse

    home, root = tmp_path / "dagster_home", tmp_path / "warehouse"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    (tmp_path / "tiny.yaml").write_text(TINY_RUN)
    cut = tmp_path / "east-cut.osm.pbf"
    cut.write_bytes(MONACO.read_bytes()[: MONACO.stat().st_size // 2])
    catalog = tmp_path / "regions.toml"
    catalog.write_text(
        f'[regions.west]\nsource = "{MONACO}"\nbbox = {HALVES["west"]}\n'
        f'[regions.east]\nsource = "{cut}"\nbbox = {HALVES["east"]}\n'
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "S2VEC_WAREHOUSE": str(root),
        "S2VEC_CATALOG": str(catalog),
        "S2VEC_REPORTS": str(tmp_path / "reports"),
    }
    done = _s2vec(env, "run", "--config", str(tmp_path / "tiny.yaml"), status=1)
    summary = done.stderr[done.stderr.index("1 failed after") :]
    assert "- east (osm_extract" in summary and str(cut) in summary.replace("\n  ", "")
    assert "west" not in summary
    # The good region went all the way: a current model trained on it alone, embedded and evaluated.
    current = registry.current(str(root))
    assert current is not None and registry.embedded_regions(str(root), current) == ["west"]
    stages = done.stdout.split("stage: ")
    evaluation = next(s for s in stages if s.startswith("evaluation_report"))
    assert "west " in evaluation and " ok " in evaluation and "east" not in evaluation
    assert any(s.startswith("evaluation_cross_region") and " ok " in s for s in stages)
    assert not pl.read_delta(warehouse.table_uri(str(root), "cell_features"))["region"].eq("east").any()
