"""The warehouse's tables: name, partition keys and what each says about itself (one place for both).

Assets write through these specs; the query API, the CLI and the README read the same names. Every
table's Delta description starts with `description` and ends with a JSON line of facts
(`s2vec_core.warehouse.table_facts`): licence always, plus dtype, dimensions and levels where they apply.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2vec_core.taxonomy import TAXONOMY_VERSION

LICENCE = "Derived from OpenStreetMap: (c) OpenStreetMap contributors, Open Database License (ODbL) 1.0"
ID_CONVENTION = "cell_id is the S2 cell id's uint64 bit pattern stored as int64 (faces 4 and 5 are negative)"


@dataclass(frozen=True)
class TableSpec:
    name: str
    partition_by: tuple[str, ...]
    description: str
    row_group_rows: int | None = None
    """Parquet row-group cap for tables read by cell id (rows are written sorted by it)."""

    def facts(self, **extra: object) -> dict[str, object]:
        """The table's machine-readable facts: licence, id convention, taxonomy, plus `extra`."""
        return {
            "table": self.name,
            "licence": LICENCE,
            "cell_id": ID_CONVENTION,
            "taxonomy_version": TAXONOMY_VERSION,
            **extra,
        }


CELL_FEATURES = TableSpec(
    "cell_features",
    ("region",),
    "s2vec cell_features: region (partition), level (Int8 S2 level), cell_id (Int64, the S2 id's uint64 bit "
    "pattern), token (S2 token), taxonomy_version, then one Float64 column per taxonomy channel (see "
    "TAXONOMY.md). Coarser levels are sums of the finest.",
)

CELL_EMBEDDINGS = TableSpec(
    "cell_embeddings",
    ("region", "model_version"),
    "s2vec cell_embeddings: region and model_version (partition keys), level (Int8: the image level for "
    "image-cell rows, the token level for per-token rows), cell_id (Int64, the S2 id's uint64 bit pattern), "
    "token (S2 token), embedding (list of Float32, unit L2 length: cosine similarity = dot product; the "
    "length differs by level, see the facts and the model_versions table), norm (Float32, the L2 length "
    "before normalisation). model_version = sha256 of the model checkpoint file; model_versions says which "
    "one is current. Never mix versions. Rows sorted by (level, cell_id): Hilbert order, so row-group "
    "statistics let a lookup skip most of a file.",
    row_group_rows=8192,
)

MODEL_VERSIONS = TableSpec(
    "model_versions",
    ("model_version",),
    "s2vec model_versions: one row per trained model. status: trained (not yet embedded for every region "
    "it was trained on), current (the one readers use by default; at most one), retired (still readable "
    "by pinning). regions, levels (image, pixel, token), dims (image-cell and token embedding lengths), "
    "model and train configs (JSON), final training loss, held-out loss, trained_at, run_id.",
)

EVALUATION_METRICS = TableSpec(
    "evaluation_metrics",
    ("scope",),
    "s2vec evaluation_metrics: scope (partition: region or cross_region), region, task, split (random | "
    "spatial | transfer), feature_set, model (lightgbm | linear), metric (r2 | mae | rmse), value (mean over "
    "folds), std (over folds), n_folds, n_cells, model_version (embeddings scored, '' if none), run_id.",
)

ALL = (CELL_FEATURES, CELL_EMBEDDINGS, MODEL_VERSIONS, EVALUATION_METRICS)
"""Every Delta table of the warehouse (region removal walks these)."""
