"""reap_dead_runs: under `dagster dev`, free the pool slots of runs whose process was killed."""

import dagster as dg

from s2vec_assets.stale_runs import reap_dead_runs as reap


@dg.sensor(
    name="reap_dead_runs",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every minute: runs whose process is gone (SIGKILL, out of memory) are marked failed and their "
        "pool slots freed, so a killed training never blocks the next one (s2vec_assets.stale_runs)."
    ),
)
def reap_dead_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    reaped = reap(context.instance)
    for run_id in reaped:
        context.log.warning(f"marked run {run_id} failed: its process is gone; its pool slots are free")
    return dg.SkipReason(f"reaped {len(reaped)} dead run(s)" if reaped else "no dead runs")
