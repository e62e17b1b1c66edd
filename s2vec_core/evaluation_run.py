"""One evaluation run end to end: standard feature sets, tasks, per-region and cross-region scores, plots.

The Dagster assets and the bench script both call these, so the report on the bundled data and on a
synthetic world are made the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from s2vec_core import evaluate as ev
from s2vec_core import evaluation_plots as plots
from s2vec_core.proxy import PROXY_TARGETS, osm_proxy_targets
from s2vec_core.taxonomy import CHANNEL_NAMES

DEFAULT_DIM = 16
"""PCA / random dimension when there is no embedding to match."""
S2VEC = "s2vec"


def standard_feature_sets(
    cell_features: pl.DataFrame,
    image_level: int,
    embeddings: pl.DataFrame | None = None,
    external: pl.DataFrame | None = None,
    seed: int = 0,
    pca_source: pl.DataFrame | None = None,
) -> dict[str, pl.DataFrame]:
    """`s2vec` (if embeddings), `raw`, `pca` and `random` at the embedding's dimension, and with an
    external table `external` and `s2vec+external` (fusion).

    `pca_source` (raw totals of several regions) fits the PCA on more than this region, for transfer.
    """
    raw = ev.raw_channel_totals(cell_features, image_level, CHANNEL_NAMES)
    sets: dict[str, pl.DataFrame] = {}
    dim = DEFAULT_DIM
    if embeddings is not None and embeddings.height:
        sets[S2VEC] = ev.embedding_features(
            embeddings.filter(pl.col("level") == image_level) if "level" in embeddings.columns else embeddings
        )
        dim = sets[S2VEC].width - 1
    sets["raw"] = raw
    if pca_source is None:
        sets["pca"] = ev.pca_features(raw, dim, seed)
    else:
        pooled = ev.pca_features(pca_source, dim, seed)
        sets["pca"] = raw.select("cell_id").join(pooled, on="cell_id", how="left")
    sets["random"] = ev.random_features(raw["cell_id"].to_numpy(), dim, seed)
    if external is not None:
        sets["external"] = ev.embedding_features(external, prefix="x")
        if S2VEC in sets:
            sets[f"{S2VEC}+external"] = ev.fuse(sets[S2VEC], sets["external"])
    return sets


def proxy_tasks(
    pbf_path: str | Path, image_level: int, cells: np.ndarray
) -> tuple[dict[str, pl.DataFrame], list[str]]:
    """log1p of each OSM proxy target on `cells` (zeros kept: nothing mapped is a value), as tasks.

    Targets that are zero on (almost) every cell are skipped with a note rather than scored.
    """
    proxy = osm_proxy_targets(pbf_path, image_level, cells=cells)
    tasks, notes = {}, []
    for name in PROXY_TARGETS:
        nonzero = int((proxy[name] > 0).sum())
        if nonzero < ev.MIN_CELLS // 2:
            notes.append(f"proxy target {name}: only {nonzero} cells with a non-zero value; not scored")
            continue
        tasks[f"log1p_{name}"] = proxy.select("cell_id", target=pl.col(name).log1p())
    return tasks, notes


def evaluate_region(
    region: str,
    feature_sets: Mapping[str, pl.DataFrame],
    tasks: Mapping[str, pl.DataFrame],
    image_level: int,
    **kwargs,
) -> ev.Evaluation:
    """`evaluate` over every task; tasks without enough cells become notes, not failures."""
    metrics, preds, notes = [], [], []
    for task, targets in tasks.items():
        try:
            out = ev.evaluate(
                targets, feature_sets, task=task, region=region, image_level=image_level, **kwargs
            )
        except ev.InsufficientDataError as e:
            notes.append(f"{region}/{task}: not scored: {e}")
            continue
        metrics.append(out.metrics)
        preds.append(out.predictions)
        notes += out.notes
    return _combine(metrics, preds, notes)


def evaluate_cross_region(
    tasks: Mapping[str, Mapping[str, pl.DataFrame]],
    feature_sets: Mapping[str, Mapping[str, pl.DataFrame]],
    **kwargs,
) -> ev.Evaluation:
    """Leave-one-region-out transfer for every task all regions share; `tasks[region][task]`."""
    regions = list(tasks)
    shared = [t for t in tasks[regions[0]] if all(t in tasks[r] for r in regions)] if regions else []
    names = set.intersection(*(set(feature_sets[r]) for r in regions)) if regions else set()
    metrics, preds, notes = [], [], []
    if len(regions) < 2:
        notes.append(f"cross-region transfer needs two regions, got {regions}")
    for task in shared if len(regions) >= 2 else []:
        for test in regions:
            sets = {r: {n: feature_sets[r][n] for n in feature_sets[r] if n in names} for r in regions}
            try:
                out = ev.evaluate_transfer(
                    {r: tasks[r][task] for r in regions}, sets, test, task=task, **kwargs
                )
            except ev.InsufficientDataError as e:
                notes.append(f"transfer to {test}/{task}: not scored: {e}")
                continue
            metrics.append(out.metrics)
            preds.append(out.predictions)
            notes += out.notes
    return _combine(metrics, preds, notes)


def _combine(metrics: list[pl.DataFrame], preds: list[pl.DataFrame], notes: list[str]) -> ev.Evaluation:
    return ev.Evaluation(
        pl.concat(metrics) if metrics else pl.DataFrame(schema=ev.metrics_schema()),
        pl.concat(preds) if preds else pl.DataFrame(schema=ev.predictions_schema()),
        notes,
    )


def report_plots(
    result: ev.Evaluation,
    feature_sets: Mapping[str, pl.DataFrame],
    split: str = "spatial",
    model: str = "lightgbm",
    regions: Sequence[str] | None = None,
) -> dict[str, bytes]:
    """R2 bars, predicted vs actual, the embedding map and the residual map of the first task."""
    out: dict[str, bytes] = {}
    if result.metrics.height == 0:
        return out
    out[f"R2 by feature set and split ({model})"] = plots.r2_bars(result.metrics, model)
    task = result.predictions["task"][0]
    preds = result.predictions.filter(pl.col("task") == task)
    if regions is not None:
        preds = preds.filter(pl.col("region").is_in(list(regions)))
    if preds.filter(pl.col("split") == split).height == 0:
        split = preds["split"][0]
    out[f"Predicted vs actual: {task}, {split} split, {model}"] = plots.predicted_vs_actual(
        preds, split, model
    )
    best = S2VEC if S2VEC in feature_sets else "raw"
    if best not in feature_sets:
        return out
    emb = feature_sets[best]
    out[f"Map of the {best} representation (PCA to RGB)"] = plots.embedding_map(
        emb["cell_id"].to_numpy(),
        emb.drop("cell_id").to_numpy(),
        title=f"{best} (first 3 principal components as RGB)",
    )
    one = preds.filter(
        (pl.col("split") == split) & (pl.col("feature_set") == best) & (pl.col("model") == model)
    )
    if one.height and one["region"].n_unique() == 1:
        out[f"Residuals: {task}, {best}, {split} split"] = plots.residual_map(
            one, title=f"{task}: residuals of {best} ({split} split, {model})"
        )
    return out
