"""The registry of model versions (`model_versions`) and the one current embedding set.

A model version is *complete* when every region it was trained on has rows under it in
`cell_embeddings`; the first complete moment makes it `current` and retires the previous current
version, both in one Delta commit, so a reader never sees two current versions or none between them.
Readers resolve the version they read with `resolve`: a pin wins, else the current version, else the
table's only version; anything ambiguous is an error that lists the versions to pin.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from s2vec_core import warehouse
from s2vec_core.tables import CELL_EMBEDDINGS, MODEL_VERSIONS

TRAINED, CURRENT, RETIRED = "trained", "current", "retired"
SCHEMA = MODEL_VERSIONS.schema


class VersionError(ValueError):
    """Which model version to read is unknown, ambiguous, or would mix versions."""


@dataclass(frozen=True)
class ModelRecord:
    """What the registry keeps about a trained model (written by the mae_model asset)."""

    model_version: str
    regions: Sequence[str]
    image_level: int
    pixel_level: int
    token_level: int
    dim: int
    token_dim: int
    taxonomy_version: str
    model_config: Mapping[str, object]
    train_config: Mapping[str, object]
    training_loss: float
    holdout_loss: float | None
    checkpoint: str
    run_id: str = ""
    trained_at: datetime | None = None


def _uri(root: str, name: str) -> str:
    return warehouse.table_uri(root, name)


def versions(
    root: str, as_of: int | datetime | None = None, storage_options: dict[str, str] | None = None
) -> pl.DataFrame:
    """Every registered version (newest first); empty with the registry's schema if there is none yet.

    `as_of` is a registry table version or a timestamp (the registry as it was then).
    """
    uri = _uri(root, MODEL_VERSIONS.name)
    if warehouse.table_version(uri, storage_options) is None:
        return pl.DataFrame(schema=SCHEMA)
    if isinstance(as_of, datetime):
        as_of = warehouse.version_at(uri, as_of, storage_options)
        if as_of is None:
            return pl.DataFrame(schema=SCHEMA)
    df = warehouse.read_table(uri, storage_options=storage_options, version=as_of)
    return df.select(list(SCHEMA)).sort("trained_at", descending=True)


def current(
    root: str, as_of: int | datetime | None = None, storage_options: dict[str, str] | None = None
) -> str | None:
    """The current model version, or None before any version is complete."""
    rows = versions(root, as_of, storage_options).filter(pl.col("status") == CURRENT)
    if rows.height > 1:
        raise VersionError(
            f"the registry marks {rows.height} versions current: {rows['model_version'].to_list()}"
        )
    return rows["model_version"][0] if rows.height else None


def record_trained(
    root: str,
    record: ModelRecord,
    commit: Mapping[str, str] | None = None,
    storage_options: dict[str, str] | None = None,
) -> str:
    """Register a trained model; an already registered version keeps its status, training time and run
    (the configs and losses are refreshed). Returns the status."""
    known = versions(root, storage_options=storage_options).filter(
        pl.col("model_version") == record.model_version
    )
    status = known["status"][0] if known.height else TRAINED
    became = known["became_current_at"][0] if known.height else None
    row = {
        "model_version": record.model_version,
        "status": status,
        # A re-run that finds the finished checkpoint does not retrain: the first training time stands.
        "trained_at": known["trained_at"][0] if known.height else (record.trained_at or datetime.now(UTC)),
        "became_current_at": became,
        "regions": sorted(record.regions),
        "image_level": record.image_level,
        "pixel_level": record.pixel_level,
        "token_level": record.token_level,
        "dim": record.dim,
        "token_dim": record.token_dim,
        "taxonomy_version": record.taxonomy_version,
        "model_config": json.dumps(dict(record.model_config), sort_keys=True),
        "train_config": json.dumps(dict(record.train_config), sort_keys=True),
        "training_loss": float(record.training_loss),
        "holdout_loss": None if record.holdout_loss is None else float(record.holdout_loss),
        "checkpoint": record.checkpoint,
        "run_id": known["run_id"][0] if known.height else record.run_id,
    }
    _write(root, pl.DataFrame([row], schema=SCHEMA), commit, storage_options)
    return status


def embedded_regions(
    root: str, model_version: str, storage_options: dict[str, str] | None = None
) -> list[str]:
    """Regions with rows under `model_version` in cell_embeddings."""
    uri = _uri(root, CELL_EMBEDDINGS.name)
    if warehouse.table_version(uri, storage_options) is None:
        return []
    done = (
        pl.scan_delta(uri, storage_options=storage_options)
        .filter(pl.col("model_version") == model_version)
        .select(pl.col("region").unique())
        .collect()
    )
    return sorted(done["region"].to_list())


def promote_if_complete(
    root: str,
    model_version: str,
    commit: Mapping[str, str] | None = None,
    storage_options: dict[str, str] | None = None,
) -> bool:
    """Make `model_version` current (retiring the current one, one commit) once all its regions are
    embedded under it. True if it is current afterwards."""
    table = versions(root, storage_options=storage_options)
    mine = table.filter(pl.col("model_version") == model_version)
    if mine.height == 0:
        raise VersionError(f"model version {model_version[:12]} is not registered in {MODEL_VERSIONS.name}")
    if mine["status"][0] == CURRENT:
        return True
    missing = set(mine["regions"][0]) - set(embedded_regions(root, model_version, storage_options))
    if missing:
        return False
    now = datetime.now(UTC)
    changed = pl.concat(
        [
            mine.with_columns(
                status=pl.lit(CURRENT), became_current_at=pl.lit(now, SCHEMA["became_current_at"])
            ),
            table.filter(pl.col("status") == CURRENT).with_columns(status=pl.lit(RETIRED)),
        ]
    )
    _write(root, changed, commit, storage_options)
    return True


def resolve(
    root: str,
    model_version: str | None = None,
    as_of: datetime | None = None,
    storage_options: dict[str, str] | None = None,
) -> str:
    """The one model version a reader reads: the pin if given (it must exist), else the current one,
    else the only version in cell_embeddings. `as_of`: the registry and table as they were then."""
    present = embedded_versions(root, as_of, storage_options)
    if model_version is not None:
        matches = [v for v in present if v.startswith(model_version)]
        if len(matches) != 1:
            raise VersionError(
                f"pinned model version {model_version!r} matches {len(matches)} of the versions "
                f"in cell_embeddings: {_short(present)}"
            )
        return matches[0]
    chosen = current(root, as_of, storage_options)
    if chosen is not None:
        return chosen
    if len(present) == 1:
        return present[0]
    if not present:
        raise VersionError(
            f"cell_embeddings under {root} holds no embeddings" + (f" as of {as_of}" if as_of else "")
        )
    raise VersionError(
        f"cell_embeddings holds {len(present)} model versions {_short(present)} and none is current "
        "(a version becomes current once every region it was trained on is embedded); pin one"
    )


def check_one_version(df: pl.DataFrame) -> str:
    """The model version of a frame of embeddings; VersionError if it mixes versions."""
    found = df["model_version"].unique().to_list()
    if len(found) != 1:
        raise VersionError(
            f"embeddings of {len(found)} model versions {_short(found)} in one frame; never mix them"
        )
    return found[0]


def embedded_versions(
    root: str, as_of: datetime | None = None, storage_options: dict[str, str] | None = None
) -> list[str]:
    """Model versions with rows in cell_embeddings (as of a time), sorted."""
    uri = _uri(root, CELL_EMBEDDINGS.name)
    if warehouse.table_version(uri, storage_options) is None:
        return []
    version = warehouse.version_at(uri, as_of, storage_options) if as_of is not None else None
    if as_of is not None and version is None:
        return []
    lf = pl.scan_delta(uri, storage_options=storage_options, version=version)
    return sorted(lf.select(pl.col("model_version").unique()).collect()["model_version"].to_list())


def _short(versions_: Sequence[str]) -> list[str]:
    return [v[:12] for v in versions_]


def _write(root: str, rows: pl.DataFrame, commit, storage_options) -> int:
    return warehouse.write_partition(
        rows,
        _uri(root, MODEL_VERSIONS.name),
        {"model_version": rows["model_version"].to_list()},
        storage_options=storage_options,
        description=MODEL_VERSIONS.description,
        commit=commit,
        facts=MODEL_VERSIONS.facts(),
        spec=MODEL_VERSIONS,
    )
