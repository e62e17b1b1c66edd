"""A ViT masked autoencoder over raster tensors (S2Vec, after He et al. 2021 "Masked Autoencoders").

Images [B, C, S, S] are cut into (S/p)^2 patches of p x p pixels; the encoder sees a random ~25% of the
patches (with fixed 2-D sin-cos positions), a light decoder reconstructs all patches from the encoded
ones plus mask tokens, and the loss is the MSE on the masked patches only (pixels already normalised).
`embed()` runs the encoder on the whole image and mean-pools over the patch tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn


@dataclass(frozen=True)
class MAEConfig:
    """Model shape. The defaults are the small CPU config (4x4 patches of 2x2 pixels for 16x16 images,
    width 64, 2 encoder layers, 4 heads, decoder 32 x 1; 151k parameters with the 92 taxonomy channels),
    sized so `make run` trains 10 epochs in ~20 s on 2 cores. `paper()` is the published scale."""

    in_channels: int
    image_size: int = 16
    patch_size: int = 2
    width: int = 64
    depth: int = 2
    heads: int = 4
    decoder_width: int = 32
    decoder_depth: int = 1
    decoder_heads: int = 4
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75

    def __post_init__(self) -> None:
        problems = []
        if self.in_channels < 1:
            problems.append(f"in_channels={self.in_channels} < 1")
        if self.patch_size < 1 or self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for name, dim, heads in (("width", self.width, self.heads),
                                 ("decoder_width", self.decoder_width, self.decoder_heads)):
            if dim < 4 or dim % 4:
                problems.append(f"{name}={dim} must be a positive multiple of 4 (2-D sin-cos positions)")
            if heads < 1 or dim % heads:
                problems.append(f"{name}={dim} is not divisible by its heads={heads}")
        if self.depth < 1 or self.decoder_depth < 1:
            problems.append("depth and decoder_depth must be >= 1")
        if not 0.0 <= self.mask_ratio < 1.0 or self.visible_patches < 1:
            problems.append(f"mask_ratio={self.mask_ratio} must leave at least one of {self.num_patches} patches")
        if problems:
            raise ValueError("invalid MAEConfig: " + "; ".join(problems))

    @classmethod
    def paper(cls, in_channels: int) -> MAEConfig:
        """Paper scale (image level 8 / pixel level 12 = 16x16, pixel patches, width 256, 6 layers,
        8 heads, decoder 128 x 2, as srai's S2VecEmbedder): 5.2M parameters with 92 channels, meant for a GPU."""
        return cls(in_channels=in_channels, image_size=16, patch_size=1, width=256, depth=6, heads=8,
                   decoder_width=128, decoder_depth=2, decoder_heads=8)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def visible_patches(self) -> int:
        return max(0, int(round(self.num_patches * (1.0 - self.mask_ratio))))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MAEConfig keys {sorted(unknown)}")
        return cls(**d)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings [grid*grid, dim]: half the dims encode the row, half the column."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def encode(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def _blocks(width: int, heads: int, depth: int, mlp_ratio: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=int(width * mlp_ratio), dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class MaskedAutoencoder(nn.Module):
    """ViT MAE; `forward(x)` returns the masked-patch MSE, `embed(x)` the pooled encoder output."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        patch_dim = c.patch_size * c.patch_size * c.in_channels
        self.patch_embed = nn.Linear(patch_dim, c.width)
        self.encoder = _blocks(c.width, c.heads, c.depth, c.mlp_ratio)
        self.encoder_norm = nn.LayerNorm(c.width)
        self.decoder_embed = nn.Linear(c.width, c.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_width))
        self.decoder = _blocks(c.decoder_width, c.decoder_heads, c.decoder_depth, c.mlp_ratio)
        self.decoder_norm = nn.LayerNorm(c.decoder_width)
        self.decoder_pred = nn.Linear(c.decoder_width, patch_dim)
        # Positions follow from the config, so they are not part of the state dict.
        self.register_buffer("pos", sincos_2d(c.width, c.grid_size).unsqueeze(0), persistent=False)
        self.register_buffer("decoder_pos", sincos_2d(c.decoder_width, c.grid_size).unsqueeze(0), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] -> [B, N, p*p*C], patches in row-major order of the patch grid."""
        b, ch, _, _ = x.shape
        p, g = self.config.patch_size, self.config.grid_size
        x = x.reshape(b, ch, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, g * g, p * p * ch)

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"expected [B, {c.in_channels}, {c.image_size}, {c.image_size}], got {tuple(x.shape)}")

    def random_mask(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Indices [B, N] of a random patch order; the first `visible_patches` are kept.

        Drawn on the CPU (from `generator` if given) so masks are reproducible whatever the device."""
        noise = torch.rand(batch, self.config.num_patches, generator=generator)
        return noise.argsort(dim=1).to(self.pos.device)

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(predicted patches [B, N, p*p*C], target patches, masked bool[B, N]) for one random mask."""
        self._check(x)
        c = self.config
        target = self.patchify(x)
        b, n, _ = target.shape
        keep = self.random_mask(b, generator)[:, :c.visible_patches]
        tokens = self.patch_embed(target) + self.pos
        visible = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, c.width))
        encoded = self.encoder_norm(self.encoder(visible))

        dec = self.decoder_embed(encoded)
        full = self.mask_token.to(dec.dtype).expand(b, n, -1)
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, c.decoder_width), dec)
        pred = self.decoder_pred(self.decoder_norm(self.decoder(full + self.decoder_pos)))
        masked = torch.ones(b, n, dtype=torch.bool, device=x.device).scatter_(1, keep, False)
        return pred, target, masked

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error over the masked patches of normalised images `x` (visible ones excluded)."""
        pred, target, masked = self.reconstruct(x, generator)
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
        return per_patch[masked].mean()

    def embed(self, x: torch.Tensor, per_token: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encoder on the unmasked image: mean over tokens [B, width] (and the tokens [B, N, width])."""
        self._check(x)
        tokens = self.encoder_norm(self.encoder(self.patch_embed(self.patchify(x)) + self.pos))
        pooled = tokens.mean(dim=1)
        return (pooled, tokens) if per_token else pooled


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
