"""Explicit, partition-scoped Delta Lake writes and polars reads.

Every write replaces exactly the rows of one partition (e.g. one region) through a Delta `predicate`
and commits atomically: a failed write leaves the table at its previous version, and a region's
re-run never touches another region's rows. There is deliberately no whole-table overwrite path.

Provenance: a write may carry commit metadata (`commit={"run_id": ..., "asset": ..., "region": ...,
"model_version": ...}`), stored in the Delta commit info under `s2vec.<key>`; `history` lists it per
version and `version_of_run` answers "which version did run R leave behind". Table-level facts (dtype,
dimensions, levels, licence...) live in the Delta table description as a JSON line (`table_facts`),
because Delta refuses custom table properties.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import numpy as np
import polars as pl

# polars imports pyarrow lazily on the first to_arrow(); importing it here keeps that one-time ~20 ms
# out of the first write (it is a third of writing a small region's embeddings).
import pyarrow
from deltalake import CommitProperties, DeltaTable, Field, WriterProperties, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction

from s2vec_core import s2, settings, tables

COMMIT_PREFIX = "s2vec."
"""Commit-info keys the product writes: s2vec.run_id, s2vec.asset, s2vec.region, s2vec.model_version."""
COMMIT_KEYS = ("run_id", "asset", "region", "model_version")
FACTS_MARKER = "\nfacts: "
WRITE_ID = COMMIT_PREFIX + "write_id"
"""Commit-info key of a write made by transaction, by which it finds its own version."""

PartitionValue = str | int | Sequence[str] | Sequence[int]


class WarehouseError(ValueError):
    """A write was refused before anything was committed."""


def default_root() -> str:
    """The warehouse every tool uses unless told otherwise: `$S2VEC_WAREHOUSE`, else `./warehouse` of the repo."""
    return settings.warehouse_root()


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


def partition_predicate(partition: Mapping[str, PartitionValue]) -> str:
    """SQL predicate selecting one partition, e.g. `region = 'monaco' AND model_version = 'ab12'`.

    A list value selects several partitions of that key at once (`model_version IN ('a', 'b')`), so
    that related rows (a registry's new and retired versions) change in one commit.
    """
    if not partition:
        raise WarehouseError("a partition needs at least one key; whole-table overwrites are not allowed")
    terms = []
    for key, value in partition.items():
        if isinstance(value, (str, int)):
            terms.append(f"{key} = {_literal(value)}")
        elif value:
            terms.append(f"{key} IN ({', '.join(_literal(v) for v in value)})")
        else:
            raise WarehouseError(f"partition key {key!r} has an empty list of values")
    return " AND ".join(terms)


def write_partition(
    df: pl.DataFrame | pl.LazyFrame,
    uri: str,
    partition: Mapping[str, PartitionValue],
    storage_options: dict[str, str] | None = None,
    description: str | None = None,
    commit: Mapping[str, str] | None = None,
    facts: Mapping[str, object] | None = None,
    row_group_rows: int | None = None,
    add_columns: bool = False,
    spec: tables.TableSpec | None = None,
) -> int:
    """Replace the rows of `partition` in the Delta table at `uri` with `df`; return the new version.

    The table is created (partitioned by the partition keys) if missing. Rows of `df` must all belong to
    `partition`, and `df` must match the table's schema; otherwise nothing is written. `commit` goes into
    the commit info (see `COMMIT_KEYS`); `description` and `facts` into the table description, updated
    (one more commit, same commit info) only when they change. `row_group_rows` caps Parquet row groups:
    with rows sorted by cell id, small groups let a point lookup skip most of a file by its statistics.
    `add_columns` is a deliberate, additive migration: columns of `df` that the table lacks are added
    first (one commit; older rows read null), then the rows are written.

    With `spec` (every product write passes its table's from `s2vec_core.tables`), `df` must match it:
    the columns in order, their dtypes and the partition keys; otherwise `WarehouseError` says which
    column differs and how, before anything is written. Without it, the spec of the table `facts` names
    (`TableSpec.facts` puts `table` in them) is checked; a write with neither is not checked, so cut-down
    frames (tests, scratch tables) can be written under any name.

    A `pl.LazyFrame` (e.g. a scan of staged parquet files) is never collected: its batches are written
    one at a time into the partition's data files (`_write_files`), which one transaction then commits in
    place of the partition's old files, so memory holds a batch rather than the partition. Readers see
    the old rows or all the new ones; files of a write that does not commit are deleted.

    Concurrent writers are safe: a missing table is created by a commit that fails rather than lands
    if another writer created the table first (that writer then retries as below), and every other
    write replaces the partition's rows by predicate, so two writers of the same region leave exactly
    one copy of it (the last committed), never both. A commit that conflicts with a concurrent one
    (delta-rs rebases non-conflicting ones itself) is retried from a fresh snapshot, at most
    `COMMIT_ATTEMPTS` times; then `WarehouseError`, with the partition's rows unchanged.

    This relies on the store's atomic put-if-absent of commit files: local disks, Azure and GCS have
    it; on AWS S3 delta-rs needs a locking provider (`AWS_S3_LOCKING_PROVIDER=dynamodb` with
    `DELTA_DYNAMO_TABLE_NAME`) or, on S3-compatible stores that support it, conditional put
    (`conditional_put=etag` / `AWS_CONDITIONAL_PUT=etag`) in `storage_options`; without either, two
    concurrent commits on S3 can overwrite each other (`AWS_S3_ALLOW_UNSAFE_RENAME` only silences that).
    """
    predicate = partition_predicate(partition)
    _check_rows_in_partition(df, partition)
    stored = _delta_compatible(df)
    if spec is None and facts:
        spec = tables.BY_NAME.get(str(facts.get("table")))
    if spec is not None:
        check_spec(spec, stored.collect_schema(), tuple(partition))
    eager = isinstance(stored, pl.DataFrame)
    if eager:
        data = stored.to_arrow(compat_level=pl.CompatLevel.oldest())
        arrow_schema = data.schema
    else:
        arrow_schema = stored.head(0).collect().to_arrow(compat_level=pl.CompatLevel.oldest()).schema
        data = arrow_schema.empty_table()  # the table made, if missing; the rows go in as files below
    properties = commit_properties(commit)
    writer = WriterProperties(max_row_group_size=row_group_rows) if row_group_rows else None
    text = describe(description, facts) if description is not None or facts else None
    files: list[AddAction] = []  # a lazy frame's data files: written once, committed by every attempt

    def write() -> tuple[DeltaTable, int]:
        try:
            table = DeltaTable(uri, storage_options=storage_options)
        except TableNotFoundError:
            try:
                # A create that never rebases: delta-rs retries a losing commit at the next version
                # without a conflict check when the table did not exist at its start, so two first
                # writers would both land their rows. With no retry the loser fails (as does a create
                # that finds the table already there), and writes again below by predicate.
                write_deltalake(
                    uri,
                    data,
                    mode="error",
                    partition_by=list(partition),
                    storage_options=storage_options,
                    description=text,
                    commit_properties=commit_properties(commit, max_retries=0),
                    writer_properties=writer,
                )
            except DeltaError as e:
                if table_version(uri, storage_options) is None:
                    raise
                raise _Conflict(f"{uri} was created by a concurrent writer") from e
            if eager:  # a create commits version 0 or nothing
                return DeltaTable(uri, storage_options=storage_options, version=0), 0
            table = DeltaTable(uri, storage_options=storage_options)
        if add_columns:
            _add_missing_columns(table, arrow_schema, properties)
        _check_schema(table, arrow_schema.names, uri)
        if eager:
            # Writing through the table object updates it to the commit it made: its version is this
            # write's, even if another writer commits right after.
            write_deltalake(
                table,
                data,
                mode="overwrite",
                predicate=predicate,
                commit_properties=properties,
                writer_properties=writer,
            )
            return table, table.version()
        if not files:
            files.extend(_write_files(stored, uri, partition, storage_options, row_group_rows))
        # The transaction does not move the table object to its commit: the commit is found by a
        # mark of this write, so its version is this write's even if another writer commits right after.
        mark = str(uuid.uuid4())
        before = table.version()
        table.create_write_transaction(
            files,
            mode="overwrite",
            schema=arrow_schema,
            partition_by=list(partition),
            partition_filters=[(k, "=", str(v)) for k, v in partition.items()],
            commit_properties=commit_properties(commit, write_id=mark),
        )
        table.update_incremental()
        made = [e["version"] for e in table.history(table.version() - before) if e.get(WRITE_ID) == mark]
        return table, made[0]

    try:
        table, version = _with_retries(write, uri)
    except BaseException:
        _remove_files(uri, files, storage_options)  # never committed: nothing refers to them
        raise
    if text is not None:

        def set_description() -> None:
            current = DeltaTable(uri, storage_options=storage_options)
            if current.metadata().description != text:
                current.alter.set_table_description(text, commit_properties=properties)

        if table.metadata().description != text:
            _with_retries(set_description, uri)
    return version


COMMIT_ATTEMPTS = 8
"""How many times a write is tried when its commit conflicts with a concurrent one."""


class _Conflict(Exception):
    """Another writer created the table first; write again, into the table it made."""


def _with_retries(fn, uri: str):
    """Call `fn` until it does not raise a commit conflict, at most `COMMIT_ATTEMPTS` times."""
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            return fn()
        except (CommitFailedError, _Conflict) as e:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise WarehouseError(
                    f"{uri}: commit still conflicts with concurrent writers after {COMMIT_ATTEMPTS} "
                    f"attempts ({e}); the rows of this write were not committed"
                ) from e
            # Jittered backoff, so writers that collided do not collide again in lockstep.
            time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))
    raise AssertionError("unreachable")


def delete_partition(
    uri: str,
    partition: Mapping[str, PartitionValue],
    storage_options: dict[str, str] | None = None,
    commit: Mapping[str, str] | None = None,
) -> int | None:
    """Delete the rows of `partition` in one commit; the new version, or None if no row matched."""
    try:
        table = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        return None
    lf = pl.scan_delta(uri, storage_options=storage_options)
    if lf.filter(_partition_expr(partition)).select(pl.len()).collect().item() == 0:
        return None
    table.delete(partition_predicate(partition), commit_properties=commit_properties(commit))
    return table.version()


def commit_properties(
    commit: Mapping[str, str] | None, max_retries: int | None = None, write_id: str | None = None
) -> CommitProperties | None:
    """Delta commit info carrying the product's provenance keys (unknown keys are refused).

    `max_retries` caps delta-rs's own rebasing of a commit that lost a race (None: its default);
    `write_id` marks the commit (`WRITE_ID`) so that its writer can find its version.
    """
    if not commit and max_retries is None and write_id is None:
        return None
    unknown = set(commit or {}) - set(COMMIT_KEYS)
    if unknown:
        raise WarehouseError(f"unknown commit metadata keys {sorted(unknown)}; known: {COMMIT_KEYS}")
    metadata = {COMMIT_PREFIX + k: str(v) for k, v in (commit or {}).items()}
    if write_id is not None:
        metadata[WRITE_ID] = write_id
    return CommitProperties(custom_metadata=metadata, max_commit_retries=max_retries)


def describe(description: str | None, facts: Mapping[str, object] | None) -> str:
    """A table description: the prose, then the machine-readable facts as one JSON line."""
    text = description or ""
    if facts:
        text += FACTS_MARKER + json.dumps(dict(facts), sort_keys=True)
    return text


def rows_per_partition(uri: str, storage_options: dict[str, str] | None = None) -> pl.DataFrame:
    """Rows of the current version per partition (`partition.<key>` columns, `rows`), from the Delta log's
    file statistics: no data file is read."""
    actions = pl.from_arrow(
        pyarrow.table(DeltaTable(uri, storage_options=storage_options).get_add_actions(flatten=True))
    )
    keys = [c for c in actions.columns if c.startswith("partition.")]
    return actions.group_by(keys).agg(rows=pl.col("num_records").sum()).sort(keys)


def table_facts(uri: str, storage_options: dict[str, str] | None = None) -> dict[str, object]:
    """The facts a table states about itself (dtype, dims, levels, licence...; see `describe`)."""
    text = DeltaTable(uri, storage_options=storage_options).metadata().description or ""
    _, found, facts = text.partition(FACTS_MARKER)
    return json.loads(facts) if found else {}


def history(uri: str, storage_options: dict[str, str] | None = None) -> pl.DataFrame:
    """One row per commit, oldest first: version, timestamp (UTC), operation and the provenance keys."""
    rows = []
    for entry in DeltaTable(uri, storage_options=storage_options).history():
        rows.append(
            {
                "version": entry["version"],
                "timestamp": datetime.fromtimestamp(entry["timestamp"] / 1000, tz=UTC),
                "operation": entry.get("operation", ""),
                **{key: entry.get(COMMIT_PREFIX + key) for key in COMMIT_KEYS},
            }
        )
    schema = {
        "version": pl.Int64,
        "timestamp": pl.Datetime("ms", "UTC"),
        "operation": pl.String,
        **dict.fromkeys(COMMIT_KEYS, pl.String),
    }
    return pl.DataFrame(rows, schema=schema).sort("version")


def version_at(uri: str, when: datetime, storage_options: dict[str, str] | None = None) -> int | None:
    """The table version current at `when` (its last commit at or before it); None if the table was newer."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    before = history(uri, storage_options).filter(pl.col("timestamp") <= when)
    return int(before["version"].max()) if before.height else None


def commit_time(uri: str, version: int, storage_options: dict[str, str] | None = None) -> datetime:
    """When `version` of the table was committed (UTC)."""
    row = history(uri, storage_options).filter(pl.col("version") == version)
    if row.height == 0:
        raise WarehouseError(f"{uri} has no version {version}")
    return row["timestamp"][0]


def version_of_run(uri: str, run_id: str, storage_options: dict[str, str] | None = None) -> int:
    """The table version run `run_id` left behind (its last commit): `read_table(uri, version=...)`."""
    commits = history(uri, storage_options).filter(pl.col("run_id") == run_id)
    if commits.height == 0:
        raise WarehouseError(f"no commit of run {run_id!r} in {uri}")
    return int(commits["version"].max())


def read_table(
    uri: str,
    filters: Mapping[str, PartitionValue] | None = None,
    storage_options: dict[str, str] | None = None,
    columns: list[str] | None = None,
    version: int | datetime | None = None,
    cell_range: tuple[int, int] | None = None,
) -> pl.DataFrame:
    """Read a Delta table (optionally one partition, some columns, an older version, the cells of an
    S2 id range, see `scan_table`) into polars."""
    return scan_table(uri, filters, storage_options, columns, version, cell_range).collect()


def scan_table(
    uri: str,
    filters: Mapping[str, PartitionValue] | None = None,
    storage_options: dict[str, str] | None = None,
    columns: list[str] | None = None,
    version: int | datetime | None = None,
    cell_range: tuple[int, int] | None = None,
) -> pl.LazyFrame:
    """`read_table` as a lazy frame. `cell_range` (lo, hi) keeps the rows with lo <= cell_id <= hi in
    S2's unsigned id order: the tables store ids as Int64, where faces 4 and 5 are negative, so a range
    across 2**63 becomes two there; row groups outside the range are skipped by their statistics."""
    lf = pl.scan_delta(uri, storage_options=storage_options, version=version)
    if filters:
        lf = lf.filter(_partition_expr(filters))
    if cell_range is not None:
        lo, hi = (int(v) for v in s2.as_int64(np.array(cell_range, np.uint64)))
        cell = pl.col("cell_id")
        lf = lf.filter(cell.is_between(lo, hi) if lo <= hi else (cell >= lo) | (cell <= hi))
    if columns is not None:
        lf = lf.select(columns)
    return lf


def _partition_expr(partition: Mapping[str, PartitionValue]) -> pl.Expr:
    exprs = [
        pl.col(k) == v if isinstance(v, (str, int)) else pl.col(k).is_in(list(v))
        for k, v in partition.items()
    ]
    return pl.all_horizontal(exprs)


FILE_ROWS = 1 << 23
"""Rows per data file of a lazy frame's write (a few hundred MB of sparse feature rows)."""
ROW_GROUP_ROWS = 1 << 16
"""Rows per Parquet row group of a lazy frame's write: a cell-range read of rows sorted by cell skips
the groups outside it by their statistics, and decodes at most a group more than it keeps."""


def _write_files(
    stored: pl.LazyFrame,
    uri: str,
    partition: Mapping[str, PartitionValue],
    storage_options: dict[str, str] | None,
    row_group_rows: int | None,
) -> list[AddAction]:
    """Stream `stored`'s rows into Parquet files in the partition's directory of the table (partition
    columns left out, as Delta stores them; polars' streaming sink, so memory holds a few batches) and
    return their add actions, with the statistics readers skip files by. delta-rs's own writer holds a
    whole partition in memory before writing; these files are committed by one transaction instead. On
    an object store each file is written locally, then uploaded."""
    if any(not isinstance(v, (str, int)) for v in partition.values()):
        raise WarehouseError("a lazy frame replaces one partition: give each key a single value")
    directory = "/".join(f"{k}={quote(str(v), safe='')}" for k, v in partition.items())
    local = "://" not in uri
    staging = None if local else tempfile.TemporaryDirectory(prefix="s2vec-delta-")
    root = Path(uri) if local else Path(staging.name)
    (root / directory).mkdir(parents=True, exist_ok=True)
    rows = stored.drop(list(partition))
    total = rows.select(pl.len()).collect().item()
    actions: list[AddAction] = []
    try:
        for offset in range(0, max(total, 1), FILE_ROWS):
            name = f"{directory}/part-{uuid.uuid4()}-c000.snappy.parquet"
            path = root / name
            actions.append(AddAction(name, 0, {}, 0, True, "{}"))  # removed on failure from here on
            rows.slice(offset, FILE_ROWS).sink_parquet(
                path, compression="snappy", row_group_size=row_group_rows or ROW_GROUP_ROWS
            )
            if not local:
                _upload(uri, name, path, storage_options)
            values = {k: str(v) for k, v in partition.items()}
            stats = _stats(pl.scan_parquet(path))
            actions[-1] = AddAction(name, path.stat().st_size, values, int(time.time() * 1000), True, stats)
            if not local:
                path.unlink()
    except BaseException:
        _remove_files(uri, actions, storage_options)
        raise
    finally:
        if staging is not None:
            staging.cleanup()
    return actions


def _stats(data: pl.LazyFrame) -> str:
    """Delta's per-file statistics (rows; each column's min, max and nulls), by one streaming pass."""
    names = data.collect_schema().names()
    facts = data.select(
        pl.len().alias("rows"),
        *(pl.col(n).min().alias(f"min {n}") for n in names),
        *(pl.col(n).max().alias(f"max {n}") for n in names),
        *(pl.col(n).null_count().alias(f"nulls {n}") for n in names),
    ).collect(engine="streaming")
    row = facts.row(0, named=True)
    bounded = [n for n in names if _json_safe(row[f"min {n}"]) and _json_safe(row[f"max {n}"])]
    return json.dumps(
        {
            "numRecords": row["rows"],
            "minValues": {n: row[f"min {n}"] for n in bounded},
            "maxValues": {n: row[f"max {n}"] for n in bounded},
            "nullCount": {n: row[f"nulls {n}"] for n in names},
        }
    )


def _json_safe(value: object) -> bool:
    return isinstance(value, (str, int)) or (isinstance(value, float) and math.isfinite(value))


def _upload(uri: str, name: str, path: Path, storage_options: dict[str, str] | None) -> None:
    import obstore

    obstore.put(_object_store(uri, storage_options), name, path)


def _object_store(uri: str, storage_options: dict[str, str] | None):
    from obstore.store import from_url

    from s2vec_core.artifacts import obstore_options

    config, client = obstore_options(uri, storage_options)
    return from_url(uri.rstrip("/"), config=config, client_options=client)


def _remove_files(uri: str, actions: list[AddAction], storage_options: dict[str, str] | None) -> None:
    """Delete data files no commit refers to (best effort: at worst they stay, unread, for vacuum)."""
    if not actions:
        return
    if "://" not in uri:
        for action in actions:
            Path(uri, action.path).unlink(missing_ok=True)
        return
    import obstore

    store = _object_store(uri, storage_options)
    for action in actions:
        # An orphan file is harmless; the write's own error is the one to raise.
        with contextlib.suppress(Exception):
            obstore.delete(store, action.path)


def _delta_compatible(df: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """Store fixed-size arrays as Delta `array` (list) columns.

    Delta has no fixed-size list; written as one, the Parquet files disagree with the table schema and
    polars refuses to scan them. Readers get `List(Float32)` of constant length back.
    """
    arrays = {c: pl.List(dt.inner) for c, dt in df.collect_schema().items() if isinstance(dt, pl.Array)}
    return df.cast(arrays) if arrays else df


def _literal(value: str | int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise WarehouseError(f"partition values must be str or int, got {value!r}")
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _check_rows_in_partition(
    df: pl.DataFrame | pl.LazyFrame, partition: Mapping[str, PartitionValue]
) -> None:
    missing = [k for k in partition if k not in df.collect_schema().names()]
    if missing:
        raise WarehouseError(f"frame lacks partition columns {missing}")
    for key, value in partition.items():
        inside = (
            pl.col(key).eq_missing(value) if isinstance(value, (str, int)) else pl.col(key).is_in(list(value))
        )
        stray = df.lazy().filter(~inside.fill_null(False)).select(pl.len()).collect().item()
        if stray:
            raise WarehouseError(
                f"{stray} rows have {key} != {value!r}; refusing to write outside the partition"
            )


def _add_missing_columns(table: DeltaTable, schema, properties: CommitProperties | None) -> None:
    """Add the (nullable) columns of an Arrow `schema` that `table` lacks, at the end, in one commit."""
    known = {f.name for f in table.schema().fields}
    new = [f for f in DeltaSchema.from_arrow(schema).fields if f.name not in known]
    if new:
        table.alter.add_columns(
            [Field(f.name, f.type, nullable=True) for f in new], commit_properties=properties
        )


def check_spec(spec: tables.TableSpec, schema: pl.Schema, partition_by: tuple[str, ...]) -> None:
    """Refuse a frame `schema` (as stored: fixed-size arrays as lists) or partition keys that differ
    from `spec`'s; the schema alone is compared, no row is read."""
    if partition_by != spec.partition_by:
        raise WarehouseError(
            f"{spec.name} is partitioned by {list(spec.partition_by)}, not {list(partition_by)}"
        )
    expected = spec.schema
    if list(schema) != list(expected):
        missing = [c for c in expected if c not in schema]
        extra = [c for c in schema if c not in expected]
        raise WarehouseError(
            f"{spec.name}: the frame's columns differ from the table's spec in s2vec_core.tables "
            f"(missing {missing}, not in the spec {extra}"
            + ("" if missing or extra else f", order {list(schema)} instead of {list(expected)}")
            + ")"
        )
    for name, dtype in expected.items():
        if schema[name] != dtype:
            raise WarehouseError(
                f"{spec.name}: column {name!r} is {schema[name]}, the spec in s2vec_core.tables says {dtype}"
            )


def _check_schema(table: DeltaTable, columns: list[str], uri: str) -> None:
    table_columns = [f.name for f in table.schema().fields]
    if table_columns != columns:
        added = [c for c in columns if c not in table_columns]
        dropped = [c for c in table_columns if c not in columns]
        raise WarehouseError(
            f"schema of {uri} differs from the frame (new columns {added}, missing columns {dropped}); "
            "write to a new table or migrate this one deliberately (derived tables: delete the table "
            "directory, or `make clean`, and re-run)"
        )


def duckdb_connect(storage_options: Mapping[str, str] | None = None):
    """A DuckDB connection that can `delta_scan` the warehouse offline.

    DuckDB downloads its extensions at run time by default; the `duckdb-ext-delta` and
    `duckdb-ext-httpfs` packages (matched to the DuckDB version) ship them, so point the extension
    directory there. With `storage_options` of an S3 warehouse (endpoint, region, allow_http) it also
    gets a session secret for S3, credentials from the standard AWS_* variables, as deltalake reads them.
    """
    import duckdb
    import duckdb_ext

    extensions = Path(next(iter(duckdb_ext.__path__))) / "extensions"
    con = duckdb.connect(config={"extension_directory": str(extensions)})
    con.execute("LOAD delta")
    if storage_options:
        con.execute(*_s3_secret(storage_options))
    return con


def _s3_secret(storage_options: Mapping[str, str]) -> tuple[str, list[str]]:
    """CREATE SECRET for DuckDB's S3 reader from deltalake-style options plus the environment."""
    options = {k.lower().removeprefix("aws_"): v for k, v in storage_options.items()}
    endpoint = options.get("endpoint") or options.get("endpoint_url")
    params = {
        "KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", ""),
        "SECRET": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        "SESSION_TOKEN": os.environ.get("AWS_SESSION_TOKEN", ""),
        "REGION": options.get("region") or os.environ.get("AWS_REGION", "us-east-1"),
    }
    extra = ""
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        params["ENDPOINT"] = host
        extra = f", URL_STYLE 'path', USE_SSL {'false' if scheme == 'http' else 'true'}"
    keys = [k for k, v in params.items() if v]
    # Values are bound, never formatted into the SQL: a secret must not reach a log of the statement.
    return (
        f"CREATE OR REPLACE SECRET s2vec_s3 (TYPE s3, {', '.join(f'{k} ?' for k in keys)}{extra})",
        [params[k] for k in keys],
    )
