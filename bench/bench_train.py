"""Training and inference throughput of the S2Vec MAE, against a bare torch loop on the same model and data.

Data: the real Liechtenstein extract through `s2vec_core.pipeline` as the assets run it (sharded
extraction, features, rasters at image level 13 / pixel level 17 with the default context ring: 16x16
images, all taxonomy channels). For each model config (the product default, `default_model_config`, and
the paper scale with the same context stream and layout groups) it measures

- s2vec: `pipeline.fit` end to end per epoch (memory-mapped shards, on-the-fly normalisation,
  AdamW + warmup/cosine, gradient clipping, atomic checkpoint after every epoch), images/s;
- bare: the same model and optimiser in a minimal loop over pre-normalised in-memory tensors (images
  and context windows; forward, backward, step; no clipping, scheduler, checkpoint or data pipeline),
  images/s;
- inference: `pipeline.embed` cells/s (image and token embeddings, normalised into `cell_embeddings`
  rows, as the asset makes them), and the Delta write of those rows checked against their spec.

Runs alternate (bare, s2vec, bare, s2vec, ...) so that load from other processes hits both alike; the
best epoch of each is reported. Usage:

    .venv/bin/python bench/bench_train.py [--configs default,paper] [--epochs 3] [--device auto]
                                          [--threads N] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from s2vec_core import pipeline
from s2vec_core.embed import load_model
from s2vec_core.model import MAEConfig, MaskedAutoencoder, parameter_count
from s2vec_core.model_config import default_model_config
from s2vec_core.raster import Rasters, ShardSet, open_shards
from s2vec_core.tables import CELL_EMBEDDINGS
from s2vec_core.train import TrainConfig, autocast_dtype, fit_norms, select_device
from s2vec_core.warehouse import write_partition

REPO = Path(__file__).resolve().parents[1]
PBF = REPO / "data" / "osm" / "liechtenstein-2013-08-03.osm.pbf"
REGION = "liechtenstein"
SECTION = "## Training and inference"


def region_shards(directory: Path) -> ShardSet:
    """Liechtenstein's shards at the default grid, made by the stages the assets run."""
    features = pipeline.features(PBF, REGION)
    pipeline.write_rasters(pipeline.rasters(features), directory, REGION)
    return open_shards(directory)


def configs(shards: ShardSet) -> dict[str, MAEConfig]:
    """The product's default config for these shards and the paper scale with its context and layout."""
    default = default_model_config(shards)
    paper = MAEConfig.paper(default.in_channels, context_size=default.context_size)
    return {"default": default, "paper": dataclasses.replace(paper, layout_groups=default.layout_groups)}


def bare_epoch(
    model: MaskedAutoencoder,
    data: torch.Tensor,
    context: torch.Tensor | None,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
) -> float:
    """One epoch of the minimal loop; returns images/s."""
    if id(model) not in bare_epoch.optimizers:
        bare_epoch.optimizers[id(model)] = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer = bare_epoch.optimizers[id(model)]
    amp = autocast_dtype(device)
    sync(device)
    start = time.perf_counter()
    order = torch.randperm(data.shape[0], generator=generator)
    for s in range(0, data.shape[0], batch_size):
        rows = order[s : s + batch_size]
        x = data[rows].to(device, non_blocking=True)
        ctx = context[rows].to(device, non_blocking=True) if context is not None else None
        with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
            loss = model(x, ctx, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return data.shape[0] / (time.perf_counter() - start)


bare_epoch.optimizers = {}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    name: str,
    config: MAEConfig,
    shards,
    data: torch.Tensor,
    context: torch.Tensor | None,
    epochs: int,
    batch_size: int,
    device: torch.device,
    workdir: Path,
    big_images: int = 0,
) -> dict:
    torch.manual_seed(0)
    bare_model = MaskedAutoencoder(config).to(device).train()
    generator = torch.Generator().manual_seed(0)
    bare, ours = [], []
    for rep in range(2):
        bare += [bare_epoch(bare_model, data, context, batch_size, device, generator) for _ in range(epochs)]
        # Wall time between the ends of consecutive epochs: the whole loop including the checkpoint write.
        ends: list[float] = []
        checkpoint = workdir / f"{name}-{rep}.pt"
        pipeline.fit(
            shards,
            checkpoint,
            config,
            TrainConfig(epochs=epochs + 1, batch_size=batch_size, seed=rep),
            device=str(device),
            on_epoch_end=lambda e, loss, held, ends=ends: ends.append(time.perf_counter()),
        )
        ours += [len(shards) / (b - a) for a, b in itertools.pairwise(ends)]
        print(
            f"  {name} round {rep + 1}: bare {max(bare):.1f} img/s, s2vec {max(ours):.1f} img/s", flush=True
        )

    trained = load_model(checkpoint, device=str(device))
    pipeline.embed(trained, shards, REGION)  # warm-up
    row = {
        "config": name,
        "parameters": parameter_count(bare_model),
        "images": len(shards),
        "bare_img_s": max(bare),
        "s2vec_img_s": max(ours),
        "ratio": max(ours) / max(bare),
        "s2vec_epoch_s": len(shards) / max(ours),
    }
    sizes = [("region", shards)]
    if big_images:
        sizes.append(("big", tiled_shards(shards, big_images, workdir / f"big-{name}")))
    for label, ss in sizes:
        t0 = time.perf_counter()
        frame = pipeline.embed(trained, ss, REGION).rows
        sync(device)
        infer_s = time.perf_counter() - t0
        uri = str(workdir / f"emb-{name}-{label}")
        partition = {"region": REGION, "model_version": trained.model_version}
        writes = []
        for _ in range(2):  # the first creates the table, the second replaces the partition (a re-run)
            t0 = time.perf_counter()
            write_partition(
                frame, uri, partition, row_group_rows=CELL_EMBEDDINGS.row_group_rows, spec=CELL_EMBEDDINGS
            )
            writes.append(time.perf_counter() - t0)
        row[label] = {
            "cells": len(ss),
            "infer_s": infer_s,
            "infer_cells_s": len(ss) / infer_s,
            "create_s": writes[0],
            "rewrite_s": writes[1],
        }
    return row


def tiled_shards(shards, n: int, directory: Path):
    """`n` images made of the region's images (and context windows) repeated, under distinct image-cell
    ids: a bigger region of the same kind for the inference, write and data-parallel timings."""
    reps = -(-n // len(shards))
    rows = np.tile(np.arange(len(shards)), reps)[:n]
    level, ring = shards.meta["image_level"], shards.meta["context_ring"]
    # Consecutive image cells along the curve from the region's first one: distinct, valid ids.
    step = np.uint64(1) << np.uint64(2 * (30 - level) + 1)
    ids = shards.image_ids[0] + step * np.arange(n, dtype=np.uint64)
    context = shards.take_context(rows) if shards.has_context else None
    tiled = Rasters(ids, shards.take(rows), shards.channels, level, shards.meta["pixel_level"], context, ring)
    pipeline.write_rasters(tiled, directory, REGION)
    return open_shards(directory)


def markdown(rows: list[dict], device: torch.device, command: str) -> str:
    cpu = platform.processor() or platform.machine()
    grid = pipeline.DEFAULT_GRID
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        (
            f"Machine: {device.type} ({torch.cuda.get_device_name() if device.type == 'cuda' else cpu}), "
            f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"data: Liechtenstein 2013 through `s2vec_core.pipeline` at levels {grid.image_level}/"
            f"{grid.pixel_level}, context ring {grid.context_ring} ({rows[0]['images']} images of "
            f"{grid.image_size}x{grid.image_size}).  "
        ),
        (
            "s2vec = an epoch of `pipeline.fit` (memory-mapped shards, normalisation, AdamW + schedule, "
            "clipping, checkpoint write; first epoch excluded as warm-up); bare = forward/backward/AdamW step over "
            "pre-normalised in-memory images and context windows, same model and batch size. Best epoch of each "
            "over two interleaved rounds."
        ),
        "",
        "| config | params | bare loop img/s | s2vec img/s | s2vec / bare | s2vec epoch s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['parameters']:,} | {r['bare_img_s']:.1f} | {r['s2vec_img_s']:.1f} | "
            f"{r['ratio']:.2f} | {r['s2vec_epoch_s']:.2f} |"
        )
    lines += [
        "",
        (
            "Inference (`pipeline.embed`, batch 256: image and token embeddings as `cell_embeddings` rows) and "
            "the Delta write of those rows (`write_partition` against the table's spec: the first "
            "write creates the table, the second replaces the region's partition as a re-run does); "
            '"big" = the region\'s images tiled to a bigger region.'
        ),
        "",
        "| config | cells | inference s | cells/s | create write s (adds) | re-run write s (adds) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for label in ("region", "big"):
            if label in r:
                m = r[label]
                lines.append(
                    f"| {r['config']} | {m['cells']:,} | {m['infer_s']:.3f} | {m['infer_cells_s']:.0f} | "
                    f"{m['create_s']:.3f} ({100 * m['create_s'] / m['infer_s']:.1f}%) | "
                    f"{m['rewrite_s']:.3f} ({100 * m['rewrite_s'] / m['infer_s']:.1f}%) |"
                )
    worst_loop = min(r["ratio"] for r in rows)
    lines += [
        "",
        (
            f"Goals (issue 6): training loop >= 0.90 of the bare loop: lowest ratio {worst_loop:.2f} "
            f"({'met' if worst_loop >= 0.9 else 'not met'}). Delta write adds < 10% to inference: see the table; a "
            "write costs a fixed ~10-30 ms (Delta commit, table creation), so it is under 1% from a few thousand "
            "cells and above 10% only for the tiny default model on a region of a few hundred cells."
        ),
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this script's `## ` section, leaving the others as they are."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("\n" + old[end + 1 :] if end >= 0 else "")
    path.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="default,paper")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--big-images",
        type=int,
        default=20_000,
        help="images of the tiled bigger region for the inference / Delta write timing",
    )
    parser.add_argument("--write", type=Path, help="update this file's section (e.g. BENCHMARKS.md)")
    parser.add_argument("--json", type=Path, help="also dump the rows as JSON here")
    args = parser.parse_args()
    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        shards = region_shards(workdir / "rasters")
        every = np.arange(len(shards))
        norm, context_norm = fit_norms(shards, every)
        data = torch.from_numpy(norm.apply(shards.take(every)))
        context = torch.from_numpy(context_norm.apply(shards.take_context(every))) if context_norm else None
        if device.type == "cuda":
            data = data.pin_memory()
            context = context.pin_memory() if context is not None else None
        by_name = configs(shards)
        for name in args.configs.split(","):
            print(f"{name}: {by_name[name]}", flush=True)
            # The big region only for the small model: the paper-scale encoder runs ~50 cells/s on a CPU.
            big = args.big_images if (name == "default" or device.type == "cuda") else 0
            rows.append(
                measure(
                    name,
                    by_name[name],
                    shards,
                    data,
                    context,
                    args.epochs,
                    args.batch_size,
                    device,
                    workdir,
                    big,
                )
            )
    command = "python bench/bench_train.py " + " ".join(sys.argv[1:])
    text = markdown(rows, device, command.strip())
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.write:
        write_section(args.write, text)
    return 0 if all(math.isfinite(r["ratio"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
