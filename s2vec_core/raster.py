"""Image cells as raster tensors: `C x 2^k x 2^k`, each child cell at its S2 face (i, j) position,
plus a coarser context window over the neighbouring image cells.

Pixel (row, col) of an image cell is the child whose face coordinates are (i0 + row, j0 + col), where
(i0, j0) is the image cell's corner at the pixel level. The context of an image cell is the square of
`2 * ring + 1` image cells centred on it at the context level (image level + 1: each cell as 2 x 2
quadrants, pixel values summed), placed the same way by `s2.grid_window` and continued across face
edges; it is what lets an embedding describe a place's surroundings. Tensors hold raw channel values
(float32); `NormStats` (fitted on training images) travels with the model. Shards store each image's
non-zero values (`sparse_images`: rasters are >95% zeros) in memory-mappable `.npy` files, plus a parquet
index image cell -> shard/row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from s2vec_core import leftovers, s2
from s2vec_core.features import KEY_COLUMNS
from s2vec_core.grid import check_image_levels
from s2vec_core.sparse_images import SparseImages

if TYPE_CHECKING:
    import torch

SHARD_SIZE = 8192
"""Images per shard file: ~20 MB stored at rural density, ~65 MB in a dense city (BENCHMARKS.md, "Raster
storage"), so an object store holds few, mid-sized objects."""
CHUNK_SIZE = 512
"""Images made at once where rasters are made in pieces: ~67 MB of dense float32 with the default grid
(92 channels, 16 x 16 images, 10 x 10 context windows), the most `raster_tensors` holds at once (4,096
put a Dagster run process over 1 GB, and 1,024 the in-process default at 1.2 GB of PBF;
bench/bench_dagster_run.py)."""
READ_ROWS = 512
"""Images per block of a sequential pass over the shards (`ShardSet.chunks`): ~50 MB with the default
grid, so a check or a summary over a region's rasters holds little beside what it computes."""
INDEX_FILE = "index.parquet"
META_FILE = "meta.json"
STORAGE = "sparse-rows-1"
"""How the shards store images (`meta.json`'s `storage`); directories without it hold dense .npy shards
from before, which `open_shards` refuses with the fix."""


class RasterError(ValueError):
    """Input that cannot be rasterised (missing columns, wrong levels, duplicate cells)."""


@dataclass(frozen=True)
class Rasters:
    """`image_ids` uint64[n] (sorted), `tensors` float32[n, C, S, S] in `channels` order, and
    `context` float32[n, C, W, W] (W = (2 * context_ring + 1) * 2^(context_level - image_level)) or None."""

    image_ids: np.ndarray
    tensors: np.ndarray
    channels: tuple[str, ...]
    image_level: int
    pixel_level: int
    context: np.ndarray | None = None
    context_ring: int = 0

    @property
    def context_level(self) -> int:
        return self.image_level + 1


def channel_columns(frame: pl.DataFrame | pl.Schema) -> tuple[str, ...]:
    """The channel columns of a `cell_features` frame (or schema): everything after the key columns."""
    names = frame.names() if isinstance(frame, pl.Schema) else frame.columns
    return tuple(c for c in names if c not in KEY_COLUMNS)


def rasterize(
    cell_features: pl.DataFrame, image_level: int, pixel_level: int, context_ring: int = 0
) -> Rasters:
    """One tensor per image cell that has pixel-level rows in `cell_features` (and its context window
    of `context_ring` image cells on each side when > 0).

    Uses only rows at `pixel_level`; pixels without a row are zero, so are neighbours outside the region.
    All images are held at once (~131 KB each with the default grid): `rasterize_chunks` bounds that.
    """
    return next(
        rasterize_chunks(cell_features, image_level, pixel_level, context_ring, images_per_chunk=None)
    )


def rasterize_chunks(
    cell_features: pl.DataFrame,
    image_level: int,
    pixel_level: int,
    context_ring: int = 0,
    images_per_chunk: int | None = CHUNK_SIZE,
) -> Iterator[Rasters]:
    """`rasterize` as consecutive runs of at most `images_per_chunk` image cells in cell-id order (None:
    one run), so a region's images never need to fit in memory together; `write_shards` takes them as
    they come. A chunk's context windows see every cell of the region, not only the chunk's.
    The rows are all held (as float32): `rasterize_by_range` reads them a chunk at a time."""
    _check_args(image_level, pixel_level, context_ring, images_per_chunk)
    ids, channels, columns = _pixel_columns(cell_features, pixel_level)
    del cell_features  # once this generator holds the only reference, the frame itself is freed
    image_ids = np.unique(s2.parent(ids, image_level))
    side = 1 << (pixel_level - image_level)
    if context_ring:
        # The context level's sums for the whole region: a chunk's windows reach into its neighbours.
        coarse, summed = _context_sums(ids, columns, image_level + 1)
    step = images_per_chunk or image_ids.size
    for start in range(0, image_ids.size, step):
        chunk = image_ids[start : start + step]
        tensors = _gather(ids, columns, s2.grid_window(chunk, pixel_level, 0, side))
        context = (
            _gather(coarse, summed, _context_window(chunk, image_level, context_ring))
            if context_ring
            else None
        )
        yield Rasters(chunk, tensors, channels, image_level, pixel_level, context, context_ring)
        del tensors, context  # the consumer holds the chunk now, and may let it go


def rasterize_by_range(
    read: Callable[[int, int], pl.LazyFrame],
    pixel_ids: Iterable[np.ndarray],
    image_level: int,
    pixel_level: int,
    context_ring: int = 0,
    images_per_chunk: int = CHUNK_SIZE,
) -> Iterator[Rasters]:
    """`rasterize_chunks` of a region whose pixel rows are read a chunk's cell range at a time, never
    all at once: `read(lo, hi)` gives the region's `cell_features` rows at `pixel_level` with
    lo <= cell id <= hi (S2's unsigned order) as a lazy frame (only the ids and channels are read), `pixel_ids` yields the ids of all of them in any
    batches (the image cells are their parents). Same chunks, bit for bit.

    The context windows reach into neighbouring chunks, so a first pass sums every chunk at the context
    level into a file on disk; the second makes each chunk's images and reads the sums its windows
    need. Memory holds a chunk's rows and images, and the region's image and context cell ids."""
    _check_args(image_level, pixel_level, context_ring, images_per_chunk)
    parents = [np.unique(s2.parent(s2.as_uint64(np.asarray(b)), image_level)) for b in pixel_ids]
    image_ids = np.unique(np.concatenate(parents)) if parents else np.zeros(0, np.uint64)
    if not image_ids.size:
        raise RasterError(f"cell_features has no rows at the pixel level {pixel_level}")
    chunks = [image_ids[i : i + images_per_chunk] for i in range(0, image_ids.size, images_per_chunk)]
    side = 1 << (pixel_level - image_level)

    def rows(chunk: np.ndarray) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
        lo, _ = s2.children_range(chunk[:1], pixel_level)
        _, hi = s2.children_range(chunk[-1:], pixel_level)
        lf = read(int(lo[0]), int(hi[0]))
        names = channel_columns(lf.collect_schema())
        # Cast as read (as numpy would, round to nearest), so the float64 rows are never held whole.
        frame = lf.select(*(c for c in ("level", "cell_id") if c in lf.collect_schema()), *names)
        return _pixel_columns(frame.with_columns(pl.col(names).cast(pl.Float32)).collect(), pixel_level)

    with tempfile.TemporaryDirectory(prefix="s2vec-context-") as tmp:
        if context_ring:
            sums_path = Path(tmp) / "context.f32"
            coarse_ids = []
            with open(sums_path, "wb") as sums:
                for chunk in chunks:
                    coarse, summed = _context_sums(*rows(chunk)[::2], image_level + 1)
                    sums.write(np.ascontiguousarray(summed.T).tobytes())  # a cell's channels together
                    coarse_ids.append(coarse)
            coarse = np.concatenate(coarse_ids)
        channels = None
        for chunk in chunks:
            ids, names, columns = rows(chunk)
            if channels is not None and names != channels:
                raise RasterError("cell_features' channel columns differ between cell ranges")
            channels = names
            tensors = _gather(ids, columns, s2.grid_window(chunk, pixel_level, 0, side))
            del ids, columns
            context = None
            if context_ring:
                window = _context_window(chunk, image_level, context_ring)
                near = np.unique(window)
                rows_at = np.searchsorted(coarse, near)
                rows_at = rows_at[
                    (rows_at < coarse.size) & (coarse[np.minimum(rows_at, coarse.size - 1)] == near)
                ]
                stored = np.memmap(sums_path, np.float32, "r", shape=(coarse.size, len(channels)))
                near_sums = np.ascontiguousarray(stored[rows_at].T)
                del stored  # unmapped: the pages read do not stay in this process
                context = _gather(coarse[rows_at], near_sums, window)
            yield Rasters(chunk, tensors, channels, image_level, pixel_level, context, context_ring)
            del tensors, context  # the consumer holds the chunk now, and may let it go


def _check_args(image_level: int, pixel_level: int, context_ring: int, images_per_chunk: int | None) -> None:
    try:
        check_image_levels(image_level, pixel_level)
    except ValueError as e:
        raise RasterError(str(e)) from None
    if context_ring < 0:
        raise RasterError(f"context_ring must be >= 0, got {context_ring}")
    if images_per_chunk is not None and images_per_chunk < 1:
        raise RasterError(f"images_per_chunk must be >= 1, got {images_per_chunk}")


def _pixel_columns(
    cell_features: pl.DataFrame, pixel_level: int
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """(sorted uint64 ids, channel names, float32 [C, N] columns) of the rows at `pixel_level`."""
    missing = [c for c in ("level", "cell_id") if c not in cell_features.columns]
    if missing:
        raise RasterError(f"cell_features lacks columns {missing}")
    channels = channel_columns(cell_features)
    if not channels:
        raise RasterError("cell_features has no channel columns")
    at_pixel = (cell_features["level"] == pixel_level).to_numpy()
    if not at_pixel.any():
        raise RasterError(f"cell_features has no rows at the pixel level {pixel_level}")
    ids = s2.as_uint64(cell_features["cell_id"].to_numpy()[at_pixel])
    if not np.all(s2.cell_level(ids) == pixel_level):
        raise RasterError(f"rows labelled level {pixel_level} hold cell ids of another level")
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if np.any(ids[1:] == ids[:-1]):
        raise RasterError("duplicate pixel cells: rasterise one region at a time")
    # Channel-major float32, filled a column at a time: no second copy of the frame is ever made.
    columns = np.empty((len(channels), ids.size), np.float32)
    for c, name in enumerate(channels):
        columns[c] = cell_features[name].to_numpy()[at_pixel][order]
    if not np.isfinite(columns).all():
        raise RasterError("cell_features holds non-finite channel values")
    return ids, channels, columns


def _context_sums(ids: np.ndarray, columns: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted cells at the context `level`, float32 [C, M] sums of their pixel rows): each a float64
    sum over its children in id order, so any run of whole image cells gives the same sums."""
    coarse, inverse = np.unique(s2.parent(ids, level), return_inverse=True)
    sums = np.stack([np.bincount(inverse, column, coarse.size) for column in columns])
    return coarse, sums.astype(np.float32)


def _context_window(chunk: np.ndarray, image_level: int, context_ring: int) -> np.ndarray:
    """The context-level cells of each image's window of `context_ring` image cells on each side."""
    per_cell = 2  # the context level is one finer than the images: each image cell is 2 x 2 of them
    return s2.grid_window(chunk, image_level + 1, -context_ring * per_cell, (2 * context_ring + 1) * per_cell)


def _gather(sorted_ids: np.ndarray, columns: np.ndarray, window: np.ndarray) -> np.ndarray:
    """float32[n, C, S, S]: channel-major `columns` [C, N] (keyed by `sorted_ids`) at the cells of `window`
    [n, S, S], zero where a cell has no row. Filled a channel at a time, so the only full-size array is the
    result (a gather of rows, then a transpose, would hold it twice)."""
    flat = window.reshape(-1)
    pos = np.minimum(np.searchsorted(sorted_ids, flat), sorted_ids.size - 1)
    missing = sorted_ids[pos] != flat
    out = np.empty((window.shape[0], columns.shape[0], window[0].size), np.float32)
    for c, column in enumerate(columns):
        plane = column[pos]
        plane[missing] = 0.0
        out[:, c] = plane.reshape(window.shape[0], -1)
    return out.reshape(window.shape[0], columns.shape[0], *window.shape[1:])


@dataclass(frozen=True)
class NormStats:
    """Per-channel scale of `log1p(x)` and the channel's weight in the reconstruction loss.

    `log1p(x) / scale` with `scale` the RMS of `log1p(x)` over the channel's non-zero training pixels:
    zero stays zero and a typical non-zero value is ~1, so sparse channels (most POI counts) keep how
    many objects a pixel holds instead of saturating at a clip. `weight` (mean 1 over active channels)
    is `(median energy / energy) ** 0.5`, capped at `max_weight`, with energy = mean squared scaled value:
    a channel seen in 1% of pixels would otherwise weigh ~1/100 of a dense one in the loss although it
    carries as much about a place. Channels never seen get weight 0.
    """

    channels: tuple[str, ...]
    scale: tuple[float, ...]
    weight: tuple[float, ...]
    clip: float = 10.0
    max_weight: float = 10.0

    @classmethod
    def fit(
        cls,
        chunks: Iterable[np.ndarray],
        channels: tuple[str, ...],
        clip: float = 10.0,
        max_weight: float = 10.0,
    ) -> NormStats:
        """Statistics over chunks of [n, C, S, S] raw training tensors (streamed, summed in float64)."""
        total_sq = np.zeros(len(channels))
        nonzero = np.zeros(len(channels))
        count = 0
        for chunk in chunks:
            if chunk.ndim != 4 or chunk.shape[1] != len(channels):
                raise RasterError(f"need [n, {len(channels)}, S, S] tensors, got {chunk.shape}")
            logged = np.log1p(chunk.astype(np.float64))
            total_sq += np.square(logged).sum(axis=(0, 2, 3))
            nonzero += (chunk != 0).sum(axis=(0, 2, 3))
            count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
        if count == 0:
            raise RasterError("no training tensors to fit normalisation statistics on")
        active = total_sq > 0
        scale = np.where(active, np.sqrt(total_sq / np.maximum(nonzero, 1)), 1.0)
        energy = np.where(active, total_sq / scale**2 / count, 0.0)
        weight = np.zeros(len(channels))
        if active.any():
            weight[active] = np.minimum(np.sqrt(np.median(energy[active]) / energy[active]), max_weight)
            weight /= weight[active].mean()
        return cls(
            tuple(channels),
            tuple(float(x) for x in scale),
            tuple(float(w) for w in weight),
            float(clip),
            float(max_weight),
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale float32[C, 1, 1], weight float32[C])."""
        return np.asarray(self.scale, np.float32).reshape(-1, 1, 1), np.asarray(self.weight, np.float32)

    def apply(self, tensors: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of raw [n, C, S, S] tensors."""
        scale, _ = self.arrays()
        return np.minimum(np.log1p(tensors, dtype=np.float32) / scale, self.clip)

    def apply_torch(self, raw: torch.Tensor) -> torch.Tensor:
        """`apply` for a raw tensor batch, computed on the batch's device (through the tensor's own
        methods, so rasterising never imports torch)."""
        return (raw.log1p() / raw.new_tensor(self.arrays()[0])).clamp_(max=self.clip)

    def to_dict(self) -> dict:
        return {
            "channels": list(self.channels),
            "scale": list(self.scale),
            "weight": list(self.weight),
            "clip": self.clip,
            "max_weight": self.max_weight,
        }

    @classmethod
    def from_dict(cls, d: dict) -> NormStats:
        stats = cls(
            tuple(d["channels"]),
            tuple(float(x) for x in d["scale"]),
            tuple(float(x) for x in d["weight"]),
            float(d["clip"]),
            float(d["max_weight"]),
        )
        if not len(stats.channels) == len(stats.scale) == len(stats.weight):
            raise RasterError("norm stats: channels, scale and weight differ in length")
        return stats


def write_shards(
    rasters: Rasters | Iterable[Rasters],
    directory: str | os.PathLike,
    shard_size: int = SHARD_SIZE,
    extra_meta: dict | None = None,
) -> pl.DataFrame:
    """Write `rasters` as sparse shards `shard-NNNNN.*.npy` (and `context-NNNNN.*.npy` for the context
    windows; see `sparse_images`) plus an index; replace `directory` atomically.

    `rasters` is one `Rasters` or the chunks of `rasterize_chunks` / `rasterize_by_range`, of any sizes,
    taken as they come: memory holds one dense chunk and one shard's non-zero values. Shards hold
    `shard_size` images (the last fewer) however the chunks were cut, and the content hash depends on
    the images alone.

    Returns the index (cell_id Int64, token, shard, row). The new directory is built beside the old
    one and swapped in, so a failed write leaves the previous shards readable.
    """
    if shard_size < 1:
        raise RasterError(f"shard_size must be >= 1, got {shard_size}")
    chunks = _shard_slices(rasters, CHUNK_SIZE) if isinstance(rasters, Rasters) else iter(rasters)
    directory = Path(directory)
    leftovers.sweep(directory)
    tmp = leftovers.temporary_sibling(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # One running digest per stream, of the dense images: the hash depends on neither chunks nor storage.
    digests = {"images": hashlib.sha256(), "context": hashlib.sha256()}
    ids, first = [], None
    pending = _PendingShard(tmp)
    try:
        # Not `enumerate`: it keeps the last chunk while the next one is made, so memory held two.
        for chunk in chunks:  # chunks may still be made here, and fail
            first = first or _shape_only(chunk)
            parts = {}
            for stream, array in (("images", chunk.tensors), ("context", chunk.context)):
                if array is not None:
                    block = np.ascontiguousarray(array, np.float32)
                    digests[stream].update(block.data)
                    parts[stream] = SparseImages.from_dense(block)
                    pending.dense_bytes += block.nbytes
                    del block
            ids.append(chunk.image_ids)
            pending.add(parts)
            del chunk, parts  # before the next chunk is made: memory holds one
            while pending.images >= shard_size:
                pending.write(shard_size)
        if first is None or not sum(i.size for i in ids):
            raise RasterError("no images to write")
        while pending.images:
            pending.write(shard_size)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    image_ids = np.concatenate(ids)
    index = pl.DataFrame(
        {
            "cell_id": pl.Series(s2.as_int64(image_ids), dtype=pl.Int64),
            "token": pl.Series(s2.to_token(image_ids), dtype=pl.String),
            "shard": pl.Series(np.concatenate(pending.names), dtype=pl.String),
            "row": pl.Series(np.concatenate(pending.rows), dtype=pl.Int32),
        }
    )
    index.write_parquet(tmp / INDEX_FILE)
    meta = {
        "channels": list(first.channels),
        "image_level": first.image_level,
        "pixel_level": first.pixel_level,
        "shape": list(first.tensors.shape[1:]),
        "images": int(image_ids.size),
        "context_ring": first.context_ring,
        "context_shape": list(first.context.shape[1:]) if first.context is not None else None,
        # Identifies the content (ids + tensors), e.g. to tell whether a model saw these rasters.
        "sha256": hashlib.sha256(
            digests["images"].digest() + digests["context"].digest() + image_ids.tobytes()
        ).hexdigest(),
        "storage": STORAGE,
        "stored_bytes": pending.stored_bytes,
        "dense_bytes": pending.dense_bytes,
        **(extra_meta or {}),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    old = leftovers.temporary_sibling(directory, "old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return index


class _PendingShard:
    """Chunks' non-zero values gathered until a shard's worth, written `shard-NNNNN` (and its context)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.parts: list[dict[str, SparseImages]] = []
        self.images = 0
        self.names: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.stored_bytes = self.dense_bytes = 0

    def add(self, parts: dict[str, SparseImages]) -> None:
        self.parts.append(parts)
        self.images += len(parts["images"])

    def write(self, shard_size: int) -> None:
        """Write the first `shard_size` pending images (or all, if fewer) as the next shard."""
        name = f"shard-{len(self.names):05d}"
        n = min(shard_size, self.images)
        rest = {}
        for stream, stem in (("images", name), ("context", _context_name(name))):
            if stream not in self.parts[0]:
                continue
            shard, rest[stream] = SparseImages.concat([p[stream] for p in self.parts]).cut(n)
            shard.save(self.directory / stem)
            self.stored_bytes += shard.nbytes
        self.parts = [rest] if n < self.images else []
        self.images -= n
        self.names.append(np.full(n, name))
        self.rows.append(np.arange(n))


def _shape_only(rasters: Rasters) -> Rasters:
    """`rasters` without its images (empty copies keep the shapes), for the metadata."""
    context = rasters.context[:0].copy() if rasters.context is not None else None
    return dataclasses.replace(
        rasters, image_ids=rasters.image_ids[:0].copy(), tensors=rasters.tensors[:0].copy(), context=context
    )


def _shard_slices(rasters: Rasters, shard_size: int) -> Iterator[Rasters]:
    for start in range(0, rasters.image_ids.size, shard_size):
        cut = slice(start, start + shard_size)
        context = rasters.context[cut] if rasters.context is not None else None
        yield dataclasses.replace(
            rasters, image_ids=rasters.image_ids[cut], tensors=rasters.tensors[cut], context=context
        )


def _context_name(shard_name: str) -> str:
    return shard_name.replace("shard-", "context-", 1)


@dataclass(frozen=True)
class ShardSet:
    """Memory-mapped shards of one or more raster directories, addressable by a global row."""

    image_ids: np.ndarray  # uint64[n], in global row order
    shard_of: np.ndarray  # int32[n], which entry of `shards`
    row_of: np.ndarray  # int64[n], row within that shard
    shards: tuple[SparseImages, ...]  # images [m, C, S, S]
    channels: tuple[str, ...]
    meta: dict
    contexts: tuple[SparseImages, ...] | None = None  # context windows [m, C, W, W], one per shard

    def __len__(self) -> int:
        return int(self.image_ids.size)

    @property
    def has_context(self) -> bool:
        return self.contexts is not None

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Raw float32 tensors [len(rows), C, S, S] for global `rows` (one fancy index per shard)."""
        return self._take(self.shards, rows)

    def take_context(self, rows: np.ndarray) -> np.ndarray:
        """Raw float32 context windows [len(rows), C, W, W] for global `rows`."""
        if self.contexts is None:
            raise RasterError("these rasters have no context windows (written with context_ring 0)")
        return self._take(self.contexts, rows)

    def _take(self, arrays: tuple[SparseImages, ...], rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, *arrays[0].shape), dtype=np.float32)
        which = self.shard_of[rows]
        for s in np.unique(which):
            sel = np.flatnonzero(which == s)
            # Sorted reads are sequential in the files; the scatter back restores the requested order.
            local = self.row_of[rows[sel]]
            order = np.argsort(local, kind="stable")
            out[sel[order]] = arrays[s].dense(local[order])
        return out

    def chunks(self, size: int = READ_ROWS, context: bool = False) -> Iterator[np.ndarray]:
        """Consecutive blocks of at most `size` tensors (or context windows) in global row order."""
        arrays = self.contexts if context else self.shards
        if arrays is None:
            raise RasterError("these rasters have no context windows (written with context_ring 0)")
        for start in range(0, len(self), size):
            yield self._take(arrays, np.arange(start, min(start + size, len(self))))


def open_shards(directories: list[str | os.PathLike] | str | os.PathLike) -> ShardSet:
    """Open raster directories written by `write_shards`; they must agree on channels and shapes."""
    if isinstance(directories, (str, os.PathLike)):
        directories = [directories]
    if not directories:
        raise RasterError("no raster directories given")
    ids, shard_of, row_of, shards, contexts = [], [], [], [], []
    meta = None
    for d in map(Path, directories):
        if not (d / INDEX_FILE).exists() or not (d / META_FILE).exists():
            raise RasterError(f"{d} is not a raster shard directory (no {INDEX_FILE} / {META_FILE})")
        m = json.loads((d / META_FILE).read_text())
        if m.get("storage") != STORAGE:
            raise RasterError(
                f"{d} holds raster shards in an older format ({m.get('storage', 'dense .npy')}, not "
                f"{STORAGE}); re-materialise raster_tensors for its region (or `write_shards` again)."
            )
        if meta is None:
            meta = m
        elif (m["channels"], m["shape"], m["context_shape"]) != (
            meta["channels"],
            meta["shape"],
            meta["context_shape"],
        ):
            raise RasterError(f"{d}: channels, image or context shape differ from {directories[0]}")
        index = pl.read_parquet(d / INDEX_FILE)
        names = index["shard"].unique(maintain_order=True).to_list()
        local = {name: len(shards) + n for n, name in enumerate(names)}
        try:
            shards.extend(SparseImages.load(d / name, m["shape"]) for name in names)
            if m["context_shape"] is not None:
                contexts.extend(
                    SparseImages.load(d / _context_name(name), m["context_shape"]) for name in names
                )
        except (OSError, ValueError) as e:
            raise RasterError(f"{d}: {e}; re-materialise raster_tensors for its region") from e
        ids.append(s2.as_uint64(index["cell_id"].to_numpy()))
        shard_of.append(index["shard"].replace_strict(local, return_dtype=pl.Int32).to_numpy())
        row_of.append(index["row"].to_numpy().astype(np.int64))
    return ShardSet(
        np.concatenate(ids),
        np.concatenate(shard_of),
        np.concatenate(row_of),
        tuple(shards),
        tuple(meta["channels"]),
        meta,
        tuple(contexts) if meta["context_shape"] is not None else None,
    )
