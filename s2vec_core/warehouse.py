"""Explicit, partition-scoped Delta Lake writes and polars reads.

Every write replaces exactly the rows of one partition (e.g. one region) through a Delta `predicate`
and commits atomically: a failed write leaves the table at its previous version, and a region's
re-run never touches another region's rows. There is deliberately no whole-table overwrite path.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
# polars imports pyarrow lazily on the first to_arrow(); importing it here keeps that one-time ~20 ms
# out of the first write (it is a third of writing a small region's embeddings).
import pyarrow  # noqa: F401
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError


class WarehouseError(ValueError):
    """A write was refused before anything was committed."""


def table_uri(root: str | os.PathLike, name: str) -> str:
    """URI of table `name` under a warehouse root (local directory or object-store URI)."""
    root = str(root)
    if "://" in root:
        return f"{root.rstrip('/')}/{name}"
    return str(Path(root).resolve() / name)


def table_version(uri: str, storage_options: dict[str, str] | None = None) -> int | None:
    """Current version of the Delta table at `uri`, or None if there is none."""
    try:
        return DeltaTable(uri, storage_options=storage_options).version()
    except TableNotFoundError:
        return None


def partition_predicate(partition: dict[str, str | int]) -> str:
    """SQL predicate selecting one partition, e.g. `region = 'monaco' AND model_version = 'ab12'`."""
    if not partition:
        raise WarehouseError("a partition needs at least one key; whole-table overwrites are not allowed")
    return " AND ".join(f"{key} = {_literal(value)}" for key, value in partition.items())


def write_partition(
    df: pl.DataFrame,
    uri: str,
    partition: dict[str, str | int],
    storage_options: dict[str, str] | None = None,
    description: str | None = None,
) -> int:
    """Replace the rows of `partition` in the Delta table at `uri` with `df`; return the new version.

    The table is created (partitioned by the partition keys) if missing. Rows of `df` must all belong to
    `partition`, and `df` must match the table's schema; otherwise nothing is written.
    """
    predicate = partition_predicate(partition)
    _check_rows_in_partition(df, partition)
    data = _delta_compatible(df).to_arrow(compat_level=pl.CompatLevel.oldest())
    try:
        table = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        write_deltalake(
            uri, data, mode="append", partition_by=list(partition),
            storage_options=storage_options, description=description,
        )
        table = DeltaTable(uri, storage_options=storage_options)
    else:
        _check_schema(table, df, uri)
        # Writing through the table object updates it to the commit it made: its version is this
        # write's, even if another writer commits right after.
        write_deltalake(table, data, mode="overwrite", predicate=predicate)
    return table.version()


def read_table(
    uri: str,
    filters: dict[str, str | int] | None = None,
    storage_options: dict[str, str] | None = None,
    columns: list[str] | None = None,
) -> pl.DataFrame:
    """Read a Delta table (optionally one partition, optionally some columns) into polars."""
    lf = pl.scan_delta(uri, storage_options=storage_options)
    for key, value in (filters or {}).items():
        lf = lf.filter(pl.col(key) == value)
    if columns is not None:
        lf = lf.select(columns)
    return lf.collect()


def _delta_compatible(df: pl.DataFrame) -> pl.DataFrame:
    """Store fixed-size arrays as Delta `array` (list) columns.

    Delta has no fixed-size list; written as one, the Parquet files disagree with the table schema and
    polars refuses to scan them. Readers get `List(Float32)` of constant length back.
    """
    arrays = {c: pl.List(dt.inner) for c, dt in df.schema.items() if isinstance(dt, pl.Array)}
    return df.cast(arrays) if arrays else df


def _literal(value: str | int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise WarehouseError(f"partition values must be str or int, got {value!r}")
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _check_rows_in_partition(df: pl.DataFrame, partition: dict[str, str | int]) -> None:
    missing = [k for k in partition if k not in df.columns]
    if missing:
        raise WarehouseError(f"frame lacks partition columns {missing}")
    for key, value in partition.items():
        stray = df.filter(pl.col(key).ne_missing(value)).height
        if stray:
            raise WarehouseError(f"{stray} rows have {key} != {value!r}; refusing to write outside the partition")


def _check_schema(table: DeltaTable, df: pl.DataFrame, uri: str) -> None:
    table_columns = [f.name for f in table.schema().fields]
    if table_columns != df.columns:
        added = [c for c in df.columns if c not in table_columns]
        dropped = [c for c in table_columns if c not in df.columns]
        raise WarehouseError(
            f"schema of {uri} differs from the frame (new columns {added}, missing columns {dropped}); "
            "write to a new table or migrate this one deliberately"
        )


def duckdb_connect():
    """A DuckDB connection that can `delta_scan` the warehouse offline.

    DuckDB downloads its delta extension at run time by default; the `duckdb-ext-delta` package
    (matched to the DuckDB version) ships it, so point the extension directory there.
    """
    import duckdb
    import duckdb_ext

    extensions = Path(next(iter(duckdb_ext.__path__))) / "extensions"
    con = duckdb.connect(config={"extension_directory": str(extensions)})
    con.execute("LOAD delta")
    return con
