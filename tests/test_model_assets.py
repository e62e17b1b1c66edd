"""The model assets run for real through Dagster: rasters -> mae_model -> cell_embeddings, with GX checks."""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch

from s2vec_assets.definitions import defs as load_defs
from s2vec_assets.defs.model import assets as model_assets
from s2vec_assets.defs.partitions import region_partitions
from s2vec_assets.defs.resources import WarehouseResource
from s2vec_core import embed, registry, s2, vectors, warehouse
from s2vec_core.catalog import sha256_file
from tests.conftest import materialize_selection

# Two Dagster runs per stage plus GX take ~30 s on 2 shared cores.
pytestmark = pytest.mark.slow

REGION = "monaco"
# Monaco at 14/18 gives a few dozen images: enough for a two-epoch tiny model in seconds.
LEVELS = {"image_level": 14, "pixel_level": 18}
TINY = {
    "patch_size": 4,
    "width": 16,
    "depth": 1,
    "heads": 2,
    "decoder_width": 8,
    "decoder_depth": 1,
    "decoder_heads": 2,
    "epochs": 4,
    "batch_size": 8,
    "lr": 1e-2,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, dagster_instance):
    defs = load_defs()
    root = tmp_path_factory.mktemp("warehouse")
    resources = {**defs.resources, "warehouse": WarehouseResource(root=str(root))}
    return defs, resources, dagster_instance, root


def _materialize(world, selection, partition=None, run_config=None):
    defs, resources, instance, _ = world
    return materialize_selection(defs, resources, instance, selection, partition, run_config)


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_rasters_model_embeddings(world):
    defs, _, _, root = world
    features = _materialize(
        world,
        ["osm_extract", "cell_features"],
        REGION,
        {"ops": {"cell_features": {"config": {"levels": [LEVELS["image_level"], LEVELS["pixel_level"]]}}}},
    )
    assert features.success

    rasters = _materialize(world, ["raster_tensors"], REGION, {"ops": {"raster_tensors": {"config": LEVELS}}})
    assert rasters.success and _checks(rasters) == {"raster_tensors_finite_and_shaped": True}
    raster_meta = rasters.asset_materializations_for_node("raster_tensors")[0].metadata
    images = raster_meta["images"].value
    assert images > 10 and (root / "rasters" / REGION / "index.parquet").exists()
    assert 0 < raster_meta["stored_mb"].value < raster_meta["dense_mb"].value / 4  # stored sparse

    model = _materialize(world, ["mae_model"], run_config={"ops": {"mae_model": {"config": TINY}}})
    assert model.success
    checks = _checks(model)
    beats = checks.pop("mae_model_beats_mean_of_visible")  # a warning either way on a few dozen images
    assert checks == {"mae_model_weights_finite": True, "mae_model_loss_decreased": True}
    meta = model.asset_materializations_for_node("mae_model")[0].metadata
    assert beats == (meta["holdout_vs_mean_of_visible"].value < 1.0)
    assert len(meta["holdout"].value) == TINY["epochs"] and meta["holdout_images"].value >= 1
    checkpoint = Path(meta["checkpoint_path"].value)
    # The embedding widths are the model's business (s2vec_core.embed); read them, never assume them.
    trained = embed.load_model(checkpoint, device="cpu")
    dim, token_dim = trained.dim, trained.token_dim
    assert meta["model_version"].value == sha256_file(checkpoint)
    assert meta["device"].value == "cpu" and meta["epochs"].value == TINY["epochs"]
    assert meta["regions"].value == [REGION] and "data:image/png;base64," in meta["loss_curve"].value
    # The curves the asset page draws in place: under the UI's inline limit, one SVG line per series.
    for key, lines in (("loss_chart", 1), ("holdout_chart", 2)):
        chart = meta[key].value
        assert chart.startswith("![") and len(chart) < 1000 and chart.count("%3Cpolyline") == lines, key
    assert defs.resolve_assets_def("mae_model").op.pool == "gpu"
    # Progress in the run's log: one line per epoch with the rate and what is left.
    progress = [e.user_message for e in world[2].all_logs(model.run_id) if "images/s" in e.user_message]
    assert len(progress) == TINY["epochs"] and "s to go" in progress[-1]

    embedded = _materialize(world, ["cell_embeddings"], REGION)
    assert embedded.success
    assert _checks(embedded) == {
        "cell_embeddings_finite_and_sized": True,
        "cell_embeddings_one_row_per_image_cell": True,
        "cell_embeddings_not_collapsed": True,
    }
    table = pl.read_delta(str(root / model_assets.EMBEDDINGS_TABLE))
    assert table["model_version"].unique().to_list() == [meta["model_version"].value]
    # Both granularities: one row per image cell at the image level, one per 4 x 4-pixel token two levels up
    # from the pixels.
    token_level = LEVELS["pixel_level"] - 2
    assert table.group_by("level").len().sort("level").rows() == [
        (LEVELS["image_level"], images),
        (token_level, images * 16),
    ]
    assert dict(table.schema) == {
        "region": pl.String,
        "level": pl.Int8,
        "cell_id": pl.Int64,
        "token": pl.String,
        "model_version": pl.String,
        "embedding": pl.List(pl.Float32),
        "norm": pl.Float32,
    }
    lengths_l2 = np.linalg.norm(
        vectors.to_matrix(table.filter(pl.col("level") == LEVELS["image_level"])["embedding"]), axis=1
    )
    assert np.allclose(lengths_l2, 1.0, atol=1e-5) and (table["norm"] > 0).all()
    # The model is registered and, its only region embedded, current; the commit names the run.
    versions = registry.versions(str(root))
    assert versions.select("model_version", "status").rows() == [(meta["model_version"].value, "current")]
    row = versions.row(0, named=True)
    assert (row["dim"], row["token_dim"], row["regions"]) == (dim, token_dim, [REGION])
    assert (
        embedded.asset_materializations_for_node("cell_embeddings")[0].metadata["model_status"].value
        == "current"
    )
    uri = str(root / model_assets.EMBEDDINGS_TABLE)
    last = warehouse.history(uri).row(-1, named=True)
    assert (last["run_id"], last["asset"], last["region"]) == (embedded.run_id, "cell_embeddings", REGION)
    assert last["model_version"] == meta["model_version"].value
    facts = warehouse.table_facts(uri)
    assert facts["dims"] == {str(LEVELS["image_level"]): dim, str(token_level): token_dim}
    assert facts["unit_length"] is True and "ODbL" in facts["licence"]
    lengths = table.group_by("level").agg(pl.col("embedding").list.len().unique()).sort("level").rows()
    assert lengths == [(LEVELS["image_level"], [dim]), (token_level, [token_dim])]
    assert (s2.cell_level(table["cell_id"].to_numpy()) == table["level"].to_numpy()).all()

    # Same data and config: the finished checkpoint is found, nothing retrains, the version is stable.
    again = _materialize(world, ["mae_model"], run_config={"ops": {"mae_model": {"config": TINY}}})
    again_meta = again.asset_materializations_for_node("mae_model")[0].metadata
    assert again_meta["model_version"].value == meta["model_version"].value
    assert again_meta["resumed_from_epoch"].value == TINY["epochs"]
    assert (
        "images_per_s" in meta and "images_per_s" not in again_meta
    )  # no rate for a run that trained nothing


def test_collapsed_embeddings_fail_the_check(world):
    """Overwrite the region's embeddings with one constant vector: the blocking variance check must fail."""
    defs, resources, instance, root = world
    uri = str(root / model_assets.EMBEDDINGS_TABLE)
    table = pl.read_delta(uri)
    version = table["model_version"][0]
    image_rows = table.filter(pl.col("level") == LEVELS["image_level"])
    width = image_rows["embedding"].list.len()[0]
    constant = [width**-0.5] * width  # unit length, so only the variance check can object
    collapsed = pl.concat(
        [
            image_rows.with_columns(
                embedding=pl.Series([constant] * image_rows.height, dtype=pl.List(pl.Float32))
            ),
            table.filter(pl.col("level") != LEVELS["image_level"]),
        ]
    )
    resources["warehouse"].write_partition(
        collapsed, model_assets.EMBEDDINGS_TABLE, {"region": REGION, "model_version": version}
    )
    job = dg.define_asset_job(
        "embedding_checks_only",
        partitions_def=region_partitions,
        selection=dg.AssetSelection.checks_for_assets(model_assets.cell_embeddings),
    )
    job_defs = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=[job], resources=resources
    )
    # A checks-only run takes its partition from the tag (materialize's partition_key wants an asset).
    result = job_defs.resolve_job_def(job.name).execute_in_process(
        tags={"dagster/partition": REGION}, instance=instance, raise_on_error=False
    )
    assert _checks(result)["cell_embeddings_not_collapsed"] is False
    assert _checks(result)["cell_embeddings_finite_and_sized"] is True


def _failure_text(result) -> str:
    data = next(e for e in result.all_events if e.is_step_failure).step_failure_data
    return (data.user_failure_data.description if data.user_failure_data else "") + data.error.message


def test_embeddings_refuse_a_replaced_checkpoint_and_another_warehouses_model(world, tmp_path):
    defs, resources, instance, root = world
    row = registry.versions(str(root)).row(0, named=True)
    # Recorded relative to the warehouse root: a moved or mounted warehouse still finds its models.
    assert not Path(row["checkpoint"]).is_absolute()
    checkpoint = root / row["checkpoint"]
    uri = str(root / model_assets.EMBEDDINGS_TABLE)
    version = warehouse.table_version(uri)
    original = checkpoint.read_bytes()
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "model": {k: v * 0.5 for k, v in state["model"].items()}}, checkpoint)
    try:
        swapped = _materialize(world, ["cell_embeddings"], REGION)
        assert not swapped.success
        assert "replaced after training" in _failure_text(swapped)
        assert warehouse.table_version(uri) == version
    finally:
        checkpoint.write_bytes(original)

    # The instance's latest mae_model was trained into the first warehouse; a new one must not use it.
    other = tmp_path / "other-warehouse"
    elsewhere = (defs, {**resources, "warehouse": WarehouseResource(root=str(other))}, instance, other)
    foreign = _materialize(elsewhere, ["cell_embeddings"], REGION)
    assert not foreign.success
    assert "not registered in the warehouse" in _failure_text(foreign)
    assert not (other / model_assets.EMBEDDINGS_TABLE).exists()


def test_regions_without_shards_are_left_out_of_training_by_name(world, tmp_path, capfd):
    _, _, instance, root = world
    context = dg.build_asset_context(instance=instance)
    assert model_assets.trained_regions(context, WarehouseResource(root=str(root))) == [REGION]
    assert model_assets.trained_regions(context, WarehouseResource(root=str(tmp_path / "empty"))) == []
    assert f"not training on ['{REGION}']" in "".join(capfd.readouterr())


@pytest.mark.system
def test_mae_model_trains_with_ddp_through_pipes(world):
    """nproc_per_node=2: torchrun starts two gloo processes through dagster-pipes; rank 0's epochs reach
    the run's event log, and the model registers like a one-process one."""
    _, _, instance, root = world
    levels = {"levels": [LEVELS["image_level"], LEVELS["pixel_level"]]}
    # Runs apart from this module's other tests (`make test-system`): its own rasters first.
    assert _materialize(
        world, ["osm_extract", "cell_features"], REGION, {"ops": {"cell_features": {"config": levels}}}
    ).success
    assert _materialize(
        world, ["raster_tensors"], REGION, {"ops": {"raster_tensors": {"config": LEVELS}}}
    ).success
    config = {**TINY, "epochs": 2, "seed": 7, "nproc_per_node": 2}
    model = _materialize(world, ["mae_model"], run_config={"ops": {"mae_model": {"config": config}}})
    assert model.success, _failure_text(model)
    meta = model.asset_materializations_for_node("mae_model")[0].metadata
    assert meta["epochs"].value == 2 and meta["resumed_from_epoch"].value == 0
    assert meta["train_config"].value["batch_size"] == TINY["batch_size"]  # the global batch
    logs = [e.user_message for e in instance.all_logs(model.run_id)]
    assert any("epoch 2: loss" in m and "(2 processes)" in m for m in logs), logs
    assert meta["model_version"].value in set(registry.versions(str(root))["model_version"])

    # A global batch that does not split over the processes is refused before anything starts.
    odd = {"ops": {"mae_model": {"config": {**config, "batch_size": 7}}}}
    refused = _materialize(world, ["mae_model"], run_config=odd)
    error = next(e for e in refused.all_events if e.is_step_failure).step_failure_data.error
    assert not refused.success and "multiple of nproc_per_node" in error.to_string()
