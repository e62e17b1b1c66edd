"""Peak RSS and wall of a real Dagster run, checks included, on a tiled extract (issue 14's 1 GB goal).

The stages' own benchmarks (bench_shards, bench_rasters) measure the core functions; a user runs them
through Dagster, where one run process (the default in-process executor) also holds Dagster, Great
Expectations and the asset checks. This runs `dagster asset materialize` on a cached tiled copy of the
bundled Liechtenstein extract (bench_shards.tiled) with a fresh warehouse and Dagster home, under the
rusage wrapper: the largest process's and the process tree's peak RSS, and the wall.

    python bench/bench_dagster_run.py --copies 320            # ~150 MB of PBF
    python bench/bench_dagster_run.py --copies 320 --executor multiprocess
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract import run_measured
from bench_shards import tiled

REGION = "tiled"
DEFAULT_SELECT = "cell_features,raster_tensors"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=320, help="copies of Liechtenstein (320: ~150 MB)")
    ap.add_argument("--select", default=DEFAULT_SELECT, help="assets to materialize (their checks run too)")
    ap.add_argument("--executor", default="in_process", choices=["in_process", "multiprocess"])
    args = ap.parse_args(argv)

    pbf = tiled(args.copies)
    with tempfile.TemporaryDirectory(prefix="s2vec-dagster-run-") as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        catalog = root / "regions.toml"
        catalog.write_text(f'[regions.{REGION}]\nsource = "{pbf}"\n')
        env = {
            "S2VEC_CATALOG": str(catalog),
            "S2VEC_WAREHOUSE": str(root / "warehouse"),
            "S2VEC_EXECUTOR": args.executor,
            "DAGSTER_HOME": str(root / "home"),
        }
        os.environ.update(env)
        dagster = Path(sys.executable).with_name("dagster")
        cmd = [str(dagster), "asset", "materialize", "-m", "s2vec_assets.definitions"]
        cmd += ["--select", args.select, "--partition", REGION]
        t0 = time.perf_counter()
        _, usage = run_measured(cmd, "dagster asset materialize")
        wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "input_mb": round(pbf.stat().st_size / 1e6, 1),
                "select": args.select,
                "executor": args.executor,
                "wall_s": round(wall, 1),
                "largest_process_mb": round(usage["maxrss_kib"] / 1024),
                "all_processes_mb": round(usage["tree_rss_kib"] / 1024),
                "load_1min": round(os.getloadavg()[0], 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
