"""Peak RSS and wall of a real Dagster run, checks included, on a tiled extract (issue 14's 1 GB goal).

The stages' own benchmarks (bench_shards, bench_rasters) measure the core functions; a user runs them
through Dagster, where the run process also holds Dagster and the asset checks (Great Expectations),
and, with the default in-process executor, every step one after another. This runs `dagster asset
materialize` on a cached tiled copy of the bundled Liechtenstein extract (bench_shards.tiled) with a
fresh warehouse and Dagster home, samples the RSS of its process tree every 0.2 s, and reports per step
(times from the run's own event log) the largest process and the tree's sum, then the whole run's.

    python bench/bench_dagster_run.py --copies 320                          # ~150 MB of PBF
    python bench/bench_dagster_run.py --copies 320 --executor multiprocess  # one process per step
    python bench/bench_dagster_run.py --copies 2560 --select cell_features   # 1.2 GB, features only
    python bench/bench_dagster_run.py --copies 320 --select cell_features --executor multiprocess \
        --config-json '{"ops": {"cell_features": {"config": {"shard_steps": 2, "shard_workers": 1}}}}'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_shards import tiled
from peers.rusage_wrap import _rss_kib, _tree

REGION = "tiled"
DEFAULT_SELECT = "cell_features,raster_tensors"
SAMPLE_S = 0.2


def sample(pid: int, samples: list[tuple[float, float, float]], stop: threading.Event) -> None:
    """(time, largest process MB, sum over the tree MB) of `pid`'s tree until `stop`."""
    while not stop.is_set():
        rss = [_rss_kib(p) / 1024 for p in _tree(pid)]
        samples.append((time.time(), max(rss, default=0.0), sum(rss)))
        stop.wait(SAMPLE_S)


def step_windows(home: Path) -> dict[str, tuple[float, float]]:
    """Each step's (start, end) wall-clock time from the run's event log."""
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    instance = dg.DagsterInstance.get()
    (run,) = instance.get_runs()
    windows: dict[str, list[float]] = {}
    for event in instance.all_logs(run.run_id):
        if not event.is_dagster_event or not event.step_key:
            continue
        kind = event.dagster_event.event_type_value
        if kind == "STEP_START":
            windows[event.step_key] = [event.timestamp, event.timestamp]
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in windows:
            windows[event.step_key][1] = event.timestamp
    return {k: (a, b) for k, (a, b) in windows.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=320, help="copies of Liechtenstein (320: ~150 MB)")
    ap.add_argument("--select", default=DEFAULT_SELECT, help="assets to materialize (their checks run too)")
    ap.add_argument("--executor", default="in_process", choices=["in_process", "multiprocess"])
    ap.add_argument("--config-json", help="run config, as `dagster asset materialize --config-json` takes it")
    args = ap.parse_args(argv)

    pbf = tiled(args.copies)
    with tempfile.TemporaryDirectory(prefix="s2vec-dagster-run-") as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        catalog = root / "regions.toml"
        catalog.write_text(f'[regions.{REGION}]\nsource = "{pbf}"\n')
        env = {
            **os.environ,
            "S2VEC_CATALOG": str(catalog),
            "S2VEC_WAREHOUSE": str(root / "warehouse"),
            "S2VEC_EXECUTOR": args.executor,
            "DAGSTER_HOME": str(root / "home"),
        }
        dagster = Path(sys.executable).with_name("dagster")
        cmd = [str(dagster), "asset", "materialize", "-m", "s2vec_assets.definitions"]
        cmd += ["--select", args.select, "--partition", REGION]
        cmd += ["--config-json", args.config_json] if args.config_json else []
        samples: list[tuple[float, float, float]] = []
        stop = threading.Event()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        sampler = threading.Thread(target=sample, args=(proc.pid, samples, stop))
        sampler.start()
        _, err = proc.communicate()
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        if proc.returncode:
            print(err[-4000:], file=sys.stderr)
            raise SystemExit(f"the run failed (exit {proc.returncode})")
        windows = step_windows(root / "home")

    steps = {}
    for step, (start, end) in sorted(windows.items(), key=lambda kv: kv[1]):
        # Widened by one sampling interval: a step shorter than it still gets the samples around it.
        inside = [s for s in samples if start - SAMPLE_S <= s[0] <= end + SAMPLE_S]
        steps[step] = {
            "wall_s": round(end - start, 2),
            "largest_process_mb": round(max((s[1] for s in inside), default=0)),
            "all_processes_mb": round(max((s[2] for s in inside), default=0)),
        }
    print(
        json.dumps(
            {
                "input_mb": round(pbf.stat().st_size / 1e6, 1),
                "select": args.select,
                "executor": args.executor,
                "run_config": json.loads(args.config_json or "{}"),
                "wall_s": round(wall, 1),
                "largest_process_mb": round(max(s[1] for s in samples)),
                "all_processes_mb": round(max(s[2] for s in samples)),
                "steps": steps,
                "load_1min": round(os.getloadavg()[0], 2),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
