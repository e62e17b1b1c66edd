"""warehouse_maintenance: compaction and vacuum of every Delta table, on demand or weekly.

The schedule ships stopped: turn it on in the UI (Automation) once no backfill runs at 03:00 on
Sundays, or launch the job by hand after large re-runs. What it keeps: `s2vec_core.maintenance`.
"""

from datetime import timedelta

import dagster as dg
from pydantic import Field

from s2vec_assets.defs.resources import WarehouseResource
from s2vec_core import maintenance


class MaintenanceConfig(dg.Config):
    retention_hours: int = Field(
        default=int(maintenance.RETENTION.total_seconds() // 3600),
        ge=0,
        description="Replaced data younger than this stays readable by time travel; older files are deleted.",
    )
    dry_run: bool = Field(default=False, description="List what the vacuum would delete; change nothing.")


@dg.op(
    description="Compact each table's partitions, then vacuum beyond the retention (full mode: orphans too)."
)
def maintain_warehouse(
    context: dg.OpExecutionContext, config: MaintenanceConfig, warehouse: WarehouseResource
) -> dg.Output[None]:
    done = maintenance.maintain(
        warehouse.root,
        timedelta(hours=config.retention_hours),
        storage_options=warehouse.options,
        dry_run=config.dry_run,
    )
    for d in done:
        context.log.info(
            f"{d.table}: version {d.version_before} -> {d.version_after}, {d.files_compacted} files merged, "
            f"{d.files_vacuumed} files {'to vacuum' if config.dry_run else 'vacuumed'}"
        )
    return dg.Output(
        None,
        metadata={
            "tables": dg.MetadataValue.json(
                {
                    d.table: {
                        "compacted": d.files_compacted,
                        "vacuumed": d.files_vacuumed,
                        "version": d.version_after,
                    }
                    for d in done
                }
            ),
            "retention_hours": config.retention_hours,
            "dry_run": config.dry_run,
        },
    )


@dg.job(description="Compact and vacuum the warehouse (keeps time travel for the configured retention).")
def warehouse_maintenance() -> None:
    maintain_warehouse()


weekly_maintenance = dg.ScheduleDefinition(
    name="weekly_maintenance",
    job=warehouse_maintenance,
    cron_schedule="0 3 * * 0",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Sundays 03:00: compact and vacuum with the default retention.",
)
