"""The ViT masked autoencoder: config validation, patches, positions, masked-only loss, embeddings."""

from __future__ import annotations

import pytest
import torch

from s2vec_core.model import MAEConfig, MaskedAutoencoder, parameter_count, sincos_2d

TINY = MAEConfig(in_channels=3, image_size=8, patch_size=2, width=16, depth=1, heads=2,
                 decoder_width=8, decoder_depth=1, decoder_heads=2)




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
    assert (paper.image_size, paper.patch_size, paper.width, paper.depth, paper.heads,
            paper.decoder_width, paper.decoder_depth, paper.mask_ratio) == (16, 1, 256, 6, 8, 128, 2, 0.75)
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


def test_loss_counts_masked_patches_only():
    m = _model()
    x = torch.randn(4, 3, 8, 8)
    pred, target, masked = m.reconstruct(x, torch.Generator().manual_seed(1))
    assert masked.sum(dim=1).tolist() == [TINY.num_patches - TINY.visible_patches] * 4
    loss = m(x, torch.Generator().manual_seed(1))
    expected = (pred - target).pow(2).mean(dim=-1)[masked].mean()
    torch.testing.assert_close(loss, expected)
    # ...which is not the error over all patches.
    assert not torch.isclose(loss, (pred - target).pow(2).mean())


def test_embed_pools_tokens_without_masking():
    m = _model().eval()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        pooled, tokens = m.embed(x, per_token=True)
        alone = m.embed(x[2:3])
    assert pooled.shape == (5, 16) and tokens.shape == (5, 16, 16)
    torch.testing.assert_close(pooled, tokens.mean(dim=1))
    torch.testing.assert_close(alone[0], pooled[2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        m.embed(torch.zeros(1, 4, 8, 8))


def test_a_few_steps_fit_a_fixed_batch():
    m = _model()
    x = torch.randn(8, 3, 8, 8)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = m(x, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
