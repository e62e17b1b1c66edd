"""Downstream targets: a user's file (points or S2 cells) validated and aggregated to image cells.

Two file forms (Parquet or CSV):
- points: `lat`, `lng` (degrees) and optionally a value column; aggregated per image cell by `mean`,
  `sum` or `density` (sum of values, or count of points without a value column, per km2 of the cell);
- cells: `cell_id` (S2 id as int64/uint64) or `token`, and a value column, at the image level or finer
  (finer cells are aggregated to their image-cell parent the same way).

Every problem raises `TargetsError` naming the file and the offending column/rows; nothing is dropped
silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from s2vec_core import s2
from s2vec_core.catalog import redact_url

AGGREGATIONS = ("mean", "sum", "density")
_SHOW = 5  # how many offending rows an error message quotes


class TargetsError(ValueError):
    """A targets file or frame is malformed; the message says what and where."""


def read_targets_file(path: str | os.PathLike) -> pl.DataFrame:
    """Read a Parquet or CSV targets file (chosen by suffix) with a clear error when unreadable."""
    if "://" in str(path):
        shown = redact_url(str(path))
        raise TargetsError(
            f"targets {shown} is a URL; targets are read from a local Parquet or CSV file only (they are "
            "not downloaded): fetch it first and give its path"
        )
    path = Path(path)
    if not path.is_file():
        raise TargetsError(f"targets file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(path)
        if suffix in (".csv", ".txt"):
            # Everything as text first, so a stray word in a numeric column is reported, not guessed away.
            return pl.read_csv(path, infer_schema=False)
    except Exception as e:  # noqa: BLE001 (polars raises several error types for broken files)
        raise TargetsError(f"targets file {path} is malformed: {e}") from None
    raise TargetsError(f"targets file {path}: unsupported format {suffix!r} (use .parquet or .csv)")


def _numeric(df: pl.DataFrame, column: str, source: str) -> pl.Series:
    col = df[column]
    if col.dtype.is_numeric():
        out = col.cast(pl.Float64)
    else:
        out = col.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        bad = col.is_not_null() & out.is_null()
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())[:_SHOW]
            examples = ", ".join(f"row {r}: {col[int(r)]!r}" for r in rows)
            raise TargetsError(
                f"{source}: column {column!r} has {int(bad.sum())} non-numeric values ({examples})"
            )
    missing = out.is_null() | out.is_nan() | out.is_infinite()
    if missing.any():
        rows = np.flatnonzero(missing.to_numpy())[:_SHOW].tolist()
        raise TargetsError(
            f"{source}: column {column!r} has {int(missing.sum())} missing or non-finite values (rows {rows})"
        )
    return out


def _cell_ids(df: pl.DataFrame, source: str) -> np.ndarray:
    ids = None
    if "cell_id" in df.columns:
        col = df["cell_id"]
        if col.null_count():
            raise TargetsError(f"{source}: column 'cell_id' has {col.null_count()} missing values")
        if col.dtype.is_integer():
            ids = s2.as_uint64(col.to_numpy())
        else:
            # Text ids (CSV) may be signed int64 or unsigned uint64 spellings of the same bit pattern.
            text = col.cast(pl.String).str.strip_chars()
            signed, unsigned = text.cast(pl.Int64, strict=False), text.cast(pl.UInt64, strict=False)
            bad = (signed.is_null() & unsigned.is_null()).to_numpy()
            if bad.any():
                rows = np.flatnonzero(bad)[:_SHOW].tolist()
                raise TargetsError(
                    f"{source}: column 'cell_id' has {int(bad.sum())} non-integer values (rows {rows})"
                )
            ids = np.where(
                signed.is_not_null().to_numpy(),
                signed.fill_null(0).to_numpy().view(np.uint64),
                unsigned.fill_null(0).to_numpy(),
            )
    if "token" in df.columns:
        tokens = df["token"].cast(pl.String)
        if tokens.null_count():
            raise TargetsError(f"{source}: column 'token' has {tokens.null_count()} missing values")
        try:
            from_tokens = s2.from_token(tokens.to_numpy())
        except ValueError as e:
            raise TargetsError(f"{source}: column 'token' holds invalid S2 tokens ({e})") from None
        if ids is not None and not np.array_equal(ids, from_tokens):
            raise TargetsError(f"{source}: columns 'cell_id' and 'token' disagree")
        ids = from_tokens
    assert ids is not None
    bad = ~s2.is_valid(ids)
    if bad.any():
        rows = np.flatnonzero(bad)[:_SHOW].tolist()
        raise TargetsError(f"{source}: {int(bad.sum())} invalid S2 cell ids (rows {rows})")
    return ids


def validate_targets(
    df: pl.DataFrame, value_column: str | None = "value", source: str = "targets"
) -> pl.DataFrame:
    """Check a raw targets frame and return it normalised.

    Points come back as `lat`, `lng`, `value` (Float64; `value` is 1.0 per point when `value_column` is
    None); cells as `cell_id` (UInt64), `value`. Raises TargetsError on missing columns, non-numeric or
    missing values, out-of-range coordinates, invalid cell ids and duplicates.
    """
    if df.height == 0:
        raise TargetsError(f"{source}: no rows")
    is_points = "lat" in df.columns or "lng" in df.columns
    is_cells = "cell_id" in df.columns or "token" in df.columns
    if is_points == is_cells:
        raise TargetsError(
            f"{source}: need either point columns ('lat', 'lng') or a cell column ('cell_id' or 'token'), "
            f"got columns {df.columns}"
        )
    if value_column is not None and value_column not in df.columns:
        raise TargetsError(f"{source}: value column {value_column!r} is missing (columns: {df.columns})")
    if value_column is None and is_cells:
        raise TargetsError(f"{source}: cell targets need a value column")
    value = _numeric(df, value_column, source) if value_column else pl.Series(np.ones(df.height))
    if is_cells:
        ids = _cell_ids(df, source)
        _no_duplicates(pl.DataFrame({"cell_id": ids}), ["cell_id"], source)
        return pl.DataFrame({"cell_id": pl.Series(ids, dtype=pl.UInt64), "value": value})
    missing = [c for c in ("lat", "lng") if c not in df.columns]
    if missing:
        raise TargetsError(f"{source}: point targets lack column(s) {missing}")
    lat, lng = _numeric(df, "lat", source), _numeric(df, "lng", source)
    for name, col, bound in (("lat", lat, 90.0), ("lng", lng, 180.0)):
        out = (col.abs() > bound).to_numpy()
        if out.any():
            rows = np.flatnonzero(out)[:_SHOW].tolist()
            raise TargetsError(
                f"{source}: {int(out.sum())} values of {name!r} outside [-{bound:g}, {bound:g}] (rows {rows})"
            )
    points = pl.DataFrame({"lat": lat, "lng": lng, "value": value.alias("value")})
    _no_duplicates(points, ["lat", "lng", "value"], source)
    return points


def _no_duplicates(df: pl.DataFrame, keys: list[str], source: str) -> None:
    dup = df.select(keys).is_duplicated()
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())[:_SHOW].tolist()
        raise TargetsError(
            f"{source}: {int(dup.sum())} rows duplicate {'/'.join(keys)} (rows {rows}); "
            "remove duplicates or aggregate them first"
        )


def cell_area_km2(ids: np.ndarray) -> np.ndarray:
    """Area of each S2 cell in km2 (spherical quadrilateral split into two triangles)."""
    lat, lng = s2.cell_vertices(ids)
    phi, lam = np.radians(lat), np.radians(lng)
    xyz = np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1)

    def tri(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        # Van Oosterom-Strackee: exact spherical excess of a triangle of unit vectors.
        num = np.abs(np.einsum("ij,ij->i", a, np.cross(b, c)))
        den = 1 + np.einsum("ij,ij->i", a, b) + np.einsum("ij,ij->i", b, c) + np.einsum("ij,ij->i", c, a)
        return 2 * np.arctan2(num, den)

    v0, v1, v2, v3 = (xyz[:, i] for i in range(4))
    return (tri(v0, v1, v2) + tri(v0, v2, v3)) * (s2.EARTH_RADIUS_M / 1000) ** 2


def to_image_cells(targets: pl.DataFrame, image_level: int, agg: str = "mean") -> pl.DataFrame:
    """Aggregate validated targets to image cells: `cell_id` (UInt64), `target` (Float64), `n` (UInt32)."""
    if agg not in AGGREGATIONS:
        raise TargetsError(f"unknown aggregation {agg!r}; choose one of {AGGREGATIONS}")
    if "cell_id" in targets.columns:
        ids = targets["cell_id"].to_numpy()
        levels = s2.cell_level(ids)
        if (levels < image_level).any():
            raise TargetsError(
                f"target cells must be at the image level {image_level} or finer; "
                f"got cells at level {int(levels.min())}"
            )
        cells = s2.parent(ids, image_level)
    else:
        cells = s2.latlng_to_cell_id(targets["lat"].to_numpy(), targets["lng"].to_numpy(), image_level)
    grouped = (
        pl.DataFrame({"cell_id": pl.Series(cells, dtype=pl.UInt64), "value": targets["value"]})
        .group_by("cell_id")
        .agg(pl.col("value").sum().alias("sum"), pl.col("value").mean().alias("mean"), pl.len().alias("n"))
        .sort("cell_id")
    )
    if agg == "density":
        target = grouped["sum"] / cell_area_km2(grouped["cell_id"].to_numpy())
    else:
        target = grouped[agg]
    return grouped.select("cell_id", target=target.cast(pl.Float64), n=pl.col("n").cast(pl.UInt32))


def load_targets(
    path: str | os.PathLike, image_level: int, value_column: str | None = "value", agg: str = "mean"
) -> pl.DataFrame:
    """Read, validate and aggregate a targets file to image cells (see `to_image_cells`)."""
    raw = read_targets_file(path)
    return to_image_cells(validate_targets(raw, value_column, source=str(path)), image_level, agg)


def unscoreable(targets: pl.DataFrame, cells: np.ndarray) -> str | None:
    """Why image-cell `targets` (`to_image_cells` form) cannot be scored on a region's `cells`, or None.

    A target that misses every cell has nothing to score; one that is all null or constant on the cells
    it shares has no variance, so R2 (`1 - MSE / variance`) is undefined.
    """
    on = targets.filter(pl.col("cell_id").is_in(pl.Series(s2.as_uint64(cells), dtype=pl.UInt64).implode()))
    if on.height == 0:
        return f"none of its {targets.height} image cells is one of the region's {len(cells)} cells"
    values = on["target"].drop_nulls().drop_nans()
    if values.len() == 0:
        return f"all null on the {on.height} region cells it covers"
    if values.n_unique() == 1:
        return f"constant ({values[0]:g}) on the {on.height} region cells it covers"
    return None


def swapped_overlap(targets: pl.DataFrame, cells: np.ndarray) -> int:
    """How many target cells would fall on the region's `cells` with latitude and longitude swapped."""
    lat, lng = s2.cell_center(targets["cell_id"].to_numpy())
    ok = np.abs(lng) <= 90
    if not ok.any():
        return 0
    level = int(s2.cell_level(s2.as_uint64(cells[:1]))[0]) if len(cells) else 0
    swapped = s2.latlng_to_cell_id(lng[ok], lat[ok], level)
    return int(np.isin(swapped, s2.as_uint64(cells)).sum())
