"""Peak RSS and wall of extraction whole vs by S2 shards (s2vec_core.shards) on tiled inputs.

Each run is its own subprocess under bench/peers/rusage_wrap.py (as bench/bench_extract.py): wall, and
peak RSS as the larger of the largest process and the process tree's sum sampled every 20 ms. The
largest single process is what the issue-14 goal bounds (every process < 1 GB); the tree sum is the
machine's load. Tools: `whole` (extract_cells_long, default workers), `sharded` (iter_sharded: shards
in a pool of one process per core, the rows streamed range by range and dropped, as a sharded pipeline
consumes them), `split` (only the osmium-tool split, for its share), `peer` (bench_extract's pyosmium
peer: it counts the tagged objects throughput is measured in).

    python bench/bench_shards.py --sizes 320,1280,2560 --level 17

Inputs are tiled copies of the real Liechtenstein extract cached under /tmp/s2vec-tiles: bench/tile_pbf.py's
copies, written through osmium-tool for speed (`write_tiled`); 2560 copies do not fit tile_pbf's
square grid from 47 N, so that size uses a grid wider than tall (`wide_offsets`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_extract
import tile_pbf

SOURCE = ROOT / "data" / "osm" / "liechtenstein-2013-08-03.osm.pbf"
CACHE = Path("/tmp/s2vec-tiles")


def wide_offsets(bbox: list[float], copies: int) -> list[tuple[float, float]]:
    """tile_pbf.copy_offsets on a grid 2.5 times wider than tall (Liechtenstein is 2.7 times taller
    than wide in degrees), so thousands of copies stay below 85 N."""
    cols = math.ceil(math.sqrt(copies * 2.5))
    rows = math.ceil(copies / cols)
    step_lon = (bbox[2] - bbox[0]) * (1 + tile_pbf.MARGIN) + 1e-4
    step_lat = (bbox[3] - bbox[1]) * (1 + tile_pbf.MARGIN) + 1e-4
    if bbox[3] + (rows - 1) * step_lat > 85.0 or bbox[0] + (cols - 1) * step_lon > 180.0:
        raise ValueError(f"{copies} copies do not fit the globe")
    return [((c % cols) * step_lon, (c // cols) * step_lat) for c in range(copies)]


def _esc(s: str) -> str:
    """OPL escaping: space, separators and control characters as %hex%."""
    return "".join(f"%{ord(ch):x}%" if ch in " \n,=@%" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in s)


def _tags(tags: list[tuple[str, str]]) -> str:
    return ",".join(f"{_esc(k)}={_esc(v)}" for k, v in tags)


def write_tiled(src: tile_pbf.Source, out: Path, offsets: list[tuple[float, float]]) -> None:
    """tile_pbf.tile's copies (same ids, locations, tags, versions, order) written as OPL text into
    `osmium cat`: 6x faster than pyosmium's writer, which needs ~40 min for 1.2 GB. `osmium diff` finds
    no difference from tile_pbf.tile's output (checked at 16 copies)."""
    step = {t: tile_pbf.id_step(m) for t, m in src.max_id.items()}
    nodes = [(i, x, y, _tags(t)) for i, x, y, t in src.nodes]
    ways = [(i, refs, _tags(t)) for i, refs, t in src.ways]
    rels = [(i, [(ty, ref, _esc(role)) for ty, ref, role in mem], _tags(t)) for i, mem, t in src.relations]
    cmd = ["osmium", "cat", "-F", "opl", "-o", str(out), "--overwrite", "-"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    w = proc.stdin
    for c, (dlon, dlat) in enumerate(offsets):
        dn = c * step["n"]
        w.write(
            "".join([f"n{i + dn} v1 T{t} x{x + dlon:.7f} y{y + dlat:.7f}\n" for i, x, y, t in nodes]).encode()
        )
    for c in range(len(offsets)):
        dn, dw = c * step["n"], c * step["w"]
        lines = [f"w{i + dw} v1 T{t} N{','.join(f'n{r + dn}' for r in refs)}\n" for i, refs, t in ways]
        w.write("".join(lines).encode())
    for c in range(len(offsets)):
        d = {t: c * s for t, s in step.items()}
        lines = [
            f"r{i + d['r']} v1 T{t} M{','.join(f'{ty}{ref + d[ty]}@{role}' for ty, ref, role in mem)}\n"
            for i, mem, t in rels
        ]
        w.write("".join(lines).encode())
    w.close()
    if proc.wait():
        raise RuntimeError(f"osmium cat failed writing {out}")


def tiled(copies: int) -> Path:
    """The cached tiled input with `copies` copies, built on first use."""
    out = CACHE / f"liechtenstein-x{copies}.osm.pbf"
    if not out.exists():
        src = tile_pbf.read_source(SOURCE)
        try:
            offsets = tile_pbf.copy_offsets(src.bbox, copies)
        except ValueError:
            offsets = wide_offsets(src.bbox, copies)
        tmp = out.with_suffix(".part.pbf")
        CACHE.mkdir(parents=True, exist_ok=True)
        write_tiled(src, tmp, offsets)
        tmp.rename(out)
    return out


def worker(tool: str, pbf: str, level: int, workers: int, target_mb: float) -> dict:
    """Runs inside the measured subprocess: one tool on one file."""
    import resource

    from s2vec_core import osm, shards

    target = int(target_mb * (1 << 20))
    t0 = time.perf_counter()
    res: dict = {}
    if tool == "whole":
        res["rows"] = osm.extract_cells_long(pbf, level).height
    elif tool == "sharded":
        res["rows"] = 0
        for frame in shards.iter_sharded(pbf, level, workers=workers, target_bytes=target):
            res["rows"] += frame.height
        res["shards"] = shards.plan_shards(pbf, target).cells.size + 1
    elif tool == "split":
        plan = shards.plan_shards(pbf, target)
        with tempfile.TemporaryDirectory(prefix="s2vec-bench-split-") as tmp:
            files = shards.split(pbf, plan.shards(), Path(tmp))
            res["largest_shard_mb"] = max(f.stat().st_size for f in files) / 1e6
            res["shard_files_mb"] = sum(f.stat().st_size for f in files) / 1e6
        res["shards"] = len(files)
    else:
        raise ValueError(tool)
    res["wall_s"] = time.perf_counter() - t0
    # Linux: KiB. The measuring wrapper sees the largest process; this splits it into the calling
    # process and its helpers (shard processes, osmium-tool, the area worker).
    res["self_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["children_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return res


def run_one(tool: str, pbf: Path, args: argparse.Namespace) -> dict:
    """One tool in its own subprocess under the rusage wrapper."""
    if tool == "peer":
        cmd = [sys.executable, str(ROOT / "bench" / "bench_extract.py"), str(pbf), "--worker", "peer"]
    else:
        cmd = [sys.executable, __file__, "--worker", tool, str(pbf)]
        cmd += [
            "--level",
            str(args.level),
            "--workers",
            str(args.workers),
            "--target-mb",
            str(args.target_mb),
        ]
    stdout, usage = bench_extract.run_measured(cmd, f"{tool} on {pbf}")
    res = json.loads(stdout)
    res["largest_process_mb"] = usage["maxrss_kib"] / 1024
    res["all_processes_mb"] = max(usage["maxrss_kib"], usage["tree_rss_kib"]) / 1024
    res["cpu_s"] = usage["cpu_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="320,1280,2560", help="tiled copies of Liechtenstein per input")
    ap.add_argument("--level", type=int, default=17)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="shard processes at once")
    ap.add_argument("--target-mb", type=float, default=48.0, help="PBF MiB per shard")
    ap.add_argument("--tools", default="peer,whole,split,sharded")
    ap.add_argument("--build", action="store_true", help="only build the tiled inputs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("pbf", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.pbf, args.level, args.workers, args.target_mb)))
        return 0
    inputs = [tiled(int(c)) for c in args.sizes.split(",")]
    if args.build:
        return 0
    tools = args.tools.split(",")
    load_before = os.getloadavg()[0]
    rows = []
    for pbf in inputs:
        results = {}
        for t in tools:
            results[t] = run_one(t, pbf, args)
            print(pbf.name, t, json.dumps(results[t]), file=sys.stderr)
        rows.append((pbf, results))
    load_after = os.getloadavg()[0]
    print(
        f"machine: {bench_extract.machine()}; load average (1 min) before / after: {load_before:.1f} / {load_after:.1f}"
    )
    print(
        f"level {args.level}, {args.workers} shard processes at once, {args.target_mb:g} MiB of PBF per shard\n"
    )
    print(
        "| input | tool | shards | wall s | CPU s | largest process MB | calling process MB "
        "| all processes MB (sum) | tagged objects/s | vs peer |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pbf, results in rows:
        peer = results.get("peer")
        for t, r in results.items():
            name = f"{pbf.name} ({pbf.stat().st_size / 1e6:.0f} MB)"
            speed = ratio = "-"
            if peer and t != "split":
                speed = f"{peer['tagged_objects'] / r['wall_s']:,.0f}"
                ratio = f"{peer['wall_s'] / r['wall_s']:.2f}x"
            self_mb = f"{r['self_rss_mb']:.0f}" if "self_rss_mb" in r else "-"
            print(
                f"| {name} | {t} | {r.get('shards', 1)} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
                f"| {r['largest_process_mb']:.0f} | {self_mb} | {r['all_processes_mb']:.0f} | {speed} | {ratio} |"
            )
        if "whole" in results and "sharded" in results:
            same = results["whole"]["rows"] == results["sharded"]["rows"]
            print(f"<!-- {pbf.name}: {results['whole']['rows']:,} rows whole, sharded the same: {same} -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
