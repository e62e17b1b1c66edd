"""Peak memory and wall of the features and raster stages on one PBF: the region at once against range by
range (what `cell_features` and `raster_tensors` run now), each way in its own process, same output.

Features: `whole` is `pipeline.features` (every long row and wide frame of the region) written as one
frame, what `cell_features` did; `by-range` is `pipeline.features_by_range` staged with
`features.stage_by_level` and streamed into one commit, what it does now. Both write a `cell_features`
Delta table and print an order-free digest of its rows (equal when the tables are).

Rasters, from that table, with the default grid (13 / 17, context ring 2): `whole` makes every image
at once (`raster.rasterize`), `chunked` reads the region's pixel rows at once and makes a shard at a
time (`raster.rasterize_chunks`, what `raster_tensors` did), `by-range` reads each shard's rows by cell
range (`raster.rasterize_by_range`, what it does now). Each prints the content hash of its shards.

The rasters read the table the last features way wrote. Peak RSS: the largest process of the way's tree (shard workers included) and the tree's sampled sum.

    python bench/bench_rasters.py bench/data/liechtenstein-x40.osm.pbf
    python bench/bench_rasters.py bench/data/liechtenstein-x320.osm.pbf --features by-range --rasters by-range
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

from s2vec_core import features, pipeline, raster, warehouse
from s2vec_core.tables import CELL_FEATURES

GRID = pipeline.DEFAULT_GRID
REGION = "bench"
FEATURE_WAYS = ("whole", "by-range")
RASTER_WAYS = ("whole", "chunked", "by-range")
PIXELS = {"region": REGION, "level": GRID.pixel_level}


def features_worker(way: str, pbf: Path, uri: str) -> None:
    started = time.perf_counter()
    if way == "whole":
        df = pipeline.features(pbf, REGION, GRID.feature_levels)
    else:
        staging = tempfile.TemporaryDirectory(prefix="s2vec-bench-staging-")
        df = features.stage_by_level(
            pipeline.features_by_range(pbf, REGION, GRID.feature_levels), staging.name
        )
    warehouse.write_partition(df, uri, {"region": REGION}, spec=CELL_FEATURES)
    json.dump({"wall_s": time.perf_counter() - started}, sys.stdout)


def digest(uri: str) -> dict:
    """Rows and an order-free digest of the table's rows (the sum of their hashes), read in batches."""
    rows, total = 0, 0
    for batch in warehouse.scan_table(uri, {"region": REGION}).collect_batches():
        rows += batch.height
        total = (total + int(batch.hash_rows(seed=0).sum())) % 2**64
    return {"rows": rows, "digest": f"{total:016x}"}


def raster_worker(way: str, uri: str, out: Path) -> None:
    started = time.perf_counter()
    if way == "whole":
        rasters = pipeline.rasters(warehouse.read_table(uri, PIXELS), GRID)
        index = raster.write_shards(rasters, out)
    elif way == "chunked":  # the rows handed over, so the rasteriser can free them
        index = raster.write_shards(pipeline.raster_chunks(warehouse.read_table(uri, PIXELS), GRID), out)
    else:
        ids = warehouse.scan_table(uri, PIXELS, columns=["cell_id"]).collect_batches()
        chunks = pipeline.raster_chunks_by_range(
            lambda lo, hi: warehouse.scan_table(uri, PIXELS, cell_range=(lo, hi)),
            (batch["cell_id"].to_numpy() for batch in ids),
            GRID,
        )
        index = raster.write_shards(chunks, out)
    meta = json.loads((out / raster.META_FILE).read_text())
    json.dump(
        {"wall_s": time.perf_counter() - started, "images": index.height, "sha256": meta["sha256"]},
        sys.stdout,
    )


def measured(args: list[str], what: str) -> tuple[dict, float, float]:
    """The worker's JSON, its largest process's and its tree's peak RSS (MB)."""
    stdout, usage = run_measured([sys.executable, __file__, *args], what)
    return json.loads(stdout), usage["maxrss_kib"] / 1024, usage["tree_rss_kib"] / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pbf", type=Path)
    ap.add_argument("--features", default=",".join(FEATURE_WAYS), help="subset of whole,by-range")
    ap.add_argument("--rasters", default=",".join(RASTER_WAYS), help="subset of whole,chunked,by-range")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--uri", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        stage, way = args.worker.split(":")
        if stage == "features":
            features_worker(way, args.pbf, args.uri)
        else:
            raster_worker(way, args.uri, args.out)
        return
    print(f"{args.pbf.name}: {args.pbf.stat().st_size / 2**20:.0f} MB")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    print("| stage | way | wall s | rows / images | largest process MB | all processes MB | digest |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="s2vec-bench-rasters-") as tmp:
        for way in args.features.split(","):
            # The rasters read the last table written (by-range's by default: its row groups are small).
            uri = str(Path(tmp) / way / "cell_features")
            res, largest, tree = measured([str(args.pbf), "--worker", f"features:{way}", "--uri", uri], way)
            res.update(digest(uri))  # here, outside the measured process
            print(
                f"| features | {way} | {res['wall_s']:.1f} | {res['rows']:,} | {largest:,.0f} | {tree:,.0f} "
                f"| {res['digest']} |",
                flush=True,
            )
        pixels = pl.scan_delta(uri).filter(pl.col("level") == GRID.pixel_level).select(pl.len()).collect()
        print(f"pixel rows at level {GRID.pixel_level}: {pixels.item():,}")
        for way in args.rasters.split(","):
            out = Path(tmp) / f"rasters-{way}"
            cmd = [str(args.pbf), "--worker", f"rasters:{way}", "--uri", uri, "--out", str(out)]
            res, largest, tree = measured(cmd, way)
            print(
                f"| rasters | {way} | {res['wall_s']:.1f} | {res['images']:,} | {largest:,.0f} | {tree:,.0f} "
                f"| {res['sha256'][:12]} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
