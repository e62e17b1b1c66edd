"""The table specs are the one description of the warehouse: writes are checked against them, the tables
the pipeline writes read back with their schemas, and the README's table block and the Dagster column docs
are made from them."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from deltalake import DeltaTable

from s2vec_core import evaluate as ev
from s2vec_core import registry, s2, tables, warehouse
from s2vec_core.catalog import CROSS_REGION_SCOPE
from s2vec_core.embed import token_cells
from s2vec_core.features import cell_features
from s2vec_core.taxonomy import CHANNEL_NAMES, CHANNELS

README = Path(__file__).resolve().parent.parent / "README.md"
IMAGE_LEVEL, TOKEN_LEVEL, PIXEL_LEVEL = 13, 14, 17


def _features(region: str = "a") -> pl.DataFrame:
    ids = s2.latlng_to_cell_id(np.array([46.0, 46.001, 46.2]), np.array([8.0, 8.001, 8.3]), 15)
    long = pl.DataFrame({"cell_id": ids, "channel": [0, 1, 0], "value": [1.0, 2.0, 3.0]})
    return cell_features(long, [13, 15], region)


def _write_features(uri: str, df: pl.DataFrame, partition: dict | None = None) -> int:
    return warehouse.write_partition(
        df, uri, partition or {"region": "a"}, facts=tables.CELL_FEATURES.facts()
    )


@pytest.mark.parametrize(
    ("change", "partition", "message"),
    [
        (
            lambda df: df.with_columns(pl.col("level").cast(pl.Int32)),
            None,
            r"cell_features: column 'level' is Int32, the spec in s2vec_core.tables says Int8",
        ),
        (
            lambda df: df.with_columns(pl.col(CHANNEL_NAMES[0]).cast(pl.Float32)),
            None,
            rf"column '{CHANNEL_NAMES[0]}' is Float32, .* says Float64",
        ),
        (lambda df: df.drop("token"), None, r"missing \['token'\], not in the spec \[\]"),
        (lambda df: df.with_columns(extra=pl.lit(1)), None, r"missing \[\], not in the spec \['extra'\]"),
        (lambda df: df.select(reversed(df.columns)), None, "order"),
        (
            lambda df: df,
            {"region": "a", "level": 13},
            r"partitioned by \['region'\], not \['region', 'level'\]",
        ),
    ],
)
def test_a_write_that_differs_from_its_spec_is_refused_and_the_table_unchanged(
    tmp_path, change, partition, message
):
    uri = warehouse.table_uri(tmp_path, tables.CELL_FEATURES.name)
    good = _features()
    _write_features(uri, good)
    with pytest.raises(warehouse.WarehouseError, match=message):
        _write_features(uri, change(good.filter(pl.col("level") == 13)), partition)
    assert warehouse.table_version(uri) == 0
    assert warehouse.read_table(uri).sort("level", "cell_id").equals(good.sort("level", "cell_id"))


def test_a_new_table_is_not_created_from_a_frame_that_differs_from_its_spec(tmp_path):
    uri = warehouse.table_uri(tmp_path, tables.CELL_FEATURES.name)
    with pytest.raises(ValueError, match="'cell_id' is UInt64"):
        _write_features(uri, _features().with_columns(pl.col("cell_id").reinterpret(signed=False)))
    assert warehouse.table_version(uri) is None


def test_the_readme_table_block_is_current():
    text = README.read_text()
    assert tables.readme_block(text) == text, "README table block is stale: run `make tables-doc`"
    assert text.count(tables.DOC_START) == 1


def test_the_docs_name_the_values_the_code_writes():
    docs = {spec.name: spec.docs for spec in tables.ALL}
    metrics = docs["evaluation_metrics"]
    for value in (*ev.SPLITS, "transfer"):
        assert f"`{value}`" in metrics["split"]
    for value in ev.MODELS:
        assert f"`{value}`" in metrics["model"]
    for value in ev.METRICS:
        assert f"`{value}`" in metrics["metric"]
    assert f"`{ev.LEARNED}`" in metrics["feature_set"] and f"`{CROSS_REGION_SCOPE}`" in metrics["scope"]
    for status in (registry.TRAINED, registry.CURRENT, registry.RETIRED):
        assert f"`{status}`" in docs["model_versions"]["status"]
    # The channel columns are the taxonomy's, in its order and words.
    channels = tables.CELL_FEATURES.columns[-len(CHANNELS) :]
    assert [c.name for c in channels] == list(CHANNEL_NAMES)
    assert all(c.doc.endswith(ch.description) for c, ch in zip(channels, CHANNELS, strict=True))
    for spec in tables.ALL:
        assert set(spec.partition_by) <= set(spec.schema)
        assert all(c.doc for c in spec.columns)


def test_every_column_of_every_table_is_described_in_dagster():
    from s2vec_assets.metadata import column_schema

    for spec in tables.ALL:
        columns = column_schema(spec.schema, spec.name).columns
        assert [c.name for c in columns] == list(spec.schema)
        assert all(c.description == spec.docs[c.name] for c in columns)
    described = {
        c.name: c.description for c in column_schema(tables.CELL_FEATURES.schema, "cell_features").columns
    }
    assert described[CHANNEL_NAMES[0]] == f"{CHANNELS[0].kind}: {CHANNELS[0].description}"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> str:
    """A small warehouse of all four tables, written by the pipeline's own code paths."""
    from s2vec_assets.defs.model.assets import embeddings_facts
    from s2vec_core.pipeline import embeddings_rows

    root = tmp_path_factory.mktemp("warehouse")
    rng = np.random.default_rng(0)
    pixels = s2.latlng_to_cell_id(rng.uniform(46, 46.3, 400), rng.uniform(8, 8.3, 400), PIXEL_LEVEL)
    extraction = pl.DataFrame(
        {"cell_id": pixels, "channel": rng.integers(0, len(CHANNELS), 400), "value": rng.random(400)}
    ).unique(["cell_id", "channel"])
    features = cell_features(extraction, [IMAGE_LEVEL, PIXEL_LEVEL], "syn")
    warehouse.write_partition(
        features,
        warehouse.table_uri(root, "cell_features"),
        {"region": "syn"},
        description=tables.CELL_FEATURES.description,
        facts=tables.CELL_FEATURES.facts(dtype="float64"),
    )

    version = "f" * 64
    image_ids = np.unique(s2.parent(pixels, IMAGE_LEVEL))
    trained = SimpleNamespace(
        image_level=IMAGE_LEVEL, token_level=TOKEN_LEVEL, model_version=version, dim=8, token_dim=4
    )
    token_ids = token_cells(image_ids, IMAGE_LEVEL, TOKEN_LEVEL).reshape(-1)
    rows = embeddings_rows(
        "syn",
        trained,
        image_ids,
        rng.normal(size=(image_ids.size, 8)).astype(np.float32),
        token_ids,
        rng.normal(size=(token_ids.size, 4)).astype(np.float32),
    )
    warehouse.write_partition(
        rows,
        warehouse.table_uri(root, "cell_embeddings"),
        {"region": "syn", "model_version": version},
        description=tables.CELL_EMBEDDINGS.description,
        facts=embeddings_facts(trained),
        row_group_rows=tables.CELL_EMBEDDINGS.row_group_rows,
    )

    record = registry.ModelRecord(
        model_version=version,
        regions=["syn"],
        image_level=IMAGE_LEVEL,
        pixel_level=PIXEL_LEVEL,
        token_level=TOKEN_LEVEL,
        dim=8,
        token_dim=4,
        taxonomy_version="t",
        model_config={},
        train_config={},
        training_loss=1.0,
        holdout_loss=None,
        checkpoint="models/x.pt",
    )
    registry.record_trained(str(root), record)
    assert registry.promote_if_complete(str(root), version)

    raw = ev.raw_channel_totals(features, IMAGE_LEVEL, CHANNEL_NAMES)
    result = ev.evaluate(
        pl.DataFrame({"cell_id": image_ids, "target": rng.random(image_ids.size)}),
        {"raw": raw, "random": ev.random_features(raw["cell_id"].to_numpy(), 4)},
        task="population",
        region="syn",
        image_level=IMAGE_LEVEL,
        k=3,
        splits=("random",),
        models=("linear",),
        model_version=version,
    )
    warehouse.write_partition(
        result.metrics,
        warehouse.table_uri(root, "evaluation_metrics"),
        {"scope": "syn"},
        description=tables.EVALUATION_METRICS.description,
        facts=tables.EVALUATION_METRICS.facts(),
    )
    return str(root)


@pytest.mark.parametrize("spec", tables.ALL, ids=lambda s: s.name)
def test_every_table_the_pipeline_writes_reads_back_as_its_spec(written, spec):
    uri = warehouse.table_uri(written, spec.name)
    assert pl.read_delta(uri).schema == spec.schema
    assert DeltaTable(uri).metadata().partition_columns == list(spec.partition_by)
    assert DeltaTable(uri).metadata().description.startswith(spec.description)
    assert warehouse.table_facts(uri)["table"] == spec.name
