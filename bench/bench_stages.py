"""Per-core throughput of each pipeline stage on one PBF, and the planet on paper from it.

Each stage runs once on one core (torch and polars limited to one thread, extraction with `workers=1`:
one shard process at a time), in the order the asset graph runs them and through the same functions
(`s2vec_core.pipeline`, default `Grid`): extract (sharded as `cell_features` runs it, level 17) ->
cell_features (13, 15, 17; a piece at a time, staged and written to a Delta table in one commit) ->
rasters (13 / 17, context ring 2; each shard's rows read back from that table by cell range) -> one training epoch of the default
model -> embeddings (image and token rows, as `cell_embeddings` stores them). Peak RSS is the
high-water mark after the stage of this process or of its largest finished child (a shard process).
From the rates per MB of PBF it prints the hours a region of a given size takes with N workers
(stages that shard: extract, features, rasters, embeddings), an epoch of the default model on one CPU
core (measured rate), and an epoch of the paper-scale model on one or eight H200s (an estimate from FLOPs
at an assumed MFU: no GPU was measured).

    python bench/bench_stages.py bench/data/liechtenstein-x320.osm.pbf
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from s2vec_core import embed, features, pipeline, raster, warehouse
from s2vec_core.model import MAEConfig, MaskedAutoencoder, parameter_count
from s2vec_core.model_config import TrainConfig
from s2vec_core.tables import CELL_FEATURES

GRID = pipeline.DEFAULT_GRID
REGIONS_GB = {"city": 0.1, "Germany": 4.8, "Europe": 35.0, "planet": 86.0}
H200_BF16_FLOPS = 989e12  # dense bf16 peak, per GPU
ASSUMED_MFU = 0.3


def rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def timed(label: str, fn, rows: list[dict], **facts):
    start = time.perf_counter()
    out = fn()
    rows.append({"stage": label, "s": time.perf_counter() - start, "rss_mb": rss_mb(), **facts})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pbf", type=Path)
    p.add_argument("--workers", default="16,64", help="worker counts for the paper table")
    p.add_argument(
        "--sample-images", type=int, default=4096, help="images training and embedding are timed on"
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    mb = args.pbf.stat().st_size / 1e6
    rows: list[dict] = []
    stats: dict[str, int] = {}
    long = timed(
        "extract", lambda: pipeline.extract(args.pbf, GRID.pixel_level, workers=1, stats=stats), rows
    )
    rows[-1]["items"] = stats["tagged_nodes"] + stats["tagged_ways"] + stats["tagged_areas"]
    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "cell_features")
        pixels = {"region": "bench", "level": GRID.pixel_level}

        def make_features() -> int:
            """As cell_features writes them: a piece at a time, staged, one commit."""
            staged = features.stage_by_level(
                features.cell_features_by_range([long], GRID.feature_levels, "bench"), tmp
            )
            warehouse.write_partition(staged, uri, {"region": "bench"}, spec=CELL_FEATURES)
            return staged.select(pl.len()).collect().item()

        rows_written = timed("features", make_features, rows)
        rows[-1]["items"] = rows_written

        def make_rasters() -> pl.DataFrame:
            """As raster_tensors makes them: each shard's rows read from Delta by cell range."""
            ids = warehouse.scan_table(uri, pixels, columns=["cell_id"]).collect_batches()
            chunks = pipeline.raster_chunks_by_range(
                lambda lo, hi: warehouse.scan_table(uri, pixels, cell_range=(lo, hi)),
                (batch["cell_id"].to_numpy() for batch in ids),
                GRID,
            )
            return pipeline.write_rasters(chunks, Path(tmp) / "r", "bench")

        index = timed("rasters", make_rasters, rows)
        rows[-1]["items"] = index.height
        # Images and context windows as written (their non-zero values): what a region's rasters take on disk.
        raster_bytes = sum(f.stat().st_size for f in (Path(tmp) / "r").glob("*.npy")) / index.height
        made = raster.open_shards(Path(tmp) / "r")
        head = np.arange(min(args.sample_images, len(made)))
        rasters = raster.Rasters(
            made.image_ids[head],
            made.take(head),
            made.channels,
            GRID.image_level,
            GRID.pixel_level,
            made.take_context(head),
            GRID.context_ring,
        )
        # Training and inference rates do not depend on the region's size: time them on a sample.
        pipeline.write_rasters(rasters, Path(tmp) / "s", "bench")
        shards = raster.open_shards(Path(tmp) / "s")
        config = TrainConfig(epochs=2, batch_size=64, holdout_fraction=0.0)
        result = timed("train", lambda: pipeline.fit(shards, Path(tmp) / "c.pt", train_config=config), rows)
        rows[-1]["s"] = result.epoch_seconds[-1]  # the second epoch: the first warms up
        rows[-1]["items"] = len(shards)
        model = embed.load_model(Path(tmp) / "c.pt")
        timed("embed", lambda: pipeline.embed(model, shards, "bench"), rows)
        rows[-1]["items"] = len(shards)

    images = rows[2]["items"]
    # Seconds per MB of PBF for the whole region (training and inference scaled up from the sample).
    per_mb = {
        r["stage"]: r["s"] * (images / r["items"] if r["stage"] in ("train", "embed") else 1) / mb
        for r in rows
    }
    print(f"input {args.pbf.name}: {mb:.1f} MB; {platform.machine()}, {os.cpu_count()} cores, one thread")
    print(f"torch {torch.__version__}; training and inference timed on {rows[3]['items']:,} images\n")
    print("| stage | s | items | items/s per core | MB of PBF/s per core | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['stage']} | {r['s']:.1f} | {r['items']:,} | {r['items'] / r['s']:,.0f} | "
            f"{1 / per_mb[r['stage']]:.2f} | {r['rss_mb']:.0f} |"
        )
    images_per_mb = images / mb
    # The paper-scale model on the same 16x16 images (pixel patches), as a GPU would train it: ~6 FLOPs
    # per parameter per token (forward + backward), every token counted (the encoder sees only the
    # visible quarter, so this overstates the work).
    paper = MAEConfig.paper(len(shards.channels), int(shards.meta["context_shape"][-1]))
    tokens = paper.num_patches + paper.context_grid**2
    gpu_images_s = ASSUMED_MFU * H200_BF16_FLOPS / (6 * parameter_count(MaskedAutoencoder(paper)) * tokens)
    print(
        "\n| region | PBF GB | images (13/17) | "
        + " | ".join(f"CPU stages h, {n} workers" for n in args.workers.split(","))
        + " | rasters on disk GB | default model h/epoch, 1 core | paper model h/epoch, 1 / 8 H200 (estimate) |"
    )
    print("|---" * (5 + len(args.workers.split(",")) + 1) + "|")
    for name, gb in REGIONS_GB.items():
        size_mb = gb * 1e3
        cpu_s = sum(per_mb[s] for s in ("extract", "features", "rasters", "embed")) * size_mb
        region_images = images_per_mb * size_mb
        spread = " | ".join(f"{cpu_s / int(n) / 3600:.2f}" for n in args.workers.split(","))
        train_cpu = per_mb["train"] * size_mb / 3600
        gpu = region_images / gpu_images_s / 3600
        print(
            f"| {name} | {gb} | {region_images:,.0f} | {spread} | {region_images * raster_bytes / 1e9:,.1f} "
            f"| {train_cpu:.2f} | {gpu:.3f} / {gpu / 8:.4f} |"
        )


if __name__ == "__main__":
    main()
