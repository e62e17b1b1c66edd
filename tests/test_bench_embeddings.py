"""bench/bench_embeddings.py: the goal checks read the right rows and report the margin each misses by."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_embeddings as be

SETS = ("s2vec", "raw", "contextual", "spatial_stats", "s2vec+raw", "s2vec+contextual")
TASKS = ("log_population", "log_income", "arrangement", be.NEIGHBOURHOOD)


def _summary(value) -> pl.DataFrame:
    rows = [
        {"task": t, "split": sp, "model": m, "feature_set": f, "mean": value(t, f), "min": 0.0, "seeds": 3}
        for t in TASKS
        for sp in ("spatial", "transfer")
        for m in ("lightgbm", "linear")
        for f in SETS
    ]
    return pl.DataFrame(rows)


def test_goals_pass_when_s2vec_leads_and_name_the_margin_when_it_does_not():
    def winning(task, name):
        base = {"raw": 0.5, "contextual": 0.6, "spatial_stats": 0.55}
        return base.get(name, 0.7)  # s2vec and fusions 0.1 above the best baseline everywhere

    lines = be.goals(_summary(winning))
    assert len(lines) == 2 * 2 * 11 and all(line.startswith("PASS") for line in lines)

    def losing(task, name):
        return 0.80 if name == "contextual" else 0.77 if name.startswith("s2vec") else 0.5

    lines = be.goals(_summary(losing))
    neighbourhood = [line for line in lines if "neighbourhood: s2vec >= contextual - 0.02" in line]
    assert len(neighbourhood) == 4 and all(
        line.startswith("MISS") and "(margin -0.010)" in line for line in neighbourhood
    )
    arrangement = [line for line in lines if "arrangement: s2vec >= best baseline + 0.05" in line]
    assert all("(margin -0.080)" in line for line in arrangement)
    assert all(line.startswith("PASS") for line in lines if "s2vec+raw >= raw" in line)
