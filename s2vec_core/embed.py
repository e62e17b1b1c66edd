"""Embeddings of image cells from a trained checkpoint, and the `cell_embeddings` table rows.

`model_version` is the sha256 of the checkpoint file, so an embedding row names the exact weights.
Inference runs in eval mode, fp32, without gradients and in a fixed batch order: the same checkpoint
and input give the same embeddings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from s2vec_core import s2
from s2vec_core.catalog import sha256_file
from s2vec_core.model import MAEConfig, MaskedAutoencoder
from s2vec_core.raster import NormStats, ShardSet
from s2vec_core.train import load_checkpoint, select_device


@dataclass(frozen=True)
class TrainedModel:
    model: MaskedAutoencoder
    norm: NormStats
    model_version: str
    taxonomy_version: str
    image_level: int
    pixel_level: int

    @property
    def dim(self) -> int:
        return self.model.config.width


def load_model(checkpoint: str | os.PathLike, device: str = "auto") -> TrainedModel:
    """The model of a `train` checkpoint, in eval mode on `device`."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = load_checkpoint(path)
    model = MaskedAutoencoder(MAEConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    model.to(select_device(device)).eval()
    return TrainedModel(model=model, norm=NormStats.from_dict(state["norm"]), model_version=sha256_file(path),
                        taxonomy_version=state["taxonomy_version"], image_level=int(state["grid"]["image_level"]),
                        pixel_level=int(state["grid"]["pixel_level"]))


@torch.inference_mode()
def embed_shards(trained: TrainedModel, shards: ShardSet, batch_size: int = 256) -> np.ndarray:
    """float32 [len(shards), width]: mean-pooled encoder outputs, in the shards' row order."""
    if shards.channels != trained.norm.channels:
        raise ValueError("the shards' channels differ from the ones the model was trained on")
    dev = next(trained.model.parameters()).device
    out = np.empty((len(shards), trained.dim), dtype=np.float32)
    for start in range(0, len(shards), batch_size):
        raw = torch.from_numpy(shards.take(np.arange(start, min(start + batch_size, len(shards)))))
        x = trained.norm.apply_torch(raw.to(dev))
        out[start:start + raw.shape[0]] = trained.model.embed(x).float().cpu().numpy()
    return out


def embeddings_frame(region: str, image_ids: np.ndarray, level: int, embeddings: np.ndarray,
                     model_version: str) -> pl.DataFrame:
    """Rows of the `cell_embeddings` table: region, level Int8, cell_id Int64, token, model_version,
    embedding Array(Float32, d)."""
    ids = s2.as_uint64(image_ids)
    if embeddings.ndim != 2 or embeddings.shape[0] != ids.size:
        raise ValueError(f"need one embedding row per cell: {ids.size} cells, embeddings {embeddings.shape}")
    dim = embeddings.shape[1]
    return pl.DataFrame({
        "region": pl.Series([region] * ids.size, dtype=pl.String),
        "level": pl.Series(np.full(ids.size, level, np.int8), dtype=pl.Int8),
        "cell_id": pl.Series(s2.as_int64(ids), dtype=pl.Int64),
        "token": pl.Series(s2.to_token(ids), dtype=pl.String),
        "model_version": pl.Series([model_version] * ids.size, dtype=pl.String),
        "embedding": pl.Series(np.ascontiguousarray(embeddings, dtype=np.float32), dtype=pl.Array(pl.Float32, dim)),
    })
