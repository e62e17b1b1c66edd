"""Per-level cell feature tables built from the finest-level extraction."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import polars as pl

from s2vec_core import s2
from s2vec_core.osm.aggregate import pivot
from s2vec_core.tables import CELL_FEATURES
from s2vec_core.taxonomy import CHANNEL_NAMES, TAXONOMY_VERSION

PIECE_ROWS = 1 << 16
"""Long rows `cell_features_by_range` featurises at once. Its wide frames (one Float64 per channel, most of
them zero) are ~50x the long rows, so this caps them near 100 MB whatever the shard or region."""

KEY_COLUMNS = tuple(c.name for c in CELL_FEATURES.columns if c.group is None)
"""The columns that say which cell a row is: every column of the spec outside the channel family."""


def schema() -> pl.Schema:
    """The `cell_features` table schema (`tables.CELL_FEATURES`): keys, then one Float64 per channel."""
    return CELL_FEATURES.schema


def cell_features(pixel_cells: pl.DataFrame, levels: Iterable[int], region: str) -> pl.DataFrame:
    """Long table over `levels` from an extraction at the finest of them.

    `pixel_cells` is either the long extraction (`cell_id` UInt64, `channel` index into CHANNEL_NAMES,
    `value`), as `s2vec_core.osm.extract_cells_long` returns, or the wide one (`cell_id` and the
    channel columns) of `extract_cells`; all cells at the finest level. Coarser levels are sums over
    parents, so every channel's total is the same at every level.
    """
    levels = _levels(levels)
    return _features(_as_long(pixel_cells), levels, region)


def cell_features_by_range(
    ranges: Iterable[pl.DataFrame], levels: Iterable[int], region: str, piece_rows: int = PIECE_ROWS
) -> Iterator[pl.DataFrame]:
    """`cell_features` of pixel rows that come as runs over disjoint, ascending cell ranges (as
    `shards.iter_sharded` yields them), a piece at a time: each piece's rows at every level, in
    `cell_features`' order (finest level first, cells ascending), pieces in cell order.

    A piece holds about `piece_rows` long rows and never splits a cell of the coarsest level, which may
    straddle two runs, so each of its rows is summed from the same children in the same order as in
    the whole table: bit for bit the same rows. Memory holds one run and one piece's frames."""
    levels = _levels(levels)
    coarsest = levels[0]
    carry = _as_long(pl.DataFrame(schema={"cell_id": pl.UInt64, "channel": pl.UInt16, "value": pl.Float64}))
    for run in ranges:
        long = _as_long(run)
        ids = long["cell_id"].to_numpy()
        if ids.size > 1 and np.any(ids[1:] < ids[:-1]):
            long = long.sort("cell_id", maintain_order=True)
            ids = long["cell_id"].to_numpy()
        last = carry["cell_id"][-1] if carry.height else None
        if ids.size and last is not None and ids[0] <= last:
            raise ValueError("pixel ranges overlap or come out of cell order")
        long = pl.concat([carry, long]) if carry.height else long
        parents = s2.parent(long["cell_id"].to_numpy(), coarsest)
        # The last coarse cell may continue in the next run.
        keep = int(np.searchsorted(parents, parents[-1])) if parents.size else 0
        for start, stop in _cuts(parents[:keep], piece_rows):
            yield _features(long[start:stop], levels, region)
        carry = long[keep:]
    parents = s2.parent(carry["cell_id"].to_numpy(), coarsest)
    for start, stop in _cuts(parents, piece_rows):
        yield _features(carry[start:stop], levels, region)


def _cuts(parents: np.ndarray, piece_rows: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive pieces of sorted `parents`, each about `piece_rows` long, cut only
    where the parent changes."""
    bounds = np.flatnonzero(np.r_[True, parents[1:] != parents[:-1]]) if parents.size else parents
    bounds = np.r_[bounds, parents.size]
    cuts, start = [], 0
    while start < parents.size:
        i = int(np.searchsorted(bounds, start + piece_rows, "right")) - 1
        stop = int(bounds[i]) if bounds[i] > start else int(bounds[np.searchsorted(bounds, start, "right")])
        cuts.append((start, stop))
        start = stop
    return cuts


def stage_by_level(pieces: Iterable[pl.DataFrame], directory: str | Path) -> pl.LazyFrame:
    """Write `cell_features_by_range`'s pieces to parquet under `directory` (a file per piece and level)
    and scan them back in `cell_features`' row order: a region's table, ready to be streamed into one
    commit, with one piece in memory while it is made."""
    files: dict[int, list[Path]] = {}
    for n, piece in enumerate(pieces):
        for (level,), part in piece.partition_by("level", as_dict=True, maintain_order=True).items():
            path = Path(directory) / f"level-{level:02d}-{n:06d}.parquet"
            part.write_parquet(path)
            files.setdefault(int(level), []).append(path)
    ordered = [path for level in sorted(files, reverse=True) for path in files[level]]
    if not ordered:
        return pl.LazyFrame(schema=schema())
    return pl.scan_parquet(ordered, glob=False)


def _levels(levels: Iterable[int]) -> list[int]:
    levels = sorted({int(lv) for lv in levels})
    if not levels:
        raise ValueError("need at least one level")
    return levels


def _features(long: pl.DataFrame, levels: list[int], region: str) -> pl.DataFrame:
    finest = levels[-1]
    ids = long["cell_id"].to_numpy()
    if len(ids) and not np.all(s2.cell_level(ids) == finest):
        raise ValueError(f"pixel_cells must all be at the finest level {finest}")
    frames = [_at_level(long, level, finest, region) for level in reversed(levels)]
    return pl.concat(frames).select(schema().names()).cast(dict(schema()))


def _as_long(pixel_cells: pl.DataFrame) -> pl.DataFrame:
    if "cell_id" not in pixel_cells.columns:
        raise ValueError("pixel_cells lacks columns: ['cell_id']")
    if {"channel", "value"} <= set(pixel_cells.columns):
        long = pixel_cells.select(
            pl.col("cell_id").cast(pl.UInt64),
            pl.col("channel").cast(pl.UInt16),
            pl.col("value").cast(pl.Float64),
        )
        if long.height and long["channel"].max() >= len(CHANNEL_NAMES):
            raise ValueError(f"channel index beyond the taxonomy's {len(CHANNEL_NAMES)} channels")
        return long
    missing = [c for c in CHANNEL_NAMES if c not in pixel_cells.columns]
    if missing:
        raise ValueError(f"pixel_cells lacks columns: {missing}")
    return (
        pixel_cells.select(
            pl.col("cell_id").cast(pl.UInt64), *(pl.col(c).cast(pl.Float64) for c in CHANNEL_NAMES)
        )
        .unpivot(index="cell_id", variable_name="name", value_name="value")
        .filter(pl.col("value") != 0)
        .with_columns(
            channel=pl.col("name").replace_strict(
                CHANNEL_NAMES, list(range(len(CHANNEL_NAMES))), return_dtype=pl.UInt16
            )
        )
        .select("cell_id", "channel", "value")
    )


def _at_level(long: pl.DataFrame, level: int, finest: int, region: str) -> pl.DataFrame:
    """Sum the long rows per parent cell and channel, then one Float64 column per channel: the wide
    frame is built once per level, never for the whole pixel table plus copies.

    The sums run in a fixed order (by parent, channel, then child cell, whatever the input order): a
    parallel group-by adds floats in a thread-dependent order, and identical runs gave tables that
    differed by ~1e-11, so their digests (and data versions) did not repeat."""
    ids = long["cell_id"].to_numpy()
    cells = s2.parent(ids, level) if level != finest and len(ids) else ids
    channel = long["channel"].to_numpy()
    order = np.lexsort((ids, channel, cells))
    cells, channel, value = cells[order], channel[order], long["value"].to_numpy()[order]
    new = np.ones(cells.size, bool)
    new[1:] = (cells[1:] != cells[:-1]) | (channel[1:] != channel[:-1])
    starts = np.flatnonzero(new)
    sums = np.add.reduceat(value, starts) if starts.size else value
    unique, columns = pivot(cells[starts], channel[starts], sums)
    return pl.DataFrame(dict(zip(CHANNEL_NAMES, columns, strict=True))).with_columns(
        region=pl.lit(region, pl.String),
        level=pl.lit(level, pl.Int8),
        cell_id=pl.Series(s2.as_int64(unique), dtype=pl.Int64),
        token=pl.Series(s2.to_token(unique), dtype=pl.String),
        taxonomy_version=pl.lit(TAXONOMY_VERSION, pl.String),
    )


def channel_totals(features: pl.DataFrame) -> pl.DataFrame:
    """Per-level sums of every channel (equal across levels for a consistent table)."""
    return features.group_by("level").agg(pl.col(list(CHANNEL_NAMES)).sum()).sort("level")
