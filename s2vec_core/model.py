"""A ViT masked autoencoder over raster tensors (S2Vec, after He et al. 2021 "Masked Autoencoders").

Two token streams share one encoder: the image [B, C, S, S] cut into (S/p)^2 patches of p x p pixels,
and (optionally) the context window [B, C, W, W] around it cut into one token per image cell (its
2 x 2 quadrants), each with fixed 2-D sin-cos positions and a learned stream embedding. The encoder
sees a random ~25% of each stream's tokens; a light decoder reconstructs all of them from the encoded
ones plus mask tokens. The loss is a channel-weighted MSE on the masked tokens only (weights from
`NormStats`, so sparse POI channels count), plus a *summary* term: from the pooled visible tokens, a
linear head predicts each channel's mean over the cell and over every ring of neighbours. The summary
term is what makes the pooled embedding carry the counts of the cell and its surroundings, which
reconstruction alone spreads over tokens: on sparse counts a masked pixel is mostly Poisson noise
around its visible mean. A *layout* term does the same for arrangement: from the spread of the visible
image tokens, a head predicts each channel group's occupancy, dispersion and top-10% share over the
image's tokens (`layout_statistics`; groups from the taxonomy), so the embedding's spread half says
whether POIs cluster (arrangement LightGBM R2 0.12 -> 0.28, BENCHMARKS.md). A per-channel mean square instead
changed nothing: single POI channels are almost binary per pixel.
`embed()` runs the encoder on the whole input and pools: the mean over all tokens and the spread over
the image tokens (and returns the image tokens, one per p x p pixel block, for per-cell embeddings at
the finer level).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from s2vec_core.model_config import MAEConfig


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
    layer = nn.TransformerEncoderLayer(
        width,
        heads,
        dim_feedforward=int(width * mlp_ratio),
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class MaskedAutoencoder(nn.Module):
    """ViT MAE; `forward(x, context)` returns the training loss, `losses` its parts, `embed` the encoder output.

    `embedding_dim` (2 x width) is the pooled embedding's length; a token embedding has `width`."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = nn.Linear(c.patch_size**2 * c.in_channels, c.width)
        self.encoder = _blocks(c.width, c.heads, c.depth, c.mlp_ratio)
        self.encoder_norm = nn.LayerNorm(c.width)
        self.decoder_embed = nn.Linear(c.width, c.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_width))
        self.decoder = _blocks(c.decoder_width, c.decoder_heads, c.decoder_depth, c.mlp_ratio)
        self.decoder_norm = nn.LayerNorm(c.decoder_width)
        self.decoder_pred = nn.Linear(c.decoder_width, c.patch_size**2 * c.in_channels)
        # Positions follow from the config, so they are not part of the state dict.
        self.register_buffer("pos", sincos_2d(c.width, c.grid_size).unsqueeze(0), persistent=False)
        self.register_buffer(
            "decoder_pos", sincos_2d(c.decoder_width, c.grid_size).unsqueeze(0), persistent=False
        )
        if c.context_size:
            context_dim = c.context_patch**2 * c.in_channels
            self.context_embed = nn.Linear(context_dim, c.width)
            self.context_pred = nn.Linear(c.decoder_width, context_dim)
            # Which stream a token belongs to: positions alone would not tell an image patch from a neighbour.
            self.stream = nn.Parameter(torch.zeros(2, c.width))
            self.decoder_stream = nn.Parameter(torch.zeros(2, c.decoder_width))
            self.register_buffer(
                "context_pos", sincos_2d(c.width, c.context_grid).unsqueeze(0), persistent=False
            )
            self.register_buffer(
                "decoder_context_pos",
                sincos_2d(c.decoder_width, c.context_grid).unsqueeze(0),
                persistent=False,
            )
        self.summary_head = nn.Linear(c.width, (c.context_ring + 1) * c.in_channels)
        if c.layout_groups:
            # Reads the spread half of the `embed` pooling, so the embedding itself has to carry the layout
            # and the mean half stays free for the counts in and around the cell.
            self.layout_head = nn.Linear(c.width, len(c.layout_groups) * LAYOUT_STATS)
            membership = torch.zeros(c.in_channels, len(c.layout_groups))
            for g, channels in enumerate(c.layout_groups):
                membership[list(channels), g] = 1.0
            self.register_buffer("membership", membership, persistent=False)
        # Per-channel loss weights from the training data's NormStats (set by the trainer; saved with it).
        self.register_buffer("channel_weight", torch.ones(c.in_channels))
        self.register_buffer("context_weight", torch.ones(c.in_channels))
        self.register_buffer("ring_of", _ring_index(c.context_grid), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.config.context_size:
            nn.init.normal_(self.stream, std=0.02)
            nn.init.normal_(self.decoder_stream, std=0.02)

    @property
    def embedding_dim(self) -> int:
        return 2 * self.config.width

    def set_loss_weights(self, image: torch.Tensor, context: torch.Tensor | None = None) -> None:
        """Per-channel weights of the reconstruction and summary losses (from the training NormStats)."""
        self.channel_weight.copy_(image)
        self.context_weight.copy_(image if context is None else context)

    @staticmethod
    def _patches(x: torch.Tensor, p: int) -> torch.Tensor:
        b, ch, size, _ = x.shape
        g = size // p
        x = x.reshape(b, ch, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, g * g, p * p * ch)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] -> [B, N, p*p*C], patches in row-major order of the patch grid, channels fastest."""
        return self._patches(x, self.config.patch_size)

    def _check(self, x: torch.Tensor, context: torch.Tensor | None) -> None:
        c = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(
                f"expected [B, {c.in_channels}, {c.image_size}, {c.image_size}], got {tuple(x.shape)}"
            )
        if c.context_size:
            want = (x.shape[0], c.in_channels, c.context_size, c.context_size)
            if context is None or tuple(context.shape) != want:
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"expected a context window {list(want)}, got {got}")
        elif context is not None:
            raise ValueError("this model has no context stream (context_size 0); pass context=None")

    def random_mask(
        self,
        batch: int,
        tokens: int | None = None,
        generator: torch.Generator | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> torch.Tensor:
        """Indices [B, N] of a random token order; the first visible ones are kept.

        Drawn on the CPU (from `generator` if given) so masks are reproducible whatever the device. With
        `part` = (r, W) the B rows are slice r of a batch of W * B: the noise is drawn for all W * B rows
        and slice r kept, so W data-parallel processes sharing one generator draw one process's masks."""
        rank, world = part
        noise = torch.rand(batch * world, tokens or self.config.num_patches, generator=generator)
        return noise[rank * batch : (rank + 1) * batch].argsort(dim=1).to(self.pos.device)

    def _streams(self, x: torch.Tensor, context: torch.Tensor | None) -> list[dict]:
        c = self.config
        streams = [
            {
                "target": self.patchify(x),
                "embed": self.patch_embed,
                "pos": self.pos,
                "dpos": self.decoder_pos,
                "pred": self.decoder_pred,
                "visible": c.visible_patches,
                "weight": self.channel_weight,
                "repeat": c.patch_size**2,
            }
        ]
        if c.context_size:
            streams.append(
                {
                    "target": self._patches(context, c.context_patch),
                    "embed": self.context_embed,
                    "pos": self.context_pos,
                    "dpos": self.decoder_context_pos,
                    "pred": self.context_pred,
                    "visible": c.visible_context,
                    "weight": self.context_weight,
                    "repeat": c.context_patch**2,
                }
            )
            for n, s in enumerate(streams):
                s["type"], s["dtype"] = self.stream[n], self.decoder_stream[n]
        return streams

    def losses(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        baseline: bool = False,
        part: tuple[int, int] = (0, 1),
    ) -> dict[str, torch.Tensor]:
        """The loss terms for one random mask per stream: `image`, `context` (masked-token weighted MSE),
        `summary` and `total`; with `baseline`, also `image_baseline` / `context_baseline`: the same
        error when every masked pixel is predicted as the mean of the image's visible pixels.

        `part` = (r, W): `x` is slice r of W equal slices of a batch, masked as in the whole batch
        (`random_mask`). Every term is a mean over rows, so the mean of the W slices' losses is the
        whole batch's loss."""
        self._check(x, context)
        streams = self._streams(x, context)
        b = x.shape[0]
        visible, keeps = [], []
        for s in streams:
            n = s["target"].shape[1]
            keep = self.random_mask(b, n, generator, part)[:, : s["visible"]]
            tokens = s["embed"](s["target"]) + s["pos"] + s.get("type", 0)
            visible.append(torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, self.config.width)))
            keeps.append(keep)
        encoded = self.encoder_norm(self.encoder(torch.cat(visible, dim=1)))
        dec = self.decoder_embed(encoded)
        full, offset = [], 0
        for s, keep in zip(streams, keeps):
            n = s["target"].shape[1]
            part = dec[:, offset : offset + keep.shape[1]]
            offset += keep.shape[1]
            slots = self.mask_token.to(dec.dtype).expand(b, n, -1)
            slots = slots.scatter(1, keep.unsqueeze(-1).expand(-1, -1, part.shape[-1]), part)
            full.append(slots + s["dpos"] + s.get("dtype", 0))
        decoded = self.decoder_norm(self.decoder(torch.cat(full, dim=1)))
        out, offset = {}, 0
        for s, keep, name in zip(streams, keeps, ("image", "context")):
            n = s["target"].shape[1]
            pred = s["pred"](decoded[:, offset : offset + n]).float()
            offset += n
            masked = torch.ones(b, n, dtype=torch.bool, device=x.device).scatter_(1, keep, False)
            weight = s["weight"].repeat(s["repeat"])
            target = s["target"].float()
            out[name] = _weighted(pred, target, weight, masked)
            if baseline:
                out[f"{name}_baseline"] = _weighted(
                    _visible_mean(target, masked, s["repeat"]), target, weight, masked
                )
        if self.config.layout_groups:
            image = encoded[:, : keeps[0].shape[1]]
            layout = self.layout_head(image.std(dim=1)).float()
            target = layout_statistics(streams[0]["target"].float(), self.membership, streams[0]["repeat"])
            out["layout"] = (layout - target.flatten(1)).pow(2).mean()
        summary = self.summary_head(encoded.mean(dim=1)).float()
        truth = self._summary_target(x, context)
        weight = (self.context_weight if context is not None else self.channel_weight).repeat(truth.shape[1])
        out["summary"] = ((summary - truth.flatten(1)).pow(2) * weight).mean()
        out["total"] = (
            sum(out[k] for k in ("image", "context") if k in out)
            + self.config.summary_weight * out["summary"]
            + self.config.layout_weight * out.get("layout", 0.0)
        )
        return out

    def _summary_target(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """[B, rings + 1, C]: each channel's mean over the cell (ring 0) and over each ring of neighbours."""
        if context is None:
            return x.float().mean(dim=(2, 3)).unsqueeze(1)
        c = self.config
        per_cell = (
            context.float()
            .reshape(
                x.shape[0], c.in_channels, c.context_grid, c.context_patch, c.context_grid, c.context_patch
            )
            .mean(dim=(3, 5))
            .flatten(2)
        )
        rings = torch.zeros(x.shape[0], c.context_ring + 1, c.in_channels, device=x.device)
        rings.index_add_(1, self.ring_of, per_cell.transpose(1, 2))
        return rings / torch.bincount(self.ring_of).to(rings.dtype).view(1, -1, 1)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> torch.Tensor:
        """The training loss (`losses(...)["total"]`) of normalised images `x` (and context windows)."""
        return self.losses(x, context, generator, part=part)["total"]

    def embed(
        self, x: torch.Tensor, context: torch.Tensor | None = None, per_token: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encoder on the unmasked input: [B, 2 * width] = the mean over all tokens, then the standard
        deviation over the image tokens (and the image tokens [B, N, width], one per patch in row-major
        patch-grid order). The mean carries what is in and around the cell; the spread over the cell's
        own tokens how unevenly it is laid out, which a mean averages away (on the arrangement world,
        LightGBM R2 0.01 -> 0.13, see BENCHMARKS.md)."""
        self._check(x, context)
        tokens = [s["embed"](s["target"]) + s["pos"] + s.get("type", 0) for s in self._streams(x, context)]
        encoded = self.encoder_norm(self.encoder(torch.cat(tokens, dim=1)))
        image = encoded[:, : self.config.num_patches]
        pooled = torch.cat([encoded.mean(dim=1), image.std(dim=1)], dim=1)
        return (pooled, image) if per_token else pooled


LAYOUT_STATS = 3
"""Statistics per layout group: occupancy, dispersion and top-10% share of the group's token totals."""


def layout_statistics(patches: torch.Tensor, membership: torch.Tensor, repeat: int) -> torch.Tensor:
    """[B, G, LAYOUT_STATS] from patches [B, N, repeat * C]: per channel group, over the image's tokens,
    the share of tokens with any mass, log1p(variance / mean) and the share of the mass in the busiest
    10% of tokens (0 for an empty group). The masked pixels of sparse counts are mostly Poisson noise,
    so reconstruction alone barely rewards knowing whether a cell's POIs cluster; these targets do."""
    b, n, d = patches.shape
    totals = patches.reshape(b, n, repeat, d // repeat).sum(dim=2) @ membership
    mean, total = totals.mean(dim=1), totals.sum(dim=1)
    occupancy = (totals > 0).to(totals.dtype).mean(dim=1)
    dispersion = torch.log1p(totals.var(dim=1, unbiased=False) / mean.clamp_min(1e-6))
    top = totals.topk(max(1, math.ceil(0.1 * n)), dim=1).values.sum(dim=1) / total.clamp_min(1e-6)
    return torch.stack([occupancy, dispersion, top], dim=-1) * (total > 0).unsqueeze(-1)


def _weighted(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, masked: torch.Tensor
) -> torch.Tensor:
    """Mean over masked tokens of the channel-weighted squared error per token."""
    return ((pred - target).pow(2) * weight).mean(dim=-1)[masked].mean()


def _visible_mean(target: torch.Tensor, masked: torch.Tensor, repeat: int) -> torch.Tensor:
    """Each token predicted as the per-channel mean of the image's visible pixels."""
    b, n, d = target.shape
    pixels = target.reshape(b, n, repeat, d // repeat)
    seen = (~masked).to(pixels.dtype).view(b, n, 1, 1)
    mean = (pixels * seen).sum(dim=(1, 2)) / (seen.sum(dim=(1, 2)) * repeat)
    return mean.unsqueeze(1).repeat(1, n, repeat)


def _ring_index(grid: int) -> torch.Tensor:
    """Ring (Chebyshev distance from the centre) of each token of a grid x grid context, row-major."""
    if grid == 0:
        return torch.zeros(0, dtype=torch.long)
    r = torch.arange(grid) - grid // 2
    return torch.maximum(r.abs().view(-1, 1), r.abs().view(1, -1)).flatten()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
