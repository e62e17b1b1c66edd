"""Images stored as compressed sparse rows: how raster shards sit on disk.

Rasters of OSM counts are almost all zeros (0.6% of image values and 2.9% of context values are
non-zero on rural Liechtenstein, 2.3% / 8.6% in Monaco; BENCHMARKS.md, "Raster storage"), so dense float32
shards cost ~80 GB of disk per GB of PBF. A shard keeps, per image, only its non-zero values and their flat positions in the image's
`C x S x S` array; reading turns them back into dense float32 blocks, exactly (no rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PARTS = ("offsets", "positions", "values")
"""The arrays of one shard, each in `<stem>.<part>.npy`."""


@dataclass(frozen=True)
class SparseImages:
    """Images `[m, *shape]`: image r's non-zero values are `values[offsets[r]:offsets[r + 1]]`, at the
    flat positions `positions[...]` (row-major, ascending) of its `prod(shape)` values."""

    offsets: np.ndarray  # int64[m + 1], in memory (8 bytes per image)
    positions: np.ndarray  # [nnz], the smallest unsigned type that holds prod(shape) - 1
    values: np.ndarray  # float32[nnz]
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + self.positions.nbytes + self.values.nbytes

    @classmethod
    def from_dense(cls, images: np.ndarray) -> SparseImages:
        """The non-zero values of float32 `images [m, *shape]`."""
        flat = images.reshape(images.shape[0], -1)
        rows, cols = np.nonzero(flat)  # row-major: grouped by image, ascending within it
        offsets = np.zeros(flat.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=flat.shape[0]), out=offsets[1:])
        position_type = np.min_scalar_type(max(flat.shape[1] - 1, 0))
        return cls(
            offsets,
            cols.astype(position_type),
            flat[rows, cols].astype(np.float32),
            tuple(images.shape[1:]),
        )

    @classmethod
    def concat(cls, parts: list[SparseImages]) -> SparseImages:
        """The images of `parts`, one after another (same image shape)."""
        starts = np.cumsum([0] + [p.values.size for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts, strict=True)])
        positions = np.concatenate([p.positions for p in parts])
        return cls(
            offsets.astype(np.int64), positions, np.concatenate([p.values for p in parts]), parts[0].shape
        )

    def cut(self, n: int) -> tuple[SparseImages, SparseImages]:
        """(the first `n` images, the rest)."""
        split = int(self.offsets[n])
        head = SparseImages(
            self.offsets[: n + 1].copy(), self.positions[:split], self.values[:split], self.shape
        )
        tail_offsets = self.offsets[n:] - split
        tail = SparseImages(tail_offsets, self.positions[split:], self.values[split:], self.shape)
        return head, tail

    def save(self, stem: Path) -> None:
        for part in PARTS:
            np.save(f"{stem}.{part}.npy", getattr(self, part))

    @classmethod
    def load(cls, stem: Path, shape: tuple[int, ...]) -> SparseImages:
        """The shard at `stem`: offsets read, positions and values memory-mapped (read on demand)."""
        offsets = np.load(f"{stem}.offsets.npy")
        positions, values = (np.load(f"{stem}.{part}.npy", mmap_mode="r") for part in PARTS[1:])
        if not (
            offsets.ndim == 1
            and offsets.size
            and offsets[0] == 0
            and (np.diff(offsets) >= 0).all()
            and offsets[-1] == positions.size == values.size
        ):
            raise ValueError(
                f"{stem}.*.npy: offsets, positions and values of a sparse shard do not agree (a truncated or "
                "mixed write); rewrite the shards"
            )
        return cls(offsets, positions, values, tuple(shape))

    def dense(self, rows: np.ndarray) -> np.ndarray:
        """float32 `[len(rows), *shape]` for ascending shard `rows`.

        Consecutive rows are one span of each array, read with a plain file read: the pages a pass over
        every shard touches then stay in the page cache, not in this process's memory, as they would
        through the mapping. Scattered rows (training batches) gather through the mapping."""
        rows = np.asarray(rows, np.int64)
        start, end = self.offsets[rows], self.offsets[rows + 1]
        lengths = end - start
        if rows.size and rows[-1] - rows[0] + 1 == rows.size:
            positions, values = (_span(a, int(start[0]), int(end[-1])) for a in (self.positions, self.values))
        else:
            # Each row's span laid end to end: entry k of row i is at start[i] + k.
            gather = np.repeat(start - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
            positions, values = self.positions[gather], self.values[gather]
        size = math.prod(self.shape)
        if positions.size and positions.max() >= size:
            raise ValueError(f"a sparse image holds a position past its {size} values: the shard is corrupt")
        out = np.zeros(rows.size * size, np.float32)
        out[np.repeat(np.arange(0, rows.size * size, size), lengths) + positions] = values
        return out.reshape(rows.size, *self.shape)


def _span(array: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """`array[lo:hi]`, by a plain file read when `array` is a memory-mapped .npy."""
    if not isinstance(array, np.memmap) or array.filename is None:
        return np.asarray(array[lo:hi])
    with open(array.filename, "rb") as f:
        f.seek(array.offset + lo * array.itemsize)
        return np.fromfile(f, dtype=array.dtype, count=hi - lo)
