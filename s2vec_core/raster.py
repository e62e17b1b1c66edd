"""Image cells as raster tensors: `C x 2^k x 2^k`, each child cell at its S2 face (i, j) position.

Pixel (row, col) of an image cell is the child whose face coordinates are (i0 + row, j0 + col), where
(i0, j0) is the image cell's corner at the pixel level. Tensors hold raw channel values (float32);
`NormStats` (log1p then per-channel standardisation, fitted on training images) travels with the model.
Shards are plain `.npy` files (memory-mappable) plus a parquet index image cell -> shard/row.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from s2vec_core import s2
from s2vec_core.features import KEY_COLUMNS

INDEX_FILE = "index.parquet"
META_FILE = "meta.json"


class RasterError(ValueError):
    """Input that cannot be rasterised (missing columns, wrong levels, duplicate cells)."""


@dataclass(frozen=True)
class Rasters:
    """`image_ids` uint64[n] (sorted) and `tensors` float32[n, C, S, S] in `channels` order."""

    image_ids: np.ndarray
    tensors: np.ndarray
    channels: tuple[str, ...]
    image_level: int
    pixel_level: int


def channel_columns(frame: pl.DataFrame) -> tuple[str, ...]:
    """The channel columns of a `cell_features` frame: everything after the key columns, in order."""
    return tuple(c for c in frame.columns if c not in KEY_COLUMNS)


def rasterize(cell_features: pl.DataFrame, image_level: int, pixel_level: int) -> Rasters:
    """One tensor per image cell that has pixel-level rows in `cell_features`.

    Uses only rows at `pixel_level`; an image cell's pixels without a row are zero.
    """
    if not 0 <= image_level < pixel_level <= s2.MAX_LEVEL:
        raise RasterError(f"need 0 <= image_level < pixel_level <= 30, got {image_level}/{pixel_level}")
    missing = [c for c in ("level", "cell_id") if c not in cell_features.columns]
    if missing:
        raise RasterError(f"cell_features lacks columns {missing}")
    channels = channel_columns(cell_features)
    if not channels:
        raise RasterError("cell_features has no channel columns")
    pixels = cell_features.filter(pl.col("level") == pixel_level)
    if pixels.height == 0:
        raise RasterError(f"cell_features has no rows at the pixel level {pixel_level}")
    ids = s2.as_uint64(pixels["cell_id"].to_numpy())
    if not np.all(s2.cell_level(ids) == pixel_level):
        raise RasterError(f"rows labelled level {pixel_level} hold cell ids of another level")
    if np.unique(ids).size != ids.size:
        raise RasterError("duplicate pixel cells: rasterise one region at a time")
    values = pixels.select(pl.col(list(channels)).cast(pl.Float32)).to_numpy()
    if not np.isfinite(values).all():
        raise RasterError("cell_features holds non-finite channel values")

    k = pixel_level - image_level
    parents = s2.parent(ids, image_level)
    image_ids, image_row = np.unique(parents, return_inverse=True)
    _, i, j = s2.face_ij(ids)
    _, i0, j0 = s2.face_ij(image_ids)
    # The image cell's corner at the pixel level: its (i, j) scaled by 2^k.
    row = i - (i0[image_row] << k)
    col = j - (j0[image_row] << k)
    size = 1 << k
    tensors = np.zeros((image_ids.size, len(channels), size, size), dtype=np.float32)
    tensors[image_row, :, row, col] = values
    return Rasters(image_ids, tensors, channels, image_level, pixel_level)


@dataclass(frozen=True)
class NormStats:
    """Per-channel mean and std of `log1p(x)` over all training pixels; standardised values are
    clipped to +-`clip`, since a channel seen in a handful of pixels would otherwise put values of
    hundreds of stds there and its few pixels would dominate the reconstruction loss."""

    channels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: float = 5.0

    @classmethod
    def fit(cls, chunks: Iterable[np.ndarray], channels: tuple[str, ...], min_std: float = 1e-6,
            clip: float = 5.0) -> NormStats:
        """Statistics over chunks of [n, C, S, S] raw training tensors (streamed, summed in float64)."""
        total = np.zeros(len(channels))
        total_sq = np.zeros(len(channels))
        count = 0
        for chunk in chunks:
            if chunk.ndim != 4 or chunk.shape[1] != len(channels):
                raise RasterError(f"need [n, {len(channels)}, S, S] tensors, got {chunk.shape}")
            logged = np.log1p(chunk.astype(np.float64))
            total += logged.sum(axis=(0, 2, 3))
            total_sq += np.square(logged).sum(axis=(0, 2, 3))
            count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
        if count == 0:
            raise RasterError("no training tensors to fit normalisation statistics on")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        # A channel that never varies in training carries no signal; std 1 keeps it at 0, not inf.
        std = np.where(std < min_std, 1.0, std)
        return cls(tuple(channels), tuple(float(m) for m in mean), tuple(float(s) for s in std), float(clip))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32[C, 1, 1], ready to broadcast over [n, C, S, S]."""
        shape = (len(self.channels), 1, 1)
        return (np.asarray(self.mean, np.float32).reshape(shape), np.asarray(self.std, np.float32).reshape(shape))

    def apply(self, tensors: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of raw [n, C, S, S] tensors."""
        mean, std = self.arrays()
        return np.clip((np.log1p(tensors, dtype=np.float32) - mean) / std, -self.clip, self.clip)

    def apply_torch(self, raw: torch.Tensor) -> torch.Tensor:
        """`apply` for a raw tensor batch, computed on the batch's device."""
        mean, std = (torch.from_numpy(a).to(raw.device) for a in self.arrays())
        return ((torch.log1p(raw) - mean) / std).clamp_(-self.clip, self.clip)

    def to_dict(self) -> dict:
        return {"channels": list(self.channels), "mean": list(self.mean), "std": list(self.std), "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict) -> NormStats:
        stats = cls(tuple(d["channels"]), tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]),
                    float(d["clip"]))
        if not len(stats.channels) == len(stats.mean) == len(stats.std):
            raise RasterError("norm stats: channels, mean and std differ in length")
        return stats


def write_shards(rasters: Rasters, directory: str | os.PathLike, shard_size: int = 4096,
                 extra_meta: dict | None = None) -> pl.DataFrame:
    """Write `rasters` as `shard-NNNNN.npy` files plus an index; replace `directory` atomically.

    Returns the index (cell_id Int64, token, shard, row). The new directory is built beside the old
    one and swapped in, so a failed write leaves the previous shards readable.
    """
    if shard_size < 1:
        raise RasterError(f"shard_size must be >= 1, got {shard_size}")
    n = rasters.image_ids.size
    if n == 0:
        raise RasterError("no images to write")
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    starts = range(0, n, shard_size)
    names = [f"shard-{s // shard_size:05d}.npy" for s in starts]
    digest = hashlib.sha256()
    for start, name in zip(starts, names):
        block = np.ascontiguousarray(rasters.tensors[start:start + shard_size])
        np.save(tmp / name, block)
        digest.update(block.data)
    rows = np.arange(n)
    index = pl.DataFrame({
        "cell_id": pl.Series(s2.as_int64(rasters.image_ids), dtype=pl.Int64),
        "token": pl.Series(s2.to_token(rasters.image_ids), dtype=pl.String),
        "shard": pl.Series(np.asarray(names)[rows // shard_size], dtype=pl.String),
        "row": pl.Series(rows % shard_size, dtype=pl.Int32),
    })
    index.write_parquet(tmp / INDEX_FILE)
    meta = {"channels": list(rasters.channels), "image_level": rasters.image_level,
            "pixel_level": rasters.pixel_level, "shape": list(rasters.tensors.shape[1:]), "images": n,
            # Identifies the content (ids + tensors), e.g. to tell whether a model saw these rasters.
            "sha256": hashlib.sha256(digest.digest() + rasters.image_ids.tobytes()).hexdigest(),
            **(extra_meta or {})}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return index


@dataclass(frozen=True)
class ShardSet:
    """Memory-mapped shards of one or more raster directories, addressable by a global row."""

    image_ids: np.ndarray           # uint64[n], in global row order
    shard_of: np.ndarray            # int32[n], which entry of `shards`
    row_of: np.ndarray              # int64[n], row within that shard
    shards: tuple[np.ndarray, ...]  # read-only memmaps [m, C, S, S]
    channels: tuple[str, ...]
    meta: dict

    def __len__(self) -> int:
        return int(self.image_ids.size)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Raw float32 tensors [len(rows), C, S, S] for global `rows` (one fancy index per shard)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, *self.shards[0].shape[1:]), dtype=np.float32)
        which = self.shard_of[rows]
        for s in np.unique(which):
            sel = np.flatnonzero(which == s)
            # Sorted reads are sequential on the memmap; the scatter back restores the requested order.
            local = self.row_of[rows[sel]]
            order = np.argsort(local, kind="stable")
            out[sel[order]] = self.shards[s][local[order]]
        return out

    def chunks(self, size: int = 4096) -> Iterator[np.ndarray]:
        """Consecutive blocks of at most `size` tensors in global row order."""
        for start in range(0, len(self), size):
            yield self.take(np.arange(start, min(start + size, len(self))))


def open_shards(directories: list[str | os.PathLike] | str | os.PathLike) -> ShardSet:
    """Open raster directories written by `write_shards`; they must agree on channels and shape."""
    if isinstance(directories, (str, os.PathLike)):
        directories = [directories]
    if not directories:
        raise RasterError("no raster directories given")
    ids, shard_of, row_of, shards = [], [], [], []
    meta = None
    for d in map(Path, directories):
        if not (d / INDEX_FILE).exists() or not (d / META_FILE).exists():
            raise RasterError(f"{d} is not a raster shard directory (no {INDEX_FILE} / {META_FILE})")
        m = json.loads((d / META_FILE).read_text())
        if meta is None:
            meta = m
        elif (m["channels"], m["shape"]) != (meta["channels"], meta["shape"]):
            raise RasterError(f"{d}: channels or image shape differ from {directories[0]}")
        index = pl.read_parquet(d / INDEX_FILE)
        names = index["shard"].unique(maintain_order=True).to_list()
        local = {name: len(shards) + n for n, name in enumerate(names)}
        shards.extend(np.load(d / name, mmap_mode="r") for name in names)
        ids.append(s2.as_uint64(index["cell_id"].to_numpy()))
        shard_of.append(index["shard"].replace_strict(local, return_dtype=pl.Int32).to_numpy())
        row_of.append(index["row"].to_numpy().astype(np.int64))
    return ShardSet(np.concatenate(ids), np.concatenate(shard_of), np.concatenate(row_of), tuple(shards),
                    tuple(meta["channels"]), meta)
