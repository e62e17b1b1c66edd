"""The evaluation report: verdicts in words first, then the metrics and learning-curve tables and PNG
plots, written next to the warehouse."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from s2vec_core.evaluate import mean_std_text, r2_table, verdicts


def metrics_markdown(metrics: pl.DataFrame) -> str:
    """All metrics as a markdown table: one row per (region, task, split, feature set, model)."""
    if metrics.height == 0:
        return "_no metrics_\n"
    wide = (
        metrics.with_columns(cell=mean_std_text())
        .pivot(
            on="metric", index=["region", "task", "split", "feature_set", "model", "n_cells"], values="cell"
        )
        .sort("region", "task", "split", "model", "feature_set")
    )
    return table_markdown(wide)


def learning_curve_table(curves: pl.DataFrame) -> pl.DataFrame:
    """R2 mean ± std per (region, task, split, model, feature set), one column per training-set size."""
    return (
        curves.with_columns(
            cell=pl.format("{} ± {}", pl.col("r2").round(3), pl.col("std").round(3)),
            n=pl.col("n_train").cast(pl.String),
        )
        .sort("n_train")
        .pivot(on="n", index=["region", "task", "split", "model", "feature_set"], values="cell")
        .sort("region", "task", "split", "model", "feature_set")
        .fill_null("-")
    )


def table_markdown(df: pl.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * df.width + "\n"
    return head + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in df.iter_rows())


def report_markdown(
    title: str,
    metrics: pl.DataFrame,
    notes: list[str],
    images: dict[str, str],
    intro: str = "",
    verdict_lines: Sequence[str] | None = None,
    curves: pl.DataFrame | None = None,
) -> str:
    """The report text; `images` maps a caption to an image link (a file name or a data URI).

    It opens with the verdicts (`evaluate.verdicts` of `metrics` unless given, e.g. with block counts).
    """
    lines = verdicts(metrics) if verdict_lines is None else verdict_lines
    parts = [f"# {title}\n", "\n## Verdicts\n\n" + "".join(f"- {v}\n" for v in lines) if lines else ""]
    parts.append("\n" + intro.strip() + "\n" if intro else "")
    models = metrics["model"].unique(maintain_order=True).to_list() if metrics.height else []
    for model in models:
        parts.append(
            f"\n## R2 ({model}; mean ± std over folds)\n\n{table_markdown(r2_table(metrics, model))}"
        )
    if curves is not None and curves.height:
        parts.append(
            "\n## Learning curves (R2 mean ± std over folds and subsamples, by labelled training cells)\n\n"
            + table_markdown(learning_curve_table(curves))
        )
    parts.append("\n## All metrics\n\n" + metrics_markdown(metrics))
    if notes:
        parts.append("\n## Notes\n\n" + "".join(f"- {n}\n" for n in notes))
    if images:
        parts.append("\n## Plots\n")
        parts += [f"\n### {caption}\n\n![{caption}]({link})\n" for caption, link in images.items()]
    return "".join(parts)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def write_report(
    out_dir: str | os.PathLike,
    title: str,
    metrics: pl.DataFrame,
    notes: list[str],
    plots: dict[str, bytes],
    intro: str = "",
    verdict_lines: Sequence[str] | None = None,
    curves: pl.DataFrame | None = None,
) -> Path:
    """Write `report.md`, `metrics.csv` (and `learning_curves.csv`) and one PNG per plot into `out_dir`;
    return the report path.

    Files are written to temporary names and renamed, so a crash never leaves a half-written report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    links = {}
    for caption, png in plots.items():
        name = "".join(c if c.isalnum() else "_" for c in caption.lower()).strip("_") + ".png"
        _atomic_write(out / name, png)
        links[caption] = name
    _atomic_write(out / "metrics.csv", metrics.write_csv().encode())
    if curves is not None:
        _atomic_write(out / "learning_curves.csv", curves.write_csv().encode())
    report = out / "report.md"
    text = report_markdown(title, metrics, notes, links, intro, verdict_lines, curves)
    _atomic_write(report, text.encode())
    return report


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
