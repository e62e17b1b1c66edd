"""Downstream evaluation of cell representations: LightGBM and a linear probe on image-cell targets.

Splits:
- `random`: K-fold over image cells (interpolation: neighbours of a test cell are in training);
- `spatial`: K-fold over blocks = parent S2 cells a few levels above the image level, so neighbouring
  cells never straddle train and test (extrapolation to unseen places);
- `transfer`: train on some regions, test on another (`evaluate_transfer`).

Feature sets are frames keyed by `cell_id` (UInt64) with numeric columns; builders here make the
baselines: raw per-image-cell channel totals (log1p), PCA of those at the embedding's dimension, random
vectors (the floor), S2Vec embeddings and their fusion with an external embedding table (the
hand-made neighbourhood and arrangement baselines are in `s2vec_core.baselines`). Every set is scored on
the same cells (the intersection of the targets and all sets), with the same folds and seeds.

`learning_curve` scores the sets on growing labelled subsets (what a user with few labels gets);
`verdicts` says in words which set wins and whether the difference is larger than the fold noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from s2vec_core import s2
from s2vec_core.catalog import CROSS_REGION_SCOPE
from s2vec_core.tables import EVALUATION_METRICS

SPLITS = ("random", "spatial")
MODELS = ("lightgbm", "linear")
METRICS = ("r2", "mae", "rmse")
MIN_CELLS = 20
"""Fewer cells with targets and features than this give no meaningful K-fold score; evaluation refuses."""
LEARNED = "s2vec"
"""Feature sets named this or `s2vec+...` (fusions) are the learned ones; every other set is a baseline."""
VERDICT_MIN_CELLS = 100
VERDICT_MIN_BLOCKS = 10
"""Below these many cells (or spatial blocks) a ranking of feature sets is noise whatever the fold std."""
SMALL_TRAIN = 100
"""Learning curves: training sets smaller than this are drawn several times (seeds), larger ones once."""


class InsufficientDataError(ValueError):
    """Too few cells (or blocks) to evaluate; the message says how many there are."""


def metrics_schema() -> pl.Schema:
    """The `evaluation_metrics` table (`tables.EVALUATION_METRICS`): one row per (scope, region, task,
    split, feature set, model, metric), `value` the mean and `std` the sample std over folds."""
    return EVALUATION_METRICS.schema


def predictions_schema() -> pl.Schema:
    """Out-of-fold predictions, for plots: one row per (split, feature set, model, test cell)."""
    return pl.Schema(
        {
            "region": pl.String,
            "task": pl.String,
            "split": pl.String,
            "feature_set": pl.String,
            "model": pl.String,
            "fold": pl.Int32,
            "cell_id": pl.UInt64,
            "y": pl.Float64,
            "y_pred": pl.Float64,
        }
    )


@dataclass(frozen=True)
class Evaluation:
    metrics: pl.DataFrame
    """`metrics_schema()` rows."""
    predictions: pl.DataFrame
    """`predictions_schema()` rows (out-of-fold)."""
    notes: list[str] = field(default_factory=list)
    """What a reader should know (block level used, cells dropped), for the report."""
    n_blocks: dict[tuple[str, str], int] = field(default_factory=dict)
    """Spatial blocks per (region, task), for `verdicts`."""


# ---------------------------------------------------------------------------------------------------
# feature sets


def _frame(cells: np.ndarray, matrix: np.ndarray, prefix: str) -> pl.DataFrame:
    cols = {f"{prefix}{i}": matrix[:, i].astype(np.float64) for i in range(matrix.shape[1])}
    return pl.DataFrame({"cell_id": pl.Series(s2.as_uint64(cells), dtype=pl.UInt64), **cols})


def _matrix(df: pl.DataFrame) -> np.ndarray:
    return df.drop("cell_id").to_numpy().astype(np.float64)


def raw_channel_totals(
    cell_features: pl.DataFrame, image_level: int, channels: Sequence[str]
) -> pl.DataFrame:
    """Per-image-cell channel totals from a `cell_features` frame, log1p-transformed.

    The log keeps the linear probe from being dominated by heavy-tailed counts; trees are unaffected.
    """
    rows = cell_features.filter(pl.col("level") == image_level)
    if rows.height == 0:
        raise InsufficientDataError(f"cell_features has no rows at the image level {image_level}")
    return rows.select(
        pl.col("cell_id").cast(pl.Int64).reinterpret(signed=False).alias("cell_id"),
        *[pl.col(c).cast(pl.Float64).log1p() for c in channels],
    ).sort("cell_id")


def pca_features(raw: pl.DataFrame, dim: int, seed: int = 0) -> pl.DataFrame:
    """PCA of standardised raw features to `dim` components (capped by the number of columns and cells).

    Fitted on all cells without targets (unsupervised, like the MAE), so it never sees a test label.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(_matrix(raw))
    n = min(dim, x.shape[1], x.shape[0])
    z = PCA(n_components=n, random_state=seed).fit_transform(x)
    return _frame(raw["cell_id"].to_numpy(), z, "pc")


def random_features(cells: np.ndarray, dim: int, seed: int = 0) -> pl.DataFrame:
    """Standard normal vectors per cell: the floor any useful representation must beat."""
    rng = np.random.default_rng(seed)
    return _frame(cells, rng.standard_normal((len(cells), dim)), "r")


def embedding_features(
    embeddings: pl.DataFrame, column: str = "embedding", prefix: str = "e"
) -> pl.DataFrame:
    """Cell-keyed embedding table -> feature frame.

    Accepts `cell_id` (Int64/UInt64) or `token`, and either a list/array column `column` or plain
    numeric columns. Cells finer than one level are not averaged here: pass one level.
    """
    if "cell_id" in embeddings.columns:
        ids = s2.as_uint64(embeddings["cell_id"].to_numpy())
    elif "token" in embeddings.columns:
        ids = s2.from_token(embeddings["token"].to_numpy())
    else:
        raise ValueError(f"embedding table needs a 'cell_id' or 'token' column, got {embeddings.columns}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("embedding table has duplicate cells")
    if column in embeddings.columns:
        matrix = (
            np.stack(embeddings[column].to_list()).astype(np.float64)
            if embeddings.height
            else np.zeros((0, 0))
        )
    else:
        numeric = [
            c for c, t in embeddings.schema.items() if t.is_numeric() and c not in ("cell_id", "level")
        ]
        if not numeric:
            raise ValueError(f"embedding table has no {column!r} column and no numeric columns")
        matrix = embeddings.select(numeric).to_numpy().astype(np.float64)
    if not np.isfinite(matrix).all():
        raise ValueError("embedding table has non-finite values")
    return _frame(ids, matrix, prefix).sort("cell_id")


def fuse(*sets: pl.DataFrame) -> pl.DataFrame:
    """Concatenate feature sets on the cells they share (inner join on `cell_id`)."""
    out = sets[0].rename({c: f"s0_{c}" for c in sets[0].columns if c != "cell_id"})
    for i, other in enumerate(sets[1:], 1):
        out = out.join(other.rename({c: f"s{i}_{c}" for c in other.columns if c != "cell_id"}), on="cell_id")
    return out.sort("cell_id")


# ---------------------------------------------------------------------------------------------------
# folds


def random_folds(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Fold index per row: a seeded permutation cut into `k` near-equal parts."""
    folds = np.empty(n, dtype=np.int32)
    folds[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return folds


def spatial_folds(cells: np.ndarray, k: int, block_level: int, seed: int = 0) -> np.ndarray:
    """Fold index per cell where all cells of one parent block (at `block_level`) share a fold.

    Blocks are dealt largest first (seeded tie order) to the fold with the fewest cells so far, which
    keeps folds balanced in cells, like scikit-learn's GroupKFold.
    """
    blocks = s2.parent(cells, block_level)
    uniq, inverse, sizes = np.unique(blocks, return_inverse=True, return_counts=True)
    if len(uniq) < k:
        raise InsufficientDataError(
            f"{len(uniq)} blocks at level {block_level} cannot make {k} spatial folds"
        )
    order = np.random.default_rng(seed).permutation(len(uniq))
    order = order[np.argsort(-sizes[order], kind="stable")]
    load = np.zeros(k, dtype=np.int64)
    block_fold = np.empty(len(uniq), dtype=np.int32)
    for b in order:  # one step per block, not per cell
        f = int(np.argmin(load))
        block_fold[b] = f
        load[f] += sizes[b]
    return block_fold[inverse]


def split_folds(
    cells: np.ndarray, split: str, k: int, image_level: int, block_levels_up: int = 3, seed: int = 0
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Fold index per cell for `split`, and (block level, number of blocks) for the spatial split."""
    if split == "random":
        return random_folds(len(cells), k, seed), None
    if split == "spatial":
        block_level = choose_block_level(cells, k, image_level, block_levels_up)
        n_blocks = len(np.unique(s2.parent(cells, block_level)))
        return spatial_folds(cells, k, block_level, seed), (block_level, n_blocks)
    raise ValueError(f"unknown split {split!r}; choose from {SPLITS} (transfer: evaluate_transfer)")


def choose_block_level(cells: np.ndarray, k: int, image_level: int, levels_up: int = 3) -> int:
    """`image_level - levels_up`, made finer only as far as needed to have at least `k` blocks."""
    for level in range(max(image_level - levels_up, 0), image_level):
        if len(np.unique(s2.parent(cells, level))) >= k:
            return level
    raise InsufficientDataError(f"fewer than {k} blocks even one level above the image level {image_level}")


# ---------------------------------------------------------------------------------------------------
# models and scores


def _model(name: str, n_train: int, seed: int):
    # lightgbm and sklearn take ~8 s to import: only where a probe is fitted, not in every process that
    # imports this module (each Dagster run worker does).
    if name == "lightgbm":
        import lightgbm as lgb

        return lgb.LGBMRegressor(
            n_estimators=300,
            learning_rate=0.05,
            num_leaves=15,
            # Small regions have few hundred cells: the default 20 rows per leaf would stop all splits.
            min_child_samples=int(np.clip(n_train // 20, 3, 20)),
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            reg_lambda=1.0,
            # One thread: image-cell tables are small, and extra threads cost ~10x on a shared CPU.
            random_state=seed,
            deterministic=True,
            force_row_wise=True,
            n_jobs=1,
            verbose=-1,
        )
    if name == "linear":
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def scores(y: np.ndarray, y_pred: np.ndarray, variance: float | None = None) -> dict[str, float]:
    """R2, MAE and RMSE of one fold.

    R2 is `1 - MSE / variance`, with `variance` the target variance over all evaluated cells (default:
    of `y`). In K-fold the reference is the whole region, not the fold: a spatial fold is one compact
    block whose own variance is small, and dividing by it would make every spatial score look hopeless
    for reasons unrelated to the model. The mean over equal folds then equals the pooled out-of-fold R2.
    """
    resid = y - y_pred
    mse = float(np.mean(resid**2))
    var = float(np.var(y)) if variance is None else variance
    return {
        "r2": 1.0 - mse / var if var > 0 else float("nan"),
        "mae": float(np.mean(np.abs(resid))),
        "rmse": float(np.sqrt(mse)),
    }


def _common(targets: pl.DataFrame, feature_sets: Mapping[str, pl.DataFrame]) -> np.ndarray:
    cells = targets["cell_id"].to_numpy()
    for df in feature_sets.values():
        cells = np.intersect1d(cells, df["cell_id"].to_numpy())
    return cells


def _aligned(df: pl.DataFrame, cells: np.ndarray) -> np.ndarray:
    keys = pl.DataFrame({"cell_id": pl.Series(cells, dtype=pl.UInt64)})
    return _matrix(keys.join(df, on="cell_id", how="left", maintain_order="left"))


def _usable(
    targets: pl.DataFrame, feature_sets: Mapping[str, pl.DataFrame], region: str, task: str, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(cells, targets) every set covers; InsufficientDataError when too few for K-fold."""
    cells = _common(targets, feature_sets)
    if len(cells) < max(MIN_CELLS, 2 * k):
        raise InsufficientDataError(
            f"region {region!r}, task {task!r}: {len(cells)} image cells have both a target and every "
            f"feature set; need at least {max(MIN_CELLS, 2 * k)}"
        )
    return cells, _aligned(targets.select("cell_id", "target"), cells)[:, 0]


def _cross_validate(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, model: str, seed: int
) -> tuple[list[dict[str, float]], np.ndarray]:
    y_pred = np.full(len(y), np.nan)
    per_fold = []
    for f in np.unique(folds):
        test = folds == f
        m = _model(model, int((~test).sum()), seed)
        m.fit(x[~test], y[~test])
        y_pred[test] = m.predict(x[test])
        per_fold.append(scores(y[test], y_pred[test], float(np.var(y))))
    return per_fold, y_pred


def _metric_rows(per_fold: list[dict[str, float]], base: dict, n_cells: int) -> list[dict]:
    rows = []
    for metric in METRICS:
        vals = np.array([s[metric] for s in per_fold])
        rows.append(
            {
                **base,
                "metric": metric,
                "value": float(np.mean(vals)),
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                "n_folds": len(vals),
                "n_cells": n_cells,
            }
        )
    return rows


def evaluate(
    targets: pl.DataFrame,
    feature_sets: Mapping[str, pl.DataFrame],
    *,
    task: str,
    region: str,
    image_level: int,
    k: int = 5,
    block_levels_up: int = 3,
    splits: Sequence[str] = SPLITS,
    models: Sequence[str] = MODELS,
    seed: int = 0,
    model_version: str = "",
    run_id: str = "",
) -> Evaluation:
    """K-fold scores of every feature set x split x model on one region.

    `targets` has `cell_id` (UInt64, image level) and `target`; each feature set is a `cell_id`-keyed
    numeric frame. All sets see the same cells and the same folds.
    """
    cells, y = _usable(targets, feature_sets, region, task, k)
    notes = [
        f"{region}/{task}: {len(cells)} image cells (of {targets.height} with targets) at level {image_level}"
    ]
    folds: dict[str, np.ndarray] = {}
    n_blocks: dict[tuple[str, str], int] = {}
    for split in splits:
        folds[split], blocks = split_folds(cells, split, k, image_level, block_levels_up, seed)
        if blocks:
            block_level, n_blocks[(region, task)] = blocks
            notes.append(
                f"{region}/{task}: spatial blocks are S2 cells at level {block_level} "
                f"({n_blocks[(region, task)]} blocks)"
            )
    rows, preds = [], []
    for name, df in feature_sets.items():
        x = _aligned(df, cells)
        for split, fold in folds.items():
            for model in models:
                per_fold, y_pred = _cross_validate(x, y, fold, model, seed)
                base = {
                    "scope": region,
                    "region": region,
                    "task": task,
                    "split": split,
                    "feature_set": name,
                    "model": model,
                    "model_version": model_version,
                    "run_id": run_id,
                }
                rows += _metric_rows(per_fold, base, len(cells))
                preds.append(_predictions(region, task, split, name, model, fold, cells, y, y_pred))
    return Evaluation(_metrics_frame(rows), pl.concat(preds), notes, n_blocks)


def evaluate_transfer(
    targets: Mapping[str, pl.DataFrame],
    feature_sets: Mapping[str, Mapping[str, pl.DataFrame]],
    test_region: str,
    *,
    task: str,
    models: Sequence[str] = MODELS,
    seed: int = 0,
    model_version: str = "",
    run_id: str = "",
) -> Evaluation:
    """Train on every region but `test_region`, score on `test_region` (one fold).

    `targets[region]` and `feature_sets[region][name]` as in `evaluate`; every region must offer the
    same feature-set names with the same columns.
    """
    if test_region not in targets:
        raise ValueError(f"test region {test_region!r} has no targets")
    train_regions = [r for r in targets if r != test_region]
    if not train_regions:
        raise InsufficientDataError("cross-region transfer needs at least two regions")
    names = list(feature_sets[test_region])
    for name in names:
        widths = {r: feature_sets[r][name].width - 1 for r in targets}
        if len(set(widths.values())) > 1:
            raise ValueError(f"feature set {name!r} has different dimensions across regions: {widths}")
    common = {r: _common(targets[r], feature_sets[r]) for r in targets}
    if len(common[test_region]) < MIN_CELLS // 2:
        raise InsufficientDataError(
            f"test region {test_region!r} has {len(common[test_region])} usable cells"
        )
    trained_on = sum(len(common[r]) for r in train_regions)
    if trained_on < MIN_CELLS:
        # A model fitted on a handful of cells scores anything (R2 -100 from 11 Monaco cells): say so instead.
        raise InsufficientDataError(
            f"transfer to {test_region!r}: the training regions {', '.join(train_regions)} have "
            f"{trained_on} usable cells; need at least {MIN_CELLS}"
        )
    ys = {r: _aligned(targets[r].select("cell_id", "target"), common[r])[:, 0] for r in targets}
    rows, preds = [], []
    for name in names:
        xs = {r: _aligned(feature_sets[r][name], common[r]) for r in targets}
        x_train = np.concatenate([xs[r] for r in train_regions])
        y_train = np.concatenate([ys[r] for r in train_regions])
        for model in models:
            m = _model(model, len(y_train), seed)
            m.fit(x_train, y_train)
            y_pred = m.predict(xs[test_region])
            base = {
                "scope": CROSS_REGION_SCOPE,
                "region": test_region,
                "task": task,
                "split": "transfer",
                "feature_set": name,
                "model": model,
                "model_version": model_version,
                "run_id": run_id,
            }
            rows += _metric_rows([scores(ys[test_region], y_pred)], base, len(common[test_region]))
            fold = np.zeros(len(y_pred), dtype=np.int32)
            preds.append(
                _predictions(
                    test_region,
                    task,
                    "transfer",
                    name,
                    model,
                    fold,
                    common[test_region],
                    ys[test_region],
                    y_pred,
                )
            )
    notes = [
        (
            f"transfer to {test_region}/{task}: trained on {', '.join(train_regions)} "
            f"({len(y_train)} cells), tested on {len(common[test_region])} cells"
        )
    ]
    return Evaluation(_metrics_frame(rows), pl.concat(preds), notes)


# ---------------------------------------------------------------------------------------------------
# learning curves


def learning_curve_schema() -> pl.Schema:
    """One row per (region, task, split, feature set, model, training-set size): R2 mean and std over
    folds x subsample seeds, scored on the full test folds."""
    return pl.Schema(
        {
            "region": pl.String,
            "task": pl.String,
            "split": pl.String,
            "feature_set": pl.String,
            "model": pl.String,
            "n_train": pl.Int64,
            "r2": pl.Float64,
            "std": pl.Float64,
        }
    )


def _train_subsets(
    folds: np.ndarray, size: int | None, n_seeds: int, seed: int
) -> list[tuple[int, np.ndarray]]:
    """(fold, training rows) pairs: all training rows for `size=None`, else seeded subsets (`n_seeds` of
    them below SMALL_TRAIN, where which cells are drawn matters most; one above)."""
    out = []
    for f in np.unique(folds):
        train = np.flatnonzero(folds != f)
        if size is None:
            out.append((int(f), train))
            continue
        for s in range(n_seeds if size < SMALL_TRAIN else 1):
            rng = np.random.default_rng([seed, int(f), s, size])
            out.append((int(f), np.sort(rng.choice(train, size, replace=False))))
    return out


def learning_curve(
    targets: pl.DataFrame,
    feature_sets: Mapping[str, pl.DataFrame],
    *,
    task: str,
    region: str,
    image_level: int,
    sizes: Sequence[int | None] = (25, 50, 100, 200, 500, None),
    split: str = "spatial",
    models: Sequence[str] = MODELS,
    k: int = 5,
    block_levels_up: int = 3,
    n_seeds: int = 3,
    seed: int = 0,
) -> pl.DataFrame:
    """R2 against the number of labelled training cells (`learning_curve_schema()` rows).

    Under `split`'s folds, each set trains on a seeded random subset of `size` training cells (`None`:
    all; below SMALL_TRAIN over `n_seeds` subsets, since a small sample is itself noisy) and is scored on
    the whole test fold; `std` is over folds x subsets. Every set gets the same subsets. Sizes not below every fold's training count are left to `None`.
    """
    cells, y = _usable(targets, feature_sets, region, task, k)
    folds, _ = split_folds(cells, split, k, image_level, block_levels_up, seed)
    smallest = min(int((folds != f).sum()) for f in np.unique(folds))
    usable = [s for s in sizes if s is not None and s < smallest] + [None]
    variance = float(np.var(y))
    rows = []
    for size in usable:
        subsets = _train_subsets(folds, size, n_seeds, seed)
        n_train = size if size is not None else round(float(np.mean([len(t) for _, t in subsets])))
        for name, df in feature_sets.items():
            x = _aligned(df, cells)
            for model in models:
                r2s = []
                for f, train in subsets:
                    m = _model(model, len(train), seed)
                    m.fit(x[train], y[train])
                    test = folds == f
                    r2s.append(scores(y[test], m.predict(x[test]), variance)["r2"])
                rows.append(
                    {
                        "region": region,
                        "task": task,
                        "split": split,
                        "feature_set": name,
                        "model": model,
                        "n_train": n_train,
                        "r2": float(np.mean(r2s)),
                        "std": float(np.std(r2s, ddof=1)) if len(r2s) > 1 else None,
                    }
                )
    return pl.DataFrame(rows, schema=learning_curve_schema())


def _predictions(region, task, split, name, model, fold, cells, y, y_pred) -> pl.DataFrame:
    n = len(cells)
    return pl.DataFrame(
        {
            "region": [region] * n,
            "task": [task] * n,
            "split": [split] * n,
            "feature_set": [name] * n,
            "model": [model] * n,
            "fold": fold,
            "cell_id": pl.Series(cells, dtype=pl.UInt64),
            "y": y,
            "y_pred": y_pred,
        },
        schema=predictions_schema(),
    )


def _metrics_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=metrics_schema()) if rows else pl.DataFrame(schema=metrics_schema())


def mean_std_text() -> pl.Expr:
    """`mean ± std` rounded to 3 digits; just the mean where there is no spread (one fold)."""
    mean = pl.col("value").round(3).cast(pl.String)
    return (
        pl.when(pl.col("std").is_null())
        .then(mean)
        .otherwise(pl.format("{} ± {}", pl.col("value").round(3), pl.col("std").round(3)))
    )


def r2_table(metrics: pl.DataFrame, model: str = "lightgbm") -> pl.DataFrame:
    """R2 mean ± std as a wide table: one row per (region, task, feature set), one column per split."""
    return (
        metrics.filter((pl.col("metric") == "r2") & (pl.col("model") == model))
        .with_columns(cell=mean_std_text())
        .pivot(on="split", index=["region", "task", "feature_set"], values="cell")
        .sort("region", "task", "feature_set")
    )


# ---------------------------------------------------------------------------------------------------
# verdicts


def is_learned(feature_set: str) -> bool:
    """S2Vec and its fusions; every other feature set is a baseline."""
    return feature_set.split("+")[0] == LEARNED


def _noise(*stds: float | None) -> float | None:
    return None if any(s is None for s in stds) else max(stds)


def _verdict(rows: pl.DataFrame, n_blocks: int | None) -> str:
    """One sentence on one (scope, region, task, split, model): `rows` are its R2 rows, best first."""
    region, task, split, model = rows.row(0)[:4]
    sets = list(rows.select("feature_set", "value", "std").iter_rows())
    (best, r2, std), (runner, r2_runner, std_runner) = sets[0], sets[1]
    head = f"{region}/{task}, {split}/{model}"
    n_cells = int(rows["n_cells"].max())
    reasons = [f"only {n_cells} cells"] if n_cells < VERDICT_MIN_CELLS else []
    if split == "spatial" and n_blocks is not None and n_blocks < VERDICT_MIN_BLOCKS:
        reasons.append(f"only {n_blocks} spatial blocks")
    if _noise(std, std_runner) is None:
        reasons.append("one fold, no spread to judge the noise by")
    if reasons:
        return (
            f"{head}: differences within noise ({'; '.join(reasons)}); {best} scores highest "
            f"(R2 {r2:.2f}), but do not read this as a finding"
        )
    noise = _noise(std, std_runner)
    lead = r2 - r2_runner
    clear = [lead >= noise]
    text = (
        f"{best} wins (R2 {r2:.2f}), +{lead:.2f} over {runner}"
        if clear[0]
        else f"{best} leads (R2 {r2:.2f}) by {lead:.2f} over {runner}, within noise (fold std {noise:.2f})"
    )
    learned = [s for s in sets if is_learned(s[0])]
    baseline = [s for s in sets if not is_learned(s[0])]
    if learned and baseline:
        (name, value, s_std), (b_name, b_value, b_std) = learned[0], baseline[0]
        gap, gap_noise = value - b_value, _noise(s_std, b_std)
        clear.append(abs(gap) >= gap_noise)
        side = "above" if gap >= 0 else "below"
        text += f"; {name} is {abs(gap):.2f} {side} the best baseline ({b_name})"
        text += "" if clear[-1] else f", within noise (fold std {gap_noise:.2f})"
    if not any(clear):
        text += "; do not read this as a finding"
    return f"{head}: {text}"


def verdicts(metrics: pl.DataFrame, n_blocks: Mapping[tuple[str, str], int] | None = None) -> list[str]:
    """Per (scope, region, task, split, model): the best feature set on R2, its lead over the runner-up
    and how the best learned set compares with the best baseline, in words.

    A difference smaller than the larger fold std of the two sets is called within noise; with fewer
    than VERDICT_MIN_CELLS cells, fewer than VERDICT_MIN_BLOCKS spatial blocks (`n_blocks[(region,
    task)]`) or one fold only, the whole ranking is, so a reader never takes noise for a finding.
    """
    r2 = metrics.filter(pl.col("metric") == "r2")
    out = []
    for _, rows in r2.group_by("scope", "region", "task", "split", "model", maintain_order=True):
        if rows.height < 2:
            continue
        rows = rows.sort("value", descending=True).select(
            "region", "task", "split", "model", "feature_set", "value", "std", "n_cells"
        )
        out.append(_verdict(rows, (n_blocks or {}).get((rows["region"][0], rows["task"][0]))))
    return sorted(out)
