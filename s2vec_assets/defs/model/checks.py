"""Great Expectations checks on the model assets; all blocking, since each feeds the next stage.

- raster_tensors[region]: every image finite, with the shape the metadata states, index and shards agree.
- mae_model: every weight finite; the final epoch's loss below the first's (needs >= 2 epochs); the
  held-out masked loss below the mean-of-visible predictor's (non-blocking: a warning, since a
  tiny region may not hold enough images to learn more than the trivial answer).
- cell_embeddings[region]: finite, unit length, the model's dimension, one row per image cell of the region's rasters
  and one per image token, no duplicates, and not collapsed (mean per-dimension variance above a floor).
Per-row facts that are not plain GX expectations are computed as helper columns, which GX then checks.
"""

import dagster as dg
import numpy as np
import polars as pl

from s2vec_assets.check_specs import check_specs
from s2vec_assets.defs.model import assets as model_assets
from s2vec_assets.defs.resources import WarehouseResource
from s2vec_assets.gx_checks import Expect, gx_check_result
from s2vec_core import raster

VARIANCE_FLOOR = 1e-6
"""Mean per-dimension variance of a region's embeddings below this means they collapsed to one point."""
UNIT_TOLERANCE = 1e-4
"""Stored vectors are unit length to float32 rounding."""

EMBEDDING_SPECS = check_specs(
    model_assets.cell_embeddings,
    {
        "cell_embeddings_finite_and_sized": (
            "Every embedding is finite, unit length (cosine = dot product) and has the model's dimension."
        ),
        "cell_embeddings_one_row_per_image_cell": (
            "Exactly the region's image cells (from raster_tensors), each once, and every image token once."
        ),
        "cell_embeddings_not_collapsed": f"Mean per-dimension variance above {VARIANCE_FLOOR}.",
    },
)


def raster_frame(shards: raster.ShardSet) -> pl.DataFrame:
    """One row per image: finiteness, minimum and shape, computed shard by shard (memory-mapped)."""
    finite, minimum = [], []
    for chunk in shards.chunks():
        finite.append(np.isfinite(chunk).all(axis=(1, 2, 3)))
        minimum.append(np.nan_to_num(chunk, nan=-1.0).min(axis=(1, 2, 3)))
    c, h, w = shards.shards[0].shape
    return pl.DataFrame(
        {
            "cell_id": shards.image_ids.view(np.int64),
            "finite": np.concatenate(finite),
            "minimum": np.concatenate(minimum).astype(np.float64),
            "channels": np.full(len(shards), c),
            "height": np.full(len(shards), h),
            "width": np.full(len(shards), w),
        }
    )


@dg.multi_asset_check(
    specs=check_specs(
        model_assets.raster_tensors,
        {
            "raster_tensors_finite_and_shaped": (
                "Every image tensor is finite, non-negative and [C, 2^k, 2^k]; index and shards agree."
            )
        },
    ),
    name="raster_tensors_checks",
)
def raster_tensors_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    shards = raster.open_shards(model_assets.raster_dir(warehouse, context.partition_key))
    c, h, w = shards.meta["shape"]
    rows_in_shards = sum(len(s) for s in shards.shards)
    expectations = [
        Expect("expect_table_row_count_to_equal", value=rows_in_shards),
        Expect("expect_column_values_to_be_in_set", column="finite", value_set=[True]),
        Expect("expect_column_values_to_be_between", column="minimum", min_value=0.0),
        Expect("expect_column_values_to_be_in_set", column="channels", value_set=[c]),
        Expect("expect_column_values_to_be_in_set", column="height", value_set=[h]),
        Expect("expect_column_values_to_be_in_set", column="width", value_set=[w]),
        Expect("expect_column_values_to_be_unique", column="cell_id"),
    ]
    yield gx_check_result(
        raster_frame(shards),
        expectations,
        asset_key=model_assets.raster_tensors.key,
        check_name="raster_tensors_finite_and_shaped",
        sample_columns=["cell_id"],
    )


@dg.multi_asset_check(
    specs=check_specs(
        model_assets.mae_model,
        {
            "mae_model_weights_finite": "Every parameter tensor of the checkpoint is finite.",
            "mae_model_loss_decreased": "The final epoch's loss is below the first epoch's.",
            "mae_model_beats_mean_of_visible": (
                "Held-out masked loss below the mean-of-visible predictor's on the same masks."
            ),
        },
        partitioned=False,
        non_blocking=frozenset({"mae_model_beats_mean_of_visible"}),
    ),
    can_subset=True,
    name="mae_model_checks",
)
def mae_model_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    from s2vec_core.train import baseline_ratio, load_checkpoint  # torch, only where a check runs

    state = load_checkpoint(model_assets.latest_checkpoint(context, warehouse)[0])
    selected = {key.name for key in context.selected_asset_check_keys}
    key = model_assets.mae_model.key
    # Three facts about one checkpoint, not rows of a table: plain checks. (A Great Expectations suite
    # here cost each model run ~13 s of importing GX for nothing it can say better.)
    if "mae_model_weights_finite" in selected:
        bad = [name for name, t in state["model"].items() if not bool(t.isfinite().all())]
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name="mae_model_weights_finite",
            passed=not bad,
            metadata={"tensors": len(state["model"]), "non_finite_tensors": dg.MetadataValue.json(bad[:20])},
        )
    if "mae_model_loss_decreased" in selected:
        first, final = float(state["losses"][0]), float(state["losses"][-1])
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name="mae_model_loss_decreased",
            passed=final < first,
            metadata={"first_loss": first, "final_loss": final},
        )
    if "mae_model_beats_mean_of_visible" in selected:
        ratio = baseline_ratio(state["holdout"][-1]) if state.get("holdout") else None
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name="mae_model_beats_mean_of_visible",
            passed=ratio is not None and ratio <= 1.0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"holdout_vs_mean_of_visible": ratio if ratio is not None else dg.MetadataValue.null()},
        )


@dg.multi_asset_check(specs=EMBEDDING_SPECS, can_subset=True, name="cell_embeddings_checks")
def cell_embeddings_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    region = context.partition_key
    trained = model_assets.trained_model(context, warehouse)
    both = warehouse.read(
        model_assets.EMBEDDINGS_TABLE, {"region": region, "model_version": trained.model_version}
    )
    df = both.filter(pl.col("level") == trained.image_level)
    image_ids = raster.open_shards(model_assets.raster_dir(warehouse, region)).image_ids.view(np.int64)
    tokens = both.filter(pl.col("level") == trained.token_level)
    selected = {key.name for key in context.selected_asset_check_keys}
    key = model_assets.cell_embeddings.key
    sample = ["region", "cell_id", "token"]
    if "cell_embeddings_finite_and_sized" in selected:
        length = pl.col("embedding").list.eval(pl.element().cast(pl.Float64).pow(2)).list.sum().sqrt()
        frame = df.select(
            *sample,
            dim=pl.col("embedding").list.len(),
            finite=pl.col("embedding").list.eval(pl.element().is_finite()).list.all(),
            unit_length=(length - 1.0).abs() < UNIT_TOLERANCE,
        )
        yield gx_check_result(
            frame,
            [
                Expect("expect_table_row_count_to_be_between", min_value=1),
                Expect("expect_column_values_to_be_in_set", column="dim", value_set=[trained.dim]),
                Expect("expect_column_values_to_be_in_set", column="finite", value_set=[True]),
                Expect("expect_column_values_to_be_in_set", column="unit_length", value_set=[True]),
            ],
            asset_key=key,
            check_name="cell_embeddings_finite_and_sized",
            sample_columns=sample,
        )
    if "cell_embeddings_one_row_per_image_cell" in selected:
        frame = df.select(*sample, in_rasters=pl.col("cell_id").is_in(pl.Series(image_ids).implode()))
        token_frame = tokens.select(
            pl.len().alias("token_rows"), pl.col("cell_id").n_unique().alias("unique")
        )
        expected_tokens = len(image_ids) * trained.model.config.num_patches
        yield gx_check_result(
            frame.join(token_frame, how="cross"),
            [
                Expect("expect_table_row_count_to_equal", value=len(image_ids)),
                Expect("expect_column_values_to_be_unique", column="cell_id"),
                Expect("expect_column_values_to_be_in_set", column="in_rasters", value_set=[True]),
                Expect("expect_column_values_to_be_in_set", column="token_rows", value_set=[expected_tokens]),
                Expect("expect_column_values_to_be_in_set", column="unique", value_set=[expected_tokens]),
            ],
            asset_key=key,
            check_name="cell_embeddings_one_row_per_image_cell",
            sample_columns=sample,
        )
    if "cell_embeddings_not_collapsed" in selected:
        matrix = np.stack(df["embedding"].to_numpy()) if df.height else np.zeros((0, trained.dim))
        variance = float(matrix.var(axis=0).mean()) if df.height > 1 else 0.0
        yield gx_check_result(
            pl.DataFrame({"mean_dimension_variance": [variance]}),
            [
                Expect(
                    "expect_column_values_to_be_between",
                    column="mean_dimension_variance",
                    min_value=VARIANCE_FLOOR,
                )
            ],
            asset_key=key,
            check_name="cell_embeddings_not_collapsed",
        )
