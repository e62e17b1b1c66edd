"""The S2Vec model assets: raster_tensors[region] -> mae_model (all regions) -> cell_embeddings[region].

Rasters are memory-mapped sparse `.npy` shards under `<warehouse root>/rasters/<region>`; the checkpoint is
`<warehouse root>/models/mae/<training key>/checkpoint.pt`, where the key hashes the configs and the
content of every raster set trained on: a retried run resumes its own checkpoint, changed data or
config starts a fresh one, and an unchanged re-run finds the finished checkpoint and returns at once.
On an object-store warehouse both are built in a local cache and published next to the tables
(s2vec_core.artifacts); the checkpoint after every epoch, so a run retried on another machine resumes.

torch loads inside the steps that train or embed (local imports of s2vec_core.train / embed / ddp): every
run worker imports this whole code location, and a features-only run should not pay ~6 s for torch.

Versions: mae_model registers its model in `model_versions` (status `trained`); cell_embeddings writes
unit-length vectors (raw length in `norm`) and, once every region the model was trained on is embedded
under it, makes that version `current` (s2vec_core.registry). Readers default to the current version.
"""

import dataclasses
import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import polars as pl
import pydantic
from pydantic import Field, model_validator

from s2vec_assets import inline_charts
from s2vec_assets.defs import jobs
from s2vec_assets.defs.features import assets as feature_assets
from s2vec_assets.defs.partitions import one_run_per_region, region_partitions
from s2vec_assets.defs.resources import DeviceResource, WarehouseResource
from s2vec_assets.metadata import markdown_table, png_markdown, table_metadata
from s2vec_assets.progress import ProgressLog
from s2vec_assets.provenance import commit_info
from s2vec_core import artifacts, leftovers, pipeline, raster, registry, vectors
from s2vec_core.grid import Grid, check_image_levels
from s2vec_core.model_config import MAEConfig, TrainConfig, default_model_config, knobs

# Re-exported: tests/test_table_specs.py builds cell_embeddings rows through this module.
from s2vec_core.tables import CELL_EMBEDDINGS, MODEL_VERSIONS
from s2vec_core.taxonomy import TAXONOMY_VERSION

if TYPE_CHECKING:
    from s2vec_core import embed, train

EMBEDDINGS_TABLE = CELL_EMBEDDINGS.name


def raster_dir(warehouse: WarehouseResource, region: str) -> Path:
    """The region's shard directory on this machine, current with the warehouse's copy."""
    try:
        return warehouse.artifacts.fetch_dir(artifacts.raster_key(region))
    except artifacts.ArtifactError as e:
        raise dg.Failure(f"{region}: no raster shards ({e}); materialise raster_tensors[{region}]") from e


class RasterConfig(dg.Config):
    image_level: int = Field(default=Grid().image_level, description="S2 level of an image cell.")
    pixel_level: int = Field(
        default=Grid().pixel_level, description="S2 level of a pixel (must be in cell_features)."
    )
    context_ring: int = Field(
        default=Grid().context_ring,
        ge=0,
        description="Image cells on each side of the context window (0: none).",
    )
    shard_size: int = Field(
        default=raster.SHARD_SIZE,
        ge=1,
        description=f"Images per shard file (made {raster.CHUNK_SIZE} at a time, whatever this is).",
    )

    @model_validator(mode="after")
    def _image_fits(self) -> "RasterConfig":
        check_image_levels(self.image_level, self.pixel_level)
        return self


@dg.asset(
    partitions_def=region_partitions,
    backfill_policy=one_run_per_region,
    deps=[feature_assets.cell_features],
    group_name="model",
    kinds={"python", "numpy"},
    # 3: shards store each image's non-zero values (raster.STORAGE).
    code_version="3",
    description=(
        "The region's image cells as float32 tensors [C, 2^k, 2^k] (raw channel values; each pixel cell at its "
        "S2 face (i, j) offset in the image), plus a context window of the neighbouring image cells at image "
        "level + 1, in memory-mappable shards that store each image's non-zero values, with an index "
        "(cell_id -> shard, row)."
    ),
)
def raster_tensors(
    context: dg.AssetExecutionContext, config: RasterConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    region = context.partition_key
    grid = Grid(
        config.image_level, config.pixel_level, (config.image_level, config.pixel_level), config.context_ring
    )
    key = artifacts.raster_key(region)
    directory = warehouse.artifacts.local(key)
    # One chunk of images (raster.CHUNK_SIZE) in memory at a time, its pixel rows read by cell range,
    # and its non-zero values gathered into shards as it is made. Every read is of one table version, so a concurrent write of the features cannot mix in.
    pixels = {"region": region, "level": grid.pixel_level}
    version = warehouse.version(feature_assets.TABLE)
    if version is None:
        raise dg.Failure(f"{region}: no `{feature_assets.TABLE}` table; materialise cell_features[{region}]")
    ids = warehouse.scan(feature_assets.TABLE, pixels, ["cell_id"], version).collect_batches()
    try:
        chunks = pipeline.raster_chunks_by_range(
            lambda lo, hi: warehouse.scan(feature_assets.TABLE, pixels, None, version, (lo, hi)),
            (batch["cell_id"].to_numpy() for batch in ids),
            grid,
        )
        index = pipeline.write_rasters(chunks, directory, region, config.shard_size)
    except raster.RasterError as e:
        raise dg.Failure(f"{region}: {e}") from e
    warehouse.artifacts.publish_dir(key)
    shards = raster.open_shards(directory)
    occupied, busiest = _occupancy(shards)
    return dg.MaterializeResult(
        metadata={
            "dagster/uri": dg.MetadataValue.path(warehouse.artifacts.uri(key)),
            "dagster/row_count": dg.MetadataValue.int(index.height),
            "images": dg.MetadataValue.int(index.height),
            "tensor_shape": dg.MetadataValue.json(shards.meta["shape"]),
            "context_shape": dg.MetadataValue.json(shards.meta["context_shape"] or []),
            "context_ring": grid.context_ring,
            "shards": dg.MetadataValue.int(index["shard"].n_unique()),
            "stored_mb": round(shards.meta["stored_bytes"] / 2**20, 2),
            "dense_mb": round(shards.meta["dense_bytes"] / 2**20, 2),
            "image_level": grid.image_level,
            "pixel_level": grid.pixel_level,
            "occupied_pixel_share": occupied,
            "content_sha256": shards.meta["sha256"],
            "index_preview": dg.MetadataValue.md(markdown_table(index, 5)),
            "sample_images": png_markdown(_sample_images(shards, busiest), alt=f"{region} rasters"),
        }
    )


def _occupancy(shards: raster.ShardSet, count: int = 4) -> tuple[float, np.ndarray]:
    """(share of pixels with any object, rows of the `count` busiest images), shard by shard."""
    occupied, totals = 0, []
    for chunk in shards.chunks():
        occupied += int((chunk.sum(axis=1) > 0).sum())
        totals.append(chunk.sum(axis=(1, 2, 3)))
    pixels = len(shards) * shards.meta["shape"][1] * shards.meta["shape"][2]
    return occupied / pixels, np.argsort(-np.concatenate(totals), kind="stable")[:count]


def _sample_images(shards: raster.ShardSet, rows: np.ndarray):
    """The images at `rows`, log1p of all channels summed."""
    from matplotlib.figure import Figure

    totals = shards.take(rows).sum(axis=1)
    fig = Figure(figsize=(2.2 * len(rows), 2.4))
    for n, i in enumerate(rows):
        ax = fig.add_subplot(1, len(rows), n + 1)
        ax.imshow(np.log1p(totals[n]), cmap="viridis")
        ax.set(title=f"cell {i}", xticks=[], yticks=[], xlabel="j", ylabel="i")
    return fig


_Knobs = pydantic.create_model(
    "_Knobs",
    __base__=dg.Config,
    **{k.name: (k.type, Field(default=k.default, description=k.doc or None)) for k in knobs()},
)


class ModelConfig(_Knobs):
    """MAE shape and training knobs: every user-settable field of s2vec_core's MAEConfig and TrainConfig
    (generated from `s2vec_core.model_config.knobs`, defaults the small CPU config; `MAEConfig.paper`
    lists the paper-scale values for a GPU), plus how many processes train."""

    nproc_per_node: int = Field(
        default=1,
        ge=1,
        description=(
            "Training processes (torchrun --nproc_per_node; one per GPU, gloo on CPU). Above 1 the model "
            "trains with DDP in a subprocess launched through dagster-pipes; batch_size is the global batch "
            "and must be a multiple of it."
        ),
    )

    @model_validator(mode="after")
    def _valid(self) -> "ModelConfig":
        # TrainConfig checks itself; MAEConfig's checks need the rasters' shape and run in `configs`.
        TrainConfig(**self._values(TrainConfig))
        if self.batch_size % self.nproc_per_node:
            raise ValueError(
                f"batch_size {self.batch_size} is the global batch and must be a multiple of nproc_per_node "
                f"{self.nproc_per_node}, so every process trains on an equal slice"
            )
        return self

    def _values(self, owner: type) -> dict[str, object]:
        return {k.name: getattr(self, k.name) for k in knobs() if k.owner is owner}

    def configs(self, shards: raster.ShardSet) -> tuple[MAEConfig, TrainConfig]:
        """The run's configs: the shards' shape and the taxonomy's layout groups, then these knobs."""
        try:
            model = dataclasses.replace(default_model_config(shards), **self._values(MAEConfig))
        except ValueError as e:
            raise dg.Failure(f"mae_model config does not fit the rasters: {e}") from e
        return model, TrainConfig(**self._values(TrainConfig))


def trained_regions(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> list[str]:
    """Regions whose raster_tensors partition is materialised and whose shards exist in this warehouse.

    The others (shards removed, or materialised into another warehouse on the same instance) are left
    out with a warning that names them, never silently."""
    done = context.instance.get_materialized_partitions(raster_tensors.key)
    missing = sorted(r for r in done if not warehouse.artifacts.has_dir(artifacts.raster_key(r)))
    if missing:
        context.log.warning(
            f"not training on {missing}: raster_tensors was materialised for them, but no shards are under "
            f"{warehouse.artifacts.uri('rasters')} (removed, or made in another warehouse); materialise "
            "raster_tensors for them to include them"
        )
    return sorted(set(done) - set(missing))


@dg.asset(
    deps=[raster_tensors],
    group_name="model",
    kinds={"pytorch"},
    pool="gpu",
    # Read where a step is its own pod (S2VEC_EXECUTOR=k8s); elsewhere the `model` job's run tags are.
    op_tags=jobs.training_tags(),
    code_version="5",
    description=(
        "The S2Vec masked autoencoder trained on every materialised region's rasters (AdamW, warmup + cosine, "
        "bf16 on CUDA). The checkpoint is rewritten atomically each epoch; a retried run resumes it. "
        "model_version = sha256 of the checkpoint."
    ),
)
def mae_model(
    context: dg.AssetExecutionContext,
    config: ModelConfig,
    warehouse: WarehouseResource,
    device: DeviceResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    from s2vec_core import embed, train
    from s2vec_core.model import parameter_count

    regions = trained_regions(context, warehouse)
    if not regions:
        raise dg.Failure("no raster_tensors partition is materialised; materialise some regions first")
    directories = {r: raster_dir(warehouse, r) for r in regions}
    shards = raster.open_shards(list(directories.values()))
    model_config, train_config = config.configs(shards)
    key_source = json.dumps(
        {
            "model": model_config.to_dict(),
            "train": train_config.to_dict(),
            "taxonomy": TAXONOMY_VERSION,
            "rasters": {
                r: json.loads((d / raster.META_FILE).read_text())["sha256"] for r, d in directories.items()
            },
        },
        sort_keys=True,
    )
    store = warehouse.artifacts
    checkpoint_key = artifacts.checkpoint_key(hashlib.sha256(key_source.encode()).hexdigest()[:16])
    # A retried run (on this machine or another) resumes the warehouse's copy of its checkpoint.
    checkpoint = (
        store.fetch_file(checkpoint_key) if store.has_file(checkpoint_key) else store.local(checkpoint_key)
    )
    checkpoint.parent.mkdir(parents=True, exist_ok=True)

    epochs_here = []

    def log_epoch(epoch: int, loss: float, holdout: dict[str, float]) -> None:
        store.publish_file(checkpoint_key)
        epochs_here.append(epoch)
        seconds = time.perf_counter() - started
        rate = len(shards) * len(epochs_here) / seconds
        left = (train_config.epochs - epoch) * seconds / len(epochs_here)
        held = f", held-out {train.baseline_ratio(holdout):.3f} of mean-of-visible" if holdout else ""
        context.log.info(
            f"epoch {epoch}/{train_config.epochs}: loss {loss:.5f}{held}; {rate:.0f} images/s, "
            f"at most {left:.0f} s to go (early stopping may end sooner)"
        )

    started = time.perf_counter()
    if config.nproc_per_node > 1:
        try:
            result = train_distributed(
                context, pipes_subprocess_client, list(directories.values()), checkpoint, model_config,
                train_config, device.resolve(), config.nproc_per_node,
            )  # fmt: skip
        finally:  # what the processes trained so far, for a retry on another machine to resume
            if checkpoint.exists():
                store.publish_file(checkpoint_key)
    else:
        result = pipeline.fit(
            shards, checkpoint, model_config, train_config, device=device.resolve(), on_epoch_end=log_epoch
        )
    wall = time.perf_counter() - started
    store.publish_file(checkpoint_key)  # with the embedding scale added after the last epoch
    trained = embed.load_model(checkpoint, device="cpu")
    holdout = result.holdout[-1] if result.holdout else {}
    status = registry.record_trained(
        warehouse.root,
        registry.ModelRecord(
            model_version=trained.model_version,
            regions=regions,
            image_level=trained.image_level,
            pixel_level=trained.pixel_level,
            token_level=trained.token_level,
            dim=trained.dim,
            token_dim=trained.token_dim,
            taxonomy_version=trained.taxonomy_version,
            model_config=model_config.to_dict(),
            train_config=train_config.to_dict(),
            training_loss=float(result.losses[-1]),
            holdout_loss=float(sum(holdout[k] for k in ("image", "context") if k in holdout))
            if holdout
            else None,
            # Relative to the warehouse root, so a moved or mounted warehouse still finds its models.
            checkpoint=checkpoint_key,
            run_id=context.run_id,
            trained_at=datetime.now(UTC),
        ),
        commit=commit_info(context, trained.model_version),
        storage_options=warehouse.options,
    )
    return dg.MaterializeResult(
        metadata={
            "model_version": trained.model_version,
            "registry_status": status,
            "registry_uri": dg.MetadataValue.path(warehouse.table_uri(MODEL_VERSIONS.name)),
            "checkpoint_path": dg.MetadataValue.path(store.uri(checkpoint_key)),
            "device": result.device,
            "parameters": dg.MetadataValue.int(parameter_count(trained.model)),
            "epochs": dg.MetadataValue.int(len(result.losses)),
            "resumed_from_epoch": dg.MetadataValue.int(result.resumed_from_epoch),
            "losses": dg.MetadataValue.json([round(x, 6) for x in result.losses]),
            "first_loss": float(result.losses[0]),
            "final_loss": float(result.losses[-1]),
            **loss_charts(result),
            "loss_curve": png_markdown(_loss_curve(result), alt="training loss"),
            "stopped_early": result.stopped_early,
            "holdout_images": dg.MetadataValue.int(
                len(train.split_holdout(len(shards), train_config.holdout_fraction, train_config.seed)[1])
            ),
            "holdout": dg.MetadataValue.json(
                [{k: round(v, 6) for k, v in h.items()} for h in result.holdout]
            ),
            **({"holdout_vs_mean_of_visible": float(result.baseline_ratio)} if result.holdout else {}),
            "wall_time_s": float(wall),
            # Only when this run trained: a re-run that found the finished checkpoint has no rate to plot.
            **(
                {"images_per_s": float(result.images_per_s)}
                if result.resumed_from_epoch < len(result.losses)
                else {}
            ),
            "training_images": dg.MetadataValue.int(len(shards)),
            "regions": dg.MetadataValue.json(regions),
            "model_config": dg.MetadataValue.json(model_config.to_dict()),
            "train_config": dg.MetadataValue.json(train_config.to_dict()),
            "image_level": trained.image_level,
            "pixel_level": trained.pixel_level,
        }
    )


def train_distributed(
    context: dg.AssetExecutionContext,
    pipes: dg.PipesSubprocessClient,
    directories: list[Path],
    checkpoint: Path,
    model_config: MAEConfig,
    train_config: TrainConfig,
    device: str,
    processes: int,
) -> "train.TrainResult":
    """`train.train` under torchrun in `processes` DDP processes (s2vec_assets.ddp_worker), its epochs
    logged to this run through Pipes; the same checkpoint format, so the rest of the asset is unchanged."""
    from s2vec_core import ddp

    result_file = leftovers.temporary_sibling(checkpoint.with_name("result.json"))
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"),
        *("-m", "s2vec_assets.ddp_worker", "--shards", *map(str, directories)),
        *("--checkpoint", str(checkpoint), "--device", device, "--result", str(result_file)),
        *("--train-config", json.dumps(train_config.to_dict())),
        *("--model-config", json.dumps(model_config.to_dict())),
        *("--taxonomy-version", TAXONOMY_VERSION),
    ]
    try:
        pipes.run(command=command, context=context)
        return ddp.read_result(result_file)
    except dg.DagsterPipesExecutionError as e:
        raise dg.Failure(
            f"distributed training in {processes} processes failed ({e}); the processes' own errors are in "
            "this run's stderr. With fewer GPUs than processes, lower nproc_per_node; its checkpoint (if "
            "any epoch finished) resumes on the next run."
        ) from e
    finally:
        result_file.unlink(missing_ok=True)


def _holdout_series(result: "train.TrainResult") -> dict[str, list[float]]:
    """Held-out reconstruction loss and the mean-of-visible predictor's, per epoch (image + context)."""
    if not result.holdout:
        return {}
    parts = [k for k in ("image", "context") if k in result.holdout[0]]
    return {
        "held-out reconstruction": [sum(h[k] for k in parts) for h in result.holdout],
        "mean-of-visible predictor": [sum(h[f"{k}_baseline"] for k in parts) for h in result.holdout],
    }


def loss_charts(result: "train.TrainResult") -> dict[str, dg.MetadataValue]:
    """The loss curves as charts the asset page draws in place (the PNG `loss_curve` needs a click):
    training loss alone, and held-out reconstruction against the mean-of-visible predictor on one axis
    (the training total adds the summary and layout terms, on another scale)."""
    charts = {
        "loss_chart": inline_charts.line_chart({"training (total)": result.losses}, "MAE training loss")
    }
    if result.holdout:
        charts["holdout_chart"] = inline_charts.line_chart(
            _holdout_series(result),
            "Held-out masked loss",
            dashed=frozenset({"mean-of-visible predictor"}),
        )
    return charts


def _loss_curve(result: "train.TrainResult"):
    """Training loss, and the held-out reconstruction loss against the mean-of-visible predictor's."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.add_subplot()
    epochs = range(1, len(result.losses) + 1)
    ax.plot(epochs, result.losses, marker="o", label="training (total)")
    for name, values in _holdout_series(result).items():
        ax.plot(epochs, values, **({"ls": "--"} if "mean" in name else {"marker": "s"}), label=name)
    ax.set(xlabel="epoch", ylabel="channel-weighted MSE", title="MAE training")
    ax.legend(fontsize=8)
    return fig


def latest_checkpoint(context: dg.OpExecutionContext, warehouse: WarehouseResource) -> tuple[Path, str]:
    """(checkpoint path, model version) of mae_model's latest materialisation, as this warehouse's
    registry records it: a model trained into another warehouse is refused, not silently used."""
    event = context.instance.get_latest_materialization_event(mae_model.key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure("mae_model has not been materialised yet: materialise it before the embeddings")
    version = str(event.asset_materialization.metadata["model_version"].value)
    rows = registry.versions(warehouse.root, storage_options=warehouse.options).filter(
        pl.col("model_version") == version
    )
    if rows.is_empty():
        raise dg.Failure(
            f"mae_model's latest materialisation (model version {version[:12]}, run "
            f"{event.run_id[:8]}) is not registered in the warehouse at {warehouse.root}: it was trained "
            "into another warehouse. Materialise mae_model with this warehouse, then the embeddings."
        )
    path = Path(rows["checkpoint"][0])
    if path.is_absolute():  # registered before checkpoints were keys under the root
        return path, version
    try:
        return warehouse.artifacts.fetch_file(path.as_posix()), version
    except FileNotFoundError as e:
        raise dg.Failure(f"model {version[:12]}: {e}; materialise mae_model again") from e


def trained_model(
    context: dg.OpExecutionContext, warehouse: WarehouseResource, device: str = "cpu"
) -> "embed.TrainedModel":
    """The model of `latest_checkpoint`, its file verified to be that model version."""
    from s2vec_core import embed

    path, version = latest_checkpoint(context, warehouse)
    try:
        return embed.load_model(path, device=device, model_version=version)
    except (FileNotFoundError, embed.CheckpointError) as e:
        raise dg.Failure(description=str(e), metadata={"checkpoint": dg.MetadataValue.path(str(path))}) from e


@dg.asset(
    partitions_def=region_partitions,
    backfill_policy=one_run_per_region,
    deps=[raster_tensors, mae_model],
    group_name="model",
    kinds={"pytorch", "delta", "polars"},
    code_version="3",
    description=(
        "S2Vec embeddings from the latest mae_model at two granularities, told apart by `level`: per image cell "
        "(encoder output on the unmasked image and its context window, pooled, then that averaged over the "
        "neighbouring image cells) and per image token (one per "
        "patch cell, the pixel level with 1-pixel patches), unit length with the raw length in `norm`. Delta "
        "table `cell_embeddings`; a run replaces only its (region, model_version) rows, and the last region "
        "of a model makes it the current version in `model_versions`."
    ),
)
def cell_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, device: DeviceResource
) -> dg.MaterializeResult:
    region = context.partition_key
    trained = trained_model(context, warehouse, device.resolve())
    shards = raster.open_shards(raster_dir(warehouse, region))
    if (shards.meta["image_level"], shards.meta["pixel_level"]) != (trained.image_level, trained.pixel_level):
        raise dg.Failure(
            f"{region}: rasters at levels {shards.meta['image_level']}/{shards.meta['pixel_level']}, "
            f"model trained at {trained.image_level}/{trained.pixel_level}"
        )
    started = time.perf_counter()
    progress = ProgressLog(context.log, f"{region}: embedding", len(shards), "images")
    embedded = pipeline.embed(trained, shards, region, on_progress=progress)
    seconds = time.perf_counter() - started
    df = embedded.rows
    commit = commit_info(context, trained.model_version)
    version = warehouse.write_partition(
        df,
        EMBEDDINGS_TABLE,
        {"region": region, "model_version": trained.model_version},
        description=CELL_EMBEDDINGS.description,
        commit=commit,
        facts=embeddings_facts(trained),
        row_group_rows=CELL_EMBEDDINGS.row_group_rows,
        # Tables from before unit vectors lack `norm`: add it (their rows read null, which readers handle).
        add_columns=True,
        spec=CELL_EMBEDDINGS,
    )
    current = registry.promote_if_complete(
        warehouse.root,
        trained.model_version,
        commit=commit,
        storage_options=warehouse.options,
    )
    metadata = table_metadata(
        df,
        warehouse.table_uri(EMBEDDINGS_TABLE),
        version,
        EMBEDDINGS_TABLE,
        preview_columns=["level", "cell_id", "token", "norm"],
        storage_options=warehouse.options,
    )
    metadata.update(
        model_version=trained.model_version,
        dim=dg.MetadataValue.int(trained.dim),
        model_status=registry.CURRENT if current else registry.TRAINED,
        token_dim=dg.MetadataValue.int(trained.token_dim),
        image_level=trained.image_level,
        token_level=trained.token_level,
        image_cells=dg.MetadataValue.int(len(shards)),
        token_cells=dg.MetadataValue.int(df.height - len(shards)),
        cells_per_s=float(len(shards) / seconds) if seconds > 0 else 0.0,
        mean_dimension_variance=float(embedded.image_vectors.var(axis=0).mean()),
    )
    return dg.MaterializeResult(metadata=metadata)


def embeddings_facts(trained: "embed.TrainedModel") -> dict[str, object]:
    """What cell_embeddings states about the version last written (every version's are in model_versions)."""
    return CELL_EMBEDDINGS.facts(
        dtype="float32",
        unit_length=True,
        norm_column=vectors.NORM_COLUMN,
        model_version=trained.model_version,
        levels={"image": trained.image_level, "token": trained.token_level},
        dims={str(trained.image_level): trained.dim, str(trained.token_level): trained.token_dim},
    )
