"""The warehouse's tables: name, partition keys, columns (dtype and meaning) and what each says about itself.

This is the one description of every table: the writers' schemas (`features.schema()`,
`registry.SCHEMA`, `evaluate.metrics_schema()`), the check every write passes
(`s2vec_core.warehouse.write_partition`), the Dagster column docs and the README's table section
(`python -m s2vec_core.tables`, `make tables-doc`) all come from here. Every table's Delta description
is `TableSpec.description` and ends with a JSON line of facts (`s2vec_core.warehouse.table_facts`):
licence always, plus dtype, dimensions and levels where they apply.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from s2vec_core.taxonomy import CHANNELS, TAXONOMY_VERSION

LICENCE = "Derived from OpenStreetMap: (c) OpenStreetMap contributors, Open Database License (ODbL) 1.0"
ID_CONVENTION = "cell_id is the S2 cell id's uint64 bit pattern stored as int64 (faces 4 and 5 are negative)"
DOC_START = "<!-- tables:start: generated from s2vec_core/tables.py by `make tables-doc`; do not edit -->"
DOC_END = "<!-- tables:end -->"


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    doc: str
    group: str | None = None
    """Columns of one generated family (the taxonomy's channels) share this text; the README and the Delta
    description list the family once, as `<channel>`, by it."""


@dataclass(frozen=True)
class TableSpec:
    name: str
    partition_by: tuple[str, ...]
    summary: str
    """What a row is and what a reader should know about the table as a whole."""
    columns: tuple[Column, ...]
    row_group_rows: int | None = None
    """Parquet row-group cap for tables read by cell id (rows are written sorted by it)."""

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema({c.name: c.dtype for c in self.columns})

    @property
    def docs(self) -> dict[str, str]:
        return {c.name: c.doc for c in self.columns}

    @property
    def description(self) -> str:
        """The Delta table description's prose: the summary, then the columns in order."""
        return f"s2vec {self.name}: {self.summary} Columns: " + "; ".join(
            f"{name} ({dtype}): {doc}" for name, dtype, doc in _listed(self.columns)
        )

    def facts(self, **extra: object) -> dict[str, object]:
        """The table's machine-readable facts: licence, id convention, taxonomy, plus `extra`."""
        return {
            "table": self.name,
            "licence": LICENCE,
            "cell_id": ID_CONVENTION,
            "taxonomy_version": TAXONOMY_VERSION,
            **extra,
        }

    def markdown(self) -> str:
        """The table as the README shows it: partition keys, summary, one row per column (family)."""
        keys = ", ".join(f"`{k}`" for k in self.partition_by)
        lines = [
            f"**`{self.name}`** (partitioned by {keys}): {self.summary}",
            "",
            "| column | dtype | meaning |",
            "|---|---|---|",
        ]
        lines += [f"| `{name}` | {dtype} | {doc} |" for name, dtype, doc in _listed(self.columns)]
        return "\n".join(lines)


def _listed(columns: tuple[Column, ...]) -> list[tuple[str, str, str]]:
    """(name, dtype text, doc) per column, a family of grouped columns as one entry."""
    listed: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for c in columns:
        if c.group is None:
            listed.append((c.name, dtype_text(c.dtype), c.doc))
        elif c.group not in seen:
            seen.add(c.group)
            listed.append(("<channel>", dtype_text(c.dtype), c.group))
    return listed


def dtype_text(dtype: pl.DataType) -> str:
    """A dtype as a reader writes it: `Datetime(us, UTC)` rather than polars' keyword repr."""
    if isinstance(dtype, pl.Datetime):
        return f"Datetime({dtype.time_unit}, {dtype.time_zone})" if dtype.time_zone else "Datetime"
    if isinstance(dtype, pl.List):
        return f"List({dtype_text(dtype.inner)})"
    return str(dtype)


_CELL_ID = Column(
    "cell_id",
    pl.Int64(),
    "the S2 cell id's uint64 bit pattern as int64 (cells on faces 4 and 5 are negative)",
)
_TOKEN = Column("token", pl.String(), "the S2 token of the cell")
_TAXONOMY = Column(
    "taxonomy_version", pl.String(), "version of the taxonomy the channels follow (see `TAXONOMY.md`)"
)
_MODEL_VERSION = "sha256 of the model checkpoint file"

CELL_FEATURES = TableSpec(
    "cell_features",
    ("region",),
    "one row per S2 cell holding any mapped feature, at each feature level. The finest level is the "
    "extraction's; coarser levels are sums of the finest, so every channel's total is equal across levels.",
    (
        Column("region", pl.String(), "catalog region (partition key)"),
        Column("level", pl.Int8(), "S2 level of the cell"),
        _CELL_ID,
        _TOKEN,
        _TAXONOMY,
        *(
            Column(
                c.name,
                pl.Float64(),
                f"{c.kind}: {c.description}",
                group=f"one column per taxonomy channel, named as in `TAXONOMY.md` ({len(CHANNELS)}: "
                "counts, lengths in m, areas in m2)",
            )
            for c in CHANNELS
        ),
    ),
)

CELL_EMBEDDINGS = TableSpec(
    "cell_embeddings",
    ("region", "model_version"),
    "one row per image cell and per image token of a region, per model version; `model_versions` says "
    "which version is current. Never mix versions. Rows are sorted by (level, cell_id): Hilbert order, so "
    "row-group statistics let a lookup skip most of a file.",
    (
        Column("region", pl.String(), "catalog region (partition key)"),
        Column("level", pl.Int8(), "the image level for image-cell rows, the token level for per-token rows"),
        _CELL_ID,
        _TOKEN,
        Column("model_version", pl.String(), f"{_MODEL_VERSION} (partition key)"),
        Column(
            "embedding",
            pl.List(pl.Float32()),
            "unit length (cosine similarity = dot product); one length per level: `dim` at the image "
            "level, `token_dim` at the token level, as `model_versions` and the table facts state for each "
            "version (Delta has no fixed-size list)",
        ),
        Column(
            "norm",
            pl.Float32(),
            "the length before normalising: vectors are standardised per dimension against the model's "
            "training cells first, so it says how far a cell is from a typical one (null in rows written "
            "before the column existed)",
        ),
    ),
    row_group_rows=8192,
)

MODEL_VERSIONS = TableSpec(
    "model_versions",
    ("model_version",),
    "one row per trained model.",
    (
        Column("model_version", pl.String(), f"{_MODEL_VERSION} (partition key)"),
        Column(
            "status",
            pl.String(),
            "`trained` (not yet embedded for every region it was trained on), `current` (what readers "
            "read by default; at most one) or `retired` (still readable by pinning)",
        ),
        Column("trained_at", pl.Datetime("us", "UTC"), "when the model was first trained"),
        Column("became_current_at", pl.Datetime("us", "UTC"), "when it became current (null before)"),
        Column("regions", pl.List(pl.String()), "the regions it was trained on, sorted"),
        Column("image_level", pl.Int8(), "S2 level of an image cell (one training image)"),
        Column("pixel_level", pl.Int8(), "S2 level of a pixel"),
        Column("token_level", pl.Int8(), "S2 level of an image token (a patch of pixels)"),
        Column("dim", pl.Int32(), "length of an image-cell embedding"),
        Column("token_dim", pl.Int32(), "length of a per-token embedding"),
        _TAXONOMY,
        Column("model_config", pl.String(), "the model's configuration (JSON)"),
        Column("train_config", pl.String(), "the training configuration (JSON)"),
        Column("training_loss", pl.Float64(), "training loss of the last epoch"),
        Column(
            "holdout_loss",
            pl.Float64(),
            "masked reconstruction loss on the held-out images (null without a held-out split)",
        ),
        Column(
            "checkpoint",
            pl.String(),
            "the checkpoint file, relative to the warehouse root (older rows: an absolute path)",
        ),
        Column("run_id", pl.String(), "the Dagster run that trained it"),
    ),
)

EVALUATION_METRICS = TableSpec(
    "evaluation_metrics",
    ("scope",),
    "one row per (scope, region, task, split, feature set, model, metric); a run replaces its scope's rows.",
    (
        Column(
            "scope",
            pl.String(),
            "the region for per-region runs, `cross_region` for transfer runs (partition key)",
        ),
        Column("region", pl.String(), "the region scored (for `transfer`: the held-out one)"),
        Column("task", pl.String(), "the target predicted (e.g. an OSM proxy or a catalog targets file's)"),
        Column(
            "split",
            pl.String(),
            "`random` (K-fold over image cells), `spatial` (K-fold over blocks of cells) or `transfer` "
            "(trained on the other regions)",
        ),
        Column(
            "feature_set",
            pl.String(),
            "`s2vec` and its fusions `s2vec+raw`, `s2vec+contextual`, `s2vec+external`; baselines `raw`, "
            "`contextual`, `spatial_stats`, `pca`, `random`, `external`",
        ),
        Column("model", pl.String(), "`lightgbm` or `linear` (a ridge probe)"),
        Column("metric", pl.String(), "`r2`, `mae` or `rmse`"),
        Column("value", pl.Float64(), "mean over folds"),
        Column("std", pl.Float64(), "sample standard deviation over folds (null with one fold)"),
        Column("n_folds", pl.Int32(), "folds scored"),
        Column("n_cells", pl.Int64(), "image cells scored"),
        Column("model_version", pl.String(), "the embeddings scored (empty if none)"),
        Column("run_id", pl.String(), "the Dagster run that scored it"),
    ),
)

ALL = (CELL_FEATURES, CELL_EMBEDDINGS, MODEL_VERSIONS, EVALUATION_METRICS)
"""Every Delta table of the warehouse (region removal walks these)."""
BY_NAME = {spec.name: spec for spec in ALL}


def markdown() -> str:
    """The README's table section: every spec, between the markers `readme_block` replaces."""
    return "\n\n".join([DOC_START, *(spec.markdown() for spec in ALL), DOC_END]) + "\n"


def readme_block(text: str) -> str:
    """`text` (a README) with its generated table block replaced by the current `markdown()`."""
    before, start, rest = text.partition(DOC_START)
    _, end, after = rest.partition(DOC_END)
    if not (start and end):
        raise ValueError(f"no block between {DOC_START!r} and {DOC_END!r}")
    return before + markdown().rstrip("\n") + after


def main(argv: list[str]) -> None:
    """Print the table section; with `--write FILE`, replace the block in FILE instead."""
    if argv[:1] == ["--write"] and len(argv) == 2:
        path = Path(argv[1])
        path.write_text(readme_block(path.read_text()))
    elif argv:
        raise SystemExit("usage: python -m s2vec_core.tables [--write README.md]")
    else:
        sys.stdout.write(markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
