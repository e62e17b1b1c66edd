"""Distributed data-parallel MAE training: the entry point torchrun runs, and its process group.

    torchrun --standalone --nproc_per_node N -m s2vec_core.ddp \\
        --shards DIR [DIR ...] --checkpoint PATH [--train-config JSON] [--model-config JSON] \\
        [--taxonomy-version V] [--device auto|cpu|cuda] [--result PATH]

- `--shards`: raster shard directories (`raster.open_shards`), read by every process;
- `--checkpoint`: the `train` checkpoint, resumed if it exists (under any number of processes);
- `--train-config`: a JSON object of `TrainConfig` fields (default: all defaults); `batch_size` is the
  global batch and must be a multiple of N;
- `--model-config`: a JSON object of `MAEConfig` fields (default: `model_config.default_model_config`);
- `--device`: "auto" takes CUDA when there is one; CUDA means cuda:LOCAL_RANK with NCCL, CPU gloo;
- `--result`: where rank 0 writes the JSON result: `world_size`, `backend`, `device`, `losses` (mean
  training loss per epoch), `holdout` (per epoch), `baseline_ratio`, `epoch_seconds`, `images_per_s`
  (all processes together), `parameters`, `checkpoint`, `resumed_from_epoch`, `stopped_early`.

Rank 0 prints one line per epoch. A failed run resumes from its last checkpoint when launched again.
For torchrun's own restarts (`--max-restarts`) set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: with torch
2.13's shared rendezvous store the restarted gloo workers were seen to read the previous attempt's
addresses and fail to connect (pytorch/pytorch#135712). Run without torchrun (plain
`python -m s2vec_core.ddp ...`) it trains in one process with no process group, exactly as
`train.train`. The training itself, and why N processes train the same model as one, is
`s2vec_core.train`'s (its module docstring); `read_result` reads the JSON back as a `TrainResult`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.distributed as dist

from s2vec_core import leftovers
from s2vec_core.model import MAEConfig
from s2vec_core.raster import open_shards
from s2vec_core.train import TrainConfig, TrainResult, process_group, select_device, train


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[torch.device]:
    """This process's device, inside torchrun's process group while the block runs.

    torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) is the rendezvous: NCCL
    with one GPU per process (cuda:LOCAL_RANK), gloo on CPU. Without WORLD_SIZE there is no group."""
    dev = select_device(device)
    if "WORLD_SIZE" not in os.environ:
        yield dev
        return
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dist.init_process_group("gloo")
    try:
        yield dev
    finally:
        dist.destroy_process_group()


def result_dict(result: TrainResult) -> dict:
    """The JSON result of a run (see the module docstring)."""
    _, world = process_group()
    out = asdict(result) | {"checkpoint": str(result.checkpoint), "baseline_ratio": result.baseline_ratio}
    return out | {"world_size": world, "backend": dist.get_backend() if world > 1 else None}


def read_result(path: str | os.PathLike) -> TrainResult:
    """The TrainResult rank 0 wrote to `--result` (for a caller that launched torchrun)."""
    d = json.loads(Path(path).read_text())
    values = {f.name: d[f.name] for f in fields(TrainResult)}
    return TrainResult(**values | {"checkpoint": Path(values["checkpoint"])})


def _json_config(text: str | None, cls: type, what: str) -> dict | None:
    if text is None:
        return None
    d = json.loads(text)
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise SystemExit(f"unknown {what} keys {sorted(unknown)}")
    return d


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m s2vec_core.ddp", description=__doc__.split("\n")[0])
    p.add_argument("--shards", nargs="+", required=True, help="raster shard directories")
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="checkpoint to write (resumed if it exists)"
    )
    p.add_argument("--train-config", help="JSON object of TrainConfig fields; batch_size is the global batch")
    p.add_argument("--model-config", help="JSON object of MAEConfig fields (default: the shards' default)")
    p.add_argument("--taxonomy-version", default="")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (cuda:LOCAL_RANK per process)")
    p.add_argument("--result", type=Path, help="JSON file rank 0 writes the result to")
    return p


def main(
    argv: list[str] | None = None, on_epoch_end: Callable[[int, float, dict[str, float]], None] | None = None
) -> TrainResult:
    """Train as the command line says; `on_epoch_end` runs on every process after each checkpoint."""
    args = parser().parse_args(argv)
    train_config = TrainConfig.from_dict(_json_config(args.train_config, TrainConfig, "train config") or {})
    model_dict = _json_config(args.model_config, MAEConfig, "model config")
    shards = open_shards(args.shards)
    with distributed(args.device) as dev:
        rank, world = process_group()

        def progress(epoch: int, loss: float, holdout: dict[str, float]) -> None:
            if rank == 0:
                held = f" held-out {holdout['total']:.4f}" if holdout else ""
                print(
                    f"epoch {epoch}/{train_config.epochs} loss {loss:.4f}{held} ({world} processes)",
                    flush=True,
                )
            if on_epoch_end is not None:
                on_epoch_end(epoch, loss, holdout)

        result = train(
            shards,
            args.checkpoint,
            MAEConfig.from_dict(model_dict) if model_dict else None,
            train_config,
            args.taxonomy_version,
            str(dev),
            progress,
        )
        if rank == 0:
            print(f"{result.images_per_s:.0f} images/s on {world} x {dev}", flush=True)
            if args.result is not None:
                out = result_dict(result)
                tmp = leftovers.temporary_sibling(args.result)
                tmp.write_text(json.dumps(out, indent=1))
                os.replace(tmp, args.result)
    return result


if __name__ == "__main__":
    main()
