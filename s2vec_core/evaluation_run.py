"""One evaluation run end to end: standard feature sets, tasks, per-region and cross-region scores,
learning curves, verdicts and plots.

The Dagster assets and the bench script both call these, so the report on the bundled data and on a
synthetic world are made the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl

from s2vec_core import baselines as bl
from s2vec_core import evaluate as ev
from s2vec_core import evaluation_plots as plots
from s2vec_core.proxy import PROXY_TARGETS, osm_proxy_targets
from s2vec_core.targets import TargetsError, swapped_overlap, unscoreable
from s2vec_core.taxonomy import CHANNEL_NAMES

R = TypeVar("R")

DEFAULT_DIM = 16
"""PCA / random dimension when there is no embedding to match."""
S2VEC = ev.LEARNED
SPATIAL_STATS = "spatial_stats"
BASELINES_NOTE = (
    "baselines: raw = log1p channel totals; contextual = raw plus totals over 1 and 2 rings of "
    "neighbouring image cells; spatial_stats = raw plus arrangement statistics inside the cell (occupancy, "
    "dispersion, top-10% share, Moran's I, POI-road/building co-occurrence, distance to roads)"
)


def standard_feature_sets(
    cell_features: pl.DataFrame,
    image_level: int,
    embeddings: pl.DataFrame | None = None,
    external: pl.DataFrame | None = None,
    seed: int = 0,
    pca_source: pl.DataFrame | None = None,
    pixel_level: int | None = None,
) -> dict[str, pl.DataFrame]:
    """The feature sets every run scores.

    Baselines: `raw` (log1p channel totals), `contextual` (plus the totals of 1 and 2 rings of
    neighbours), `spatial_stats` (raw plus arrangement statistics inside the cell; only with
    `pixel_level` and pixel rows in `cell_features`), `pca` and `random` at the embedding's dimension,
    and `external` with an external table. With embeddings: `s2vec` and its fusions `s2vec+raw`,
    `s2vec+contextual` (and `s2vec+external`). `pca_source` (raw totals of several regions) fits the
    PCA on more than this region, for transfer.
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
    sets["contextual"] = bl.contextual_counts(cell_features, image_level, CHANNEL_NAMES)
    if pixel_level is not None and (cell_features["level"] == pixel_level).any():
        stats = bl.spatial_statistics(cell_features, image_level, pixel_level, CHANNEL_NAMES)
        sets[SPATIAL_STATS] = ev.fuse(raw, stats)
    if pca_source is None:
        sets["pca"] = ev.pca_features(raw, dim, seed)
    else:
        pooled = ev.pca_features(pca_source, dim, seed)
        sets["pca"] = raw.select("cell_id").join(pooled, on="cell_id", how="left")
    sets["random"] = ev.random_features(raw["cell_id"].to_numpy(), dim, seed)
    if S2VEC in sets:
        sets[f"{S2VEC}+raw"] = ev.fuse(sets[S2VEC], raw)
        sets[f"{S2VEC}+contextual"] = ev.fuse(sets[S2VEC], sets["contextual"])
    if external is not None:
        sets["external"] = ev.embedding_features(external, prefix="x")
        if S2VEC in sets:
            sets[f"{S2VEC}+external"] = ev.fuse(sets[S2VEC], sets["external"])
    return sets


def feature_set_notes(sets: Mapping[str, pl.DataFrame], pixel_level: int | None) -> list[str]:
    """What the report should say about the sets `standard_feature_sets` made (or could not)."""
    notes = [BASELINES_NOTE]
    if SPATIAL_STATS not in sets:
        notes.append(f"spatial_stats not scored: cell_features has no rows at the pixel level {pixel_level}")
    return notes


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


def screen_tasks(
    region: str, tasks: Mapping[str, pl.DataFrame], cells: np.ndarray, source: str = "targets"
) -> tuple[dict[str, pl.DataFrame], dict[str, str]]:
    """Split `tasks` into those that can be scored on the region's image `cells` and the rest.

    Returns (kept tasks, {skipped task: why}). A task is skipped if its targets miss every cell or are
    all null / constant where they meet (R2 would be undefined). If there are tasks but none is kept,
    raises `TargetsError`: nothing would be scored, and a run must not replace the region's earlier
    metrics with nothing.
    """
    kept, skipped = {}, {}
    for task, targets in tasks.items():
        why = unscoreable(targets, cells)
        if why is None:
            kept[task] = targets
        else:
            skipped[task] = why
    if tasks and not kept:
        reasons = "; ".join(f"{task}: {why}" for task, why in skipped.items())
        hints = []
        for task, targets in tasks.items():
            n = swapped_overlap(targets, cells)
            if n and "none of its" in skipped[task]:
                hints.append(
                    f"with latitude and longitude swapped, {n} of {task}'s cells would fall on the "
                    "region, so the file's lat/lng columns are very likely swapped"
                )
        hint = (
            "; ".join(hints)
            if hints
            else "check that the file is for this region, that point targets give `lat` and `lng` in "
            "degrees (not swapped), and that cell targets are at the image level or finer"
        )
        raise TargetsError(
            f"evaluation[{region}]: refusing to score {source}: no target can be scored on the region's "
            f"{len(cells)} image cells ({reasons}). Nothing was evaluated and no metric row was written "
            f"or deleted: the region's previous metrics stay current. Likely cause: {hint}. Fix the "
            "targets file (or the `targets`/`value_column` run config) and re-run."
        )
    return kept, skipped


def _each_task(
    tasks: Mapping[str, pl.DataFrame], score: Callable[[str, pl.DataFrame], R]
) -> Iterator[tuple[str, R | ev.InsufficientDataError]]:
    """`score(task, targets)` on every task; a task with too few cells yields its error instead, for the
    caller to note or skip: one small task must not stop the others."""
    for task, targets in tasks.items():
        try:
            yield task, score(task, targets)
        except ev.InsufficientDataError as e:
            yield task, e


def evaluate_region(
    region: str,
    feature_sets: Mapping[str, pl.DataFrame],
    tasks: Mapping[str, pl.DataFrame],
    image_level: int,
    **kwargs,
) -> ev.Evaluation:
    """`evaluate` over every task; tasks without enough cells become notes, not failures."""
    metrics, preds, notes, blocks = [], [], [], {}

    def score(task: str, targets: pl.DataFrame) -> ev.Evaluation:
        return ev.evaluate(targets, feature_sets, task=task, region=region, image_level=image_level, **kwargs)

    for task, out in _each_task(tasks, score):
        if isinstance(out, ev.InsufficientDataError):
            notes.append(f"{region}/{task}: not scored: {out}")
            continue
        metrics.append(out.metrics)
        preds.append(out.predictions)
        notes += out.notes
        blocks |= out.n_blocks
    return _combine(metrics, preds, notes, blocks)


def learning_curves(
    region: str,
    feature_sets: Mapping[str, pl.DataFrame],
    tasks: Mapping[str, pl.DataFrame],
    image_level: int,
    **kwargs,
) -> pl.DataFrame:
    """`learning_curve` over every task (`learning_curve_schema()` rows); tasks too small are skipped
    (`evaluate_region` notes them)."""

    def curve(task: str, targets: pl.DataFrame) -> pl.DataFrame:
        return ev.learning_curve(
            targets, feature_sets, task=task, region=region, image_level=image_level, **kwargs
        )

    curves = [c for _, c in _each_task(tasks, curve) if not isinstance(c, ev.InsufficientDataError)]
    return pl.concat(curves) if curves else pl.DataFrame(schema=ev.learning_curve_schema())


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


def _combine(
    metrics: list[pl.DataFrame],
    preds: list[pl.DataFrame],
    notes: list[str],
    blocks: dict[tuple[str, str], int] | None = None,
) -> ev.Evaluation:
    table = pl.concat(metrics) if metrics else pl.DataFrame(schema=ev.metrics_schema())
    # A score of no variance (a fold or test region with a constant target) is undefined: reported as a
    # note, never stored as NaN.
    undefined = table.filter(~pl.col("value").is_finite().fill_null(False))
    if undefined.height:
        groups = undefined.select("region", "task", "split", "metric").unique(maintain_order=True).rows()
        notes = [
            *notes,
            *(
                f"{r}/{t}: {m} undefined on the {s} split (no target variance); not stored"
                for r, t, s, m in groups
            ),
        ]
        table = table.filter(pl.col("value").is_finite().fill_null(False))
    return ev.Evaluation(
        table,
        pl.concat(preds) if preds else pl.DataFrame(schema=ev.predictions_schema()),
        notes,
        blocks or {},
    )


def report_plots(
    result: ev.Evaluation,
    feature_sets: Mapping[str, pl.DataFrame],
    split: str = "spatial",
    model: str = "lightgbm",
    regions: Sequence[str] | None = None,
    curves: pl.DataFrame | None = None,
) -> dict[str, bytes]:
    """R2 bars, the learning curves, predicted vs actual, the embedding map and the residual map of the
    first task."""
    out: dict[str, bytes] = {}
    if result.metrics.height == 0:
        return out
    out[f"R2 by feature set and split ({model})"] = plots.r2_bars(result.metrics, model)
    if curves is not None and curves.height:
        out["Learning curves: R2 vs labelled cells"] = plots.learning_curve_png(curves)
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
