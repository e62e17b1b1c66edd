"""Embeddings from a trained checkpoint at two granularities, and the `cell_embeddings` table rows.

- image cells: the encoder's output pooled over the tokens: the mean over every token (the image and
  its context window) and the spread over the image's own tokens (2 x width values), then the same
  pooled vector averaged over the region's image cells within `NEIGHBOUR_RING` steps (4 x width in
  all). The encoder sees its neighbours only as coarse totals; their layout (how POIs cluster) reaches a
  cell only through this mean, and layout varies smoothly over several cells (BENCHMARKS.md);
- token cells: one embedding per image token, i.e. per patch cell at `pixel_level - log2(patch_size)`
  (the pixel level itself with the paper's 1-pixel patches), each having attended to the whole input.

Both are standardised per dimension with the training images' mean and std (`embedding_scale` in the
checkpoint): raw encoder outputs share one dominant direction, so without it every cosine is ~1.
`model_version` is the sha256 of the checkpoint file, so an embedding row names the exact weights.
Inference runs in eval mode, fp32, without gradients and in a fixed batch order: the same checkpoint
and input give the same embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from s2vec_core import neighbours, s2
from s2vec_core.catalog import sha256_file
from s2vec_core.model import MAEConfig, MaskedAutoencoder
from s2vec_core.raster import NormStats, ShardSet
from s2vec_core.train import load_checkpoint, select_device

NEIGHBOUR_RING = 1
"""Image cells on each side whose pooled embeddings are averaged into a cell's second half."""


@dataclass(frozen=True)
class TrainedModel:
    model: MaskedAutoencoder
    norm: NormStats
    context_norm: NormStats | None
    model_version: str
    taxonomy_version: str
    image_level: int
    pixel_level: int
    scale: dict[str, np.ndarray] | None = None
    """Per-dimension `pooled_mean`/`pooled_std`/`token_mean`/`token_std` (None for older checkpoints)."""

    @property
    def dim(self) -> int:
        """Length of an image-cell embedding: its own pooled vector and its neighbours' mean (4 x width)."""
        return 2 * self.model.embedding_dim

    @property
    def token_dim(self) -> int:
        return self.model.config.width

    @property
    def token_level(self) -> int:
        """S2 level of one image token (a patch of pixels)."""
        return self.pixel_level - (self.model.config.patch_size.bit_length() - 1)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, not an s2vec checkpoint, or not the model version asked for."""


_REQUIRED = ("model", "model_config", "norm", "taxonomy_version", "grid")


def load_model(
    checkpoint: str | os.PathLike, device: str = "auto", model_version: str | None = None
) -> TrainedModel:
    """The model of a `train` checkpoint, in eval mode on `device`.

    With `model_version`, the file must hash to it: a row of embeddings names its exact weights, so a
    file replaced after training (or a path that now points at another model) is refused, not used."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    found = sha256_file(path)
    if model_version is not None and found != model_version:
        raise CheckpointError(
            f"the checkpoint at {path} is model version {found[:12]}, not {model_version[:12]} that was "
            "trained and registered there: the file was replaced after training. Materialise mae_model "
            "again to retrain (or restore the file), then the embeddings."
        )
    try:
        state = load_checkpoint(path)
        missing = [k for k in _REQUIRED if k not in state] if isinstance(state, dict) else list(_REQUIRED)
        if missing:
            raise CheckpointError(f"it lacks {', '.join(missing)}")
        model = MaskedAutoencoder(MAEConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
    except Exception as e:  # EOFError, UnpicklingError, zip errors, shape mismatches: all the same to a user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable s2vec checkpoint ({reason}). Delete it and materialise mae_model "
            "again; a checkpoint is only ever written by s2vec_core.train."
        ) from e
    model.to(select_device(device)).eval()
    context_norm = NormStats.from_dict(state["context_norm"]) if state.get("context_norm") else None
    return TrainedModel(
        model=model,
        norm=NormStats.from_dict(state["norm"]),
        context_norm=context_norm,
        model_version=found,
        taxonomy_version=state["taxonomy_version"],
        image_level=int(state["grid"]["image_level"]),
        pixel_level=int(state["grid"]["pixel_level"]),
        scale={k: np.asarray(v, np.float32) for k, v in state["embedding_scale"].items()}
        if state.get("embedding_scale")
        else None,
    )


@torch.inference_mode()
def embed_shards(
    trained: TrainedModel,
    shards: ShardSet,
    batch_size: int = 256,
    tokens: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """float32 [len(shards), dim] image-cell embeddings in the shards' row order: each cell's pooled
    encoder output, then the mean of that over its neighbours among the shards' cells (and, with
    `tokens`, float32 [len(shards), N, token_dim] per image token in row-major patch-grid order).
    `on_progress` is called with the images embedded so far after every batch."""
    if shards.channels != trained.norm.channels:
        raise ValueError("the shards' channels differ from the ones the model was trained on")
    if shards.has_context != (trained.context_norm is not None):
        raise ValueError(
            "the model and the shards disagree on context windows: re-rasterise with the model's grid"
        )
    dev = next(trained.model.parameters()).device
    config = trained.model.config
    pooled = np.empty((len(shards), trained.model.embedding_dim), dtype=np.float32)
    per_token = (
        np.empty((len(shards), config.num_patches, trained.token_dim), dtype=np.float32) if tokens else None
    )
    for start in range(0, len(shards), batch_size):
        rows = np.arange(start, min(start + batch_size, len(shards)))
        x = trained.norm.apply_torch(torch.from_numpy(shards.take(rows)).to(dev))
        ctx = (
            trained.context_norm.apply_torch(torch.from_numpy(shards.take_context(rows)).to(dev))
            if trained.context_norm
            else None
        )
        p, t = trained.model.embed(x, ctx, per_token=True)
        pooled[rows] = _standardise(trained, "pooled", p.float().cpu().numpy())
        if per_token is not None:
            per_token[rows] = _standardise(trained, "token", t.float().cpu().numpy())
        if on_progress is not None:
            on_progress(int(rows[-1]) + 1)
    around = neighbours.ring_mean(shards.image_ids, pooled, trained.image_level, NEIGHBOUR_RING)
    cells = np.concatenate([pooled, around], axis=1)
    return (cells, per_token) if tokens else cells


def _standardise(trained: TrainedModel, kind: str, v: np.ndarray) -> np.ndarray:
    if trained.scale is None:
        return v
    return (v - trained.scale[f"{kind}_mean"]) / trained.scale[f"{kind}_std"]


def token_cells(image_ids: np.ndarray, image_level: int, token_level: int) -> np.ndarray:
    """uint64[n, N]: the cell of each image token, in the encoder's row-major patch-grid order."""
    return s2.grid_window(image_ids, token_level, 0, 1 << (token_level - image_level)).reshape(
        len(image_ids), -1
    )


def embeddings_frame(
    region: str, image_ids: np.ndarray, level: int, embeddings: np.ndarray, model_version: str
) -> pl.DataFrame:
    """`cell_embeddings` rows before normalisation: the spec's columns (`tables.CELL_EMBEDDINGS`) up to
    `embedding`, here Array(Float32, d); `vectors.normalise` makes it the stored unit list and adds `norm`."""
    ids = s2.as_uint64(image_ids)
    if embeddings.ndim != 2 or embeddings.shape[0] != ids.size:
        raise ValueError(f"need one embedding row per cell: {ids.size} cells, embeddings {embeddings.shape}")
    dim = embeddings.shape[1]
    return pl.DataFrame(
        {
            "region": pl.Series([region] * ids.size, dtype=pl.String),
            "level": pl.Series(np.full(ids.size, level, np.int8), dtype=pl.Int8),
            "cell_id": pl.Series(s2.as_int64(ids), dtype=pl.Int64),
            "token": pl.Series(s2.to_token(ids), dtype=pl.String),
            "model_version": pl.Series([model_version] * ids.size, dtype=pl.String),
            "embedding": pl.Series(
                np.ascontiguousarray(embeddings, dtype=np.float32), dtype=pl.Array(pl.Float32, dim)
            ),
        }
    )
