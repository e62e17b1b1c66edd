"""s2vec_core.pipeline on the bundled Monaco extract at small levels: every stage runs, and each gives
what the asset it stands for writes."""

import dataclasses

import numpy as np
import polars as pl
import pytest

from s2vec_core import bbox, embed, pipeline, raster, shards, tables, warehouse
from s2vec_core.catalog import load_catalog
from s2vec_core.features import cell_features
from s2vec_core.grid import Grid
from s2vec_core.model_config import TrainConfig, default_model_config

REGION = "monaco"
# Coarse enough for a few dozen images, so a one-epoch tiny model trains in seconds.
GRID = Grid(image_level=14, pixel_level=18, feature_levels=(14, 16, 18), context_ring=1)


@pytest.fixture(scope="module")
def region():
    return load_catalog()[REGION]


@pytest.fixture(scope="module")
def features(region) -> pl.DataFrame:
    return pipeline.features(region.source, REGION, GRID.feature_levels, region.bbox)


@pytest.fixture(scope="module")
def stages(features, tmp_path_factory):
    """Rasters written as shards, a tiny model fitted on them, and its embeddings."""
    work = tmp_path_factory.mktemp("pipeline")
    images = pipeline.rasters(features, GRID)
    pipeline.write_rasters(images, work / "rasters", REGION)
    shard_set = raster.open_shards(work / "rasters")
    config = dataclasses.replace(
        default_model_config(shard_set), patch_size=4, width=16, heads=2, decoder_width=8, decoder_heads=2
    )
    result = pipeline.fit(
        shard_set, work / "mae.pt", config, TrainConfig(epochs=1, batch_size=8), device="cpu"
    )
    trained = embed.load_model(work / "mae.pt", device="cpu")
    return images, shard_set, result, trained, pipeline.embed(trained, shard_set, REGION)


def test_features_are_what_the_cell_features_asset_computes(region, features):
    stats: dict[str, int] = {}
    got = pipeline.features(region.source, REGION, GRID.feature_levels, region.bbox, stats=stats)
    # The asset's steps: sharded extraction at the finest level, clip to the catalog bbox, sum up.
    pixels = shards.extract_sharded(region.source, GRID.pixel_level)
    clipped = bbox.clip(pixels, region.bbox)
    expected = cell_features(clipped, GRID.feature_levels, REGION)
    assert got.equals(expected) and features.equals(expected)
    assert sorted(got["level"].unique()) == list(GRID.feature_levels)
    assert stats["cells_outside_bbox"] == pixels["cell_id"].n_unique() - clipped["cell_id"].n_unique() > 0
    assert stats["tagged_nodes"] > 0
    warehouse.check_spec(tables.CELL_FEATURES, got.schema, tables.CELL_FEATURES.partition_by)


def test_rasters_follow_the_grid_and_carry_region_and_taxonomy(stages):
    images, shard_set, *_ = stages
    assert (images.image_level, images.pixel_level, images.context_ring) == (14, 18, 1)
    assert images.tensors.shape[1:] == (len(images.channels), GRID.image_size, GRID.image_size)
    assert images.context.shape[-1] == GRID.context_size
    assert shard_set.meta["region"] == REGION and shard_set.meta["taxonomy_version"]
    np.testing.assert_array_equal(shard_set.image_ids, images.image_ids)


def test_fit_and_embed_give_the_rows_cell_embeddings_stores(stages):
    _, shard_set, result, trained, embedded = stages
    assert len(result.losses) == 1 and np.isfinite(result.losses[0])
    assert trained.taxonomy_version == shard_set.meta["taxonomy_version"]
    rows = embedded.rows
    warehouse.check_spec(tables.CELL_EMBEDDINGS, rows.schema, tables.CELL_EMBEDDINGS.partition_by)
    image_rows = rows.filter(pl.col("level") == trained.image_level)
    assert image_rows.height == len(shard_set) == embedded.image_vectors.shape[0]
    assert rows.filter(pl.col("level") == trained.token_level).height == len(shard_set) * (
        trained.model.config.num_patches
    )
    lengths = np.linalg.norm(np.stack(image_rows["embedding"].to_list()), axis=1)
    np.testing.assert_allclose(lengths, 1.0, rtol=1e-5)
    assert rows.equals(rows.sort("level", "cell_id"))


def test_a_write_with_a_spec_refuses_a_frame_that_differs_from_it(features, tmp_path):
    uri = warehouse.table_uri(tmp_path, "cell_features")
    bad = features.with_columns(pl.col("level").cast(pl.Int32))
    with pytest.raises(warehouse.WarehouseError, match="'level' is Int32"):
        warehouse.write_partition(bad, uri, {"region": REGION}, spec=tables.CELL_FEATURES)
    assert warehouse.table_version(uri) is None
    # Without a spec (nor facts naming one) a cut-down frame is written as it is.
    assert warehouse.write_partition(bad.head(3), uri, {"region": REGION}) == 0
