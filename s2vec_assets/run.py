"""`make run`: materialise the whole asset graph for every catalog region through Dagster.

Runs are recorded in the persistent instance under $DAGSTER_HOME (default ./dagster_home), so
`make dev` shows them afterwards with their metadata and check results. The graph is walked in
stages in dependency order, one run per region; an unpartitioned asset (e.g. a model trained on all
regions) runs once. A region that fails sits out the later stages and the others go on without it;
a failed unpartitioned stage stops the rest (they all need it). At the end every failure is listed,
one paragraph each (region, stage, run, the step's own message; the trace stays in the run's logs),
and the exit status is 1. Up to the first unpartitioned asset, consecutive region-partitioned assets
share a run; after it every level is its own stage, so a level sees all regions of the one before (a model
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
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import yaml

from s2vec_assets.instance import open_instance
from s2vec_assets.stale_runs import reap_dead_runs

REPO_ROOT = Path(__file__).resolve().parent.parent

Stage = tuple[dg.PartitionsDefinition | None, list[dg.AssetKey]]
LAUNCHED_BY = {"s2vec/launched_by": "s2vec_assets.run"}


def run_tags() -> dict[str, str]:
    """Tags of every run this process launches: who, and which process (see `stale_runs`)."""
    return {**LAUNCHED_BY, "s2vec/host": socket.gethostname(), "s2vec/pid": str(os.getpid())}


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


class Outcome(NamedTuple):
    label: str
    """The region, or "(all regions)"."""
    ok: bool
    run_id: str
    why: str
    """The first failed step's own message (the trace stays in the run's logs)."""


def run_stage(
    defs: dg.Definitions,
    stage: Stage,
    instance: dg.DagsterInstance,
    regions: Sequence[str] | None,
    config: dict | None = None,
) -> list[Outcome]:
    """Materialise a stage (its assets and their checks) through its named job, in this process; one
    Outcome per partition."""
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
        outcomes.append(Outcome(label, result.success, result.run_id, "" if result.success else _why(result)))
    return outcomes


def _why(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            text = (data.user_failure_data.description if data.user_failure_data else None) or (
                data.error.message if data.error else ""
            )
            return f"{event.step_key}: {text.strip().splitlines()[0] if text.strip() else 'failed'}"
    failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    return f"blocking checks failed: {', '.join(failed)}" if failed else "the run failed (see its logs)"


def _pool_holders(instance: dg.DagsterInstance, defs: dg.Definitions, keys: Sequence[dg.AssetKey]) -> str:
    """Which runs hold the pools the stage's steps need (empty if none): a step waiting for a slot
    is otherwise silent on the terminal."""
    graph = defs.resolve_asset_graph()
    pools = set().union(*(graph.get(k).pools or set() for k in keys))
    held = []
    for pool in sorted(pools):
        info = instance.event_log_storage.get_concurrency_info(pool)
        if info.slot_count and len(info.claimed_slots) >= info.slot_count:
            held.append(
                f"pool {pool!r} is full, held by run(s) {sorted({c.run_id for c in info.claimed_slots})}"
            )
    return "; ".join(held)


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
    with open_instance() as instance:
        for run_id in reap_dead_runs(instance):
            print(f"marked run {run_id} failed: its process is gone (its pool slots are free again)")
        failures: list[tuple[str, Outcome]] = []
        for pdef, keys in plan_stages(defs.resolve_asset_graph()):
            names = ", ".join(k.to_user_string() for k in keys)
            print(f"stage: {names}" + (" (per region)" if pdef is not None else ""), flush=True)
            if held := _pool_holders(instance, defs, keys):
                print(f"  waiting: {held} (a run killed in the shell is reaped by the next `make run`)")
            outcomes = run_stage(defs, (pdef, keys), instance, regions, config)
            failures += [(names, o) for o in outcomes if not o.ok]
            if pdef is not None:
                # A failed region sits out the later stages; the others go on without it.
                done = [o.label for o in outcomes if o.ok]
                if not done:
                    break
                regions = done
                continue
            if not outcomes[0].ok:
                break  # every later stage needs what this one makes for all regions
            extra = [r for r in trained_regions(instance, keys) if regions is not None and r not in regions]
            if extra:
                print(f"  the model covers {extra} too: embedding them as well, so its version is complete")
                regions = [*regions, *extra]
        if failures:
            print(f"\n{len(failures)} failed after {time.perf_counter() - started:.0f} s:", file=sys.stderr)
            for names, o in failures:
                paragraph = f"- {o.label} ({names}, run {o.run_id}): {o.why}"
                print(textwrap.fill(paragraph, 110, subsequent_indent="  "), file=sys.stderr)
            print("The full traces are in those runs' logs (`make dev`, Runs).", file=sys.stderr)
            return 1
        print(f"\ndone in {time.perf_counter() - started:.0f} s. Dagster home: {os.environ['DAGSTER_HOME']}")
        print("Delta tables (polars.read_delta / deltalake.DeltaTable / duckdb delta_scan):")
        for table, uri in _table_locations(defs, instance).items():
            print(f"  {table:<20} {uri}")
        _print_current_version()
    print("Browse runs, lineage and checks with `make dev` (http://127.0.0.1:3000).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
