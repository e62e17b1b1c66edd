"""The evaluation reads its grid from its inputs (the model's registry row, else the rasters), so features at
13/15/17 with rasters and a model at 15/17 are scored at 15 with the embeddings, not at a configured 13 on
baselines only (a green run that scored no embeddings, before)."""

from __future__ import annotations

import dagster as dg
import numpy as np
import polars as pl
import pytest

from s2vec_assets.defs.evaluation.assets import EvaluationConfig, Levels, _features, _levels
from s2vec_assets.defs.resources import WarehouseResource
from s2vec_core import artifacts, registry, s2
from s2vec_core.grid import Grid
from s2vec_core.raster import rasterize, write_shards


def _rasters(warehouse: WarehouseResource, region: str, image: int, pixel: int) -> None:
    cell = s2.latlng_to_cell_id([47.14], [9.52], pixel)
    frame = pl.DataFrame({"level": [pixel], "cell_id": s2.as_int64(cell), "x": [1.0]})
    write_shards(rasterize(frame, image, pixel), warehouse.artifacts.local(artifacts.raster_key(region)))


def _register(warehouse: WarehouseResource, version: str, image: int, pixel: int) -> None:
    registry.record_trained(
        warehouse.root,
        registry.ModelRecord(
            model_version=version,
            regions=["a"],
            image_level=image,
            pixel_level=pixel,
            token_level=pixel - 1,
            dim=8,
            token_dim=4,
            taxonomy_version="",
            model_config={},
            train_config={},
            training_loss=0.0,
            holdout_loss=None,
            checkpoint="models/x.pt",
        ),
    )


def test_levels_come_from_the_model_then_the_rasters_then_the_default(tmp_path):
    warehouse = WarehouseResource(root=str(tmp_path))
    assert "image_level" not in EvaluationConfig.model_fields  # nothing to set twice
    default = Grid()
    assert _levels(warehouse, None, ["a"]) == Levels(default.image_level, default.pixel_level, "default grid")
    _rasters(warehouse, "a", 15, 17)
    assert _levels(warehouse, None, ["a"]) == Levels(15, 17, "rasters")
    _register(warehouse, "v" * 64, 14, 18)
    assert _levels(warehouse, "v" * 64, ["a"]) == Levels(14, 18, f"model {'v' * 12}")
    _rasters(warehouse, "b", 13, 17)
    with pytest.raises(dg.Failure, match="different levels"):
        _levels(warehouse, None, ["a", "b"])


def test_features_without_the_grid_levels_are_refused_with_the_levels_to_make(tmp_path):
    warehouse = WarehouseResource(root=str(tmp_path))
    ids = s2.as_int64(s2.latlng_to_cell_id([47.14, 47.15], [9.52, 9.53], 13))
    rows = pl.DataFrame({"region": ["a", "a"], "level": np.array([13, 13], np.int8), "cell_id": ids})
    warehouse.write_partition(rows, "cell_features", {"region": "a"})
    with pytest.raises(dg.Failure, match=r"has levels \[13\], not \[15, 17\] that the rasters"):
        _features(Levels(15, 17, "rasters"), warehouse, "a")
