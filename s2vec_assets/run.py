"""`make run`: materialise the whole asset graph for every catalog region through Dagster.

Runs are recorded in the persistent instance under $DAGSTER_HOME (default ./dagster_home), so
`make dev` shows them afterwards with their metadata and check results. The graph is walked in
stages in dependency order, one run per region (a failing region does not stop the others, but the
next stage waits until all regions are fine); an unpartitioned asset (e.g. a model trained on all
regions) runs once. Up to the first unpartitioned asset, consecutive region-partitioned assets share a
run; after it every level is its own stage, so a level sees all regions of the one before (a model
version is complete, every region embedded and the version current, before anything evaluates it).
With `--regions`, a model trained on more regions than asked has those embedded too: a model version
is only usable once all its regions are. Assets added under `s2vec_assets/defs/` join automatically,
with their checks. Each stage runs, in this process, through the named job that holds its assets
(`region_pipeline` or `model`, see defs/jobs.py), so the UI lists its runs under those jobs.

    s2vec run [--regions liechtenstein,monaco] [--config deploy/paper_scale.yaml]
    python -m s2vec_assets.run (the same)
"""

import argparse
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent

Stage = tuple[dg.PartitionsDefinition | None, list[dg.AssetKey]]
LAUNCHED_BY = {"s2vec/launched_by": "s2vec_assets.run"}


def run_tags() -> dict[str, str]:
    """Tags of every run this process launches: who, and which process (see `reap_dead_runs`)."""
    return {**LAUNCHED_BY, "s2vec/host": socket.gethostname(), "s2vec/pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark runs of an earlier `make run` whose process died (killed, out of memory) as failed.

    In-process runs hold their pool slot (e.g. `gpu`) in the instance; a killed process never gives
    it back, and the next training step would wait for it forever. Returns the reaped run ids.
    """
    active = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=active, tags=LAUNCHED_BY)):
        pid = run.tags.get("s2vec/pid")
        if run.tags.get("s2vec/host") == socket.gethostname() and pid and not _alive(int(pid)):
            instance.report_run_failed(run, message=f"process {pid} of s2vec_assets.run is gone")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            reaped.append(run.run_id)
    return reaped


def plan_stages(graph) -> list[Stage]:
    """Group the asset graph into stages that each run as one run per partition (or one run).

    Walking topological levels, a level's assets join the last stage when they share its
    partitioning, else start a new one; everything an asset needs is then in an earlier stage or
    earlier in its own run.
    """
    stages: list[Stage] = []
    after_all_regions = False
    for level in graph.toposorted_asset_keys_by_level:
        groups: dict[dg.PartitionsDefinition | None, list[dg.AssetKey]] = {}
        for key in sorted(level, key=lambda k: k.to_user_string()):
            groups.setdefault(graph.get(key).partitions_def, []).append(key)
        # Independent within a level; per-region work first, then what spans all regions.
        for pdef, keys in sorted(groups.items(), key=lambda group: group[0] is None):
            if stages and stages[-1][0] == pdef and not after_all_regions:
                stages[-1][1].extend(keys)
            else:
                stages.append((pdef, keys))
            after_all_regions |= pdef is None
    return stages


def stage_config(config: dict | None, keys: Sequence[dg.AssetKey]) -> dict:
    """The run config of one stage: the file's `ops` entries for the stage's assets, INFO logging."""
    names = {k.to_user_string() for k in keys}
    ops = {name: value for name, value in ((config or {}).get("ops") or {}).items() if name in names}
    return {"loggers": {"console": {"config": {"log_level": "INFO"}}}, **({"ops": ops} if ops else {})}


def trained_regions(instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey]) -> list[str]:
    """Regions the stage's all-region assets say they covered (metadata `regions`, e.g. mae_model's)."""
    found: set[str] = set()
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
        if "regions" in metadata:
            found.update(metadata["regions"].value)
    return sorted(found)


def job_for(defs: dg.Definitions, keys: Sequence[dg.AssetKey]) -> dg.JobDefinition:
    """The named job (defs/jobs.py) whose selection holds all of `keys`; the global asset job if none.

    Runs then carry the job's name (`region_pipeline`, `model`) in the UI, not `__ephemeral_asset_job__`.
    """
    from s2vec_assets.defs.jobs import JOB_NAMES

    defined = {job.name for job in defs.jobs or ()}
    for name in (n for n in JOB_NAMES if n in defined):
        job = defs.resolve_job_def(name)
        if set(keys) <= set(job.asset_layer.selected_asset_keys):
            return job
    return defs.resolve_implicit_global_asset_job_def()


def run_stage(
    defs: dg.Definitions,
    stage: Stage,
    instance: dg.DagsterInstance,
    regions: Sequence[str] | None,
    config: dict | None = None,
) -> list[tuple[str, bool, str]]:
    """Materialise a stage (its assets and their checks) through its named job, in this process;
    returns (partition, success, run id)."""
    pdef, keys = stage
    partitions: list[str | None] = [None]
    if pdef is not None:
        partitions = list(pdef.get_partition_keys(dynamic_partitions_store=instance))
        if regions is not None:
            partitions = [p for p in partitions if p in regions]
    job = job_for(defs, keys)
    outcomes = []
    for partition in partitions:
        result = job.execute_in_process(
            asset_selection=list(keys),
            partition_key=partition,
            instance=instance,
            raise_on_error=False,
            tags=run_tags(),
            run_config=stage_config(config, keys),
        )
        failed_checks = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
        label = partition or "(all regions)"
        status = (
            "ok"
            if result.success
            else "FAILED" + (f" (checks: {', '.join(failed_checks)})" if failed_checks else "")
        )
        print(f"  {label:<20} {status}  {job.name} run {result.run_id}", flush=True)
        outcomes.append((label, result.success, result.run_id))
    return outcomes


def _table_locations(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, str]:
    """Table name -> URI, from the latest materialisation of each table asset (see metadata.table_metadata)."""
    found = {}
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        event = instance.get_latest_materialization_event(key)
        metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
        if "dagster/table_name" in metadata and "dagster/uri" in metadata:
            found[str(metadata["dagster/table_name"].value)] = str(metadata["dagster/uri"].value)
    return found


def _print_current_version() -> None:
    """The registry and the current model version, with the commands that read it."""
    from s2vec_core import registry, warehouse
    from s2vec_core.tables import MODEL_VERSIONS

    root = warehouse.default_root()
    print(f"  {MODEL_VERSIONS.name:<20} {warehouse.table_uri(root, MODEL_VERSIONS.name)}")
    current = registry.current(root)
    print(
        f"current model version: {current or 'none yet (a version is current once all its regions are embedded)'}"
    )
    if current:
        print(
            "query it: `s2vec lookup --lat 47.14 --lng 9.52`, `s2vec similar --lat 47.14 --lng 9.52 --k 5`, "
            "`s2vec versions` (README: For downstream teams)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regions", help="comma-separated subset of the catalog's regions (default: all)")
    parser.add_argument("--config", help="run config YAML (`ops:` per asset, e.g. deploy/paper_scale.yaml)")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text()) if args.config else None
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / "dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    from s2vec_assets.definitions import defs as load_defs
    from s2vec_assets.defs.partitions import region_partitions

    defs = load_defs()
    regions = [r.strip() for r in args.regions.split(",") if r.strip()] if args.regions else None
    if regions is not None:
        known = set(region_partitions.get_partition_keys())
        unknown = sorted(set(regions) - known)
        if unknown:
            parser.error(f"unknown regions {unknown}; the catalog has {sorted(known)}")

    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        for run_id in reap_dead_runs(instance):
            print(f"marked run {run_id} failed: its process is gone (its pool slots are free again)")
        for pdef, keys in plan_stages(defs.resolve_asset_graph()):
            names = ", ".join(k.to_user_string() for k in keys)
            print(f"stage: {names}" + (" (per region)" if pdef is not None else ""), flush=True)
            outcomes = run_stage(defs, (pdef, keys), instance, regions, config)
            failed = [label for label, ok, _ in outcomes if not ok]
            if failed:
                print(
                    f"stopped: {', '.join(failed)} failed; later stages need them. "
                    f"Details: `make dev`, runs above.",
                    file=sys.stderr,
                )
                return 1
            if pdef is None and regions is not None:
                extra = [r for r in trained_regions(instance, keys) if r not in regions]
                if extra:
                    print(
                        f"  the model covers {extra} too: embedding them as well, so its version is complete"
                    )
                    regions = [*regions, *extra]
        print(f"\ndone in {time.perf_counter() - started:.0f} s. Dagster home: {os.environ['DAGSTER_HOME']}")
        print("Delta tables (polars.read_delta / deltalake.DeltaTable / duckdb delta_scan):")
        for table, uri in _table_locations(defs, instance).items():
            print(f"  {table:<20} {uri}")
        _print_current_version()
    print("Browse runs, lineage and checks with `make dev` (http://127.0.0.1:3000).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
