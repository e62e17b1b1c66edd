"""The questions downstream teams ask of `cell_embeddings`, as plain functions on polars and numpy.

Every function reads exactly one model version (a pin, else the current one, see
`s2vec_core.registry.resolve`) at one level (default: that version's image level) and, with `as_of`,
the table as it was: a Delta version (int), a timestamp (datetime or ISO 8601 string), or
`"run:<run id>"` (the version that run left behind). Cell ids go in as uint64 or int64 (the same bit
pattern), or as tokens; results carry `cell_id` as int64, like the tables, plus the token.

- `lookup`: points (lat/lng), tokens or cell ids -> the embedding of the containing cell, one row per
  input in input order, null embedding where the warehouse has no such cell.
- `similar`: exact top-k by cosine (stored vectors are unit length, so a dot product) to a cell or a
  vector, within chosen regions, the query cell excluded.
- `aggregate`: the area-weighted mean embedding over a list of cells or a polygon.
- `versions` / `history`: the registry, and the table's commits with their run ids.

When a cell lies in two regions' extracts, the first region in `regions` (else alphabetical) wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import polars as pl

from s2vec_core import registry, s2, warehouse
from s2vec_core.tables import CELL_EMBEDDINGS, MODEL_VERSIONS
from s2vec_core.targets import cell_area_km2
from s2vec_core.vectors import NORM_COLUMN, to_matrix

AsOf = int | datetime | str | None
RESULT_COLUMNS = ("region", "level", "cell_id", "token", "model_version", "embedding", NORM_COLUMN)


class QueryError(ValueError):
    """The question cannot be answered as asked (bad input, unknown cell, empty selection)."""


@dataclass(frozen=True)
class Snapshot:
    """One model version of cell_embeddings at one table version and level: what a query reads."""

    root: str
    table_version: int
    model_version: str
    level: int
    storage_options: dict[str, str] | None = None
    _matrices: dict = field(default_factory=dict, compare=False, repr=False)
    """Candidates of `similar` per region selection, loaded once: a snapshot never changes."""

    @property
    def uri(self) -> str:
        return warehouse.table_uri(self.root, CELL_EMBEDDINGS.name)

    def scan(self, regions: Sequence[str] | None = None) -> pl.LazyFrame:
        lf = pl.scan_delta(self.uri, version=self.table_version, storage_options=self.storage_options)
        lf = lf.filter((pl.col("model_version") == self.model_version) & (pl.col("level") == self.level))
        if NORM_COLUMN not in lf.collect_schema():  # tables written before vectors were stored unit length
            lf = lf.with_columns(pl.lit(None, pl.Float32).alias(NORM_COLUMN))
        return lf.filter(pl.col("region").is_in(list(regions))) if regions else lf


def snapshot(
    warehouse_root: str | None = None,
    *,
    model_version: str | None = None,
    as_of: AsOf = None,
    level: int | None = None,
    storage_options: dict[str, str] | None = None,
) -> Snapshot:
    """Resolve what a query reads: table version (from `as_of`), model version (pin / current / only)
    and level (default: the version's image level)."""
    root = warehouse_root or warehouse.default_root()
    uri = warehouse.table_uri(root, CELL_EMBEDDINGS.name)
    latest = warehouse.table_version(uri, storage_options)
    if latest is None:
        raise QueryError(f"no cell_embeddings table under {root}; run the pipeline (`make run`) first")
    version = _table_version(uri, as_of, storage_options, latest)
    when = _registry_time(root, uri, version, as_of, storage_options)
    chosen = registry.resolve(root, model_version, as_of=when, storage_options=storage_options)
    if level is None:
        level = _image_level(root, chosen, when, storage_options, uri, version)
    return Snapshot(root, version, chosen, int(level), storage_options)


def lookup(
    lat: npt.ArrayLike | None = None,
    lng: npt.ArrayLike | None = None,
    *,
    tokens: Sequence[str] | None = None,
    cell_ids: npt.ArrayLike | None = None,
    regions: Sequence[str] | None = None,
    source: Snapshot | None = None,
    **where,
) -> pl.DataFrame:
    """One row per point / token / cell id, in input order: the containing cell at the snapshot's level
    (`cell_id`, `token`, `level`, `model_version` always set) and its `region`, `embedding`, `norm`
    (null where the warehouse has no row for that cell). `where` goes to `snapshot`."""
    snap = source or snapshot(**where)
    cells = _query_cells(lat, lng, tokens, cell_ids, snap.level)
    wanted = np.unique(cells.view(np.int64))
    if tuple(regions or ()) in snap._matrices:
        rows = _rows_in_memory(snap, regions, wanted)
    else:
        rows = _one_row_per_cell(
            snap.scan(regions).filter(pl.col("cell_id").is_in(pl.Series(wanted).implode())).collect(), regions
        )
    query = pl.DataFrame({"_row": np.arange(cells.size), "cell_id": cells.view(np.int64)})
    found = query.join(
        rows.drop("level", "token", "model_version"), on="cell_id", how="left", maintain_order="left"
    )
    out = found.sort("_row").with_columns(
        level=pl.lit(snap.level, pl.Int8),
        token=pl.Series(s2.to_token(cells), dtype=pl.String),
        model_version=pl.lit(snap.model_version),
    )
    inputs = _input_columns(lat, lng, tokens, cell_ids)
    return pl.concat([inputs, out.select(RESULT_COLUMNS)], how="horizontal")


def similar(
    *,
    token: str | None = None,
    cell_id: int | None = None,
    vector: npt.ArrayLike | None = None,
    k: int = 5,
    regions: Sequence[str] | None = None,
    source: Snapshot | None = None,
    **where,
) -> pl.DataFrame:
    """The `k` cells most similar by cosine to a cell (`token` / `cell_id`, itself excluded) or to a
    `vector`, best first, exact (every candidate scored): result columns plus `score` (Float64)."""
    if (token is None) + (cell_id is None) + (vector is None) != 2:
        raise QueryError("give exactly one of token, cell_id or vector")
    if k < 1:
        raise QueryError(f"k must be >= 1, got {k}")
    snap = source or snapshot(**where)
    candidates, matrix = _candidates(snap, regions)
    exclude = None
    if vector is None:
        (query_cell,) = _query_cells(
            None, None, None if token is None else [token], None if cell_id is None else [cell_id], snap.level
        )
        exclude = int(query_cell.view(np.int64))
        at = np.flatnonzero(candidates["cell_id"].to_numpy() == exclude)
        if at.size:
            query = matrix[at[0]]
        else:  # the query cell may lie outside the regions searched
            own = lookup(cell_ids=[exclude], source=snap)
            if own["embedding"][0] is None:
                raise QueryError(
                    f"cell {s2.to_token(query_cell)[0]} has no embedding at level {snap.level} "
                    f"under model {snap.model_version[:12]}"
                )
            query = np.asarray(own["embedding"][0], dtype=np.float32)
    else:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.size != matrix.shape[1]:
            raise QueryError(
                f"vector has {query.size} values; embeddings at level {snap.level} have {matrix.shape[1]}"
            )
    scores = matrix @ (query / max(float(np.linalg.norm(query)), 1e-30))
    if exclude is not None:
        scores[candidates["cell_id"].to_numpy() == exclude] = -np.inf
    top = _top_k(scores, candidates["cell_id"].to_numpy(), k)
    found = candidates[top].with_columns(
        embedding=pl.Series(matrix[top], dtype=pl.Array(pl.Float32, matrix.shape[1])).cast(
            pl.List(pl.Float32)
        )
    )
    return found.select(RESULT_COLUMNS).with_columns(score=pl.Series(scores[top].astype(np.float64)))


def aggregate(
    *,
    tokens: Sequence[str] | None = None,
    cell_ids: npt.ArrayLike | None = None,
    polygon: npt.ArrayLike | None = None,
    regions: Sequence[str] | None = None,
    source: Snapshot | None = None,
    **where,
) -> pl.DataFrame:
    """One row: the area-weighted mean of the unit embeddings of the given cells (finer ones are
    counted once at their parent at the snapshot's level, coarser ones stand for their children there)
    or of the cells whose centre lies inside `polygon` ([[lng, lat], ...], one ring). Columns:
    model_version, level, cells (asked), covered (with an embedding), area_km2 (covered), embedding."""
    snap = source or snapshot(**where)
    if polygon is not None:
        if tokens is not None or cell_ids is not None:
            raise QueryError("give cells or a polygon, not both")
        rows = _in_polygon(
            _one_row_per_cell(snap.scan(regions).collect(), regions), np.asarray(polygon, float)
        )
        asked = rows.height
    else:
        ids = _ids(tokens, cell_ids)
        fine = ids[s2.cell_level(ids) >= snap.level]
        coarse = ids[s2.cell_level(ids) < snap.level]
        wanted = np.unique(s2.parent(fine, snap.level)) if fine.size else np.zeros(0, np.uint64)
        rows = _one_row_per_cell(
            snap.scan(regions)
            .filter(pl.col("cell_id").is_in(pl.Series(wanted.view(np.int64)).implode()))
            .collect(),
            regions,
        )
        if coarse.size:
            rows = pl.concat([rows, _within(snap, regions, coarse)]).unique(
                "cell_id", keep="first", maintain_order=True
            )
        asked = wanted.size + int(sum(4 ** (snap.level - lv) for lv in s2.cell_level(coarse)))
    if rows.height == 0:
        mean = None
        area = 0.0
    else:
        weights = cell_area_km2(s2.as_uint64(rows["cell_id"].to_numpy()))
        mean = (to_matrix(rows["embedding"]).astype(np.float64) * weights[:, None]).sum(
            axis=0
        ) / weights.sum()
        area = float(weights.sum())
    return pl.DataFrame(
        {
            "model_version": [snap.model_version],
            "level": pl.Series([snap.level], dtype=pl.Int8),
            "cells": [asked],
            "covered": [rows.height],
            "area_km2": [area],
            "embedding": pl.Series(
                [None if mean is None else mean.astype(np.float32)], dtype=pl.List(pl.Float32)
            ),
        }
    )


def versions(
    warehouse_root: str | None = None, storage_options: dict[str, str] | None = None
) -> pl.DataFrame:
    """The registry of model versions (newest first), with `status` current / trained / retired."""
    return registry.versions(warehouse_root or warehouse.default_root(), storage_options=storage_options)


def history(
    table: str = CELL_EMBEDDINGS.name,
    warehouse_root: str | None = None,
    storage_options: dict[str, str] | None = None,
) -> pl.DataFrame:
    """A table's commits: version, timestamp, operation, run_id, asset, region, model_version."""
    root = warehouse_root or warehouse.default_root()
    return warehouse.history(warehouse.table_uri(root, table), storage_options)


# ----------------------------------------------------------------------------------------------


def _table_version(uri: str, as_of: AsOf, storage_options, latest: int) -> int:
    if as_of is None:
        return latest
    if isinstance(as_of, bool):
        raise QueryError(f"as_of must be a version, a timestamp or run:<id>, got {as_of!r}")
    if isinstance(as_of, int):
        if not 0 <= as_of <= latest:
            raise QueryError(f"cell_embeddings has versions 0..{latest}, not {as_of}")
        return as_of
    if isinstance(as_of, str) and as_of.startswith("run:"):
        return warehouse.version_of_run(uri, as_of.removeprefix("run:"), storage_options)
    if isinstance(as_of, str):
        if as_of.isdigit():
            return _table_version(uri, int(as_of), storage_options, latest)
        try:
            as_of = datetime.fromisoformat(as_of)
        except ValueError:
            raise QueryError(f"as_of {as_of!r} is not a version, an ISO timestamp or run:<id>") from None
    when = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    version = warehouse.version_at(uri, when, storage_options)
    if version is None:
        raise QueryError(f"cell_embeddings did not exist yet at {when.isoformat()}")
    return version


def _registry_time(root: str, uri: str, version: int, as_of: AsOf, storage_options) -> datetime | None:
    """When to read the registry for a table version: its commit time, or for `run:<id>` the run's last
    commit to either table (a run that embeds a model's last region also makes it current)."""
    if as_of is None:
        return None
    when = warehouse.commit_time(uri, version, storage_options)
    if isinstance(as_of, str) and as_of.startswith("run:"):
        registry_uri = warehouse.table_uri(root, MODEL_VERSIONS.name)
        if warehouse.table_version(registry_uri, storage_options) is not None:
            own = warehouse.history(registry_uri, storage_options).filter(pl.col("run_id") == as_of[4:])
            if own.height:
                when = max(when, own["timestamp"].max())
    return when


def _image_level(root, model_version, when, storage_options, uri, version) -> int:
    known = registry.versions(root, as_of=when, storage_options=storage_options)
    row = known.filter(pl.col("model_version") == model_version)
    if row.height:
        return int(row["image_level"][0])
    lf = pl.scan_delta(uri, version=version, storage_options=storage_options)
    levels = lf.filter(pl.col("model_version") == model_version).select(pl.col("level").min()).collect()
    return int(levels.item())


def _ids(tokens: Sequence[str] | None, cell_ids: npt.ArrayLike | None) -> np.ndarray:
    if (tokens is None) == (cell_ids is None):
        raise QueryError("give exactly one of tokens or cell_ids")
    try:
        if tokens is not None:
            ids = s2.from_token(np.asarray([tokens] if isinstance(tokens, str) else tokens, dtype=str))
        else:
            ids = s2.as_uint64(np.atleast_1d(np.asarray(cell_ids)))
    except ValueError as e:
        raise QueryError(str(e)) from None
    bad = ~s2.is_valid(ids)
    if bad.any():
        raise QueryError(f"{int(bad.sum())} invalid S2 cell id(s) or token(s), e.g. {int(ids[bad][0]):#018x}")
    return ids


def _query_cells(lat, lng, tokens, cell_ids, level: int) -> np.ndarray:
    """uint64 cells at `level` holding each query point / cell (coarser cells are refused)."""
    if lat is not None or lng is not None:
        if lat is None or lng is None or tokens is not None or cell_ids is not None:
            raise QueryError("give lat and lng together, or tokens, or cell ids")
        lat, lng = np.atleast_1d(np.asarray(lat, float)), np.atleast_1d(np.asarray(lng, float))
        if lat.shape != lng.shape:
            raise QueryError(f"lat has {lat.size} values, lng {lng.size}")
        if not (np.isfinite(lat).all() and np.isfinite(lng).all() and (np.abs(lat) <= 90).all()):
            raise QueryError("lat must be finite degrees in [-90, 90] and lng finite degrees")
        return s2.latlng_to_cell_id(lat, lng, level)
    ids = _ids(tokens, cell_ids)
    levels = s2.cell_level(ids)
    if (levels < level).any():
        raise QueryError(
            f"cells at level {int(levels.min())} are coarser than the embeddings' level {level}; "
            "use aggregate for them"
        )
    return s2.parent(ids, level)


def _input_columns(lat, lng, tokens, cell_ids) -> pl.DataFrame:
    if lat is not None:
        return pl.DataFrame(
            {"lat": np.atleast_1d(np.asarray(lat, float)), "lng": np.atleast_1d(np.asarray(lng, float))}
        )
    if tokens is not None:
        return pl.DataFrame(
            {"query": [tokens] if isinstance(tokens, str) else list(tokens)}, schema={"query": pl.String}
        )
    return pl.DataFrame(
        {"query": s2.as_int64(np.atleast_1d(np.asarray(cell_ids)))}, schema={"query": pl.Int64}
    )


def _one_row_per_cell(rows: pl.DataFrame, regions: Sequence[str] | None) -> pl.DataFrame:
    """A cell in several regions' extracts keeps one row: the first region in `regions`, else by name;
    rows come back sorted by cell_id."""
    return rows[_first_per_cell(rows, regions)]


def _first_per_cell(rows: pl.DataFrame, regions: Sequence[str] | None) -> np.ndarray:
    """Row positions of `_one_row_per_cell`, found on the keys alone (sorting the frame would move every
    vector)."""
    order = {r: i for i, r in enumerate(regions)} if regions else None
    key = pl.col("region").replace_strict(order, default=len(order)) if order else pl.col("region")
    keys = rows.select(pl.col("cell_id"), key.alias("_priority")).with_row_index("_row")
    return (
        keys.sort("cell_id", "_priority")
        .unique("cell_id", keep="first", maintain_order=True)["_row"]
        .to_numpy()
    )


def load(source: Snapshot, regions: Sequence[str] | None = None) -> Snapshot:
    """Read a snapshot's vectors (of `regions`) into memory once; later `lookup` and `similar` calls on
    it answer from there (a long-lived process, e.g. a service, pays the table scan once)."""
    _candidates(source, regions)
    return source


def _rows_in_memory(snap: Snapshot, regions: Sequence[str] | None, wanted: np.ndarray) -> pl.DataFrame:
    meta, matrix = _candidates(snap, regions)
    ids = meta["cell_id"].to_numpy()  # sorted (int64), one row per cell
    at = np.clip(np.searchsorted(ids, wanted), 0, max(ids.size - 1, 0))
    hit = at[ids[at] == wanted] if ids.size else at[:0]
    vectors = pl.Series("embedding", matrix[hit], dtype=pl.Array(pl.Float32, matrix.shape[1]))
    return meta[hit].with_columns(vectors.cast(pl.List(pl.Float32))).select(RESULT_COLUMNS)


def _candidates(snap: Snapshot, regions: Sequence[str] | None) -> tuple[pl.DataFrame, np.ndarray]:
    """(rows without the vectors, float32 [n, d] vectors) of a region selection, cached on the snapshot so
    that repeated `similar` calls on one snapshot read the table once."""
    key = tuple(regions or ())
    if key not in snap._matrices:
        rows = snap.scan(regions).collect()
        if rows.height == 0:
            raise QueryError(
                f"no embeddings at level {snap.level} under model {snap.model_version[:12]} in {regions}"
            )
        keep = _first_per_cell(rows, regions)
        matrix = to_matrix(rows["embedding"])[keep]
        old_table = rows[NORM_COLUMN].null_count() == rows.height
        meta = rows.drop("embedding")[keep]
        del rows
        if old_table:  # written before vectors were stored unit length: normalise so scores stay cosines
            norms = np.linalg.norm(matrix, axis=1)
            matrix /= np.where(norms > 0, norms, 1.0)[:, None].astype(np.float32)
        snap._matrices[key] = (meta, matrix)
    return snap._matrices[key]


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best finite scores, best first; ties by cell id (int64) for a stable answer."""
    valid = np.flatnonzero(np.isfinite(scores))
    if valid.size > k:
        cut = np.argpartition(-scores[valid], k - 1)[:k]
        threshold = scores[valid[cut]].min()
        valid = valid[scores[valid] >= threshold]
    order = np.lexsort((ids[valid], -scores[valid]))
    return valid[order][:k]


def _within(snap: Snapshot, regions, coarse: np.ndarray) -> pl.DataFrame:
    """Rows at the snapshot's level inside coarser cells (compared as uint64: int64 order breaks on faces 4-5)."""
    first, last = s2.children_range(coarse, snap.level)
    rows = _one_row_per_cell(snap.scan(regions).collect(), regions)
    ids = s2.as_uint64(rows["cell_id"].to_numpy())
    inside = np.zeros(ids.size, bool)
    for lo, hi in zip(first, last, strict=True):
        inside |= (ids >= lo) & (ids <= hi)
    return rows.filter(pl.Series(inside))


def _in_polygon(rows: pl.DataFrame, ring: np.ndarray) -> pl.DataFrame:
    """Rows whose cell centre lies inside the [lng, lat] ring (even-odd rule)."""
    if ring.ndim != 2 or ring.shape[1] != 2 or ring.shape[0] < 3:
        raise QueryError("polygon must be a ring of at least 3 [lng, lat] points")
    if rows.height == 0:
        return rows
    lat, lng = s2.cell_center(rows["cell_id"].to_numpy())
    inside = np.zeros(lat.size, bool)
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
        crosses = (ay > lat) != (by > lat)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = ax + (lat - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (lng < x_at)
    return rows.filter(pl.Series(inside))
