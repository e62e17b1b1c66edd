"""Peak memory of making a region's rasters: all images at once (`raster.rasterize`, what raster_tensors
did) against one shard at a time (`raster.rasterize_chunks`, what it does now), same output.

The region's `cell_features` rows at the pixel level (what raster_tensors reads from the warehouse) are
made once with `s2vec_core.pipeline.features` and saved as parquet; each way then runs in its own
process under bench_extract's rusage wrapper, reads them, rasterises with the default grid (13 / 17,
context ring 2) and writes the shards. Prints wall, peak RSS and the content hash of each (equal when
both wrote the same shards).

    python bench/bench_rasters.py data/osm/liechtenstein-2013-08-03.osm.pbf
    python bench/bench_rasters.py bench/data/liechtenstein-x20.osm.pbf --ways chunked   # too big at once
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl
from bench_extract import machine, run_measured

from s2vec_core import pipeline, raster

GRID = pipeline.DEFAULT_GRID
WAYS = ("whole", "chunked")


def worker(way: str, pixels_path: Path, out: Path) -> None:
    started = time.perf_counter()
    if way == "whole":
        rasters = raster.rasterize(
            pl.read_parquet(pixels_path), GRID.image_level, GRID.pixel_level, GRID.context_ring
        )
        index = raster.write_shards(rasters, out)
    else:  # as raster_tensors does it: the rows handed over, so the rasteriser can free them
        index = raster.write_shards(pipeline.raster_chunks(pl.read_parquet(pixels_path), GRID), out)
    meta = json.loads((out / raster.META_FILE).read_text())
    json.dump(
        {"wall_s": time.perf_counter() - started, "images": index.height, "sha256": meta["sha256"]},
        sys.stdout,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pbf", type=Path)
    ap.add_argument("--ways", default=",".join(WAYS), help="comma-separated subset of whole,chunked")
    ap.add_argument("--worker", choices=WAYS, help=argparse.SUPPRESS)
    ap.add_argument("--pixels", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.pixels, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="s2vec-bench-rasters-") as tmp:
        started = time.perf_counter()
        features = pipeline.features(args.pbf, "bench", GRID.feature_levels)
        pixels_path = Path(tmp) / "pixels.parquet"
        pixels = features.filter(pl.col("level") == GRID.pixel_level)
        pixels.write_parquet(pixels_path)
        print(
            f"{args.pbf.name}: {args.pbf.stat().st_size / 2**20:.0f} MB, {pixels.height:,} pixel rows "
            f"({pixels.estimated_size() / 2**20:.0f} MB in memory), features in {time.perf_counter() - started:.0f} s"
        )
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
        del features, pixels
        print("| way | wall s | images | peak RSS MB | content sha256 |\n|---|---|---|---|---|")
        for way in args.ways.split(","):
            cmd = [sys.executable, __file__, str(args.pbf), "--worker", way, "--pixels", str(pixels_path)]
            stdout, usage = run_measured([*cmd, "--out", str(Path(tmp) / way)], way)
            res = json.loads(stdout)
            rss = max(usage["maxrss_kib"], usage["tree_rss_kib"]) / 1024
            print(f"| {way} | {res['wall_s']:.1f} | {res['images']:,} | {rss:,.0f} | {res['sha256'][:12]} |")


if __name__ == "__main__":
    main()
