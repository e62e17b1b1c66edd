"""Evaluation benchmark on the bundled regions: S2Vec vs the baselines, random vs spatial split and transfer.

    python bench/bench_evaluation.py [--epochs 30] [--image-level 13 --pixel-level 17] [--out DIR]

The catalog regions, targets = OSM proxies (address density, floor area density; log1p). Features at
the given levels clipped to the catalog bbox, rasters with the default context ring, one small MAE on
all regions and its unit-length embeddings (`bench_embeddings.embed_all`: `s2vec_core.pipeline`, the
stages the assets run, as in the synthetic-world benchmark), scored with
s2vec_core.evaluation_run, the same code as the `evaluation_report` asset. Prints the R2 tables
(markdown) and writes the full report to --out. Known truth on synthetic worlds: bench_embeddings.py.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from s2vec_core import evaluation_run as er
from s2vec_core import pipeline
from s2vec_core.catalog import load_catalog, resolve_source
from s2vec_core.evaluate import r2_table, raw_channel_totals
from s2vec_core.evaluation_report import table_markdown, write_report
from s2vec_core.grid import Grid
from s2vec_core.model_config import TrainConfig
from s2vec_core.taxonomy import CHANNEL_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embeddings import embed_all


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-level", type=int, default=Grid().image_level)
    ap.add_argument("--pixel-level", type=int, default=Grid().pixel_level)
    ap.add_argument("--device", default="cpu", help="torch device for the MAE (auto, cpu, cuda)")
    ap.add_argument("--no-s2vec", action="store_true", help="skip MAE training (baselines only)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "s2vec_eval")
    args = ap.parse_args()
    grid = Grid(args.image_level, args.pixel_level, (args.image_level, args.pixel_level))
    work = Path(tempfile.mkdtemp(prefix="s2vec_eval_"))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    features, tasks, notes, pbfs = {}, {}, [], {}
    catalog = load_catalog()
    for name, region in catalog.items():
        pbfs[name] = resolve_source(region, work / "cache")
    for name, pbf in pbfs.items():
        features[name] = pipeline.features(pbf, name, grid.feature_levels, catalog[name].bbox)
    timings["extract_s"] = time.perf_counter() - t0

    embeddings, train_info = (
        ({}, {})
        if args.no_s2vec
        else embed_all(features, grid, TrainConfig(epochs=args.epochs, seed=args.seed), work, args.device)
    )

    t = time.perf_counter()
    # One PCA over every region, as `evaluation_cross_region` fits it: per-region components neither
    # transfer nor share a width (an 11-cell region caps its own PCA at 11 components).
    pooled = pl.concat(
        [raw_channel_totals(f, grid.image_level, CHANNEL_NAMES) for f in features.values()]
    ).unique("cell_id", keep="first", maintain_order=True)
    sets = {}
    for name, pbf in pbfs.items():
        sets[name] = er.standard_feature_sets(
            features[name],
            grid.image_level,
            embeddings.get(name),
            seed=args.seed,
            pca_source=pooled,
            pixel_level=grid.pixel_level,
        )
        tasks[name], skipped = er.proxy_tasks(pbf, grid.image_level, sets[name]["raw"]["cell_id"].to_numpy())
        notes += [f"{name}: {n}" for n in skipped]
    results = [
        er.evaluate_region(name, sets[name], tasks[name], grid.image_level, seed=args.seed) for name in pbfs
    ]
    if len(pbfs) > 1:
        results.append(er.evaluate_cross_region(tasks, sets, seed=args.seed))
    timings["evaluate_s"] = time.perf_counter() - t
    metrics = pl.concat([r.metrics for r in results])
    notes += [n for r in results for n in r.notes]

    plots = {}
    for name in pbfs:
        region_result = next(
            (
                r
                for r in results
                if r.metrics.height and r.metrics["region"][0] == name and r.metrics["split"][0] != "transfer"
            ),
            None,
        )
        if region_result is not None:
            plots |= {f"{name}: {k}": v for k, v in er.report_plots(region_result, sets[name]).items()}
    intro = (
        f"Bundled regions, grid {grid.image_level}/{grid.pixel_level}, seed {args.seed}, "
        f"machine: {platform.machine()} {platform.processor() or ''}, python {sys.version.split()[0]}. "
        f"MAE: {train_info or 'not trained'}. Timings (s): { {k: round(v, 1) for k, v in timings.items()} }."
    )
    report = write_report(
        args.out / "bundled", "s2vec evaluation (bundled regions)", metrics, notes, plots, intro
    )
    print(intro)
    for model in ("lightgbm", "linear"):
        print(f"\n### R2, {model}\n")
        print(table_markdown(r2_table(metrics, model)))
    print("\n" + "\n".join(f"- {n}" for n in notes))
    print(f"\nreport: {report}  (total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
