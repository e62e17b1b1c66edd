"""OSM extraction throughput: s2vec `extract_cells_long` (two processes, and one) vs a plain pyosmium
SimpleHandler, side by side.

Each run is its own subprocess under bench/peers/rusage_wrap.py: wall, CPU seconds of the process and
the helpers it waited for, and peak RSS (the larger of the largest process and the process tree's sum,
sampled every 20 ms: s2vec's area worker runs beside the calling process). Throughput is counted in
tagged objects: nodes, ways and relations carrying at least one taxonomy key (FILTER_KEYS), counted
by the peer; every tool reads the same file, so the ratio of features/s is the ratio of walls.

The peer (issue 6): `osmium.SimpleHandler.apply_file(locations=True)` with the same C++ KeyFilter,
collecting node points and way centroids (mean of the node locations) in Python. It makes no cells,
no line splitting, no areas: it is the floor of "touch every tagged object in Python". For scale,
osmium-tool's C++ `osmium export -f geojsonseq` (to /dev/null) runs too when it is installed.

    python bench/tile_pbf.py data/osm/liechtenstein-2013-08-03.osm.pbf bench/data/liechtenstein-x256.osm.pbf --copies 256
    python bench/bench_extract.py bench/data/liechtenstein-x256.osm.pbf --level 17 --runs 3

Tools: `peer`, `s2vec` (extract_cells_long, default workers: 2 on this size), `s2vec-1proc` (workers=1),
`osmium-export`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ROOT / "bench" / "peers" / "rusage_wrap.py"
PEER_WORKERS = ROOT / "bench" / "peers" / "workers"


def worker(tool: str, pbf: str, level: int) -> dict:
    """Runs inside the subprocess: one tool on one file; returns what it counted and its wall."""
    if tool == "peer":
        from s2vec_core.taxonomy import FILTER_KEYS

        sys.path.insert(0, str(PEER_WORKERS))
        from pyosmium_centroids import count_tagged_objects

        t0 = time.perf_counter()
        tagged = count_tagged_objects(pbf, list(FILTER_KEYS))
        return {"wall_s": time.perf_counter() - t0, "tagged_objects": tagged}
    t0 = time.perf_counter()
    from s2vec_core import osm

    stats: dict = {}
    df = osm.extract_cells_long(pbf, level, stats=stats, workers=1 if tool == "s2vec-1proc" else None)
    return {"wall_s": time.perf_counter() - t0, "rows": df.height, "stats": stats}


def run_measured(cmd: list[str], what: str) -> tuple[bytes, dict]:
    """`cmd` under the rusage wrapper (so its peak RSS does not start at ours): its stdout and usage."""
    with tempfile.TemporaryDirectory() as tmp:
        usage_path = Path(tmp) / "usage.json"
        proc = subprocess.run(
            [sys.executable, "-I", "-S", str(WRAPPER), str(usage_path), *cmd],
            check=False,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{what} failed with exit {proc.returncode}")
        return proc.stdout, json.loads(usage_path.read_text())


def run_one(tool: str, pbf: Path, level: int) -> dict:
    if tool == "osmium-export":
        # osmium-tool's C++ GeoJSON export (tagged objects, areas assembled), written to /dev/null.
        cmd = ["osmium", "export", "-f", "geojsonseq", "-o", "/dev/null", "--overwrite", str(pbf)]
    else:
        cmd = [sys.executable, __file__, str(pbf), "--level", str(level), "--worker", tool]
    stdout, usage = run_measured(cmd, tool)
    res = json.loads(stdout) if tool != "osmium-export" else {"wall_s": usage["wall_s"]}
    res["process_wall_s"] = usage["wall_s"]
    res["peak_rss_mb"] = max(usage["maxrss_kib"], usage["tree_rss_kib"]) / 1024  # Linux: KiB
    # CPU seconds (user + sys, all threads and waited-for helpers): steadier than wall on a shared machine.
    res["cpu_s"] = usage["cpu_s"]
    return res


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pbf", type=Path)
    ap.add_argument("--level", type=int, default=17)
    ap.add_argument("--runs", type=int, default=1, help="runs per tool; the median wall is reported")
    ap.add_argument(
        "--tools",
        default="peer,s2vec,s2vec-1proc,osmium-export",
        help="osmium-export needs osmium-tool (Debian package osmium-tool) on PATH",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        level = args.level
        print(json.dumps(worker(args.worker, str(args.pbf), level)))
        return 0
    size_mb = args.pbf.stat().st_size / 1e6
    # The peer always runs: it counts the tagged objects every throughput is measured in.
    tools = ["peer", *[t for t in args.tools.split(",") if t != "peer"]]
    results: dict[str, list[dict]] = {t: [] for t in tools}
    load_before = os.getloadavg()[0]
    for _ in range(args.runs):
        for t in tools:  # interleaved, so load from other users of the machine hits all tools alike
            r = run_one(t, args.pbf, args.level)
            r["level"] = args.level
            results[t].append(r)
            print(t, json.dumps({k: v for k, v in r.items() if k != "stats"}), file=sys.stderr)
    tagged = results["peer"][0]["tagged_objects"]
    load_after = os.getloadavg()[0]
    print(f"machine: {machine()}; load average (1 min) before / after: {load_before:.1f} / {load_after:.1f}")
    print(f"file: {args.pbf} ({size_mb:.1f} MB), tagged objects (any taxonomy key): {tagged:,}\n")
    print(
        "| tool | level | wall s (median; runs) | CPU s (median) | peak RSS MB (max) "
        "| tagged objects/s | MB/s | vs peer |"
    )
    print("|---|---|---|---|---|---|---|---|")
    peer_wall = statistics.median(r["wall_s"] for r in results["peer"])
    for t in tools:
        walls = [r["wall_s"] for r in results[t]]
        wall = statistics.median(walls)
        rss = max(r["peak_rss_mb"] for r in results[t])
        cpu = statistics.median(r["cpu_s"] for r in results[t])
        ratio = f"{peer_wall / wall:.2f}x"
        lvl = results[t][0]["level"] if t.startswith("s2vec") else "-"
        print(
            f"| {t} | {lvl} | {wall:.1f} ({', '.join(f'{w:.1f}' for w in walls)}) | {cpu:.1f} | {rss:.0f} | "
            f"{tagged / wall:,.0f} | {size_mb / wall:.1f} | {ratio} |"
        )
    for t in tools:
        if "stats" in results[t][0]:
            print(f"\n{t} stats: {results[t][0]['stats']}, output rows: {results[t][0]['rows']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
