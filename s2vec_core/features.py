"""Per-level cell feature tables built from the finest-level extraction."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from s2vec_core import s2
from s2vec_core.taxonomy import CHANNEL_NAMES, TAXONOMY_VERSION

KEY_COLUMNS = ("region", "level", "cell_id", "token", "taxonomy_version")


def schema() -> pl.Schema:
    """The `cell_features` table schema: keys, then one Float64 column per taxonomy channel."""
    keys = {"region": pl.String, "level": pl.Int8, "cell_id": pl.Int64, "token": pl.String,
            "taxonomy_version": pl.String}
    return pl.Schema({**keys, **{name: pl.Float64 for name in CHANNEL_NAMES}})


def cell_features(pixel_cells: pl.DataFrame, levels: Iterable[int], region: str) -> pl.DataFrame:
    """Long table over `levels` from an extraction at the finest of them.

    `pixel_cells` has `cell_id` (UInt64, all at the finest level) and the channel columns, as
    `s2vec_core.osm.extract_cells` returns. Coarser levels are sums over parents, so every channel's
    total is the same at every level.
    """
    levels = sorted(set(int(lv) for lv in levels))
    if not levels:
        raise ValueError("need at least one level")
    missing = [c for c in CHANNEL_NAMES if c not in pixel_cells.columns]
    if "cell_id" not in pixel_cells.columns or missing:
        raise ValueError(f"pixel_cells lacks columns: {(['cell_id'] if 'cell_id' not in pixel_cells.columns else []) + missing}")
    finest = levels[-1]
    ids = pixel_cells["cell_id"].cast(pl.UInt64).to_numpy()
    if len(ids) and not np.all(s2.cell_level(ids) == finest):
        raise ValueError(f"pixel_cells must all be at the finest level {finest}")
    values = pixel_cells.select(pl.col(list(CHANNEL_NAMES)).cast(pl.Float64))
    frames = [_at_level(ids, values, level, region) for level in reversed(levels)]
    return pl.concat(frames).select(schema().names()).cast(dict(schema()))


def _at_level(ids: np.ndarray, values: pl.DataFrame, level: int, region: str) -> pl.DataFrame:
    parents = s2.parent(ids, level) if len(ids) else ids
    grouped = (
        values.with_columns(cell=pl.Series(parents, dtype=pl.UInt64))
        .group_by("cell")
        .agg(pl.all().sum())
        .sort("cell")
    )
    cells = grouped["cell"].to_numpy()
    return grouped.drop("cell").with_columns(
        region=pl.lit(region, pl.String),
        level=pl.lit(level, pl.Int8),
        cell_id=pl.Series(s2.as_int64(cells), dtype=pl.Int64),
        token=pl.Series(s2.to_token(cells), dtype=pl.String),
        taxonomy_version=pl.lit(TAXONOMY_VERSION, pl.String),
    )


def channel_totals(features: pl.DataFrame) -> pl.DataFrame:
    """Per-level sums of every channel (equal across levels for a consistent table)."""
    return features.group_by("level").agg(pl.col(list(CHANNEL_NAMES)).sum()).sort("level")
