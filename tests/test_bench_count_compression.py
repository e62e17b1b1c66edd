"""bench/bench_count_compression.py: a compression to k directions keeps the leading ones and drops the rest."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_count_compression import FOLDS, compressed_r2


def test_a_target_in_the_smallest_variance_direction_needs_every_direction():
    rng = np.random.default_rng(0)
    n = 600
    loud, quiet = rng.normal(0, 10, n), rng.normal(0, 1, n)
    # Two correlated columns: the leading direction is their sum (loud), the trailing one their difference.
    x = np.stack([loud + quiet, loud - quiet], axis=1)
    folds = np.arange(n) % FOLDS
    assert compressed_r2(x, quiet, folds, 1) < 0.05
    assert compressed_r2(x, quiet, folds, None) > 0.99
    assert compressed_r2(x, loud, folds, 1) > 0.99
