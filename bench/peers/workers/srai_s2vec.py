"""Peer: srai 0.10.2 `S2VecEmbedder` end to end, each stage timed on its own.

Area = the PBF's bbox (no geocoding offline); image cells from `S2Regionalizer`; features from
`OSMPbfLoader` (quackosm 0.18, offline spatial extension via HOME) with the GEOFABRIK layers merged into
one key/value filter; then fit (dataset preparation, trainer setup, epochs timed by a Lightning callback)
and inference on the fitted dataset.
"""

import sys
import time
import types

from _result import job, peak_rss_mb, report

# torchvision from PyPI is a CUDA build whose op registration fails on the CPU torch; S2Vec uses no
# torchvision ops, so skip that registration (PEERS.md).
sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")

timings: dict = {}


def timed(name):
    class T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = time.perf_counter() - self.t

    return T()


def main() -> None:
    # quackosm starts a 'spawn' pool, which re-imports this file: all work stays under the main guard.
    j = job()
    t0 = time.perf_counter()
    import geopandas as gpd
    import pytorch_lightning as pl
    from shapely.geometry import box
    from srai.embedders import S2VecEmbedder
    from srai.loaders import OSMPbfLoader
    from srai.loaders.osm_loaders.filters import GEOFABRIK_LAYERS, merge_osm_tags_filter
    from srai.regionalizers import S2Regionalizer

    timings["import_s"] = time.perf_counter() - t0

    with timed("area_s"):
        area = gpd.GeoDataFrame(geometry=[box(*j["bbox"])], crs="EPSG:4326")
        regions = S2Regionalizer(resolution=j["image_level"]).transform(area)
    tags = merge_osm_tags_filter(GEOFABRIK_LAYERS)
    with timed("load_s"):
        features = OSMPbfLoader(
            pbf_file=j["pbf"], download_directory=j["workdir"], verbosity_mode="silent"
        ).load(area, tags)

    emb = S2VecEmbedder(
        target_features=tags, img_res=j["image_level"], patch_res=j["pixel_level"], batch_size=j["batch_size"]
    )
    marks: dict = {"epoch_start": [], "epoch_end": []}
    prepare = emb._prepare_dataset

    def prepare_timed(*a, **kw):
        with timed("prepare_dataset_s"):
            out = prepare(*a, **kw)
        marks["prepared"] = time.perf_counter()
        marks["data_rss_mb"] = peak_rss_mb()
        marks["channels"] = out[0].shape[1]
        marks["images"] = len(out[2])
        return out

    emb._prepare_dataset = prepare_timed

    class EpochTimer(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            marks["epoch_start"].append(time.perf_counter())

        def on_train_epoch_end(self, trainer, module):
            marks["epoch_end"].append(time.perf_counter())

    with timed("fit_s"):
        emb.fit(
            regions,
            features,
            trainer_kwargs={
                "max_epochs": j["epochs"],
                "accelerator": "cpu",
                "callbacks": [EpochTimer()],
                "logger": False,
                "enable_checkpointing": False,
                "enable_progress_bar": False,
                "enable_model_summary": False,
            },
        )
    with timed("inference_s"):
        out = emb._transform(dataset=emb._dataset)
    timings.update(
        data_s=timings["area_s"] + timings["load_s"] + timings["prepare_dataset_s"],
        setup_s=marks["epoch_start"][0] - marks["prepared"],
        epoch_s=[e - s for s, e in zip(marks["epoch_start"], marks["epoch_end"])],
        images=int(marks["images"]),
        data_rss_mb=marks["data_rss_mb"],
        channels=int(marks["channels"]),
        image_cells=len(regions),
        features=len(features),
        embeddings=list(out.shape),
    )
    report(timings)


if __name__ == "__main__":
    main()
