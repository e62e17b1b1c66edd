"""cell_features[region]: per-S2-cell feature vectors at every configured level, in one Delta table.

One asset writes all levels with a `level` column rather than one asset per level: every level comes
from the same single extraction at the finest level (coarser ones are parent sums), so splitting
would re-read the PBF per level or pass the pixel table between assets; one table also lets the
checks compare channel totals across levels, and readers filter by `level`.

The asset is a graph of three steps, so the executor can spread a large region's extraction:
`cell_features_plan` cuts the extract into S2 shards and those into `shard_steps` groups of
neighbouring shards; one `cell_features_extract` step per group (a dynamic fan-out) extracts its shards
and stages their summed rows in the warehouse's artifact store; `cell_features_write` merges every
group's rows range by range, featurises and commits the region once. Shards and groups change no value
(`shards.merge_shards` adds every range's rows in the plan's order). Rows staged by a run stay until a
write of the region succeeds, so a run whose write failed re-executes from the failure without
extracting again.
"""

import shutil
import tempfile

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field, field_validator

from s2vec_assets import inline_charts

# Other domains' assets are imported as modules, so the defs loader finds each definition once.
from s2vec_assets.defs.osm import assets as osm_assets
from s2vec_assets.defs.partitions import one_run_per_region, region_partitions
from s2vec_assets.defs.resources import STEP_RECORDS, OsmSourceResource, WarehouseResource
from s2vec_assets.metadata import markdown_table, png_markdown, table_metadata
from s2vec_assets.progress import ProgressLog
from s2vec_assets.provenance import commit_info
from s2vec_core import artifacts, features, pipeline, s2, shards
from s2vec_core.grid import MAX_LEVEL, Grid
from s2vec_core.osm import OSMFileError
from s2vec_core.tables import CELL_FEATURES
from s2vec_core.taxonomy import CHANNEL_NAMES, CHANNELS, TAXONOMY_VERSION

TABLE = CELL_FEATURES.name
_COUNT_CHANNELS = [c.name for c in CHANNELS if c.kind == "count"]
MAP_MAX_CELLS = 10_000


class CellFeaturesConfig(dg.Config):
    levels: list[int] = Field(
        default=list(Grid().feature_levels),
        description=(
            "S2 levels to write. The finest is the extraction (pixel) level; coarser ones are sums over "
            "parent cells. Model assets need the image and pixel levels among them."
        ),
    )

    shard_mb: float = Field(
        default=shards.TARGET_SHARD_BYTES / 2**20,
        gt=0,
        description=(
            "Extracts larger than this (MiB of PBF) are split into S2 shards of about this size, each "
            "extracted in its own process, so memory is bounded by a shard, not the region (needs "
            "osmium-tool). Shard edges change no cell's features."
        ),
    )
    shard_workers: int = Field(
        default=2, ge=1, description="Shard processes at once, in each extraction step."
    )
    shard_steps: int = Field(
        default=1,
        ge=1,
        description=(
            "Extraction steps the shards are cut into (runs of neighbouring shards of about equal size), "
            "each a Dagster step of its own that the executor spreads: processes with `multiprocess` "
            "(`max_concurrent`), pods with `k8s`. One step suits one machine; give a large region as many "
            "steps as machines. The features are the same for any number."
        ),
    )

    @field_validator("levels")
    @classmethod
    def _valid_levels(cls, levels: list[int]) -> list[int]:
        if not levels:
            raise ValueError("need at least one level")
        if any(not 0 <= lv <= MAX_LEVEL for lv in levels):
            raise ValueError(f"levels must be within 0..{MAX_LEVEL}, got {levels}")
        return sorted(set(levels))


ShardGroup = dict
"""What the steps hand each other (JSON, through the `step_records` IO manager): `plan` (the region's
shard cells, decimal strings) and `bbox`, `shards` (this group's shard names), `staging` (the artifact
key of its extracted rows) and, once extracted, `stats`. The rows themselves go through the artifact
store, so steps on other machines find them."""


@dg.op(ins={"osm_extract": dg.In(dg.Nothing)}, out=dg.DynamicOut(ShardGroup, io_manager_key="step_records"))
def cell_features_plan(
    context: dg.OpExecutionContext, config: CellFeaturesConfig, osm_source: OsmSourceResource
):
    """Plan the region's shards (none for a small extract) and cut them into `shard_steps` groups."""
    region = context.partition_key
    plan = shards.plan_shards(osm_source.resolve(region), int(config.shard_mb * 2**20))
    groups = plan.groups(config.shard_steps)
    staging = artifacts.staging_key(TABLE, region, context.run_id)
    context.log.info(f"{region}: {len(plan.shards())} shards in {len(groups)} extraction steps")
    for i, group in enumerate(groups):
        yield dg.DynamicOutput(
            {
                "plan": [str(c) for c in plan.cells.tolist()],
                "bbox": list(plan.bbox),
                "shards": [s.name for s in group],
                "staging": f"{staging}/group-{i}",
            },
            mapping_key=f"group_{i}",
        )


@dg.op(out=dg.Out(ShardGroup, io_manager_key="step_records"))
def cell_features_extract(
    context: dg.OpExecutionContext,
    config: CellFeaturesConfig,
    group: ShardGroup,
    osm_source: OsmSourceResource,
    warehouse: WarehouseResource,
) -> ShardGroup:
    """Extract one group of shards at the finest level; stage their rows in the artifact store."""
    region = context.partition_key
    path = osm_source.resolve(region)
    plan = _plan(group)
    mine = [s for s in plan.shards() if s.name in set(group["shards"])]
    directory = warehouse.artifacts.local(group["staging"])
    shutil.rmtree(directory, ignore_errors=True)  # a retried step starts clean
    progress = ProgressLog(context.log, f"{region}: extraction", 0, "shards")
    try:
        stats = shards.extract_shards(
            path, mine, max(config.levels), directory, config.shard_workers, progress
        )
    except (shards.ShardError, OSMFileError) as e:
        raise dg.Failure(f"{region}: {e}") from e
    warehouse.artifacts.publish_dir(group["staging"])
    return {**group, "stats": stats}


@dg.op(out=dg.Out(dg.Nothing))
def cell_features_write(
    context: dg.OpExecutionContext,
    config: CellFeaturesConfig,
    groups: list[ShardGroup],
    osm_source: OsmSourceResource,
    warehouse: WarehouseResource,
) -> None:
    """Merge the groups' rows range by range, featurise, refuse what fails the checks, commit once."""
    region = context.partition_key
    path = osm_source.resolve(region)
    box = osm_source.region(region).bbox
    stats = {k: sum(g["stats"].get(k, 0) for g in groups) for k in groups[0]["stats"]}
    try:
        directories = {
            name: warehouse.artifacts.fetch_dir(g["staging"]) for g in groups for name in g["shards"]
        }
    except artifacts.ArtifactError as e:
        raise dg.Failure(
            f"{region}: the extraction steps' rows are gone ({e}); another run of {region} finished "
            "and cleared them. Re-run cell_features for the region."
        ) from e
    pieces = pipeline.merged_features_by_range(
        _plan(groups[0]), directories, region, config.levels, box, stats
    )
    # The region is made a piece at a time and staged on local disk, then streamed into one commit:
    # memory holds a piece, and readers see the old rows or all the new ones.
    with tempfile.TemporaryDirectory(prefix=f"s2vec-features-{region}-") as staging:
        df = features.stage_by_level(
            _checked(pieces, region, path, box, config.levels, stats, warehouse), staging
        )
        rows = df.select(pl.len()).collect().item()
        if not rows:
            _refuse_before_write(
                pl.DataFrame(schema=features.schema()), region, path, box, config.levels, stats, warehouse
            )
        version = warehouse.write_partition(
            df,
            TABLE,
            {"region": region},
            description=CELL_FEATURES.description,
            commit=commit_info(context),
            facts=CELL_FEATURES.facts(
                dtype="float64", channels=len(CHANNEL_NAMES), taxonomy_doc="TAXONOMY.md"
            ),
            spec=CELL_FEATURES,
        )
        context.log.info(f"{region}: wrote {rows} rows at levels {config.levels} (version {version})")
        context.add_output_metadata(_metadata(df, region, box, config.levels, stats, version, warehouse))
    # Kept until now so a write that failed can be re-executed without extracting again; this also
    # clears what earlier failed runs of the region left.
    for name in (TABLE, STEP_RECORDS):
        warehouse.artifacts.delete(artifacts.staging_key(name, region))


def _plan(group: ShardGroup) -> shards.ShardPlan:
    return shards.ShardPlan(np.array([int(c) for c in group["plan"]], np.uint64), tuple(group["bbox"]))


@dg.config_mapping(config_schema=CellFeaturesConfig.to_config_schema())
def _every_step(config: dict) -> dict:
    """One config for the asset, as the Launchpad shows it; each step reads it (and validates it, so a
    bad value fails the first step with the validator's message)."""
    steps = (cell_features_plan, cell_features_extract, cell_features_write)
    return {op.name: {"config": config} for op in steps}


@dg.graph_asset(
    partitions_def=region_partitions,
    backfill_policy=one_run_per_region,
    ins={"osm_extract": dg.AssetIn(key=osm_assets.osm_extract.key, dagster_type=dg.Nothing)},
    config=_every_step,
    group_name="features",
    kinds={"python", "delta", "polars"},
    # The taxonomy decides every column: changing it makes the features stale. 2: lines cut and areas
    # spread on the S2 face grid.
    code_version=f"2+taxonomy.{TAXONOMY_VERSION}",
    description=(
        "Built-environment feature vectors per S2 cell (one Float64 column per taxonomy channel) at "
        "every configured level, in the Delta table `cell_features` partitioned by region. Cells whose "
        "centre lies outside the catalog's `bbox` (when given) are dropped. A run replaces only its "
        "region's rows. Three kinds of step: `plan` cuts a large extract into S2 shards and those into "
        "`shard_steps` groups, one `extract` step per group (the fan-out), and `write` merges them."
    ),
)
def cell_features(osm_extract):
    return cell_features_write(cell_features_plan(osm_extract).map(cell_features_extract).collect())


def _checked(pieces, region: str, path, box, levels: list[int], stats: dict, warehouse):
    """`pieces`, each refused (the run fails, nothing is written) if it fails the pre-write checks."""
    for piece in pieces:
        if piece.height:
            _refuse_before_write(piece, region, path, box, levels, stats, warehouse)
            yield piece


def _metadata(
    df: pl.LazyFrame, region: str, box, levels: list[int], stats: dict, version: int, warehouse
) -> dict:
    """The materialisation's metadata, from the staged rows by streaming queries (none holds the region)."""
    per_level = df.group_by("level").agg(pl.len().alias("cells")).sort("level").collect(engine="streaming")
    totals = df.filter(pl.col("level") == levels[-1]).select(pl.col(list(CHANNEL_NAMES)).sum())
    totals = totals.collect(engine="streaming")
    top = sorted(totals.columns, key=lambda c: -totals[c][0])[:8]
    metadata = table_metadata(
        df,
        warehouse.table_uri(TABLE),
        version,
        TABLE,
        preview_columns=["level", "token", *top],
        busiest=top,
        storage_options=warehouse.options,
    )
    metadata.update(
        levels=dg.MetadataValue.json(levels),
        taxonomy_version=TAXONOMY_VERSION,
        bbox=dg.MetadataValue.json(list(box) if box else None),
        rows_per_level=dg.MetadataValue.md(markdown_table(per_level)),
        top_channels=dg.MetadataValue.md(
            markdown_table(
                totals.select(top).unpivot(variable_name="channel", value_name="total"), max_rows=8
            )
        ),
        extract_stats=dg.MetadataValue.json(stats),
    )
    level, cells, counts = _map_cells(df, per_level)
    metadata["map"] = inline_charts.cell_map(
        cells, np.log1p(counts), f"{region}: tagged objects per level-{level} cell (log scale)"
    )
    metadata["map_png"] = png_markdown(_density_map(level, cells, counts, region), alt=f"{region} features")
    return metadata


def _refuse_before_write(
    df: pl.DataFrame, region: str, path, box, levels: list[int], stats: dict, warehouse
) -> None:
    """Fail the run, writing nothing, if `df` would fail the blocking checks that can run before writing.

    The checks run after the write too, but by then the bad rows are the table's current version and
    downstream readers (rasters, training) would see them; refused here, the previous rows stay current.
    """
    # Imported here: the checks module imports this one.
    from s2vec_assets.defs.features.checks import failures_before_write

    failed = failures_before_write(df)
    if not failed:
        return
    version = warehouse.version(TABLE)
    kept = (
        f"Nothing was written: `{TABLE}` stays at version {version} with {region}'s previous rows."
        if version is not None
        else f"Nothing was written (`{TABLE}` does not exist yet)."
    )
    if "cell_features_not_empty" in failed:
        tagged = {k: stats.get(k, 0) for k in ("tagged_nodes", "tagged_ways", "tagged_areas")}
        found = (
            f"it holds no feature any taxonomy channel reads ({tagged})"
            if not any(tagged.values())
            else f"all its cells lie outside the catalog's bbox {list(box) if box else None} "
            f"({stats.get('cells_outside_bbox', 0)} cells dropped; tagged objects {tagged})"
        )
        text = (
            f"cell_features[{region}]: refusing to replace the region's features with zero rows. The "
            f"extract {path} was read, but {found}, so the region would have no cells at levels "
            f"{levels}. {kept} Fix: point the catalog's `source` for "
            f"{region} at a complete, tagged OSM extract of the region (not a filtered or untagged "
            "one), and check its `bbox` overlaps the extract; then re-run. To drop the region on "
            "purpose, remove it from the catalog and use `s2vec_core.lifecycle.remove_region`."
        )
    else:
        rules = "; ".join(f"{name}: {why}" for name, why in failed.items())
        text = (
            f"cell_features[{region}]: refusing to write {df.height} rows from {path} that fail the "
            f"blocking checks ({rules}). {kept} This is a bug in the extraction or in the feature "
            "code rather than in the data; report it with the extract."
        )
    metadata = {
        "refused_checks": dg.MetadataValue.json(sorted(failed)),
        "extract_stats": dg.MetadataValue.json(stats),
    }
    if version is not None:
        metadata["table_version"] = version
    raise dg.Failure(description=text, metadata=metadata)


def _map_cells(df: pl.LazyFrame, per_level: pl.DataFrame) -> tuple[int, np.ndarray, np.ndarray]:
    """(level, cell ids, tagged objects per cell) at the finest level a map of the region keeps legible;
    `per_level` holds the cells per level."""
    legible = per_level.filter(pl.col("cells") <= MAP_MAX_CELLS)["level"]
    level = int(legible[-1] if len(legible) else per_level["level"][0])
    cells = (
        df.filter(pl.col("level") == level)
        .select("cell_id", count=pl.sum_horizontal(_COUNT_CHANNELS))
        .collect(engine="streaming")
    )
    return level, cells["cell_id"].to_numpy(), cells["count"].to_numpy()


def _density_map(level: int, cells: np.ndarray, counts: np.ndarray, region: str):
    """Tagged objects per cell, drawn as cell polygons."""
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    lat, lng = s2.cell_vertices(cells)
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    polys = PolyCollection(
        np.stack([lng, lat], axis=-1), array=np.log1p(counts), cmap="viridis", linewidths=0
    )
    ax.add_collection(polys)
    ax.autoscale_view()
    fig.colorbar(polys, ax=ax, label="log1p(tagged objects)", shrink=0.8)
    # Degrees of longitude shrink with latitude; this keeps the map's shape roughly true.
    aspect = 1.0 / np.cos(np.radians(lat.mean()))
    ax.set(title=f"{region}: level-{level} cells", xlabel="longitude", ylabel="latitude", aspect=aspect)
    return fig
