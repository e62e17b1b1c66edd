"""Evaluation plots as PNG bytes: predicted vs actual, maps, R2 bars, learning curves.

Figures are `matplotlib.figure.Figure` objects, not pyplot's: no GUI backend to choose, no global
figure registry to close, so workers and CI without a display draw them as they are. matplotlib loads on
the first plot (~2.5 s): every Dagster run worker imports this module, most never draw."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from s2vec_core import s2
from s2vec_core.evaluate import is_learned

if TYPE_CHECKING:
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

_DPI = 110


def _figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _polygons(polys: np.ndarray, **kwargs) -> PolyCollection:
    from matplotlib.collections import PolyCollection

    return PolyCollection(polys, **kwargs)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return buf.getvalue()


def _cell_polygons(cells: np.ndarray) -> tuple[np.ndarray, float]:
    """(n, 4, 2) lng/lat corners of each cell and the aspect that makes a degree of lng look right."""
    lat, lng = s2.cell_vertices(s2.as_uint64(cells))
    return np.stack([lng, lat], axis=-1), 1.0 / math.cos(math.radians(float(np.mean(lat))))


def _map_axes(ax, polys: np.ndarray, aspect: float, title: str) -> None:
    ax.set_xlim(polys[..., 0].min(), polys[..., 0].max())
    ax.set_ylim(polys[..., 1].min(), polys[..., 1].max())
    ax.set_aspect(aspect)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title)


def predicted_vs_actual(predictions: pl.DataFrame, split: str, model: str, title: str = "") -> bytes:
    """One scatter per feature set of out-of-fold prediction against the target, with the diagonal."""
    rows = predictions.filter((pl.col("split") == split) & (pl.col("model") == model))
    names = rows["feature_set"].unique(maintain_order=True).to_list()
    if not names:
        raise ValueError(f"no predictions for split {split!r} and model {model!r}")
    cols = min(len(names), 3)
    nrows = math.ceil(len(names) / cols)
    fig = _figure(figsize=(4.2 * cols, 3.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    lo, hi = float(rows["y"].min()), float(rows["y"].max())
    for ax, name in zip(axes.flat, names):
        r = rows.filter(pl.col("feature_set") == name)
        y, yp = r["y"].to_numpy(), r["y_pred"].to_numpy()
        r2 = 1 - np.mean((y - yp) ** 2) / np.var(y) if np.var(y) > 0 else float("nan")
        ax.scatter(y, yp, s=6, alpha=0.5, edgecolors="none")
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set_title(f"{name}  (pooled R2 {r2:.2f})")
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title or f"predicted vs actual: {split} split, {model}")
    return _png(fig)


def embedding_rgb(matrix: np.ndarray, seed: int = 0) -> np.ndarray:
    """First three principal components scaled to [0, 1] (2nd-98th percentile) as RGB rows."""
    from sklearn.decomposition import PCA  # sklearn takes ~5 s to import: only where a map is drawn

    n = min(3, matrix.shape[1], matrix.shape[0])
    z = PCA(n_components=n, random_state=seed).fit_transform(matrix)
    if n < 3:
        z = np.concatenate([z, np.zeros((len(z), 3 - n))], axis=1)
    lo, hi = np.percentile(z, 2, axis=0), np.percentile(z, 98, axis=0)
    return np.clip((z - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)


def embedding_map(cells: np.ndarray, matrix: np.ndarray, title: str = "embedding (PCA to RGB)") -> bytes:
    """Each image cell's polygon coloured by its embedding's first three principal components."""
    polys, aspect = _cell_polygons(cells)
    fig = _figure(figsize=(7, 7))
    ax = fig.subplots()
    ax.add_collection(_polygons(polys, facecolors=embedding_rgb(matrix), edgecolors="none"))
    _map_axes(ax, polys, aspect, title)
    return _png(fig)


def residual_map(predictions: pl.DataFrame, title: str = "residuals (predicted - actual)") -> bytes:
    """Image-cell polygons coloured by out-of-fold residual (one split / feature set / model)."""
    if predictions["cell_id"].n_unique() != predictions.height:
        raise ValueError(
            "residual_map needs one prediction per cell: filter to one split, feature set and model"
        )
    polys, aspect = _cell_polygons(predictions["cell_id"].to_numpy())
    resid = (predictions["y_pred"] - predictions["y"]).to_numpy()
    lim = float(np.percentile(np.abs(resid), 98)) or 1.0
    fig = _figure(figsize=(7.5, 7))
    ax = fig.subplots()
    coll = _polygons(polys, array=resid, cmap="RdBu_r", edgecolors="none")
    coll.set_clim(-lim, lim)
    ax.add_collection(coll)
    fig.colorbar(coll, ax=ax, shrink=0.8, label="predicted - actual")
    _map_axes(ax, polys, aspect, title)
    return _png(fig)


def r2_bars(metrics: pl.DataFrame, model: str, title: str = "") -> bytes:
    """Grouped bars of mean R2 (error bar: std over folds) by feature set, one colour per split."""
    m = metrics.filter((pl.col("metric") == "r2") & (pl.col("model") == model))
    if m.height == 0:
        raise ValueError(f"no R2 rows for model {model!r}")
    sets = m["feature_set"].unique(maintain_order=True).to_list()
    splits = m["split"].unique(maintain_order=True).to_list()
    width = 0.8 / len(splits)
    fig = _figure(figsize=(1.6 + 1.2 * len(sets) * max(1, len(splits) / 2), 4))
    ax = fig.subplots()
    for i, split in enumerate(splits):
        rows = m.filter(pl.col("split") == split)
        lookup = {r["feature_set"]: r for r in rows.iter_rows(named=True)}
        vals = [lookup[s]["value"] if s in lookup else np.nan for s in sets]
        errs = [(lookup[s]["std"] or 0.0) if s in lookup else 0.0 for s in sets]
        ax.bar(
            np.arange(len(sets)) + (i - (len(splits) - 1) / 2) * width,
            vals,
            width,
            yerr=errs,
            capsize=3,
            label=split,
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(sets)), sets)
    ax.set_ylabel("R2")
    ax.set_ylim(bottom=max(-1.0, min(0.0, float(m["value"].min()) - 0.1)), top=1.0)
    ax.legend()
    ax.set_title(title or f"R2 by feature set and split ({model})")
    return _png(fig)


def learning_curve_png(curves: pl.DataFrame) -> bytes:
    """R2 against labelled training cells (log x), one line per feature set with a ±std band; one
    panel per (region/task, split, model)."""
    panels = curves.select("region", "task", "split", "model").unique(maintain_order=True).rows()
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig = _figure(figsize=(5.5 * cols, 4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (region, task, split, model) in zip(axes.flat, panels):
        one = curves.filter(
            (pl.col("region") == region)
            & (pl.col("task") == task)
            & (pl.col("split") == split)
            & (pl.col("model") == model)
        )
        for (name,), line in one.sort("n_train").group_by("feature_set", maintain_order=True):
            n, r2, std = (line[c].to_numpy().astype(float) for c in ("n_train", "r2", "std"))
            ax.plot(n, r2, marker="o", ms=3, lw=1.8 if is_learned(name) else 1.0, label=name)
            ax.fill_between(n, r2 - np.nan_to_num(std), r2 + np.nan_to_num(std), alpha=0.12)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training cells")
        ax.set_ylabel("R2 on the test folds")
        ax.set_title(f"{region}/{task}: {split} split, {model}")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return _png(fig)
