"""Data that would poison downstream is refused before it is written: the previous version stays current.

cell_features: an extract with no tagged features fails the run before any commit. Evaluation: targets
that miss the region's cells, or are constant, are refused before a metric row is written or deleted.
"""

from pathlib import Path

import dagster as dg
import numpy as np
import osmium
import polars as pl
import pytest

from s2vec_assets.defs.features import assets as feature_assets
from s2vec_assets.defs.features import checks as feature_checks
from s2vec_assets.defs.osm import assets as osm_assets
from s2vec_assets.defs.resources import OsmSourceResource, WarehouseResource
from s2vec_assets.defs.resources import resources as default_resources
from s2vec_assets.gx_checks import run_suite
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
    # The polars screens that spare GX on passing frames agree with the GX suites, rule by rule.
    other_level = df.head(1).with_columns(level=pl.col("level") - 1)
    for frame in (df, pl.concat([df, df.head(1)]), pl.concat([df, other_level]), df.head(0)):
        for name in feature_checks.PRE_WRITE:
            build, _ = feature_checks.SUITES[name]
            suite = build(frame)
            gx_passed = run_suite(suite[0], suite[1], name).success
            assert feature_checks.SCREENS[name](frame) == gx_passed, (name, frame.height)


# --- evaluation ------------------------------------------------------------------------------------


def test_unscoreable_targets_and_the_swapped_hint():
    from s2vec_core import evaluation_run as er
    from s2vec_core import s2
    from s2vec_core.targets import TargetsError, swapped_overlap, unscoreable

    level = 13
    lat, lng = np.meshgrid(np.linspace(47.05, 47.25, 30), np.linspace(9.47, 9.64, 30))
    cells = np.unique(s2.latlng_to_cell_id(lat.ravel(), lng.ravel(), level))
    good = pl.DataFrame(
        {"cell_id": pl.Series(cells, dtype=pl.UInt64), "target": np.arange(len(cells), dtype=float)}
    )
    # Points inside the region with latitude and longitude swapped.
    far = s2.latlng_to_cell_id(np.full(3, 9.55), np.array([47.1, 47.15, 47.2]), level)
    swapped = pl.DataFrame({"cell_id": pl.Series(far, dtype=pl.UInt64), "target": [1.0, 2.0, 3.0]})
    constant = good.with_columns(target=pl.lit(2.5))
    nulls = good.with_columns(target=pl.lit(None, pl.Float64))
    assert unscoreable(good, s2.as_int64(cells)) is None
    assert "none of its 3 image cells" in unscoreable(swapped, s2.as_int64(cells))
    assert "constant (2.5)" in unscoreable(constant, s2.as_int64(cells))
    assert "all null" in unscoreable(nulls, s2.as_int64(cells))
    assert swapped_overlap(swapped, s2.as_int64(cells)) == 3 and swapped_overlap(good, cells) == 0

    kept, skipped = er.screen_tasks("li", {"ok": good, "flat": constant}, s2.as_int64(cells))
    assert list(kept) == ["ok"] and list(skipped) == ["flat"]
    with pytest.raises(TargetsError, match="very likely swapped") as e:
        er.screen_tasks("li", {"pts": swapped, "flat": constant}, s2.as_int64(cells), source="x.csv")
    assert "previous metrics stay current" in str(e.value) and "x.csv" in str(e.value)


def test_undefined_scores_are_notes_never_nan_rows():
    from s2vec_core import evaluation_run as er
    from s2vec_core.evaluate import metrics_schema

    row = {c: None for c in metrics_schema()}
    rows = [
        {**row, "region": "li", "task": "t", "split": "spatial", "metric": "r2", "value": float("nan")},
        {**row, "region": "li", "task": "t", "split": "spatial", "metric": "mae", "value": 0.5},
    ]
    result = er._combine([pl.DataFrame(rows, schema=metrics_schema())], [], [])
    assert result.metrics["metric"].to_list() == ["mae"]
    assert result.notes == ["li/t: r2 undefined on the spatial split (no target variance); not stored"]


@pytest.fixture(scope="module")
def evaluation_env(tmp_path_factory, dagster_instance):
    from s2vec_assets.defs.evaluation import assets as evaluation_assets

    root = tmp_path_factory.mktemp("warehouse")
    defs = dg.Definitions(
        assets=[osm_assets.osm_extract, feature_assets.cell_features, evaluation_assets.evaluation_report],
        resources=default_resources().resources,
    )
    resources = {**defs.resources, "warehouse": WarehouseResource(root=str(root))}
    res = dg.materialize(
        defs.assets,
        resources=resources,
        instance=dagster_instance,
        partition_key="liechtenstein",
        selection=["cell_features"],
        raise_on_error=False,
    )
    assert res.success
    return defs, resources, dagster_instance, root


def evaluate(env, targets: Path, tmp_path):
    defs, resources, instance, _ = env
    config = {"reports_dir": str(tmp_path), "targets": str(targets), "learning_curves": False, "k": 3}
    return dg.materialize(
        defs.assets,
        resources=resources,
        instance=instance,
        partition_key="liechtenstein",
        selection=["evaluation_report"],
        run_config={"ops": {"evaluation_report": {"config": config}}},
        raise_on_error=False,
    )


def test_misplaced_or_constant_targets_keep_the_previous_metrics(evaluation_env, tmp_path):
    from s2vec_core import s2
    from s2vec_core.grid import Grid

    _, _, _, root = evaluation_env
    features = pl.read_delta(warehouse.table_uri(root, "cell_features")).filter(
        pl.col("level") == Grid().image_level
    )
    lat, lng = s2.cell_center(s2.as_uint64(features["cell_id"].to_numpy()))
    points = pl.DataFrame({"lat": lat, "lng": lng, "value": np.log1p(features["building_count"].to_numpy())})
    good = tmp_path / "buildings.csv"
    points.write_csv(good)
    res = evaluate(evaluation_env, good, tmp_path)
    assert res.success
    uri = warehouse.table_uri(root, "evaluation_metrics")
    version, before = warehouse.table_version(uri), pl.read_delta(uri)
    assert before.height and before["value"].is_finite().all()
    [mat] = res.asset_materializations_for_node("evaluation_report")
    assert mat.metadata["skipped_targets"].value == {}

    swapped = tmp_path / "swapped.csv"
    points.rename({"lat": "lng", "lng": "lat"}).select("lat", "lng", "value").write_csv(swapped)
    constant = tmp_path / "constant.parquet"
    points.with_columns(value=pl.lit(3.0)).write_parquet(constant)
    for bad, expected in ((swapped, "very likely swapped"), (constant, "constant (3)")):
        res = evaluate(evaluation_env, bad, tmp_path)
        assert not res.success, bad
        failure = next(e for e in res.all_events if e.is_step_failure)
        message = failure.step_failure_data.error.message
        assert "evaluation[liechtenstein]" in message and str(bad) in message and expected in message
        assert "previous metrics stay current" in message
        assert warehouse.table_version(uri) == version
        assert pl.read_delta(uri).equals(before)
