"""The ViT masked autoencoder: config validation, patches, positions, masked-only loss, embeddings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from s2vec_core.model import MAEConfig, MaskedAutoencoder, layout_statistics, parameter_count, sincos_2d

TINY = MAEConfig(
    in_channels=3,
    image_size=8,
    patch_size=2,
    width=16,
    depth=1,
    heads=2,
    decoder_width=8,
    decoder_depth=1,
    decoder_heads=2,
)
CONTEXT = dataclasses.replace(TINY, context_size=10, context_patch=2)  # 5 x 5 cells, 2 x 2 each


def _model(config: MAEConfig = TINY, seed: int = 0) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    return MaskedAutoencoder(config)


def test_config_validates_and_round_trips():
    assert MAEConfig.from_dict(TINY.to_dict()) == TINY
    assert (TINY.num_patches, TINY.visible_patches) == (16, 4)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MAEConfig(in_channels=3, image_size=8, patch_size=3)
    with pytest.raises(ValueError, match="divisible"):
        MAEConfig(in_channels=3, width=64, heads=5)
    with pytest.raises(ValueError, match="mask_ratio"):
        MAEConfig(in_channels=3, mask_ratio=1.0)
    with pytest.raises(ValueError, match="unknown"):
        MAEConfig.from_dict({**TINY.to_dict(), "colour": 1})


def test_paper_config_is_the_published_scale():
    paper = MAEConfig.paper(in_channels=92)
    assert (
        paper.image_size,
        paper.patch_size,
        paper.width,
        paper.depth,
        paper.heads,
        paper.decoder_width,
        paper.decoder_depth,
        paper.mask_ratio,
    ) == (16, 1, 256, 6, 8, 128, 2, 0.75)
    assert 4_000_000 < parameter_count(MaskedAutoencoder(paper)) < 7_000_000


def test_sincos_positions_are_distinct_and_bounded():
    pos = sincos_2d(16, 4)
    assert pos.shape == (16, 16) and pos.abs().max() <= 1.0
    assert torch.cdist(pos, pos).add(torch.eye(16) * 10).min() > 0.1
    # The first half encodes the row only: patches in one row share it.
    assert torch.equal(pos[0, :8], pos[3, :8]) and not torch.equal(pos[0, 8:], pos[3, 8:])


def test_patchify_keeps_pixels_of_each_patch():
    m = _model()
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = m.patchify(x)
    assert patches.shape == (2, 16, 2 * 2 * 3)
    # Patch 5 = patch-grid row 1, col 1 = pixels [2:4, 2:4].
    assert torch.equal(patches[1, 5].reshape(2, 2, 3).permute(2, 0, 1), x[1, :, 2:4, 2:4])


def test_loss_counts_masked_tokens_only_weighted_by_channel_with_a_mean_of_visible_baseline():
    m = _model(CONTEXT)
    m.set_loss_weights(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.5, 1.0, 1.5]))
    x, ctx = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 10, 10)
    captured = []
    m.decoder_pred.register_forward_hook(lambda mod, inp, out: captured.append(out))
    terms = m.losses(x, ctx, torch.Generator().manual_seed(1), baseline=True)
    # The same generator draws the image mask, then the context mask.
    g = torch.Generator().manual_seed(1)
    keep = m.random_mask(4, 16, g)[:, : CONTEXT.visible_patches]
    masked = torch.ones(4, 16, dtype=torch.bool).scatter_(1, keep, False)
    assert masked.sum(dim=1).tolist() == [16 - CONTEXT.visible_patches] * 4
    target = m.patchify(x)
    pred = captured[0][:, :16]
    weight = torch.tensor([1.0, 0.0, 2.0]).repeat(4)
    torch.testing.assert_close(terms["image"], ((pred - target) ** 2 * weight).mean(-1)[masked].mean())
    # The baseline predicts every masked pixel as the image's mean over its visible pixels, per channel.
    pixels = target.reshape(4, 16, 4, 3)
    mean = torch.stack([pixels[b][~masked[b]].reshape(-1, 3).mean(0) for b in range(4)])
    guess = mean[:, None, None, :].expand(4, 16, 4, 3).reshape(4, 16, 12)
    torch.testing.assert_close(
        terms["image_baseline"], ((guess - target) ** 2 * weight).mean(-1)[masked].mean()
    )
    total = terms["image"] + terms["context"] + CONTEXT.summary_weight * terms["summary"]
    torch.testing.assert_close(terms["total"], total)
    torch.testing.assert_close(m(x, ctx, torch.Generator().manual_seed(1)), terms["total"])


def test_summary_target_is_the_mean_of_the_cell_and_of_each_ring():
    m = _model(CONTEXT)
    ctx = torch.zeros(1, 3, 10, 10)
    ctx[0, 0, 4:6, 4:6] = 4.0  # the cell itself (centre of 5 x 5 cells of 2 x 2)
    ctx[0, 1, 2:4, 2:4] = 8.0  # one cell of ring 1 (8 cells)
    ctx[0, 2, 0:2, :] = 16.0  # 5 cells of ring 2 (16 cells)
    rings = m._summary_target(torch.zeros(1, 3, 8, 8), ctx)[0]
    torch.testing.assert_close(rings, torch.tensor([[4.0, 0, 0], [0, 1.0, 0], [0, 0, 5.0]]))
    no_context = _model()._summary_target(torch.full((1, 3, 8, 8), 2.0), None)
    torch.testing.assert_close(no_context, torch.full((1, 1, 3), 2.0))


def test_layout_statistics_tell_clustered_from_spread_at_equal_totals():
    # Two channel groups over 16 tokens of 2 x 2 pixels: {0, 1} and {2}.
    membership = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    clustered = torch.zeros(1, 16, 4, 3)
    clustered[0, 0, :, 0] = 4.0  # 16 units of group 0 in one token; group 2 empty
    spread = torch.zeros(1, 16, 4, 3)
    spread[0, :, 0, 1] = 1.0  # 16 units of group 0, one per token
    stats = layout_statistics(torch.cat([clustered, spread]).reshape(2, 16, 12), membership, 4)
    occupancy, dispersion, top = stats[..., 0], stats[..., 1], stats[..., 2]
    torch.testing.assert_close(occupancy[:, 0], torch.tensor([1 / 16, 1.0]))
    # Clustered: mean 1, variance 16 - 1 = 15 -> log1p(15); spread: no variance.
    torch.testing.assert_close(dispersion[:, 0], torch.tensor([torch.log1p(torch.tensor(15.0)).item(), 0.0]))
    torch.testing.assert_close(top[:, 0], torch.tensor([1.0, 2 / 16]))  # busiest ceil(1.6) = 2 tokens
    assert torch.equal(stats[:, 1], torch.zeros(2, 3))  # an empty group has no layout


def test_layout_term_reads_the_embedding_pooling_and_joins_the_total():
    config = dataclasses.replace(CONTEXT, layout_groups=((0, 1), (2,)), layout_weight=0.5)
    assert MAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="layout_groups"):
        dataclasses.replace(TINY, layout_groups=((0, 3),))
    m = _model(config)
    assert m.layout_head.in_features == config.width  # the spread half of the embedding
    x, ctx = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 10, 10)
    terms = m.losses(x, ctx, torch.Generator().manual_seed(1))
    total = (
        terms["image"] + terms["context"] + config.summary_weight * terms["summary"] + 0.5 * terms["layout"]
    )
    torch.testing.assert_close(terms["total"], total)
    assert "layout" not in _model(CONTEXT).losses(x, ctx, torch.Generator().manual_seed(1))


def test_context_stream_is_required_exactly_when_configured():
    with pytest.raises(ValueError, match="odd number"):
        dataclasses.replace(TINY, context_size=8, context_patch=2)
    m = _model(CONTEXT)
    with pytest.raises(ValueError, match="context window"):
        m(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="no context stream"):
        _model()(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 10, 10))
    pooled, tokens = m.eval().embed(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 10, 10), per_token=True)
    assert pooled.shape == (2, 32) and tokens.shape == (2, 16, 16)


def test_a_few_steps_fit_a_fixed_batch():
    m = _model()
    x = torch.randn(8, 3, 8, 8)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = m(x, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
