"""The asset graph's recipe as plain functions: OSM extract -> cell features -> rasters -> MAE -> embeddings.

The Dagster assets and the benchmarks both call these, so a benchmark times what production runs and a
stage's defaults reach both from one place: `Grid` (levels, context ring), `s2vec_core.model_config`
(model and training) and `s2vec_core.shards` (when and how a PBF is split). Each function is one stage;
loading inputs from the warehouse, writing outputs and describing them stay with the caller.

torch is imported inside the stages that need it: the features and raster assets import this module,
and a features-only run should not pay for torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from s2vec_core import bbox as bboxes
from s2vec_core import raster, shards, vectors
from s2vec_core.features import cell_features, cell_features_by_range
from s2vec_core.grid import Grid
from s2vec_core.model_config import MAEConfig, TrainConfig, default_model_config
from s2vec_core.taxonomy import TAXONOMY_VERSION

if TYPE_CHECKING:
    from s2vec_core.embed import TrainedModel
    from s2vec_core.train import TrainResult

DEFAULT_GRID = Grid()
"""The product's default grid: every stage's level defaults read it."""


def extract(
    pbf: str | os.PathLike,
    level: int = DEFAULT_GRID.pixel_level,
    bbox: bboxes.BBox | None = None,
    workers: int | None = None,
    target_bytes: int = shards.TARGET_SHARD_BYTES,
    stats: dict | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """The long (cell, channel, value) rows at `level` of the cells whose centre lies in `bbox`.

    Sharded as `cell_features` runs it: a PBF above `target_bytes` is split and its shards extracted by up
    to `workers` processes, a smaller one read whole. `stats` gets the extraction's counts and
    `cells_outside_bbox`; `on_progress(shards done, shards)` follows the extraction. All rows at once:
    `extract_by_range` holds one range."""
    return pl.concat(list(extract_by_range(pbf, level, bbox, workers, target_bytes, stats, on_progress)))


def extract_by_range(
    pbf: str | os.PathLike,
    level: int = DEFAULT_GRID.pixel_level,
    bbox: bboxes.BBox | None = None,
    workers: int | None = None,
    target_bytes: int = shards.TARGET_SHARD_BYTES,
    stats: dict | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[pl.DataFrame]:
    """`extract` as runs over ascending, disjoint cell ranges (`shards.iter_sharded`): memory holds one
    shard's range, or the whole file when it is not split."""
    runs = shards.iter_sharded(pbf, level, workers, stats, target_bytes=target_bytes, on_progress=on_progress)
    return clip_by_range(runs, bbox, stats)


def clip_by_range(
    runs: Iterable[pl.DataFrame], bbox: bboxes.BBox | None, stats: dict | None = None
) -> Iterator[pl.DataFrame]:
    """Each run's rows of the cells whose centre lies in `bbox`; `stats["cells_outside_bbox"]` counts
    the cells dropped, once all runs are read."""
    outside = 0
    for pixels in runs:
        clipped = bboxes.clip(pixels, bbox)
        outside += pixels["cell_id"].n_unique() - clipped["cell_id"].n_unique()
        yield clipped
    if stats is not None:
        stats["cells_outside_bbox"] = int(outside)


def features(
    pbf: str | os.PathLike,
    region: str,
    levels: Sequence[int] = DEFAULT_GRID.feature_levels,
    bbox: bboxes.BBox | None = None,
    workers: int | None = None,
    target_bytes: int = shards.TARGET_SHARD_BYTES,
    stats: dict | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """The region's `cell_features` rows at `levels`: extracted at the finest (`extract`), summed up to
    the coarser ones."""
    levels = sorted(set(levels))
    pixels = extract(pbf, levels[-1], bbox, workers, target_bytes, stats, on_progress)
    return cell_features(pixels, levels, region)


def features_by_range(
    pbf: str | os.PathLike,
    region: str,
    levels: Sequence[int] = DEFAULT_GRID.feature_levels,
    bbox: bboxes.BBox | None = None,
    workers: int | None = None,
    target_bytes: int = shards.TARGET_SHARD_BYTES,
    stats: dict | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[pl.DataFrame]:
    """`features` a piece at a time (`cell_features_by_range` over `extract_by_range`), what
    `cell_features` writes: memory holds a shard's rows and a piece's frames, not the region's."""
    levels = sorted(set(levels))
    runs = extract_by_range(pbf, levels[-1], bbox, workers, target_bytes, stats, on_progress)
    return cell_features_by_range(runs, levels, region)


def merged_features_by_range(
    plan: shards.ShardPlan,
    directories: dict[str, os.PathLike],
    region: str,
    levels: Sequence[int] = DEFAULT_GRID.feature_levels,
    bbox: bboxes.BBox | None = None,
    stats: dict | None = None,
) -> Iterator[pl.DataFrame]:
    """`features_by_range` from shards extracted apart (`shards.extract_shards` on each of
    `plan.groups`, their rows in `directories` by shard name), what `cell_features` writes when its
    shards ran as separate steps: the same pieces, bit for bit."""
    levels = sorted(set(levels))
    runs = shards.merge_shards(plan, levels[-1], {k: Path(v) for k, v in directories.items()})
    return cell_features_by_range(clip_by_range(runs, bbox, stats), levels, region)


def rasters(features: pl.DataFrame, grid: Grid = DEFAULT_GRID) -> raster.Rasters:
    """The image tensors (and context windows) of one region's `cell_features` rows."""
    return raster.rasterize(features, grid.image_level, grid.pixel_level, grid.context_ring)


def raster_chunks(
    features: pl.DataFrame, grid: Grid = DEFAULT_GRID, images_per_chunk: int = raster.CHUNK_SIZE
) -> Iterator[raster.Rasters]:
    """`rasters` one shard of images at a time (what `raster_tensors` writes): memory holds a chunk."""
    return raster.rasterize_chunks(
        features, grid.image_level, grid.pixel_level, grid.context_ring, images_per_chunk
    )


def raster_chunks_by_range(
    read: Callable[[int, int], pl.LazyFrame],
    pixel_ids: Iterable[np.ndarray],
    grid: Grid = DEFAULT_GRID,
    images_per_chunk: int = raster.CHUNK_SIZE,
) -> Iterator[raster.Rasters]:
    """`raster_chunks` with the pixel rows read a chunk's cell range at a time (`raster.rasterize_by_range`:
    `read(lo, hi)` the rows, `pixel_ids` all their ids), what `raster_tensors` runs: memory holds a
    chunk, not the region."""
    return raster.rasterize_by_range(
        read, pixel_ids, grid.image_level, grid.pixel_level, grid.context_ring, images_per_chunk
    )


def write_rasters(
    rasters: raster.Rasters | Iterable[raster.Rasters],
    directory: str | os.PathLike,
    region: str,
    shard_size: int | None = None,
) -> pl.DataFrame:
    """Write `rasters` (or its chunks) as the region's shards (stamped with region and taxonomy); returns
    the index.
    `shard_size` None keeps `raster.write_shards`' own."""
    sizes = {} if shard_size is None else {"shard_size": shard_size}
    return raster.write_shards(
        rasters, directory, extra_meta={"region": region, "taxonomy_version": TAXONOMY_VERSION}, **sizes
    )


def fit(
    shard_set: raster.ShardSet,
    checkpoint: str | os.PathLike,
    model_config: MAEConfig | None = None,
    train_config: TrainConfig = TrainConfig(),
    device: str = "auto",
    on_epoch_end: Callable[[int, float, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train (or resume) the MAE on every region's shards; `model_config` None is the small CPU config
    for their shape and the taxonomy's layout groups (`default_model_config`)."""
    from s2vec_core import train

    return train.train(
        shard_set,
        checkpoint,
        model_config or default_model_config(shard_set),
        train_config,
        taxonomy_version=TAXONOMY_VERSION,
        device=device,
        on_epoch_end=on_epoch_end,
    )


@dataclass(frozen=True)
class Embeddings:
    rows: pl.DataFrame
    """The `cell_embeddings` rows: image cells and image tokens, unit length with `norm`."""
    image_vectors: np.ndarray
    """float32 [images, dim] in the shards' row order, before normalising (what the variance check reads)."""


def embed(
    trained: TrainedModel,
    shard_set: raster.ShardSet,
    region: str,
    on_progress: Callable[[int], None] | None = None,
) -> Embeddings:
    """The region's embeddings at both granularities, as `cell_embeddings` stores them."""
    from s2vec_core import embed as embedding

    image_vectors, tokens = embedding.embed_shards(trained, shard_set, tokens=True, on_progress=on_progress)
    cells = embedding.token_cells(shard_set.image_ids, trained.image_level, trained.token_level)
    rows = embeddings_rows(
        region,
        trained,
        shard_set.image_ids,
        image_vectors,
        cells.reshape(-1),
        tokens.reshape(-1, trained.token_dim),
    )
    return Embeddings(rows, image_vectors)


def embeddings_rows(
    region: str,
    trained: TrainedModel,
    image_ids: np.ndarray,
    image_vectors: np.ndarray,
    token_ids: np.ndarray,
    token_vectors: np.ndarray,
) -> pl.DataFrame:
    """Both granularities as cell_embeddings rows: unit vectors plus `norm`, sorted by (level, cell_id) so
    a lookup's cell_id filter skips most row groups."""
    from s2vec_core import embed as embedding

    # The two granularities differ in length; Delta stores a list either way.
    df = pl.concat(
        [
            frame.with_columns(pl.col("embedding").cast(pl.List(pl.Float32)))
            for frame in (
                embedding.embeddings_frame(
                    region, image_ids, trained.image_level, image_vectors, trained.model_version
                ),
                embedding.embeddings_frame(
                    region, token_ids, trained.token_level, token_vectors, trained.model_version
                ),
            )
        ]
    )
    return vectors.normalise(df).sort("level", "cell_id")
