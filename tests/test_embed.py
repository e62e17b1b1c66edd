"""Embeddings from a trained checkpoint: reproducible, versioned by the checkpoint's sha256, Delta-readable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from s2vec_core import s2
from s2vec_core.catalog import sha256_file
from s2vec_core.embed import (
    NEIGHBOUR_RING,
    CheckpointError,
    embed_shards,
    embeddings_frame,
    load_model,
    token_cells,
)
from s2vec_core.features import cell_features
from s2vec_core.model import MAEConfig
from s2vec_core.neighbours import ring_mean
from s2vec_core.osm import extract_cells
from s2vec_core.raster import open_shards, rasterize, write_shards
from s2vec_core.train import TrainConfig, train
from s2vec_core.warehouse import write_partition

PBF = Path(__file__).resolve().parents[1] / "data" / "osm" / "monaco-2023.osm.pbf"
IMAGE_LEVEL, PIXEL_LEVEL = 14, 18


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    features = cell_features(extract_cells(PBF, PIXEL_LEVEL), (IMAGE_LEVEL, PIXEL_LEVEL), "monaco")
    write_shards(
        rasterize(features, IMAGE_LEVEL, PIXEL_LEVEL, context_ring=1), root / "rasters", shard_size=16
    )
    shards = open_shards(root / "rasters")
    config = MAEConfig(
        in_channels=len(shards.channels),
        image_size=16,
        patch_size=4,
        width=16,
        depth=1,
        heads=2,
        decoder_width=8,
        decoder_depth=1,
        decoder_heads=2,
        context_size=6,
    )
    train(
        shards, root / "model.pt", config, TrainConfig(epochs=2, batch_size=16, seed=1), taxonomy_version="tv"
    )
    yield root, shards


def test_embeddings_are_reproducible(trained):
    root, shards = trained
    first = load_model(root / "model.pt", device="cpu")
    a = embed_shards(first, shards, batch_size=8)
    b = embed_shards(load_model(root / "model.pt", device="cpu"), shards, batch_size=8)
    # Mean and spread of width-16 tokens, then their mean over the cell's neighbours.
    assert a.dtype == np.float32 and a.shape == (len(shards), 64) and first.dim == 64
    assert np.isfinite(a).all() and a.std(axis=0).mean() > 1e-4
    np.testing.assert_array_equal(a, b)
    # Batch composition only changes float summation order, not the result beyond rounding.
    np.testing.assert_allclose(embed_shards(first, shards, batch_size=5), a, rtol=1e-4, atol=1e-5)
    assert first.model_version == hashlib.sha256((root / "model.pt").read_bytes()).hexdigest()
    assert (first.image_level, first.pixel_level, first.taxonomy_version) == (IMAGE_LEVEL, PIXEL_LEVEL, "tv")


def test_token_embeddings_are_one_per_patch_cell_inside_the_image(trained):
    root, shards = trained
    model = load_model(root / "model.pt", device="cpu")
    pooled, tokens = embed_shards(model, shards, batch_size=8, tokens=True)
    np.testing.assert_array_equal(pooled, embed_shards(model, shards, batch_size=8))
    assert (
        tokens.shape == (len(shards), 16, 16) and model.token_level == PIXEL_LEVEL - 2
    )  # 4 x 4-pixel patches
    cells = token_cells(shards.image_ids, IMAGE_LEVEL, model.token_level)
    assert (s2.parent(cells.reshape(-1), IMAGE_LEVEL) == np.repeat(shards.image_ids, 16)).all()
    assert (s2.cell_level(cells.reshape(-1)) == model.token_level).all() and len(
        np.unique(cells)
    ) == cells.size
    # Tokens of one image differ (each is its own place), and the context reaches them: pooling over the
    # image tokens alone is not the pooled embedding (which includes the context tokens).
    assert tokens.std(axis=1).mean() > 1e-3
    assert not np.allclose(tokens.mean(axis=1), pooled[:, :16], atol=1e-4)
    # The pooled spread is the tokens' spread, both standardised with the training images' scale.
    sc = model.scale
    spread = tokens.std(axis=1, ddof=1) * sc["token_std"]
    np.testing.assert_allclose(
        (spread - sc["pooled_mean"][16:]) / sc["pooled_std"][16:], pooled[:, 16:32], rtol=1e-3, atol=1e-3
    )
    # The second half is the first half averaged over the neighbours present in the shards.
    around = ring_mean(shards.image_ids, pooled[:, :32], IMAGE_LEVEL, NEIGHBOUR_RING)
    np.testing.assert_allclose(pooled[:, 32:], around, rtol=1e-5, atol=1e-6)
    assert np.abs(pooled[:, 32:]).sum(axis=1).min() > 0  # every monaco image cell has a neighbour
    frame = embeddings_frame(
        "monaco", cells.reshape(-1), model.token_level, tokens.reshape(-1, model.token_dim), "v"
    )
    assert frame.height == cells.size and frame["level"].unique().to_list() == [model.token_level]


def test_embeddings_are_standardised_against_the_training_images(trained):
    root, shards = trained
    model = load_model(root / "model.pt", device="cpu")
    own = embed_shards(model, shards)[:, : model.model.embedding_dim]
    # The training rows are 90% of these shards: about zero mean and unit spread per dimension.
    assert np.abs(own.mean(axis=0)).max() < 0.5 and 0.7 < own.std(axis=0).mean() < 1.3
    # So a cosine compares cells: raw encoder outputs share one direction (every cosine ~1).
    unit = own / np.linalg.norm(own, axis=1, keepdims=True)
    assert np.median(unit @ unit.T) < 0.5
    raw = load_model(root / "model.pt", device="cpu")
    object.__setattr__(raw, "scale", None)
    plain = embed_shards(raw, shards)[:, : model.model.embedding_dim]
    plain_unit = plain / np.linalg.norm(plain, axis=1, keepdims=True)
    assert np.median(plain_unit @ plain_unit.T) > np.median(unit @ unit.T)


def test_embedding_table_schema_reads_back_from_delta(trained, tmp_path):
    root, shards = trained
    model = load_model(root / "model.pt", device="cpu")
    emb = embed_shards(model, shards)
    frame = embeddings_frame("monaco", shards.image_ids, IMAGE_LEVEL, emb, model.model_version)
    uri = str(tmp_path / "cell_embeddings")
    write_partition(frame, uri, {"region": "monaco", "model_version": model.model_version})
    back = pl.read_delta(uri)
    # Delta has no fixed-size list type: the column comes back as List(Float32), every row of length d.
    assert dict(back.schema) == {
        "region": pl.String,
        "level": pl.Int8,
        "cell_id": pl.Int64,
        "token": pl.String,
        "model_version": pl.String,
        "embedding": pl.List(pl.Float32),
    }
    assert back["embedding"].list.len().unique().to_list() == [model.dim]
    back = back.with_columns(pl.col("embedding").list.to_array(model.dim))
    back = back.sort("cell_id")
    assert back["cell_id"].is_unique().all() and back.height == len(shards)
    ids = back["cell_id"].to_numpy()
    assert np.array_equal(np.sort(ids), np.sort(shards.image_ids.view(np.int64)))
    assert back["token"].to_list() == s2.to_token(ids.view(np.uint64)).tolist()
    order = np.argsort(shards.image_ids.view(np.int64))
    np.testing.assert_array_equal(np.stack(back["embedding"].to_numpy()), emb[order])


def test_corrupt_foreign_and_replaced_checkpoints_are_refused_clearly(trained, tmp_path):
    root, _ = trained
    good = root / "model.pt"
    version = sha256_file(good)
    assert load_model(good, device="cpu", model_version=version).model_version == version
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    configless = tmp_path / "configless.pt"
    state = torch.load(good, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "model_config"}, configless)
    for path, why in ((empty, ""), (cut, ""), (configless, "model_config")):
        with pytest.raises(CheckpointError, match=f"{path.name} is not a readable s2vec checkpoint.*{why}"):
            load_model(path, device="cpu")
    # A valid checkpoint of other weights at the path the registry names: refused by its hash.
    swapped = tmp_path / "swapped.pt"
    torch.save({**state, "model": {k: v + 1 for k, v in state["model"].items()}}, swapped)
    load_model(swapped, device="cpu")
    with pytest.raises(CheckpointError, match=f"is model version .*not {version[:12]}.*replaced"):
        load_model(swapped, device="cpu", model_version=version)


def test_bad_inputs_are_refused(trained, tmp_path):
    root, shards = trained
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="one embedding row per cell"):
        embeddings_frame("monaco", shards.image_ids, IMAGE_LEVEL, np.zeros((1, 4), np.float32), "v")
    other = rasterize(
        pl.DataFrame(
            {"level": [PIXEL_LEVEL], "cell_id": [int(shards.image_ids[0].view(np.int64))], "x": [1.0]}
        ).with_columns(
            cell_id=pl.lit(int(s2.children_range(shards.image_ids[:1], PIXEL_LEVEL)[0].view(np.int64)[0]))
        ),
        IMAGE_LEVEL,
        PIXEL_LEVEL,
    )
    write_shards(other, tmp_path / "other")
    with pytest.raises(ValueError, match="channels"):
        embed_shards(load_model(root / "model.pt"), open_shards(tmp_path / "other"))
