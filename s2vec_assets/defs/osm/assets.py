"""osm_extract[region]: the region's OSM extract, resolved from the catalog and validated."""

from datetime import datetime

import dagster as dg

from s2vec_assets.defs.partitions import one_run_per_region, region_partitions
from s2vec_assets.defs.resources import OsmSourceResource
from s2vec_core.catalog import DownloadError, SourceError, redact_url
from s2vec_core.osm import OSMFileError, pbf_info


@dg.asset(
    partitions_def=region_partitions,
    backfill_policy=one_run_per_region,
    group_name="osm",
    kinds={"python", "osm"},
    code_version="1",
    description=(
        "The region's OSM PBF extract: resolved from the regions catalog (a local file, or a URL "
        "downloaded once into the cache), read end to end and described (sha256, size, bbox, object "
        "counts, replication timestamp). The file stays where it is; downstream assets resolve it "
        "again through the catalog, so nothing large passes through the IO manager."
    ),
)
def osm_extract(context: dg.AssetExecutionContext, osm_source: OsmSourceResource) -> dg.MaterializeResult:
    region = osm_source.region(context.partition_key)
    try:
        path = osm_source.resolve(region.name)
        info = pbf_info(path)
    except (SourceError, DownloadError) as e:
        raise dg.Failure(description=str(e)) from e
    except OSMFileError as e:
        raise dg.Failure(description=str(e), metadata={"path": dg.MetadataValue.path(str(path))}) from e
    bbox = info["bbox"]
    metadata: dict[str, object] = {
        "source": redact_url(region.source),
        "dagster/uri": dg.MetadataValue.path(str(path)),
        "sha256": info["sha256"],
        "size_bytes": dg.MetadataValue.int(info["size_bytes"]),
        "bbox": dg.MetadataValue.json(
            dict(zip(("lon_min", "lat_min", "lon_max", "lat_max"), bbox, strict=True)) if bbox else {}
        ),
        "nodes": dg.MetadataValue.int(info["nodes"]),
        "ways": dg.MetadataValue.int(info["ways"]),
        "relations": dg.MetadataValue.int(info["relations"]),
    }
    if stamp := info["replication_timestamp"]:
        try:
            metadata["replication_timestamp"] = dg.MetadataValue.timestamp(datetime.fromisoformat(stamp))
        except ValueError:  # a header written by some other tool: keep it verbatim
            metadata["replication_timestamp"] = stamp
    # The data version is the file's hash: a changed extract marks everything downstream stale.
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(info["sha256"]))
