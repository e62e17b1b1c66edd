"""s2vec end to end through `s2vec_core.pipeline`, the stages the assets run: PBF -> raster tensors
(sharded extraction clipped to the job's bbox, features at the image and pixel levels, rasters with the
default context ring, shards), then MAE training at srai's default model size (`MAEConfig.paper`: width
256, 6+2 layers, 8 heads, pixel patches; plus the product's context stream and layout groups) and
inference (image and token embeddings as `cell_embeddings` rows)."""

import dataclasses
import time
from pathlib import Path

from _result import job, peak_rss_mb, report

j = job()
t0 = time.perf_counter()
import torch

from s2vec_core import pipeline
from s2vec_core.embed import load_model
from s2vec_core.features import cell_features
from s2vec_core.grid import Grid
from s2vec_core.model_config import MAEConfig, TrainConfig, default_model_config
from s2vec_core.raster import open_shards

import_s = time.perf_counter() - t0
work = Path(j["workdir"])
grid = Grid(j["image_level"], j["pixel_level"], (j["image_level"], j["pixel_level"]))
t = time.perf_counter()
pixels = pipeline.extract(j["pbf"], grid.pixel_level, tuple(j["bbox"]))
extract_s = time.perf_counter() - t
feats = cell_features(pixels, grid.feature_levels, "bench")
rasters = pipeline.rasters(feats, grid)
pipeline.write_rasters(rasters, work / "shards", "bench")
shards = open_shards(work / "shards")
data_s = time.perf_counter() - t
data_rss_mb = peak_rss_mb()
n, c = rasters.tensors.shape[0], rasters.tensors.shape[1]

product = default_model_config(shards)
config = dataclasses.replace(
    MAEConfig.paper(c, context_size=product.context_size),
    image_size=product.image_size,
    layout_groups=product.layout_groups,
)
t = time.perf_counter()
res = pipeline.fit(
    shards,
    work / "model.pt",
    config,
    TrainConfig(epochs=j["epochs"], batch_size=j["batch_size"]),
    device="cpu",
)
train_s = time.perf_counter() - t
t = time.perf_counter()
emb = pipeline.embed(load_model(work / "model.pt", device="cpu"), shards, "bench")
inference_s = time.perf_counter() - t
report(
    {
        "import_s": import_s,
        "extract_s": extract_s,
        "data_s": data_s,
        "data_rss_mb": data_rss_mb,
        "images": int(n),
        "channels": int(c),
        "setup_s": train_s - sum(res.epoch_seconds),
        "epoch_s": res.epoch_seconds,
        "inference_s": inference_s,
        "embeddings": list(emb.image_vectors.shape),
        "threads": torch.get_num_threads(),
    }
)
