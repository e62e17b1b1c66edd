"""Self-supervised MAE training on raster shards: AdamW, warmup + cosine, clipping, early stopping on a
held-out split, resumable checkpoints.

A seeded `holdout_fraction` of the images never trains; after every epoch the held-out masked loss is
measured with fixed masks, next to the *mean-of-visible* predictor on the same masks (every masked
pixel = its image's visible mean, per channel), so the curve says whether the model learned more than
the trivial answer. Training stops when the held-out loss has not improved for `patience` epochs.
One checkpoint file holds everything needed to resume or embed (model, optimiser, scheduler, epoch,
norm stats, configs, taxonomy version, the data/mask RNG state, the loss curves); it is rewritten
atomically after every epoch and read with `torch.load(weights_only=True)`, so it holds only tensors
and plain containers. The same seed gives the same weights on CPU whether or not a run was interrupted.

Under an initialised `torch.distributed` process group of W > 1 processes (`s2vec_core.ddp` sets one up
under torchrun) the model is wrapped in DistributedDataParallel and `batch_size` is the global batch:
every process draws the same shuffle and masks from the same generator and trains on its 1/W slice of
each batch, so the averaged gradient is the one-process gradient up to float summation order. A short
last batch is trimmed to a multiple of W (at most W - 1 rows an epoch sit out). Rank 0 scores the
held-out split and broadcasts it, so every process takes the same early-stopping decision; only rank 0
writes the checkpoint (the same format: a checkpoint resumes under any number of processes).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from s2vec_core import leftovers
from s2vec_core.model import MaskedAutoencoder
from s2vec_core.model_config import MAEConfig, TrainConfig, default_model_config
from s2vec_core.raster import NormStats, ShardSet


@dataclass(frozen=True)
class TrainResult:
    losses: list[float]  # mean training loss per epoch, all epochs so far
    epoch_seconds: list[float]
    images_per_s: float  # over the epochs run in this call
    device: str
    parameters: int
    checkpoint: Path
    resumed_from_epoch: int  # 0 for a fresh run
    holdout: list[dict[str, float]]  # per epoch: held-out loss terms and the mean-of-visible baselines
    stopped_early: bool

    @property
    def baseline_ratio(self) -> float | None:
        """Final held-out masked loss / the mean-of-visible predictor's (< 1: better than trivial)."""
        return baseline_ratio(self.holdout[-1]) if self.holdout else None


def baseline_ratio(holdout: dict[str, float]) -> float:
    """Held-out masked reconstruction loss over the mean-of-visible predictor's, image and context summed."""
    parts = [k for k in ("image", "context") if k in holdout]
    return sum(holdout[k] for k in parts) / sum(holdout[f"{k}_baseline"] for k in parts)


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): a seeded `fraction` of `n` images held out (none below 10 images)."""
    held = round(n * fraction) if n >= 10 else 0
    order = np.random.default_rng([seed, 7]).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def should_stop(holdout_losses: list[float], patience: int, min_delta: float) -> bool:
    """True when none of the last `patience` epochs beat the best before them by `min_delta` (relative)."""
    if len(holdout_losses) <= patience:
        return False
    best_before = min(holdout_losses[:-patience])
    return min(holdout_losses[-patience:]) > best_before * (1 - min_delta)


def select_device(requested: str = "auto", cuda_available: bool | None = None) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; anything else is taken as given."""
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


Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


class _Batches(torch.utils.data.Dataset):
    """Item b = (images, context windows or None) of the b-th batch of rows (one vectorised read each)."""

    def __init__(self, fetch: Fetch, batches: list[np.ndarray]) -> None:
        self.fetch, self.batches = fetch, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, ctx = self.fetch(self.batches[b])
        return torch.from_numpy(x), None if ctx is None else torch.from_numpy(ctx)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, world: int = 1) -> list[np.ndarray]:
    """A fresh shuffle of `n` rows cut into batches. The last may be short; for `world` processes it is
    trimmed to a multiple of `world` (dropped if that leaves none) so that it splits into equal slices,
    which keeps the mean of the slices' losses equal to the batch's."""
    order = torch.randperm(n, generator=generator).numpy()
    batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    if batches and (short := len(batches[-1]) // world * world) < len(batches[-1]):
        batches[-1] = batches[-1][:short]
    return [b for b in batches if b.size]


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """len(epoch_batches(n, batch_size, _, world)) without drawing a shuffle."""
    return n // batch_size + (n % batch_size >= world)


def rank_slice(batch: int, rank: int, world: int) -> slice:
    """Process `rank`'s rows of a batch of `batch` rows (a multiple of `world`)."""
    per = batch // world
    return slice(rank * per, (rank + 1) * per)


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save_atomic(state: dict, path: Path) -> None:
    leftovers.sweep(path)
    tmp = leftovers.temporary_sibling(path)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict (tensors and plain containers only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def _check_shapes(shards: ShardSet, config: MAEConfig) -> None:
    size = int(shards.meta["shape"][-1])
    context = shards.meta.get("context_shape")
    have = (len(shards.channels), size, int(context[-1]) if context else 0)
    want = (config.in_channels, config.image_size, config.context_size)
    if have != want:
        raise ValueError(
            f"model expects {want[0]} channels of {want[1]}px with a {want[2]}px context window, "
            f"shards hold {have[0]} of {have[1]}px with {have[2]}px context"
        )


def fit_norms(shards: ShardSet, rows: np.ndarray) -> tuple[NormStats, NormStats | None]:
    """NormStats of the images (and of the context windows) over the training rows."""

    def chunks(take):
        for start in range(0, rows.size, 4096):
            yield take(rows[start : start + 4096])

    norm = NormStats.fit(chunks(shards.take), shards.channels)
    context = NormStats.fit(chunks(shards.take_context), shards.channels) if shards.has_context else None
    return norm, context


def _fetcher(shards: ShardSet, norm: NormStats, context_norm: NormStats | None, cached: bool) -> Fetch:
    """Batches as (images, context): normalised once in memory when `cached`, else raw from the memmaps."""

    def raw(rows):
        return shards.take(rows), shards.take_context(rows) if shards.has_context else None

    if not cached:
        return raw
    chunks = [raw(np.arange(s, min(s + 4096, len(shards)))) for s in range(0, len(shards), 4096)]
    images = np.concatenate([norm.apply(x) for x, _ in chunks])
    context = np.concatenate([context_norm.apply(c) for _, c in chunks]) if context_norm else None
    return lambda rows: (images[rows], None if context is None else context[rows])


@torch.no_grad()
def holdout_losses(
    model: MaskedAutoencoder, fetch: Fetch, rows: np.ndarray, normalise, seed: int, batch_size: int = 256
) -> dict[str, float]:
    """Mean loss terms over held-out `rows` with fixed masks (seeded), plus the mean-of-visible baselines."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed + 1)
    totals: dict[str, float] = {}
    for start in range(0, rows.size, batch_size):
        x, ctx = normalise(*fetch(rows[start : start + batch_size]))
        for key, value in model.losses(x, ctx, generator, baseline=True).items():
            totals[key] = totals.get(key, 0.0) + float(value) * x.shape[0]
    model.train(was_training)
    return {k: v / rows.size for k, v in totals.items()}


@torch.no_grad()
def embedding_scale(
    model: MaskedAutoencoder, fetch: Fetch, rows: np.ndarray, normalise, batch_size: int = 256
) -> dict[str, list[float]]:
    """Per-dimension mean and std of the pooled and the token embeddings over the training `rows`.

    Raw encoder outputs share one dominant direction (cosine > 0.999 between any two cells), so stored
    vectors are standardised with these: a cosine then compares cells, not the model's offset."""
    was_training = model.training
    model.eval()
    sums: dict[str, list[torch.Tensor]] = {}
    for start in range(0, rows.size, batch_size):
        x, ctx = normalise(*fetch(rows[start : start + batch_size]))
        pooled, tokens = model.embed(x, ctx, per_token=True)
        for name, v in (
            ("pooled", pooled.double().flatten(0, -2)),
            ("token", tokens.double().flatten(0, -2)),
        ):
            parts = [v.shape[0], v.sum(0), v.pow(2).sum(0)]
            sums[name] = parts if name not in sums else [a + b for a, b in zip(sums[name], parts)]
    model.train(was_training)
    out = {}
    for name, (n, total, squares) in sums.items():
        mean = total / n
        out[f"{name}_mean"] = mean.tolist()
        # Floored: a dimension constant over the training cells must not blow up elsewhere.
        out[f"{name}_std"] = (squares / n - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-3).tolist()
    return out


@contextlib.contextmanager
def flush_denormals():
    """Flush subnormal floats to zero while training on a CPU.

    Sparse rasters leave many gradients and Adam moments in the subnormal range, where x86 float maths
    runs ~30x slower (measured: 2.4 s vs 0.07 s per step of the default model); their value is
    indistinguishable from zero for training."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def train(
    shards: ShardSet,
    checkpoint: str | os.PathLike,
    model_config: MAEConfig | None = None,
    train_config: TrainConfig = TrainConfig(),
    taxonomy_version: str = "",
    device: str = "auto",
    on_epoch_end: Callable[[int, float, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train (or resume) the MAE on `shards`, checkpointing to `checkpoint` after every epoch.

    If `checkpoint` exists it is resumed; its model/training config must then equal the given ones
    (a mismatch raises instead of silently mixing runs). `model_config` defaults to the small CPU
    config for the shards (`default_model_config`). Norm stats are fitted on the training split.
    Inside a process group every process calls this with the same arguments (see the module docstring);
    `on_epoch_end` runs on every process once the epoch's checkpoint is written.
    """
    with flush_denormals():
        return _train(
            shards, Path(checkpoint), model_config, train_config, taxonomy_version, device, on_epoch_end
        )


def _train(
    shards, checkpoint, model_config, train_config, taxonomy_version, device, on_epoch_end
) -> TrainResult:
    checkpoint = Path(checkpoint)
    model_config = model_config or default_model_config(shards)
    _check_shapes(shards, model_config)
    if len(shards) == 0:
        raise ValueError("no training images")
    dev = select_device(device)
    amp = autocast_dtype(dev)
    rank, world = process_group()
    train_rows, held_rows = split_holdout(len(shards), train_config.holdout_fraction, train_config.seed)
    if train_config.batch_size % world or train_rows.size < world:
        raise ValueError(
            f"batch_size {train_config.batch_size} and {train_rows.size} training images do not split "
            f"over {world} processes"
        )

    torch.manual_seed(train_config.seed)
    model = MaskedAutoencoder(model_config).to(dev)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay
    )
    total = steps_per_epoch(train_rows.size, train_config.batch_size, world) * train_config.epochs
    warmup = max(1, int(total * train_config.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    generator = torch.Generator().manual_seed(train_config.seed)

    start, losses, seconds, holdout = 0, [], [], []
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        if state["model_config"] != model_config.to_dict() or state["train_config"] != train_config.to_dict():
            raise ValueError(
                f"{checkpoint} was trained with another config; remove it or pass the same config"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"])
        norm = NormStats.from_dict(state["norm"])
        context_norm = NormStats.from_dict(state["context_norm"]) if state["context_norm"] else None
        start, losses, seconds = state["epoch"], list(state["losses"]), list(state["epoch_seconds"])
        holdout = list(state["holdout"])
    else:
        # The same rows on every process give the same stats: nothing to broadcast.
        norm, context_norm = fit_norms(shards, train_rows)
        model.set_loss_weights(
            torch.from_numpy(norm.arrays()[1]),
            torch.from_numpy(context_norm.arrays()[1]) if context_norm else None,
        )
    if norm.channels != shards.channels:
        raise ValueError("the checkpoint's channels differ from the shards' channels")

    per_image = int(np.prod(shards.meta["shape"])) + int(np.prod(shards.meta.get("context_shape") or [0]))
    cached = len(shards) * 4 * per_image / 2**20 <= train_config.cache_mb
    fetch = _fetcher(shards, norm, context_norm, cached)

    def normalise(x: np.ndarray, ctx: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        xt = torch.as_tensor(x).to(dev, non_blocking=True)
        ct = None if ctx is None else torch.as_tensor(ctx).to(dev, non_blocking=True)
        if not cached:
            xt = norm.apply_torch(xt)
            ct = None if ct is None else context_norm.apply_torch(ct)
        return xt, ct

    stopped = bool(held_rows.size) and should_stop(
        [h["total"] for h in holdout], train_config.patience, train_config.min_delta
    )
    # Buffers (loss weights, positions) never change while training, so they need no per-step broadcast.
    ddp = torch.nn.parallel.DistributedDataParallel
    net = model if world == 1 else ddp(model, forward_sync_buffers=False)
    model.train()
    images = 0
    run_start = time.perf_counter()
    for epoch in range(start, train_config.epochs):
        if stopped:
            break
        t0 = time.perf_counter()
        batches = [
            train_rows[b[rank_slice(b.size, rank, world)]]
            for b in epoch_batches(train_rows.size, train_config.batch_size, generator, world)
        ]
        loader = torch.utils.data.DataLoader(
            _Batches(fetch, batches),
            batch_size=None,
            shuffle=False,
            **loader_options(dev, train_config.num_workers),
        )
        total_loss, count = 0.0, 0
        for x, ctx in loader:
            x, ctx = normalise(x, ctx)
            with torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext():
                loss = net(x, ctx, generator=generator, part=(rank, world))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * x.shape[0]
            count += x.shape[0]
        if world > 1:
            sums = torch.tensor([total_loss, count], dtype=torch.float64, device=dev)
            dist.all_reduce(sums)
            total_loss, count = sums[0].item(), int(sums[1].item())
        if not math.isfinite(total_loss):
            raise FloatingPointError(f"training loss became non-finite in epoch {epoch + 1}")
        losses.append(total_loss / count)
        if held_rows.size:
            scores = [
                holdout_losses(model, fetch, held_rows, normalise, train_config.seed) if rank == 0 else None
            ]
            if world > 1:
                dist.broadcast_object_list(scores, src=0)
            holdout.append(scores[0])
            stopped = should_stop(
                [h["total"] for h in holdout], train_config.patience, train_config.min_delta
            )
        seconds.append(time.perf_counter() - t0)
        images += count
        if rank == 0:
            _save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": generator.get_state(),
                    "epoch": epoch + 1,
                    "losses": losses,
                    "holdout": holdout,
                    "stopped_early": stopped,
                    "epoch_seconds": seconds,
                    "norm": norm.to_dict(),
                    "context_norm": context_norm.to_dict() if context_norm else None,
                    "model_config": model_config.to_dict(),
                    "train_config": train_config.to_dict(),
                    "taxonomy_version": taxonomy_version,
                    "grid": {
                        "image_level": shards.meta["image_level"],
                        "pixel_level": shards.meta["pixel_level"],
                        "context_ring": int(shards.meta.get("context_ring") or 0),
                    },
                },
                checkpoint,
            )
        if world > 1:
            dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, losses[-1], holdout[-1] if holdout else {})
    wall = time.perf_counter() - run_start
    if rank == 0:
        state = load_checkpoint(checkpoint)
        if images or "embedding_scale" not in state:
            state["embedding_scale"] = embedding_scale(model, fetch, train_rows, normalise)
            _save_atomic(state, checkpoint)
    if world > 1:
        dist.barrier()
    return TrainResult(
        losses=losses,
        epoch_seconds=seconds,
        images_per_s=images / wall if images else 0.0,
        device=str(dev),
        parameters=sum(p.numel() for p in model.parameters()),
        checkpoint=checkpoint,
        resumed_from_epoch=start,
        holdout=holdout,
        stopped_early=stopped and len(losses) < train_config.epochs,
    )
