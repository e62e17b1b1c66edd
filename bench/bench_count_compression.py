"""How wide must a linear summary of the counts be for a linear probe? Ridge on the top-k principal
directions of the contextual counts, on the synthetic worlds of bench_embeddings.py.

An embedding is a compression of what it sees: S2Vec's pooled mean is as wide as the model (64 with the
default CPU config). This measures what any linear compression of the same counts to k directions keeps
for each target: the contextual baseline (log1p of a cell's channel totals and of its ring-1 and ring-2
sums) standardised, projected on its k leading principal directions fitted on the training folds
(variance kept, not whitened), and RidgeCV on that (no rescaling, so low-variance directions stay
small), 5-fold spatial blocks per world as `s2vec_core.evaluate` makes them, mean R2 over the worlds.
The last column asks what a 64-d bottleneck keeps under an isotropic (whitened) loss instead: the counts
whitened (every direction scaled to unit variance, over all cells), projected on a random 64-d subspace
(mean of 3 draws), the same ridge.

    python bench/bench_count_compression.py --cache DIR [--seeds 0,1,2] [--cells 1500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from bench_embeddings import world

from s2vec_core import evaluate as ev
from s2vec_core import evaluation_run as er
from s2vec_core import s2
from s2vec_core.grid import Grid

DIRECTIONS = (8, 16, 32, 48, 64, 80)
BOTTLENECK = 64
FOLDS = 5
ALPHAS = np.logspace(-3, 4, 15)


def compressed_r2(x: np.ndarray, y: np.ndarray, folds: np.ndarray, k: int | None) -> float:
    """Spatial-fold R2 of ridge on the k leading principal directions of standardised `x` (None: all)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    errors = np.empty(len(y))
    for fold in range(FOLDS):
        train, test = folds != fold, folds == fold
        steps = [StandardScaler()] + ([PCA(k, random_state=0)] if k else []) + [RidgeCV(alphas=ALPHAS)]
        model = make_pipeline(*steps).fit(x[train], y[train])
        errors[test] = model.predict(x[test]) - y[test]
    return float(1 - np.mean(errors**2) / y.var())


def whitened_subspace(x: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Standardised `x` with every principal direction scaled to unit variance, on a random `dim`-d subspace."""
    standard = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    u, singular, _ = np.linalg.svd(standard, full_matrices=False)
    whitened = u[:, singular > 1e-9 * singular[0]]
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(whitened.shape[1], dim)))
    return whitened @ basis


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cells", type=int, default=1500)
    ap.add_argument("--cache", type=Path, help="bench_embeddings.py's world cache (made if missing)")
    args = ap.parse_args()
    grid = Grid(feature_levels=(Grid().image_level, Grid().pixel_level))
    scores: dict[tuple[str, int | None], list[float]] = {}
    ranks = []
    with tempfile.TemporaryDirectory() as work:
        for seed in (int(s) for s in args.seeds.split(",")):
            features, tasks = world(seed, args.cells, grid, Path(work), args.cache)
            sets = er.standard_feature_sets(features, grid.image_level, None, pixel_level=grid.pixel_level)
            counts = sets["contextual"]
            standard = counts.drop("cell_id").to_numpy()
            standard = (standard - standard.mean(0)) / np.maximum(standard.std(0), 1e-12)
            ranks.append(int(np.linalg.matrix_rank(standard)))
            for task, target in tasks.items():
                rows = target.join(counts, on="cell_id")
                cells = s2.as_uint64(rows["cell_id"].to_numpy())
                folds, _ = ev.split_folds(cells, "spatial", FOLDS, grid.image_level)
                x, y = rows.drop("cell_id", "target").to_numpy(), rows["target"].to_numpy()
                for k in (*DIRECTIONS, None):
                    scores.setdefault((task, k), []).append(compressed_r2(x, y, folds, k))
                random = [
                    compressed_r2(whitened_subspace(x, BOTTLENECK, d), y, folds, None) for d in range(3)
                ]
                scores.setdefault((task, -1), []).append(float(np.mean(random)))
    tasks = sorted({t for t, _ in scores})
    columns = (*DIRECTIONS, None, -1)
    width = counts.width - 1
    print(
        f"ridge on the k leading directions of the contextual counts ({width} columns, rank {ranks} in the "
        f"worlds); seeds {args.seeds}\n"
    )
    header = [f"k = {k}" for k in DIRECTIONS] + ["all", f"whitened, random {BOTTLENECK}-d"]
    print("| task | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for task in tasks:
        cells = [f"{np.mean(scores[task, k]):.3f}" for k in columns]
        print(f"| {task} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
