"""Data-parallel training throughput: the same config trained by `torchrun -m s2vec_core.ddp` with 1 and
with N processes, images/s from each run's JSON result (training, held-out scoring and checkpoints, not
process start-up), and the wall time of the whole launch.

Data: the real Liechtenstein rasters at the default grid (13/17, context ring 2) made by
`s2vec_core.pipeline` as the assets make them, tiled to `--images` (as bench_train.py does for
inference), default CPU model config. Each process gets `--threads` intra-op threads (default cores /
processes, so that both runs use the whole machine; 1 compares processes at equal threads). Runs
alternate (1, N, 1, N, ...) so that load from other processes hits both alike; the best of `--repeats`
is reported. Usage:

    .venv/bin/python bench/bench_ddp.py [--processes 2] [--images 2048] [--epochs 2] [--batch-size 64]
                                        [--threads T] [--repeats 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_train import region_shards, tiled_shards

from s2vec_core.model_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def threads_each(processes: int, threads: int | None) -> int:
    return threads or max(1, (os.cpu_count() or 1) // processes)


def launch(
    processes: int, threads: int, shards: Path, workdir: Path, config: TrainConfig, device: str
) -> dict:
    """One torchrun launch from scratch; its JSON result plus `wall_s` of the whole launch."""
    checkpoint, result = workdir / f"ddp{processes}.pt", workdir / f"ddp{processes}.json"
    checkpoint.unlink(missing_ok=True)
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        + ["-m", "s2vec_core.ddp", "--shards", str(shards), "--checkpoint", str(checkpoint)]
        + ["--train-config", json.dumps(config.to_dict()), "--device", device, "--result", str(result)],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    return json.loads(result.read_text()) | {"wall_s": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, help="intra-op threads per process (default: cores / processes)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tiled_shards(region_shards(workdir / "region"), args.images, workdir / "rasters")
        runs: dict[int, list[dict]] = {1: [], args.processes: []}
        for _ in range(args.repeats):
            for n, done in runs.items():
                threads = threads_each(n, args.threads)
                done.append(launch(n, threads, workdir / "rasters", workdir, config, args.device))
    best = {n: max(r, key=lambda out: out["images_per_s"]) for n, r in runs.items()}
    one, many = best[1], best[args.processes]
    load = os.getloadavg()[0]
    print(
        f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}`  \n"
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.device}, load average {load:.1f} after the runs; {args.images} images "
        f"of 16x16, default model ({one['parameters']:,} parameters), batch {args.batch_size} (global), "
        f"{args.epochs} epochs, best of {args.repeats}.\n"
    )
    print("| processes | backend | threads each | images/s | launch wall s | vs 1 process |")
    print("|---|---|---|---|---|---|")
    for n, out in best.items():
        speed = out["images_per_s"]
        print(
            f"| {n} | {out['backend'] or '-'} | {threads_each(n, args.threads)} | {speed:.0f} | "
            f"{out['wall_s']:.1f} | {speed / one['images_per_s']:.2f}x |"
        )
    print(
        f"\nfinal training loss: 1 process {one['losses'][-1]:.5f}, {args.processes} {many['losses'][-1]:.5f}"
    )


if __name__ == "__main__":
    main()
