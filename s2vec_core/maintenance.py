"""Warehouse maintenance: compact small files and vacuum what no version within the retention reads.

Every re-run of a region writes a full copy of its partition and leaves the old files for time travel,
and a writer killed between writing a Parquet file and committing leaves an orphan no version names.
`maintain` compacts each table's partitions (small files merged, row groups kept at the table's cap),
then vacuums in full mode: files removed from the table more than `retention` ago, and unreferenced
files last modified more than `retention` ago, are deleted. Versions newer than `retention` stay
readable (time travel and as-of queries); older ones may not. Run it when no writer is active: a
compaction conflicts with a concurrent overwrite of the same partition (that writer retries, the
compaction fails and can be run again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from deltalake import DeltaTable, WriterProperties

from s2vec_core import warehouse
from s2vec_core.tables import ALL

RETENTION = timedelta(days=7)
"""How long replaced data stays readable by time travel (Delta's own default for vacuum)."""
ASSET = "maintenance"


@dataclass(frozen=True)
class Maintained:
    """What `maintain` did to one table."""

    table: str
    version_before: int
    version_after: int
    files_compacted: int
    """Files merged away by compaction (0 when every partition already had one file)."""
    files_vacuumed: int
    """Files deleted by the vacuum (or that would be, with `dry_run`)."""


def maintain(
    root: str,
    retention: timedelta = RETENTION,
    storage_options: dict[str, str] | None = None,
    dry_run: bool = False,
) -> list[Maintained]:
    """Compact and vacuum every table of the warehouse at `root` that exists; one record per table."""
    if retention < timedelta(0):
        raise ValueError(f"retention must be >= 0, got {retention}")
    commit = warehouse.commit_properties(
        {
            "run_id": f"{ASSET} {datetime.now(UTC).isoformat(timespec='seconds')}",
            "asset": ASSET,
        }
    )
    done = []
    for spec in ALL:
        uri = warehouse.table_uri(root, spec.name)
        before = warehouse.table_version(uri, storage_options)
        if before is None:
            continue
        table = DeltaTable(uri, storage_options=storage_options)
        compacted = 0
        if not dry_run:
            writer = WriterProperties(max_row_group_size=spec.row_group_rows) if spec.row_group_rows else None
            metrics = table.optimize.compact(writer_properties=writer, commit_properties=commit)
            # A partition's single file is rewritten as it is; only merges count.
            compacted = max(0, int(metrics["numFilesRemoved"]) - int(metrics["numFilesAdded"]))
        vacuumed = table.vacuum(
            retention_hours=int(retention.total_seconds() // 3600),
            dry_run=dry_run,
            enforce_retention_duration=False,
            full=True,
            commit_properties=commit,
        )
        done.append(Maintained(spec.name, before, table.version(), compacted, len(vacuumed)))
    return done
