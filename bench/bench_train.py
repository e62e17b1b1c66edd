"""Training and inference throughput of the S2Vec MAE, against a bare torch loop on the same model and data.

Data: the real Liechtenstein extract rasterised at image level 13 / pixel level 17 (16x16 images, all
taxonomy channels). For each model config (the small CPU default and the paper scale) it measures

- s2vec: `s2vec_core.train.train` end to end per epoch (memory-mapped shards, on-the-fly normalisation,
  AdamW + warmup/cosine, gradient clipping, atomic checkpoint after every epoch), images/s;
- bare: the same model and optimiser in a minimal loop over a pre-normalised in-memory tensor
  (forward, backward, step; no clipping, scheduler, checkpoint or data pipeline), images/s;
- inference: `s2vec_core.embed.embed_shards` cells/s, and the Delta write of those embeddings.

Runs alternate (bare, s2vec, bare, s2vec, ...) so that load from other processes hits both alike; the
best epoch of each is reported. Usage:

    .venv/bin/python bench/bench_train.py [--configs default,paper] [--epochs 3] [--device auto]
                                          [--threads N] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import contextlib
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

from s2vec_core.embed import embed_shards, embeddings_frame, load_model
from s2vec_core.features import cell_features
from s2vec_core.model import MAEConfig, MaskedAutoencoder, parameter_count
from s2vec_core.osm import extract_cells
from s2vec_core.raster import NormStats, Rasters, open_shards, rasterize, write_shards
from s2vec_core.train import TrainConfig, autocast_dtype, select_device, train
from s2vec_core.warehouse import write_partition

REPO = Path(__file__).resolve().parents[1]
PBF = REPO / "data" / "osm" / "liechtenstein-2013-08-03.osm.pbf"
SECTION = "## Training and inference"


def bare_epoch(
    model: MaskedAutoencoder,
    data: torch.Tensor,
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
        x = data[order[s : s + batch_size]].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
            loss = model(x, generator=generator)
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
        bare += [bare_epoch(bare_model, data, batch_size, device, generator) for _ in range(epochs)]
        # Wall time between the ends of consecutive epochs: the whole loop including the checkpoint write.
        ends: list[float] = []
        checkpoint = workdir / f"{name}-{rep}.pt"
        train(
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
    embed_shards(trained, shards)  # warm-up
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
        vectors = embed_shards(trained, ss)
        sync(device)
        infer_s = time.perf_counter() - t0
        frame = embeddings_frame("liechtenstein", ss.image_ids, 13, vectors, trained.model_version)
        uri = str(workdir / f"emb-{name}-{label}")
        partition = {"region": "liechtenstein", "model_version": trained.model_version}
        writes = []
        for _ in range(2):  # the first creates the table, the second replaces the partition (a re-run)
            t0 = time.perf_counter()
            write_partition(frame, uri, partition)
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
    """`n` images made of the region's images repeated, under distinct level-13 ids: a bigger region of
    the same kind for the inference and write timings."""
    reps = -(-n // len(shards))
    tensors = np.concatenate([shards.take(np.arange(len(shards)))] * reps)[:n]
    # Consecutive level-13 cells along the curve from the region's first one: distinct, valid ids.
    step = np.uint64(1) << np.uint64(2 * (30 - 13) + 1)
    ids = shards.image_ids[0] + step * np.arange(n, dtype=np.uint64)
    write_shards(Rasters(ids, tensors, shards.channels, 13, 17), directory)
    return open_shards(directory)


def markdown(rows: list[dict], device: torch.device, command: str) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        (
            f"Machine: {device.type} ({torch.cuda.get_device_name() if device.type == 'cuda' else cpu}), "
            f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"data: Liechtenstein 2013 rasters at levels 13/17 ({rows[0]['images']} images of 16x16).  "
        ),
        (
            "s2vec = an epoch of `s2vec_core.train.train` (memory-mapped shards, normalisation, AdamW + schedule, "
            "clipping, checkpoint write; first epoch excluded as warm-up); bare = forward/backward/AdamW step over "
            "a pre-normalised in-memory tensor, same model and batch size. Best epoch of each over two interleaved "
            "rounds."
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
            "Inference (`embed_shards`, batch 256) and the Delta write of its rows (`write_partition`: the first "
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

    features = cell_features(extract_cells(PBF, 17), (13, 17), "liechtenstein")
    rasters = rasterize(features, 13, 17)
    channels = len(rasters.channels)
    configs = {"default": MAEConfig(in_channels=channels), "paper": MAEConfig.paper(in_channels=channels)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_shards(rasters, workdir / "rasters")
        shards = open_shards(workdir / "rasters")
        norm = NormStats.fit(shards.chunks(), shards.channels)
        data = torch.from_numpy(norm.apply(shards.take(np.arange(len(shards)))))
        if device.type == "cuda":
            data = data.pin_memory()
        for name in args.configs.split(","):
            print(f"{name}: {configs[name]}", flush=True)
            # The big region only for the small model: the paper-scale encoder runs ~50 cells/s on a CPU.
            big = args.big_images if (name == "default" or device.type == "cuda") else 0
            rows.append(
                measure(name, configs[name], shards, data, args.epochs, args.batch_size, device, workdir, big)
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
