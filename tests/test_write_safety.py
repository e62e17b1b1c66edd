"""Data that would poison downstream is refused before it is written: the previous version stays current.

cell_features: an extract with no tagged features fails the run before any commit. Evaluation: targets
that miss the region's cells, or are constant, are refused before a metric row is written or deleted.
"""

from pathlib import Path

import dagster as dg
import osmium
import polars as pl
import pytest

from s2vec_assets.defs.features import assets as feature_assets
from s2vec_assets.defs.features import checks as feature_checks
from s2vec_assets.defs.osm import assets as osm_assets
from s2vec_assets.defs.resources import OsmSourceResource, WarehouseResource
from s2vec_assets.defs.resources import resources as default_resources
from s2vec_core import warehouse
from s2vec_core.catalog import load_catalog

REPO = Path(__file__).resolve().parent.parent
CATALOG = load_catalog(REPO / "regions.toml")
pytestmark = pytest.mark.slow


def untagged_pbf(path: Path) -> Path:
    """A valid PBF of a few nodes inside Monaco, none with a tag."""
    writer = osmium.SimpleWriter(str(path))
    for i in range(1, 6):
        writer.add_node(
            osmium.osm.mutable.Node(
                id=i,
                location=(7.42 + i * 0.001, 43.735),
                version=1,
                timestamp="2024-01-01T00:00:00Z",
                changeset=1,
                uid=1,
                user="test",
            )
        )
    writer.close()
    return path


def catalog_file(path: Path, sources: dict[str, Path]) -> Path:
    text = ""
    for name, source in sources.items():
        text += f'[regions.{name}]\nsource = "{source}"\n'
        if CATALOG[name].bbox:
            text += f"bbox = {list(CATALOG[name].bbox)}\n"
    path.write_text(text)
    return path


def features_defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[osm_assets.osm_extract, feature_assets.cell_features],
        asset_checks=[feature_checks.cell_features_checks],
        resources=default_resources().resources,
    )


def materialize(defs, resources, instance, region):
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        resources=resources,
        instance=instance,
        partition_key=region,
        selection=[feature_assets.cell_features.key],
        raise_on_error=False,
    )


def test_an_extract_without_tagged_features_is_refused_before_writing(dagster_instance, tmp_path):
    defs = features_defs()
    root = tmp_path / "warehouse"
    good = {r: REPO / CATALOG[r].source for r in ("liechtenstein", "monaco")}
    source = OsmSourceResource(
        catalog_path=str(catalog_file(tmp_path / "good.toml", good)), cache_dir=str(tmp_path)
    )
    resources = {**defs.resources, "warehouse": WarehouseResource(root=str(root)), "osm_source": source}
    for region in good:
        assert materialize(defs, resources, dagster_instance, region).success
    uri = warehouse.table_uri(root, "cell_features")
    version = warehouse.table_version(uri)
    before = {r: warehouse.read_table(uri, {"region": r}).sort("level", "cell_id") for r in good}
    assert all(rows.height for rows in before.values())

    empty = untagged_pbf(tmp_path / "untagged.osm.pbf")
    bad_source = OsmSourceResource(
        catalog_path=str(catalog_file(tmp_path / "bad.toml", {**good, "monaco": empty})),
        cache_dir=str(tmp_path),
    )
    result = materialize(defs, {**resources, "osm_source": bad_source}, dagster_instance, "monaco")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "cell_features[monaco]" in message and str(empty) in message
    assert "no feature any taxonomy channel reads" in message
    assert f"stays at version {version}" in message and "Fix:" in message
    assert failure.step_failure_data.user_failure_data.metadata["refused_checks"].value == [
        "cell_features_not_empty"
    ]
    # No commit was made; both regions read exactly as before.
    assert warehouse.table_version(uri) == version
    for region, rows in before.items():
        assert warehouse.read_table(uri, {"region": region}).sort("level", "cell_id").equals(rows)


def test_duplicate_cells_are_refused_by_the_same_suite_the_check_runs():
    from s2vec_core import features, osm
    from s2vec_core.grid import Grid

    levels = list(Grid().feature_levels)
    pixels = osm.extract_cells_long(REPO / CATALOG["monaco"].source, levels[-1])
    df = features.cell_features(pixels, levels, "monaco")
    assert feature_checks.failures_before_write(df) == {}
    failed = feature_checks.failures_before_write(pl.concat([df, df.head(1)]))
    assert list(failed) == ["cell_features_unique_cells"]
    assert "expect_compound_columns_to_be_unique" in failed["cell_features_unique_cells"]
    assert list(feature_checks.failures_before_write(df.head(0))) == ["cell_features_not_empty"]
