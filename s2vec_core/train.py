"""Self-supervised MAE training on raster shards: AdamW, warmup + cosine, clipping, resumable checkpoints.

One checkpoint file holds everything needed to resume or embed (model, optimiser, scheduler, epoch,
norm stats, configs, taxonomy version, the data/mask RNG state, the loss curve); it is rewritten
atomically after every epoch and read with `torch.load(weights_only=True)`, so it holds only tensors
and plain containers. The same seed gives the same weights on CPU whether or not a run was interrupted.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from s2vec_core.model import MAEConfig, MaskedAutoencoder
from s2vec_core.raster import NormStats, ShardSet


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation knobs. `warmup_fraction` of all steps ramp the learning rate up linearly, the rest
    follow a cosine to zero. `num_workers` applies on CUDA only (CPU reads batches in-process).
    Training sets up to `cache_mb` are normalised once and held in memory; larger ones stream from the
    memory-mapped shards and are normalised per batch on the device."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    num_workers: int = 4
    cache_mb: int = 2048

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"invalid TrainConfig {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class TrainResult:
    losses: list[float]          # mean training loss per epoch, all epochs so far
    epoch_seconds: list[float]
    images_per_s: float          # over the epochs run in this call
    device: str
    parameters: int
    checkpoint: Path
    resumed_from_epoch: int      # 0 for a fresh run


def select_device(requested: str = "auto", cuda_available: bool | None = None) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else is taken as given."""
    if requested != "auto":
        return torch.device(requested)
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    return torch.device("cuda" if cuda_available else "cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA; None (full fp32) elsewhere, so CPU runs stay exact and deterministic."""
    return torch.bfloat16 if device.type == "cuda" else None


def loader_options(device: torch.device, num_workers: int) -> dict:
    """DataLoader workers and pinned memory only feed a GPU; on CPU they would compete with compute."""
    if device.type == "cuda":
        return {"num_workers": num_workers, "pin_memory": True, "persistent_workers": False}
    return {"num_workers": 0, "pin_memory": False}


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _Batches(torch.utils.data.Dataset):
    """Item b = the tensors of the b-th batch of row indices (one vectorised read per batch)."""

    def __init__(self, fetch: Callable[[np.ndarray], np.ndarray], batches: list[np.ndarray]) -> None:
        self.fetch, self.batches = fetch, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> torch.Tensor:
        return torch.from_numpy(self.fetch(self.batches[b]))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """A fresh shuffle of `n` rows cut into batches (the last may be short)."""
    order = torch.randperm(n, generator=generator).numpy()
    return [order[s:s + batch_size] for s in range(0, n, batch_size)]


def _save_atomic(state: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict (tensors and plain containers only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def train(
    shards: ShardSet,
    checkpoint: str | os.PathLike,
    model_config: MAEConfig | None = None,
    train_config: TrainConfig = TrainConfig(),
    taxonomy_version: str = "",
    device: str = "auto",
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train (or resume) the MAE on `shards`, checkpointing to `checkpoint` after every epoch.

    If `checkpoint` exists it is resumed; its model/training config must then equal the given ones
    (a mismatch raises instead of silently mixing runs). `model_config` defaults to the small CPU
    config for the shards' channels and image size. Norm stats are fitted on `shards` on a fresh run.
    """
    checkpoint = Path(checkpoint)
    size = int(shards.meta["shape"][-1])
    if model_config is None:
        model_config = MAEConfig(in_channels=len(shards.channels), image_size=size)
    if (model_config.in_channels, model_config.image_size) != (len(shards.channels), size):
        raise ValueError(f"model expects {model_config.in_channels} channels of {model_config.image_size}px, "
                         f"shards hold {len(shards.channels)} of {size}px")
    if len(shards) == 0:
        raise ValueError("no training images")
    dev = select_device(device)
    amp = autocast_dtype(dev)

    torch.manual_seed(train_config.seed)
    model = MaskedAutoencoder(model_config).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    steps_per_epoch = math.ceil(len(shards) / train_config.batch_size)
    total = steps_per_epoch * train_config.epochs
    warmup = max(1, int(total * train_config.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    generator = torch.Generator().manual_seed(train_config.seed)

    start, losses, seconds = 0, [], []
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        if state["model_config"] != model_config.to_dict() or state["train_config"] != train_config.to_dict():
            raise ValueError(f"{checkpoint} was trained with another config; remove it or pass the same config")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"])
        norm = NormStats.from_dict(state["norm"])
        start, losses, seconds = state["epoch"], list(state["losses"]), list(state["epoch_seconds"])
    else:
        norm = NormStats.fit(shards.chunks(), shards.channels)
    if norm.channels != shards.channels:
        raise ValueError("the checkpoint's channels differ from the shards' channels")

    image_mb = 4 * int(np.prod(shards.meta["shape"])) / 2**20
    cached = len(shards) * image_mb <= train_config.cache_mb
    if cached:
        normalised = np.concatenate([norm.apply(chunk) for chunk in shards.chunks()])
        fetch = normalised.__getitem__
    else:
        fetch = shards.take

    model.train()
    images = 0
    run_start = time.perf_counter()
    for epoch in range(start, train_config.epochs):
        t0 = time.perf_counter()
        loader = torch.utils.data.DataLoader(
            _Batches(fetch, epoch_batches(len(shards), train_config.batch_size, generator)),
            batch_size=None, shuffle=False, **loader_options(dev, train_config.num_workers))
        total_loss, count = 0.0, 0
        for batch in loader:
            x = batch.to(dev, non_blocking=True)
            if not cached:
                x = norm.apply_torch(x)
            with torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext():
                loss = model(x, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * x.shape[0]
            count += x.shape[0]
        if not math.isfinite(total_loss):
            raise FloatingPointError(f"training loss became non-finite in epoch {epoch + 1}")
        losses.append(total_loss / count)
        seconds.append(time.perf_counter() - t0)
        images += count
        _save_atomic({
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": generator.get_state(),
            "epoch": epoch + 1,
            "losses": losses,
            "epoch_seconds": seconds,
            "norm": norm.to_dict(),
            "model_config": model_config.to_dict(),
            "train_config": train_config.to_dict(),
            "taxonomy_version": taxonomy_version,
            "grid": {"image_level": shards.meta["image_level"], "pixel_level": shards.meta["pixel_level"]},
        }, checkpoint)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, losses[-1])
    wall = time.perf_counter() - run_start
    return TrainResult(losses=losses, epoch_seconds=seconds, images_per_s=images / wall if images else 0.0,
                       device=str(dev), parameters=sum(p.numel() for p in model.parameters()),
                       checkpoint=checkpoint, resumed_from_epoch=start)
