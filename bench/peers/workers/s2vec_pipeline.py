"""s2vec end to end: PBF -> raster tensors (extract, per-level features, rasterise, shards), then MAE
training at srai's default model size (width 256, 6+2 layers, 8 heads, pixel patches) and inference."""

import time
from pathlib import Path

from _result import job, peak_rss_mb, report

j = job()
t0 = time.perf_counter()
import torch

from s2vec_core.embed import embed_shards, load_model
from s2vec_core.features import cell_features
from s2vec_core.model import MAEConfig
from s2vec_core.osm import extract_cells_long
from s2vec_core.raster import open_shards, rasterize, write_shards
from s2vec_core.train import TrainConfig, train

import_s = time.perf_counter() - t0
work = Path(j["workdir"])
il, pl_ = j["image_level"], j["pixel_level"]
t = time.perf_counter()
cells = extract_cells_long(j["pbf"], pl_)
extract_s = time.perf_counter() - t
feats = cell_features(cells, (pl_,), "bench")
rasters = rasterize(feats, il, pl_)
write_shards(rasters, work / "shards")
shards = open_shards(work / "shards")
data_s = time.perf_counter() - t
data_rss_mb = peak_rss_mb()
n, c = rasters.tensors.shape[0], rasters.tensors.shape[1]

size = 2 ** (pl_ - il)
config = MAEConfig(
    in_channels=c,
    image_size=size,
    patch_size=1,
    width=256,
    depth=6,
    heads=8,
    decoder_width=128,
    decoder_depth=2,
    decoder_heads=8,
)
t = time.perf_counter()
res = train(
    shards,
    work / "model.pt",
    config,
    TrainConfig(epochs=j["epochs"], batch_size=j["batch_size"]),
    device="cpu",
)
train_s = time.perf_counter() - t
t = time.perf_counter()
emb = embed_shards(load_model(work / "model.pt", device="cpu"), shards)
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
        "embeddings": list(emb.shape),
        "threads": torch.get_num_threads(),
    }
)
