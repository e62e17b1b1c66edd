"""Embedding vectors as stored: unit L2 length (cosine = dot product) with the raw length kept beside.

The embeddings arrive standardised per dimension against the model's training cells (`embed`), so the
raw length says how far a cell is from a typical one, which carries information; the direction is what
similarity compares. Both are stored: `embedding` (unit) and `norm` (Float32).
"""

from __future__ import annotations

import numpy as np
import polars as pl

NORM_COLUMN = "norm"


def unit_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows scaled to unit length, their original lengths); all-zero rows stay zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return (matrix * scale[:, None]).astype(np.float32), norms.astype(np.float32)


def normalise(df: pl.DataFrame, column: str = "embedding") -> pl.DataFrame:
    """`df` with `column` unit-normalised per row (as List(Float32); rows may differ in length between
    levels) and its raw length added as `norm`, in the original row order."""
    if isinstance(df.schema[column], pl.Array):
        df = df.with_columns(pl.col(column).cast(pl.List(df.schema[column].inner)))
    indexed = df.with_row_index("_row")
    parts = []
    for _, group in indexed.group_by(pl.col(column).list.len(), maintain_order=True):
        unit, norms = unit_rows(to_matrix(group[column]))
        vectors = pl.Series(column, unit, dtype=pl.Array(pl.Float32, unit.shape[1])).cast(pl.List(pl.Float32))
        parts.append(group.with_columns(vectors, pl.Series(NORM_COLUMN, norms, dtype=pl.Float32)))
    if not parts:
        return df.with_columns(
            pl.col(column).cast(pl.List(pl.Float32)), pl.lit(None, pl.Float32).alias(NORM_COLUMN)
        )
    return pl.concat(parts).sort("_row").drop("_row")


def to_matrix(series: pl.Series) -> np.ndarray:
    """float32 [n, d] from a list (or array) column whose rows all have length d."""
    if series.len() == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if isinstance(series.dtype, pl.Array):
        series = series.cast(pl.List(series.dtype.inner))
    lengths = series.list.len()
    if lengths.n_unique() != 1 or lengths.null_count():
        raise ValueError(
            f"embeddings of different lengths {sorted(lengths.unique().to_list())} in one matrix"
        )
    return series.explode().to_numpy().astype(np.float32, copy=False).reshape(series.len(), -1)
