"""Evaluation benchmark: S2Vec vs raw counts vs PCA vs random, random vs spatial split (and transfer).

    python bench/bench_evaluation.py bundled   [--epochs 10] [--image-level 13 --pixel-level 17] [--out DIR]
    python bench/bench_evaluation.py synthetic [--cells 10000] [--epochs 10] [--out DIR]

`bundled`: the catalog regions, targets = OSM proxies (address density, floor area density; log1p);
`synthetic`: a generated world, targets = its true latent fields (log population, log income).
Both extract features at the default Grid levels, rasterise, train one small MAE (s2vec_core.train,
default CPU config) on all regions, embed, and score with s2vec_core.evaluation_run, the same code
as the `evaluation_report` asset. Prints the R2 tables (markdown) and writes the full report to --out.
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
from s2vec_core.catalog import load_catalog, resolve_source
from s2vec_core.evaluate import r2_table
from s2vec_core.evaluation_report import table_markdown, write_report
from s2vec_core.features import cell_features
from s2vec_core.grid import Grid
from s2vec_core.osm import extract_cells
from s2vec_core.synthetic import WorldSpec, write_world
from s2vec_core.taxonomy import TAXONOMY_VERSION


def embed_regions(
    features: dict[str, pl.DataFrame], grid: Grid, epochs: int, work: Path, device: str
) -> tuple[dict, dict]:
    """Train one MAE on every region's rasters; return per-region embedding tables and training info."""
    from s2vec_core.embed import embed_shards, embeddings_frame, load_model
    from s2vec_core.raster import open_shards, rasterize, write_shards
    from s2vec_core.train import TrainConfig, train

    dirs = {}
    for region, df in features.items():
        dirs[region] = work / "rasters" / region
        write_shards(rasterize(df, grid.image_level, grid.pixel_level), dirs[region])
    t = time.perf_counter()
    result = train(
        open_shards(list(dirs.values())),
        work / "mae.pt",
        train_config=TrainConfig(epochs=epochs),
        taxonomy_version=TAXONOMY_VERSION,
        device=device,
    )
    info = {
        "train_s": time.perf_counter() - t,
        "epochs": epochs,
        "images_per_s": result.images_per_s,
        "loss_first": result.losses[0],
        "loss_last": result.losses[-1],
        "parameters": result.parameters,
    }
    model = load_model(work / "mae.pt", device=device)
    out = {}
    for region, d in dirs.items():
        shards = open_shards(d)
        out[region] = embeddings_frame(
            region, shards.image_ids, grid.image_level, embed_shards(model, shards), model.model_version
        )
    info["model_version"] = model.model_version[:12]
    return out, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["bundled", "synthetic"])
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-level", type=int, default=Grid().image_level)
    ap.add_argument("--pixel-level", type=int, default=Grid().pixel_level)
    ap.add_argument("--device", default="cpu", help="torch device for the MAE (auto, cpu, cuda)")
    ap.add_argument("--no-s2vec", action="store_true", help="skip MAE training (baselines only)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "s2vec_eval")
    args = ap.parse_args()
    grid = Grid(args.image_level, args.pixel_level, (args.image_level, args.pixel_level))
    levels = [grid.image_level, grid.pixel_level]
    work = Path(tempfile.mkdtemp(prefix="s2vec_eval_"))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    features, tasks, notes, pbfs = {}, {}, [], {}
    if args.mode == "bundled":
        for name, region in load_catalog().items():
            pbfs[name] = resolve_source(region, work / "cache")
    else:
        pbfs["synthetic"] = work / "synthetic.osm.pbf"
        truth = write_world(
            pbfs["synthetic"],
            WorldSpec(
                n_image_cells=args.cells,
                image_level=grid.image_level,
                pixel_level=grid.pixel_level,
                seed=args.seed,
            ),
        )
        timings["generate_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    for name, pbf in pbfs.items():
        features[name] = cell_features(extract_cells(pbf, grid.pixel_level), levels, name)
    timings["extract_s"] = time.perf_counter() - t

    embeddings, train_info = (
        ({}, {}) if args.no_s2vec else embed_regions(features, grid, args.epochs, work, args.device)
    )

    t = time.perf_counter()
    sets = {}
    for name in pbfs:
        sets[name] = er.standard_feature_sets(
            features[name], grid.image_level, embeddings.get(name), seed=args.seed
        )
        cells = sets[name]["raw"]["cell_id"].to_numpy()
        if args.mode == "bundled":
            tasks[name], skipped = er.proxy_tasks(pbfs[name], grid.image_level, cells)
            notes += [f"{name}: {n}" for n in skipped]
        else:
            tasks[name] = {
                f"log_{c}": truth.select("cell_id", target=pl.col(c).log()) for c in ("population", "income")
            }
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
        region_result = (
            next(
                r
                for r in results
                if r.metrics.height and r.metrics["region"][0] == name and r.metrics["split"][0] != "transfer"
            )
            if any(r.metrics.height and r.metrics["region"][0] == name for r in results)
            else None
        )
        if region_result is not None:
            plots |= {f"{name}: {k}": v for k, v in er.report_plots(region_result, sets[name]).items()}
    intro = (
        f"Mode `{args.mode}`, grid {grid.image_level}/{grid.pixel_level}, seed {args.seed}, "
        f"machine: {platform.machine()} {platform.processor() or ''}, python {sys.version.split()[0]}. "
        f"MAE: {train_info or 'not trained'}. Timings (s): { {k: round(v, 1) for k, v in timings.items()} }."
    )
    report = write_report(
        args.out / args.mode, f"s2vec evaluation ({args.mode})", metrics, notes, plots, intro
    )
    print(intro)
    for model in ("lightgbm", "linear"):
        print(f"\n### R2, {model}\n")
        print(table_markdown(r2_table(metrics, model)))
    print("\n" + "\n".join(f"- {n}" for n in notes))
    print(f"\nreport: {report}  (total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
