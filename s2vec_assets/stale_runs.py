"""Runs whose process died (SIGKILL, out of memory) without ending: marked failed, pool slots freed.

An in-process run (`make run`, `dagster asset materialize`, a run worker) holds its pool slots (e.g.
the single `gpu` slot of training) in the instance until it ends. A killed process never ends it, and
every later training step waits for that slot forever. Dagster's run monitoring frees slots of runs that
*ended*, and watches only the run workers its launcher started; this covers the rest. A run is dead when
the process that started it (the pid on its RUN_START event) no longer exists on this host. Which host
that is: the `s2vec/host` tag where `make run` set one; otherwise a SQLite instance (the embedded
default, a local directory) is taken to be this host's, and a Postgres one is left alone.

Called by `make run` / `s2vec run` before they start, and every minute by the `reap_dead_runs` sensor
under `dagster dev`.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

from s2vec_core.leftovers import process_alive

ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def _start_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    event = records[0].event_log_entry.dagster_event if records else None
    return event.pid if event is not None else None


def _local_storage(instance: dg.DagsterInstance) -> bool:
    return type(instance.run_storage).__name__.startswith("Sqlite")


def dead_runs(instance: dg.DagsterInstance) -> list[tuple[dg.DagsterRun, int]]:
    """(run, pid) of every active run whose starting process is gone from this host."""
    host, local = socket.gethostname(), _local_storage(instance)
    found = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE)):
        tagged = run.tags.get("s2vec/host")
        if (tagged is not None and tagged != host) or (tagged is None and not local):
            continue
        pid = _start_pid(instance, run.run_id)
        if pid is None and (tagged_pid := run.tags.get("s2vec/pid")):
            pid = int(tagged_pid)
        if pid is not None and pid != os.getpid() and not process_alive(pid):
            found.append((run, pid))
    return found


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark the `dead_runs` failed and free their pool slots; returns their run ids."""
    reaped = []
    for run, pid in dead_runs(instance):
        instance.report_run_failed(
            run, message=f"process {pid} that ran it is gone (killed or out of memory); pool slots freed"
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped.append(run.run_id)
    return reaped
