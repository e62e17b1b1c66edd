"""The Dagster layer run for real: definitions, region materialisations, GX checks, scoped rewrites.

Every run goes through `dg.materialize` / a job against a temporary DAGSTER_HOME (with the repo's
dagster.yaml) and a temporary warehouse.
"""

import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from s2vec_assets.definitions import defs as load_defs
from s2vec_assets.defs.features import assets as feature_assets
from s2vec_assets.defs.partitions import region_partitions
from s2vec_assets.defs.resources import OsmSourceResource, WarehouseResource
from s2vec_core import s2
from s2vec_core.catalog import load_catalog, sha256_file
from s2vec_core.grid import MAX_LEVEL, Grid
from s2vec_core.taxonomy import CHANNEL_NAMES, CHANNELS
from tests.conftest import materialize_selection

REPO = Path(__file__).resolve().parent.parent
REGIONS = list(load_catalog(REPO / "regions.toml"))
# This file's assets; later assets in the graph are tested by their own files.
OWN = [dg.AssetKey("osm_extract"), dg.AssetKey("cell_features")]
CHECKS = {
    "cell_features_not_empty",
    "cell_features_unique_cells",
    "cell_features_valid_cell_ids",
    "cell_features_values_finite_nonnegative",
    "cell_features_totals_consistent",
}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return load_defs()


@pytest.fixture(scope="module")
def instance(dagster_instance):
    return dagster_instance


def resources_for(defs: dg.Definitions, root: Path, **overrides) -> dict:
    return {**defs.resources, "warehouse": WarehouseResource(root=str(root)), **overrides}


def materialize(defs, resources, instance, region, selection=OWN, run_config=None):
    return materialize_selection(defs, resources, instance, selection, region, run_config)


def run_checks(defs, resources, instance, region) -> tuple[bool, dict[str, dg.AssetCheckEvaluation]]:
    """Run only cell_features' checks for `region` against whatever the table holds now."""
    job = dg.define_asset_job(
        "cell_features_checks_only",
        selection=dg.AssetSelection.checks_for_assets(feature_assets.cell_features),
        partitions_def=region_partitions,
    )
    job_defs = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=[job], resources=resources
    )
    # Dagster's partition_key argument wants a selected asset; a checks-only run takes the partition tag.
    result = job_defs.resolve_job_def(job.name).execute_in_process(
        tags={"dagster/partition": region}, instance=instance, raise_on_error=False
    )
    evaluations = result.get_asset_check_evaluations()
    assert {e.partition for e in evaluations} == {region}
    return result.success, {e.check_name: e for e in evaluations}


@pytest.fixture(scope="module")
def materialized(defs, instance, tmp_path_factory):
    """Every bundled region materialised (osm_extract, cell_features and checks) into one warehouse."""
    root = tmp_path_factory.mktemp("warehouse")
    resources = resources_for(defs, root)
    results = {region: materialize(defs, resources, instance, region) for region in REGIONS}
    return root, resources, results


def test_definitions_list_assets_checks_and_region_partitions(defs):
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"osm_extract", "cell_features"} <= keys
    assert CHECKS <= {k.name for k in graph.asset_check_keys}
    assert region_partitions.get_partition_keys() == REGIONS
    for name, group in (("osm_extract", "osm"), ("cell_features", "features")):
        node = graph.get(dg.AssetKey(name))
        assert node.partitions_def == region_partitions
        assert node.group_name == group
        assert node.code_version
    assert {"python", "delta", "polars"} <= set(graph.get(dg.AssetKey("cell_features")).kinds)
    check_node = graph.get(dg.AssetCheckKey(dg.AssetKey("cell_features"), "cell_features_unique_cells"))
    assert check_node.blocking
    assert {"warehouse", "osm_source", "device"} <= set(defs.resources)


def test_the_named_jobs_split_the_graph_by_partitioning(defs):
    from s2vec_assets.defs.jobs import MODEL_JOB, REGION_JOB

    graph = defs.resolve_asset_graph()
    region, model = defs.resolve_job_def(REGION_JOB), defs.resolve_job_def(MODEL_JOB)
    region_keys, model_keys = region.asset_layer.selected_asset_keys, model.asset_layer.selected_asset_keys
    assert {k.to_user_string() for k in region_keys} >= {"osm_extract", "cell_features", "cell_embeddings"}
    assert {k.to_user_string() for k in model_keys} >= {"mae_model"}
    assert region_keys | model_keys == graph.get_all_asset_keys() and not region_keys & model_keys
    assert region.partitions_def == region_partitions and model.partitions_def is None
    assert all(graph.get(k).partitions_def == region_partitions for k in region_keys)
    assert all(graph.get(k).partitions_def is None for k in model_keys)
    # Each job carries the checks of its assets.
    assert CHECKS <= {k.name for k in region.asset_layer.asset_graph.asset_check_keys}


def test_a_backfill_of_all_regions_is_one_run_per_region(defs, instance):
    # The function the backfill daemon turns a backfill into runs with (internal to Dagster).
    from dagster._core.definitions.automation_tick_evaluation_context import (
        build_run_requests_with_backfill_policies,
    )
    from dagster._core.definitions.events import AssetKeyPartitionKey

    wanted = [AssetKeyPartitionKey(key, region) for key in OWN for region in REGIONS]
    requests = build_run_requests_with_backfill_policies(wanted, defs.resolve_asset_graph(), instance)
    assert sorted(r.partition_key for r in requests) == sorted(REGIONS)
    assert all(set(r.asset_selection) == set(OWN) for r in requests)


def test_each_region_materialises_with_metadata_and_passing_checks(materialized, instance):
    root, _, results = materialized
    table = pl.read_delta(str(root / "cell_features"))
    for region, result in results.items():
        assert result.success, region
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == dict.fromkeys(CHECKS, True), region

        meta = {
            m.asset_key.to_user_string(): m.materialization.metadata
            for m in result.get_asset_materialization_events()
        }
        source = Path(load_catalog(REPO / "regions.toml")[region].source)
        assert meta["osm_extract"]["sha256"].value == sha256_file(source)
        assert meta["osm_extract"]["size_bytes"].value == source.stat().st_size
        assert meta["osm_extract"]["nodes"].value > 0

        rows = table.filter(pl.col("region") == region)
        features = meta["cell_features"]
        assert features["dagster/row_count"].value == rows.height > 0
        # This partition's rows, and the whole table's (every region materialised before it included).
        assert features["table_row_count"].value >= rows.height
        assert f"| {region} | {rows.height} |" in features["rows_per_partition"].value
        assert features["dagster/uri"].value == str(root / "cell_features")
        assert [c.name for c in features["dagster/column_schema"].schema.columns] == table.columns
        # Each channel column says what it counts, in the taxonomy's words; the preview shows the busiest
        # cells, not the first (mostly empty) ones.
        described = {c.name: c.description for c in features["dagster/column_schema"].schema.columns}
        channel = CHANNEL_NAMES[0]
        assert described[channel] and described[channel].endswith(CHANNELS[0].description)
        preview_rows = features["preview"].value.splitlines()[2:]
        assert preview_rows and all(set(r.split("|")[3:-1]) != {" 0 "} for r in preview_rows)
        assert "data:image/png;base64," in features["map_png"].value
        assert "data:image/svg+xml," in features["map"].value and len(features["map"].value) < 1000
        assert sorted(rows["level"].unique()) == list(Grid().feature_levels)
    # The runs were recorded in the temporary DAGSTER_HOME's SQLite storage.
    assert instance.get_runs_count() >= len(REGIONS)
    assert instance.root_directory and (Path(instance.root_directory) / "history" / "runs.db").is_file()


def test_rematerialising_a_region_leaves_other_regions_untouched(defs, instance, tmp_path):
    a, b = REGIONS[0], REGIONS[1]
    resources = resources_for(defs, tmp_path)
    features = [dg.AssetKey("cell_features")]
    assert materialize(defs, resources, instance, a, selection=features).success
    assert materialize(defs, resources, instance, b, selection=features).success
    uri = str(tmp_path / "cell_features")
    b_before = pl.read_delta(uri).filter(pl.col("region") == b).sort("level", "cell_id")

    # A again, with other levels, so A's rows really change.
    config = {"ops": {"cell_features": {"config": {"levels": [15, 17]}}}}
    assert materialize(defs, resources, instance, a, selection=features, run_config=config).success

    after = pl.read_delta(uri)
    assert after.filter(pl.col("region") == b).sort("level", "cell_id").equals(b_before)
    a_after = after.filter(pl.col("region") == a)
    assert sorted(a_after["level"].unique()) == [15, 17]
    assert a_after.select("level", "cell_id").is_duplicated().sum() == 0


def _corrupt(materialized, tmp_path, region, corrupt) -> tuple[dict, WarehouseResource]:
    """Copy the good table, replace `region`'s rows with `corrupt(rows)`, return the check outcomes."""
    root, resources, _ = materialized
    shutil.copytree(root / "cell_features", tmp_path / "cell_features")
    warehouse = WarehouseResource(root=str(tmp_path))
    rows = warehouse.read("cell_features", {"region": region})
    warehouse.write_partition(corrupt(rows), "cell_features", {"region": region})
    return {**resources, "warehouse": warehouse}, warehouse


def _failed_expectations(evaluation: dg.AssetCheckEvaluation) -> list[dict]:
    return json.loads(json.dumps(evaluation.metadata["failed_expectations"].value))


@pytest.mark.parametrize("check_rows", [None, 2_000])
def test_checks_fail_on_a_duplicate_cell(defs, instance, materialized, tmp_path, monkeypatch, check_rows):
    """Also with the region read in many cell ranges: the duplicate falls in one of them."""
    from s2vec_assets.defs.features import checks as feature_checks

    if check_rows:
        monkeypatch.setattr(feature_checks, "CHECK_ROWS", check_rows)
    region = REGIONS[0]
    dup = {}

    def duplicate(rows: pl.DataFrame) -> pl.DataFrame:
        row = rows.filter(pl.col("level") == max(Grid().feature_levels)).head(1)
        dup["token"] = row["token"][0]
        return pl.concat([rows, row])

    resources, _ = _corrupt(materialized, tmp_path, region, duplicate)
    _, checks = run_checks(defs, resources, instance, region)
    unique = checks["cell_features_unique_cells"]
    assert not unique.passed
    assert [f["expectation"] for f in _failed_expectations(unique)] == [
        "expect_compound_columns_to_be_unique"
    ]
    assert dup["token"] in unique.metadata["bad_rows"].value
    assert checks["cell_features_valid_cell_ids"].passed
    ranges = unique.metadata["cell_ranges"].value
    assert (ranges > 3) if check_rows else ranges == 1
    assert unique.metadata["cell_ranges_failed"].value == 1


def test_checks_fail_on_a_cell_id_at_the_wrong_level(defs, instance, materialized, tmp_path):
    region = REGIONS[0]
    coarse = min(Grid().feature_levels)

    def wrong_level(rows: pl.DataFrame) -> pl.DataFrame:
        # A valid id one level finer than the row says (its first child), with a matching token.
        i = rows["level"].arg_min()
        child = s2.children_range(s2.as_uint64(rows["cell_id"][i : i + 1].to_numpy()), coarse + 1)[0]
        return rows.with_columns(
            cell_id=pl.when(pl.int_range(pl.len()) == i)
            .then(int(s2.as_int64(child)[0]))
            .otherwise("cell_id"),
            token=pl.when(pl.int_range(pl.len()) == i).then(pl.lit(s2.to_token(child)[0])).otherwise("token"),
        )

    resources, _ = _corrupt(materialized, tmp_path, region, wrong_level)
    _, checks = run_checks(defs, resources, instance, region)
    valid = checks["cell_features_valid_cell_ids"]
    assert not valid.passed
    assert [f["columns"] for f in _failed_expectations(valid)] == [["at_stated_level"]]
    assert checks["cell_features_unique_cells"].passed
    assert checks["cell_features_values_finite_nonnegative"].passed


@pytest.mark.parametrize(
    ("bad", "fault"),
    [(-1.0, "negative"), (float("nan"), "non_finite"), (float("inf"), "non_finite"), (None, "missing")],
)
def test_checks_fail_on_a_negative_or_non_finite_value(
    defs, instance, materialized, tmp_path, monkeypatch, bad, fault
):
    """The region is read in many cell ranges: the faults are counted per range and summed."""
    from s2vec_assets.defs.features import checks as feature_checks

    monkeypatch.setattr(feature_checks, "CHECK_ROWS", 2_000)
    region = REGIONS[1]
    channel = CHANNEL_NAMES[0]
    poisoned = {}

    def poison(rows: pl.DataFrame) -> pl.DataFrame:
        poisoned["token"] = rows["token"][3]
        return rows.with_columns(
            pl.when(pl.int_range(pl.len()) == 3).then(bad).otherwise(pl.col(channel)).alias(channel)
        )

    resources, _ = _corrupt(materialized, tmp_path, region, poison)
    _, checks = run_checks(defs, resources, instance, region)
    values = checks["cell_features_values_finite_nonnegative"]
    assert not values.passed
    failed = _failed_expectations(values)
    assert [(f["columns"], f["unexpected_count"]) for f in failed] == [([fault], 1)]
    bad_rows = values.metadata["bad_rows"].value
    assert channel in bad_rows and poisoned["token"] in bad_rows
    assert checks["cell_features_unique_cells"].passed
    assert checks["cell_features_valid_cell_ids"].passed


def test_checks_fail_when_a_channel_total_differs_between_levels(
    defs, instance, materialized, tmp_path, monkeypatch
):
    """Totals are summed per range of cells and merged: one changed cell shows over many ranges."""
    from s2vec_assets.defs.features import checks as feature_checks

    monkeypatch.setattr(feature_checks, "CHECK_ROWS", 2_000)
    region = REGIONS[0]
    channel = CHANNEL_NAMES[-1]

    def shift(rows: pl.DataFrame) -> pl.DataFrame:
        finest = pl.col("level") == max(Grid().feature_levels)
        first = finest & (pl.int_range(pl.len()).over("level") == 0)
        return rows.with_columns(pl.when(first).then(pl.col(channel) + 1.0).otherwise(pl.col(channel)))

    resources, _ = _corrupt(materialized, tmp_path, region, shift)
    _, checks = run_checks(defs, resources, instance, region)
    totals = checks["cell_features_totals_consistent"]
    assert not totals.passed
    assert [f["unexpected_count"] for f in _failed_expectations(totals)] == [1]
    assert channel in totals.metadata["bad_rows"].value
    assert checks["cell_features_values_finite_nonnegative"].passed


def test_an_empty_region_fails_its_blocking_check_and_the_run(defs, instance, materialized, tmp_path):
    region = REGIONS[1]
    resources, warehouse = _corrupt(materialized, tmp_path, region, lambda rows: rows.head(0))
    assert warehouse.read("cell_features", {"region": region}).height == 0
    success, checks = run_checks(defs, resources, instance, region)
    assert not checks["cell_features_not_empty"].passed
    assert not success  # blocking: downstream assets in the same run would not start


def test_a_corrupt_extract_fails_clearly_and_writes_nothing(defs, instance, materialized, tmp_path):
    root, _, _ = materialized
    region = REGIONS[0]
    good = Path(load_catalog(REPO / "regions.toml")[region].source).read_bytes()
    broken = tmp_path / "broken.osm.pbf"
    broken.write_bytes(good[: len(good) // 3])
    catalog = tmp_path / "regions.toml"
    catalog.write_text(f'[regions.{region}]\nsource = "{broken}"\n')
    shutil.copytree(root / "cell_features", tmp_path / "wh" / "cell_features")
    before = pl.read_delta(str(tmp_path / "wh" / "cell_features"))
    resources = resources_for(
        defs,
        tmp_path / "wh",
        osm_source=OsmSourceResource(catalog_path=str(catalog), cache_dir=str(tmp_path)),
    )

    result = materialize(defs, resources, instance, region)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == "osm_extract")
    assert str(broken) in failure.step_failure_data.error.message
    assert pl.read_delta(str(tmp_path / "wh" / "cell_features")).equals(before)


def test_bad_levels_config_fails_with_a_clear_error_before_writing(defs, instance, tmp_path):
    # 27 is an S2 level but finer than extraction can key: refused as clearly as 40.
    config = {"ops": {"cell_features": {"config": {"levels": [13, MAX_LEVEL + 1]}}}}
    result = materialize(
        defs,
        resources_for(defs, tmp_path),
        instance,
        REGIONS[1],
        selection=[dg.AssetKey("cell_features")],
        run_config=config,
    )
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    assert any(f"levels must be within 0..{MAX_LEVEL}" in m for m in messages)
    assert not (tmp_path / "cell_features").exists()
