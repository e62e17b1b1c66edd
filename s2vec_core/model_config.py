"""The model's and the trainer's configs, without torch: Dagster config classes, the CLI and the
registry read them where importing torch (~6 s) would only slow a process down.

`MAEConfig` is the network's shape (s2vec_core.model builds it), `TrainConfig` the optimisation
(s2vec_core.train runs it). Both validate themselves on construction and round-trip through plain dicts,
as the checkpoint and the `model_versions` table store them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, get_type_hints

from s2vec_core.baselines import arrangement_groups

if TYPE_CHECKING:
    from s2vec_core.raster import ShardSet


def _doc(default: object, doc: str):
    """A field default with the one-line help that config UIs show (`knobs`)."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class MAEConfig:
    """Model shape. The defaults are the small CPU config (8x8 patches of 2x2 pixels for 16x16 images,
    width 64, 2 encoder layers, 4 heads, decoder 64 x 2), sized so `make run` trains in well under a
    minute on 2 cores. Two decoder layers, not one: the reconstruction then takes less of the encoder's
    last layer, which leaves it more to what a probe reads (He et al.: linear probes gain most from
    decoder depth 1 -> 2; here arrangement R2 rises, BENCHMARKS.md). A decoder as wide as the encoder,
    not half: one context token reconstructs 2 x 2 pixels of every channel (368 values with the
    taxonomy's 92), which a 32-wide token could not carry (held-out masked loss 0.81 -> 0.80 of the
    mean-of-visible predictor, BENCHMARKS.md). `context_size` is the context
    window's side in pixels (0: no context stream); `context_patch` its pixels per token. `paper()` is
    the published scale."""

    in_channels: int
    image_size: int = 16
    patch_size: int = 2
    width: int = 64
    depth: int = 2
    heads: int = 4
    decoder_width: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    mlp_ratio: float = _doc(4.0, "Transformer MLP hidden width / width.")
    mask_ratio: float = 0.75
    context_size: int = 0
    context_patch: int = _doc(
        2, "Context-window pixels per context token side (2: an image cell's quadrants)."
    )
    summary_weight: float = _doc(1.0, "Weight of the cell/ring channel-summary loss.")
    layout_groups: tuple[tuple[int, ...], ...] = ()
    layout_weight: float = _doc(1.0, "Weight of the arrangement-statistics (layout) loss.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout_groups", tuple(tuple(int(i) for i in g) for g in self.layout_groups))
        problems = []
        if any(not g or min(g) < 0 or max(g) >= self.in_channels for g in self.layout_groups):
            problems.append(
                f"layout_groups {self.layout_groups} must be non-empty sets of channel indices "
                f"below in_channels={self.in_channels}"
            )
        if self.in_channels < 1:
            problems.append(f"in_channels={self.in_channels} < 1")
        if self.patch_size < 1 or self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.context_size and (
            self.context_patch < 1
            or self.context_size % self.context_patch
            or (self.context_size // self.context_patch) % 2 == 0
        ):
            problems.append(
                f"context_size {self.context_size} must be an odd number of context_patch "
                f"{self.context_patch} blocks (the cell in the middle)"
            )
        for name, dim, heads in (
            ("width", self.width, self.heads),
            ("decoder_width", self.decoder_width, self.decoder_heads),
        ):
            if dim < 4 or dim % 4:
                problems.append(f"{name}={dim} must be a positive multiple of 4 (2-D sin-cos positions)")
            if heads < 1 or dim % heads:
                problems.append(f"{name}={dim} is not divisible by its heads={heads}")
        if self.depth < 1 or self.decoder_depth < 1:
            problems.append("depth and decoder_depth must be >= 1")
        if not 0.0 <= self.mask_ratio < 1.0 or self.visible_patches < 1:
            problems.append(
                f"mask_ratio={self.mask_ratio} must leave at least one of {self.num_patches} patches"
            )
        if self.summary_weight < 0 or self.layout_weight < 0:
            problems.append(
                f"summary_weight={self.summary_weight} and layout_weight={self.layout_weight} must be >= 0"
            )
        if problems:
            raise ValueError("invalid MAEConfig: " + "; ".join(problems))

    @classmethod
    def paper(cls, in_channels: int, context_size: int = 0) -> MAEConfig:
        """Paper scale (image level 8 / pixel level 12 = 16x16, pixel patches, width 256, 6 layers,
        8 heads, decoder 128 x 2, as srai's S2VecEmbedder): 5.2M parameters with 92 channels, meant for a GPU."""
        return cls(
            in_channels=in_channels,
            image_size=16,
            patch_size=1,
            width=256,
            depth=6,
            heads=8,
            decoder_width=128,
            decoder_depth=2,
            decoder_heads=8,
            context_size=context_size,
        )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def visible_patches(self) -> int:
        return max(0, round(self.num_patches * (1.0 - self.mask_ratio)))

    @property
    def context_grid(self) -> int:
        """Context tokens per side (2 * ring + 1), 0 without context."""
        return self.context_size // self.context_patch if self.context_size else 0

    @property
    def context_ring(self) -> int:
        return (self.context_grid - 1) // 2 if self.context_size else 0

    @property
    def visible_context(self) -> int:
        return max(1, round(self.context_grid**2 * (1.0 - self.mask_ratio))) if self.context_size else 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MAEConfig:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation knobs. `warmup_fraction` of all steps ramp the learning rate up linearly, the rest
    follow a cosine to zero over `epochs` (the most that run); `patience` epochs without a `min_delta`
    relative gain on the held-out loss stop early. `num_workers` applies on CUDA only (CPU reads
    batches in-process). Training sets up to `cache_mb` are normalised once and held in memory; larger
    ones stream from the memory-mapped shards and are normalised per batch on the device."""

    epochs: int = _doc(30, "Most epochs to run (early stopping may end sooner).")
    batch_size: int = _doc(32, "Images per optimiser step: the global batch under DDP.")
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    num_workers: int = _doc(4, "DataLoader workers (CUDA only).")
    cache_mb: int = _doc(2048, "Training sets up to this size are normalised once and held in memory.")
    holdout_fraction: float = _doc(0.1, "Images held out for the early-stopping curve.")
    patience: int = _doc(4, "Epochs without held-out gain before stopping.")
    min_delta: float = _doc(0.005, "Relative held-out gain that counts as progress.")

    def __post_init__(self) -> None:
        if (
            self.epochs < 1
            or self.batch_size < 1
            or self.lr <= 0
            or not 0 <= self.warmup_fraction < 1
            or not 0 <= self.holdout_fraction < 0.5
            or self.patience < 1
        ):
            raise ValueError(f"invalid TrainConfig {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**_known(cls, d))


def _known(cls: type, d: dict) -> dict:
    """`d` when every key is a field of `cls`: a misspelt knob fails loudly instead of training with
    the default."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}")
    return d


def default_model_config(shards: ShardSet) -> MAEConfig:
    """The small CPU config for the shards' channels, image size and context window, with the
    taxonomy's arrangement groups (POIs, buildings, roads, land use, ...) as layout targets."""
    context = shards.meta.get("context_shape")
    index = {name: i for i, name in enumerate(shards.channels)}
    groups = tuple(tuple(index[c] for c in cols) for cols in arrangement_groups(shards.channels).values())
    return MAEConfig(
        in_channels=len(shards.channels),
        image_size=int(shards.meta["shape"][-1]),
        context_size=int(context[-1]) if context else 0,
        layout_groups=groups,
    )


DATA_FIELDS = frozenset({"in_channels", "image_size", "context_size", "layout_groups"})
"""MAEConfig fields that come from the rasters and the taxonomy (`default_model_config`), not a user."""


@dataclass(frozen=True)
class Knob:
    """One user-settable field of MAEConfig or TrainConfig, as a config system shows it."""

    name: str
    type: type
    default: object
    doc: str
    owner: type  # MAEConfig or TrainConfig


def knobs() -> tuple[Knob, ...]:
    """Every field a user may set: MAEConfig's (less DATA_FIELDS) then TrainConfig's. Config classes
    (the Dagster `ModelConfig`) are generated from this, so a field added here reaches them."""
    out = []
    for owner in (MAEConfig, TrainConfig):
        hints = get_type_hints(owner)
        defaults = owner(in_channels=1) if owner is MAEConfig else owner()
        out += [
            Knob(f.name, hints[f.name], getattr(defaults, f.name), f.metadata.get("doc", ""), owner)
            for f in fields(owner)
            if f.name not in DATA_FIELDS
        ]
    return tuple(out)
