"""Region lifecycle: a region taken out of the catalog leaves the warehouse with one command.

`remove_region` deletes the region's rows from every table that has a `region` column (one Delta commit
per table, named `remove-region` in its commit metadata, other regions' files untouched) and its raster
shards. The registry keeps its history: a model's `regions` say what it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from deltalake import DeltaTable

from s2vec_core import warehouse
from s2vec_core.artifacts import ArtifactStore, raster_key, staging_key
from s2vec_core.catalog import Region, validate_region_name
from s2vec_core.tables import ALL, CELL_FEATURES

ASSET = "remove-region"


class LifecycleError(ValueError):
    """The removal was refused before anything changed."""


def remove_region(
    root: str, region: str, catalog: Mapping[str, Region], storage_options: dict[str, str] | None = None
) -> dict[str, int | None]:
    """Delete `region` (which must no longer be in `catalog`) everywhere; table -> new version (None: no rows)."""
    validate_region_name(region)
    if region in catalog:
        raise LifecycleError(f"{region!r} is still in the catalog; remove its [regions.{region}] entry first")
    commit = {
        "run_id": f"{ASSET} {datetime.now(UTC).isoformat(timespec='seconds')}",
        "asset": ASSET,
        "region": region,
    }
    versions = {}
    for spec in ALL:
        uri = warehouse.table_uri(root, spec.name)
        if warehouse.table_version(uri, storage_options) is None or "region" not in _columns(
            uri, storage_options
        ):
            continue
        versions[spec.name] = warehouse.delete_partition(uri, {"region": region}, storage_options, commit)
    store = ArtifactStore(root, storage_options)
    store.delete(raster_key(region))
    store.delete(staging_key(CELL_FEATURES.name, region))  # what a failed run left
    return versions


def _columns(uri: str, storage_options) -> list[str]:
    return [f.name for f in DeltaTable(uri, storage_options=storage_options).schema().fields]
