"""Running sums of (cell, channel) values, and the long -> wide pivot of the result."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

from s2vec_core.taxonomy import CHANNEL_NAMES

# Aggregate rows held before they are re-aggregated.
REAGGREGATE_ROWS = 2_000_000


def _sum_by_key(key: np.ndarray, values: np.ndarray):
    """Sum values per unique key; returns (sorted unique keys, sums).

    Adjacent equal keys are merged first: pieces of a line and samples along a scanline mostly repeat
    their neighbour's cell, so the sort has far fewer rows to order."""
    if key.size == 0:
        return key, values
    new = np.empty(key.size, bool)
    new[0] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    key, values = key[starts], np.add.reduceat(values, starts)
    order = np.argsort(key, kind="stable")  # timsort: cheap on the sorted runs of folded parts
    key, values = key[order], values[order]
    del order
    np.not_equal(key[1:], key[:-1], out=new[1 : key.size])
    starts = np.flatnonzero(new[: key.size])
    return key[starts], np.add.reduceat(values, starts)


class Aggregate:
    """Running sum of values per (cell, channel), folded chunk by chunk with numpy.

    A cell id at level L has 2 * (30 - L) zero bits below its trailing 1 bit; the channel index goes
    there, so a row is one uint64 key (cell | channel) and one float64: 16 bytes, sorted by cell then
    channel by a plain sort, no hash tables."""

    def __init__(self, level: int) -> None:
        self.low = np.uint64((1 << (2 * (30 - level))) - 1)
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.rows = 0
        self.fold_at = REAGGREGATE_ROWS

    def add(self, cells: np.ndarray, channels: np.ndarray, values: np.ndarray) -> None:
        if cells.size == 0:
            return
        key = cells.astype(np.uint64) | channels.astype(np.uint64)
        part = _sum_by_key(key, values.astype(np.float64))
        self.parts.append(part)
        self.rows += part[0].size
        if self.rows > self.fold_at and len(self.parts) > 1:
            self.parts = [self._fold()]
            self.rows = self.parts[0][0].size
            # Fold again once the parts have grown by half: amortised, not a re-sort on every chunk.
            self.fold_at = max(REAGGREGATE_ROWS, self.rows * 3 // 2)

    def _fold(self) -> tuple[np.ndarray, np.ndarray]:
        """Merge the parts into one sorted, reduced part; temporaries are dropped as soon as possible
        because this is where extraction peaks in memory."""
        key = np.concatenate([p[0] for p in self.parts])
        values = np.concatenate([p[1] for p in self.parts])
        self.parts = []
        order = np.argsort(key, kind="stable")  # timsort: merges the parts' sorted runs
        key = key[order]
        values = values[order]
        del order
        new = np.empty(key.size, bool)
        new[:1] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        del new
        if starts.size == key.size:
            return key, values
        return key[starts], np.add.reduceat(values, starts)

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows as one sorted, reduced (key, value) pair."""
        return self._fold() if self.parts else (np.zeros(0, np.uint64), np.zeros(0))

    def add_folded(self, key: np.ndarray, values: np.ndarray) -> None:
        """Add another aggregate's `folded()` rows (same level)."""
        if key.size:
            self.parts.append((key, values))
            self.rows += key.size

    def long(self) -> pl.DataFrame:
        """Columns cell_id (UInt64), channel (UInt16, index into CHANNEL_NAMES), value (Float64), sorted."""
        key, values = self.folded()
        nz = values != 0
        key, values = key[nz], values[nz]
        channel = (key & self.low).astype(np.uint16)
        key &= ~self.low
        return pl.DataFrame(
            [
                pl.Series("cell_id", key, pl.UInt64),
                pl.Series("channel", channel, pl.UInt16),
                pl.Series("value", values, pl.Float64),
            ]
        )


def pivot(
    cells: np.ndarray, channel: np.ndarray, value: np.ndarray
) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """Long rows (each (cell, channel) pair once) -> sorted unique cells and one column per channel in
    CHANNEL_NAMES order (zero where a cell has no row). The columns are made one at a time as they are
    taken, so the caller can turn each into its frame column before the next exists: peak memory is
    then the output plus the rows, not twice the output."""
    unique, inv = np.unique(cells, return_inverse=True)
    order = np.argsort(channel, kind="stable")
    bounds = np.searchsorted(channel[order], np.arange(len(CHANNEL_NAMES) + 1))

    def columns() -> Iterator[np.ndarray]:
        for i in range(len(CHANNEL_NAMES)):
            rows = order[bounds[i] : bounds[i + 1]]
            col = np.zeros(unique.size)
            col[inv[rows]] = value[rows]
            yield col

    return unique, columns()


def wide(long: pl.DataFrame) -> pl.DataFrame:
    """Long (cell_id, channel, value) -> cell_id then one Float64 column per channel."""
    cells, columns = pivot(long["cell_id"].to_numpy(), long["channel"].to_numpy(), long["value"].to_numpy())
    return pl.DataFrame(
        [
            pl.Series("cell_id", cells, pl.UInt64),
            *(pl.Series(name, col, pl.Float64) for name, col in zip(CHANNEL_NAMES, columns, strict=True)),
        ]
    )
