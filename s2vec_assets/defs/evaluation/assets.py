"""evaluation_report[region] and evaluation_cross_region: downstream scores, Delta metrics, markdown report.

Targets per region come from run config (`targets`), else the catalog (`targets = "..."` in
regions.toml), else the OSM proxy targets (address density, floor area density), which are documented
as proxies. Embeddings come from the `cell_embeddings` table, one model version for every region: the
`model_version` pin, else the current version of `model_versions` (s2vec_core.registry); a region
without rows under it is scored on the baselines only, and the report says so. The report and the metadata open with verdicts
in words (which feature set wins, by how much, and whether that is more than fold noise); per region they
add learning curves (R2 vs labelled cells, spatial split) as a table, a plot and `learning_curves.csv`
beside the report (not in Delta). All scoring lives in s2vec_core.evaluation_run.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import dagster as dg
import polars as pl
from pydantic import Field

from s2vec_assets import inline_charts
from s2vec_assets.defs.features import assets as feature_assets
from s2vec_assets.defs.model import assets as model_assets
from s2vec_assets.defs.partitions import one_run_per_region, region_partitions
from s2vec_assets.defs.resources import OsmSourceResource, WarehouseResource
from s2vec_assets.metadata import markdown_table, table_metadata
from s2vec_assets.provenance import commit_info
from s2vec_core import artifacts, raster, registry, settings
from s2vec_core import evaluation_run as er
from s2vec_core.catalog import CROSS_REGION_SCOPE
from s2vec_core.evaluate import r2_table, raw_channel_totals, verdicts
from s2vec_core.evaluation_plots import embedding_rgb
from s2vec_core.evaluation_report import data_uri, learning_curve_table, write_report
from s2vec_core.grid import Grid
from s2vec_core.tables import CELL_EMBEDDINGS, EVALUATION_METRICS
from s2vec_core.targets import TargetsError, load_targets
from s2vec_core.taxonomy import CHANNEL_NAMES

TABLE = EVALUATION_METRICS.name
EMBEDDINGS = dg.AssetKey(CELL_EMBEDDINGS.name)
PROXY_NOTE = (
    "Targets without a user file are **proxies** derived from OSM tags that no feature channel reads "
    "(`addr:housenumber` objects per km2, `building:levels` x footprint per km2; log1p). They measure OSM "
    "mapping as much as the built environment."
)


class EvaluationConfig(dg.Config):
    targets: str | None = Field(
        default=None, description="Targets file (Parquet/CSV); overrides the catalog."
    )
    value_column: str | None = Field(default="value", description="Value column of the targets file.")
    agg: Literal["mean", "sum", "density"] = Field(
        default="mean", description="Point targets per image cell."
    )
    model_version: str | None = Field(
        default=None,
        description="Embeddings to score (a version or a unique prefix); default: the current version.",
    )
    external_embeddings: str | None = Field(
        default=None, description="Parquet of another embedding keyed by cell_id/token, for fusion."
    )
    k: int = Field(default=5, ge=2, description="Folds.")
    block_levels_up: int = Field(
        default=3, ge=1, description="Spatial blocks: S2 parents this many levels up."
    )
    seed: int = 0
    learning_curves: bool = Field(
        default=True, description="Per region: R2 vs labelled training cells (spatial split, LightGBM)."
    )
    reports_dir: str | None = Field(
        default=None,
        description="Where report.md and the PNGs go; default S2VEC_REPORTS or beside the warehouse.",
    )


def r2_bars(metrics: pl.DataFrame) -> dict[str, dg.MetadataValue]:
    """Per task, R2 by feature set as bars the asset page shows in place: the spatial split (else
    transfer, else random) under LightGBM (else the linear probe), averaged over regions."""
    r2 = metrics.filter(pl.col("metric") == "r2")
    if r2.is_empty():
        return {}
    split = next(s for s in ("spatial", "transfer", *r2["split"].unique().sort()) if s in set(r2["split"]))
    model = next(m for m in ("lightgbm", *r2["model"].unique().sort()) if m in set(r2["model"]))
    out = {}
    for (task,), rows in r2.filter((pl.col("split") == split) & (pl.col("model") == model)).group_by(
        "task", maintain_order=True
    ):
        means = rows.group_by("feature_set", maintain_order=True).agg(pl.col("value").mean())
        out[f"r2_bars_{task}"] = inline_charts.bar_chart(
            dict(means.iter_rows()), f"{task}: R2 by feature set ({split} split, {model})"
        )
    return out


def _reports_dir(
    config: EvaluationConfig, warehouse: WarehouseResource, scope: str
) -> tuple[Path, str | None]:
    """(where the report is written, the artifact key to publish it under or None): the configured
    directory, else beside a local warehouse, else the local copy of `<root>/reports/evaluation/<scope>`
    of an object-store warehouse."""
    if config.reports_dir:
        return Path(config.reports_dir) / "evaluation" / scope, None
    if settings.reports_dir():
        return settings.reports_dir() / "evaluation" / scope, None
    if warehouse.artifacts.remote:
        key = artifacts.report_key(scope)
        return warehouse.artifacts.local(key), key
    return Path(warehouse.root).resolve().parent / "reports" / "evaluation" / scope, None


def _model_version(config: EvaluationConfig, warehouse: WarehouseResource) -> str | None:
    """The one version every region is scored with (None: no embeddings yet)."""
    try:
        return warehouse.model_version(config.model_version)
    except registry.VersionError as e:
        raise dg.Failure(description=f"{e}; set `model_version` in the run config") from e


class Levels(NamedTuple):
    """The image and pixel levels an evaluation scores at, and what said so."""

    image: int
    pixel: int
    source: str


def _levels(warehouse: WarehouseResource, version: str | None, regions: Sequence[str]) -> Levels:
    """The grid flows from the inputs, never from this asset's config: the scored model's levels (its
    `model_versions` row), else those the regions' rasters were made at, else raster_tensors' default.
    It is set once, where rasters are made."""
    if version is not None:
        row = registry.versions(warehouse.root, storage_options=warehouse.options).filter(
            pl.col("model_version") == version
        )
        if row.height:
            return Levels(int(row["image_level"][0]), int(row["pixel_level"][0]), f"model {version[:12]}")
    found = {}
    for r in regions:
        if warehouse.artifacts.has_dir(artifacts.raster_key(r)):
            m = json.loads((model_assets.raster_dir(warehouse, r) / raster.META_FILE).read_text())
            found[r] = (int(m["image_level"]), int(m["pixel_level"]))
    grids = sorted(set(found.values()))
    if len(grids) > 1:
        raise dg.Failure(
            f"the regions' rasters were made at different levels {found}: re-materialise raster_tensors "
            "with one image and pixel level for every region"
        )
    if not grids:  # baselines before any rasters: the grid raster_tensors makes by default
        return Levels(Grid().image_level, Grid().pixel_level, "default grid")
    return Levels(*grids[0], "rasters")


def _embeddings(levels: Levels, warehouse: WarehouseResource, region: str, version: str | None):
    if version is None:
        return None
    df = warehouse.read(EMBEDDINGS.path[-1], {"region": region, "model_version": version})
    df = df.filter(pl.col("level") == levels.image)
    if df.height == 0:
        return None
    registry.check_one_version(df)
    return df


def _features(levels: Levels, warehouse, region: str) -> pl.DataFrame:
    features = warehouse.read(feature_assets.TABLE, {"region": region})
    have = sorted(features["level"].unique().to_list())
    missing = [lv for lv in (levels.image, levels.pixel) if lv not in have]
    if missing:
        raise dg.Failure(
            f"{region}: cell_features has levels {have}, not {missing} that the {levels.source} was made "
            f"at (image {levels.image}, pixel {levels.pixel}): materialise cell_features with those levels"
        )
    return features


def _inputs(config, levels: Levels, osm_source, region: str, features, embeddings, pca_source=None):
    """(feature sets, tasks, notes, model_version, user targets?, {region/task: why not scored}) of one
    region; refuses (dg.Failure) a region where no target can be scored."""
    external = pl.read_parquet(config.external_embeddings) if config.external_embeddings else None
    sets = er.standard_feature_sets(
        features, levels.image, embeddings, external, config.seed, pca_source, levels.pixel
    )
    notes = [f"{region}: {n}" for n in er.feature_set_notes(sets, levels.pixel)]
    if embeddings is None:
        notes.append(f"{region}: no S2Vec embeddings in cell_embeddings; baselines only")
    targets_file = config.targets or osm_source.region(region).targets
    if targets_file:
        try:
            tasks = {
                Path(targets_file).stem: load_targets(
                    targets_file, levels.image, config.value_column, config.agg
                )
            }
        except TargetsError as e:
            raise dg.Failure(description=str(e)) from e
    else:
        tasks, skipped = er.proxy_tasks(
            osm_source.resolve(region), levels.image, sets["raw"]["cell_id"].to_numpy()
        )
        notes += [f"{region}: {n}" for n in skipped]
    # Before anything is scored or written: targets that miss the region or have no variance would
    # replace the region's metrics with nothing (or with R2 = NaN).
    try:
        tasks, unscored = er.screen_tasks(
            region,
            tasks,
            sets["raw"]["cell_id"].to_numpy(),
            source=f"targets file {targets_file}" if targets_file else "the OSM proxy targets",
        )
    except TargetsError as e:
        raise dg.Failure(description=str(e)) from e
    notes += [f"{region}/{task}: not scored: {why}" for task, why in unscored.items()]
    version = embeddings["model_version"][0] if embeddings is not None else ""
    return sets, tasks, notes, version, bool(targets_file), {f"{region}/{t}": w for t, w in unscored.items()}


def _publish(
    context,
    config,
    warehouse,
    scope: str,
    title: str,
    result,
    plots,
    intro: str,
    curves=None,
    skipped: dict[str, str] | None = None,
    inline: dict[str, dg.MetadataValue] | None = None,
) -> dg.MaterializeResult:
    metrics = result.metrics
    verdict_lines = verdicts(metrics, result.n_blocks)
    # An empty result is written too: it clears this scope's rows from an earlier, scored run.
    model_version = metrics["model_version"][0] if metrics.height else ""
    version = warehouse.write_partition(
        metrics,
        TABLE,
        {"scope": scope},
        description=EVALUATION_METRICS.description,
        commit=commit_info(context, model_version),
        facts=EVALUATION_METRICS.facts(),
        spec=EVALUATION_METRICS,
    )
    meta = table_metadata(
        metrics,
        warehouse.table_uri(TABLE),
        version,
        TABLE,
        preview_columns=["region", "task", "split", "feature_set", "model", "metric", "value"],
        storage_options=warehouse.options,
    )
    out_dir, publish_key = _reports_dir(config, warehouse, scope)
    report = write_report(
        out_dir,
        title,
        metrics,
        result.notes,
        plots,
        intro,
        verdict_lines,
        curves,
    )
    if publish_key is not None:
        warehouse.artifacts.publish_dir(publish_key)
    meta["report"] = dg.MetadataValue.path(
        str(report) if publish_key is None else f"{warehouse.artifacts.uri(publish_key)}/{report.name}"
    )
    meta["verdicts"] = dg.MetadataValue.md("\n".join(f"- {v}" for v in verdict_lines) or "-")
    if curves is not None and curves.height:
        meta["learning_curves"] = dg.MetadataValue.md(
            markdown_table(learning_curve_table(curves), max_rows=100)
        )
    meta["notes"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in result.notes) or "-")
    # Targets left out because they cannot be scored (no overlap, constant, all null): a warning.
    meta["skipped_targets"] = dg.MetadataValue.json(skipped or {})
    for task, why in (skipped or {}).items():
        context.log.warning(f"{scope}: target {task} not scored: {why}")
    for model in metrics["model"].unique(maintain_order=True).to_list():
        meta[f"r2_{model}"] = dg.MetadataValue.md(markdown_table(r2_table(metrics, model), max_rows=50))
    meta.update(r2_bars(metrics), **(inline or {}))
    for caption, png in plots.items():
        key = "plot_" + "".join(c if c.isalnum() else "_" for c in caption.lower()).strip("_")[:60]
        meta[key] = dg.MetadataValue.md(f"![{caption}]({data_uri(png)})")
    context.log.info(f"{scope}: {metrics.height} metric rows, report at {report}")
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    partitions_def=region_partitions,
    backfill_policy=one_run_per_region,
    deps=[feature_assets.cell_features, EMBEDDINGS],
    group_name="evaluation",
    kinds={"python", "lightgbm", "delta"},
    code_version="2",
    description=(
        "Downstream regression per region: LightGBM and a ridge probe on S2Vec embeddings vs raw channel "
        "totals, PCA of them and random vectors (and fusion with an external embedding), random and spatial "
        "block K-fold. Metrics to the Delta table `evaluation_metrics` (scope = region); a markdown report "
        "with plots beside the warehouse."
    ),
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    warehouse: WarehouseResource,
    osm_source: OsmSourceResource,
) -> dg.MaterializeResult:
    region = context.partition_key
    model_version = _model_version(config, warehouse)
    levels = _levels(warehouse, model_version, [region])
    sets, tasks, notes, version, user_targets, skipped = _inputs(
        config,
        levels,
        osm_source,
        region,
        _features(levels, warehouse, region),
        _embeddings(levels, warehouse, region, model_version),
    )
    # The learning curves are drawn on the folds the scores use.
    folds = {"k": config.k, "block_levels_up": config.block_levels_up, "seed": config.seed}
    result = er.evaluate_region(
        region, sets, tasks, levels.image, **folds, model_version=version, run_id=context.run_id
    )
    result.notes[:0] = notes
    if result.metrics.height == 0:
        # Too few labelled cells to score is a fact about a small region, not a failure; but writing the
        # empty result would delete the region's previous metrics, so nothing is written.
        why = "; ".join(result.notes[len(notes) :] or notes)
        context.log.warning(f"evaluation[{region}]: nothing scored, previous metrics kept: {why}")
        return dg.MaterializeResult(
            metadata={
                "scored": dg.MetadataValue.int(0),
                "verdict": dg.MetadataValue.md(
                    f"**Nothing scored** for `{region}`; no metric row was written or deleted, so the region's "
                    f"previous metrics stay current. {why}"
                ),
                "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in result.notes)),
            }
        )
    curves = (
        er.learning_curves(region, sets, tasks, levels.image, **folds, models=("lightgbm",))
        if config.learning_curves
        else None
    )
    intro = (
        f"Region `{region}`, image level {levels.image} (from the {levels.source}), "
        f"embeddings `{version or 'none'}`."
    )
    if not user_targets:
        intro += "\n\n" + PROXY_NOTE
    plots = er.report_plots(result, sets, curves=curves)
    title = f"s2vec evaluation: {region}"
    return _publish(
        context,
        config,
        warehouse,
        region,
        title,
        result,
        plots,
        intro,
        curves,
        skipped,
        _inline_map(region, sets),
    )


def _inline_map(region: str, sets: dict[str, pl.DataFrame]) -> dict[str, dg.MetadataValue]:
    """The best representation's map as the asset page draws it in place (the PNG needs a click)."""
    best = er.S2VEC if er.S2VEC in sets else "raw"
    if best not in sets or sets[best].height == 0:
        return {}
    rgb = embedding_rgb(sets[best].drop("cell_id").to_numpy())
    title = f"{region}: {best} per image cell, first 3 principal components as RGB"
    return {"map": inline_charts.cell_map(sets[best]["cell_id"].to_numpy(), rgb, title)}


@dg.asset(
    deps=[feature_assets.cell_features, EMBEDDINGS],
    group_name="evaluation",
    kinds={"python", "lightgbm", "delta"},
    code_version="2",
    description=(
        "Cross-region transfer: for every region, train on all the others and score on it (same feature "
        "sets and models as evaluation_report). Metrics to `evaluation_metrics` (scope = cross_region)."
    ),
)
def evaluation_cross_region(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    warehouse: WarehouseResource,
    osm_source: OsmSourceResource,
) -> dg.MaterializeResult:
    model_version = _model_version(config, warehouse)
    regions = region_partitions.get_partition_keys()
    levels = _levels(warehouse, model_version, regions)
    present = (
        warehouse.read(feature_assets.TABLE, columns=["region", "level"])
        .filter(pl.col("level") == levels.image)["region"]
        .unique()
        .to_list()
    )
    regions = [r for r in regions if r in present]
    notes = [f"regions with features at level {levels.image} (from the {levels.source}): {regions}"]
    features = {r: _features(levels, warehouse, r) for r in regions}
    # Adjacent regions can share an image cell on their border (each holds its own part of it); the PCA is
    # keyed by cell id, so the pooled fit keeps one row per cell.
    pooled = (
        pl.concat([raw_channel_totals(features[r], levels.image, CHANNEL_NAMES) for r in regions]).unique(
            "cell_id", keep="first", maintain_order=True
        )
        if regions
        else None
    )
    embeddings = {r: _embeddings(levels, warehouse, r, model_version) for r in regions}
    # Transfer needs the same features everywhere: S2Vec only if every region has embeddings.
    with_embeddings = [r for r in regions if embeddings[r] is not None]
    if with_embeddings and len(with_embeddings) < len(regions):
        notes.append(f"only {with_embeddings} have S2Vec embeddings; transfer compares the baselines only")
        embeddings = dict.fromkeys(regions)
    sets, tasks, versions, skipped = {}, {}, set(), {}
    for r in regions:
        sets[r], tasks[r], region_notes, version, _, region_skipped = _inputs(
            config, levels, osm_source, r, features[r], embeddings[r], pooled
        )
        notes += region_notes
        skipped |= region_skipped
        versions |= {version} if version else set()
    if len(versions) > 1:
        raise dg.Failure(
            f"regions have embeddings of different models {sorted(versions)}; set `model_version`"
        )
    result = er.evaluate_cross_region(
        tasks, sets, seed=config.seed, model_version=next(iter(versions), ""), run_id=context.run_id
    )
    result.notes[:0] = notes
    plots = er.report_plots(result, {}) if result.metrics.height else {}
    intro = (
        f"Leave-one-region-out transfer over {regions}, image level {levels.image} (from the "
        f"{levels.source}).\n\n{PROXY_NOTE}"
    )
    return _publish(
        context,
        config,
        warehouse,
        CROSS_REGION_SCOPE,
        "s2vec evaluation: cross-region transfer",
        result,
        plots,
        intro,
        skipped=skipped,
    )
