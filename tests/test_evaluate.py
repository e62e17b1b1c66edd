"""Evaluation on a small synthetic world with known fields, folds, fusion, transfer and the Delta table."""

import numpy as np
import polars as pl
import pytest

from s2vec_core import evaluate as ev
from s2vec_core import s2
from s2vec_core.features import cell_features
from s2vec_core.osm import extract_cells
from s2vec_core.synthetic import WorldSpec, write_world
from s2vec_core.taxonomy import CHANNEL_NAMES
from s2vec_core.warehouse import duckdb_connect, read_table, write_partition

SPEC = WorldSpec(n_image_cells=300, seed=1)
DIM = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "world.osm.pbf"
    truth = write_world(path, SPEC)
    features = cell_features(
        extract_cells(path, SPEC.pixel_level), [SPEC.image_level, SPEC.pixel_level], "syn"
    )
    raw = ev.raw_channel_totals(features, SPEC.image_level, CHANNEL_NAMES)
    cells = raw["cell_id"].to_numpy()
    # An embedding-like stand-in until S2Vec embeddings exist: a fixed non-linear projection of the raw
    # features, as a Delta `cell_embeddings` table would hold it (Int64 ids, a float32 list column).
    w = np.random.default_rng(7).standard_normal((len(CHANNEL_NAMES), DIM)) / np.sqrt(len(CHANNEL_NAMES))
    emb = np.tanh((raw.drop("cell_id").to_numpy() - 1.0) @ w).astype(np.float32)
    table = pl.DataFrame(
        {"cell_id": s2.as_int64(cells), "embedding": pl.Series(list(emb), dtype=pl.Array(pl.Float32, DIM))}
    )
    sets = {
        "embedding": ev.embedding_features(table),
        "raw": raw,
        "pca": ev.pca_features(raw, DIM),
        "random": ev.random_features(cells, DIM),
    }
    return truth, sets


def run(world, task: str, only: tuple[str, ...] | None = None, **kw):
    truth, sets = world
    targets = truth.select("cell_id", target=pl.col(task).log())
    sets = {k: v for k, v in sets.items() if only is None or k in only}
    return ev.evaluate(targets, sets, task=task, region="syn", image_level=SPEC.image_level, **kw)


def r2(metrics: pl.DataFrame, feature_set: str, split: str, model: str = "lightgbm") -> float:
    row = metrics.filter(
        (pl.col("feature_set") == feature_set)
        & (pl.col("split") == split)
        & (pl.col("model") == model)
        & (pl.col("metric") == "r2")
    )
    assert row.height == 1
    return row["value"].item()


@pytest.fixture(scope="module")
def population(world):
    return run(world, "population")


def test_known_field_beats_random_floor(population):
    m = population.metrics
    for model in ev.MODELS:
        floor = r2(m, "random", "random", model)
        assert floor < 0.1
        for fs in ("raw", "pca", "embedding"):
            assert r2(m, fs, "random", model) > floor + 0.5, (fs, model)
            assert r2(m, fs, "spatial", model) > r2(m, "random", "spatial", model) + 0.4, (fs, model)


def test_spatial_split_is_not_easier_than_random(population):
    m = population.metrics
    for fs in ("raw", "pca", "embedding"):
        for model in ev.MODELS:
            assert r2(m, fs, "spatial", model) <= r2(m, fs, "random", model) + 0.02, (fs, model)


def test_metrics_frame_shape_and_predictions(population):
    m, p = population.metrics, population.predictions
    assert m.schema == ev.metrics_schema()
    assert m.height == 4 * len(ev.SPLITS) * len(ev.MODELS) * len(ev.METRICS)
    assert m.filter(pl.col("metric") != "r2")["value"].min() >= 0
    assert (m["n_folds"] == 5).all() and m["n_cells"].n_unique() == 1
    assert p.schema == ev.predictions_schema()
    # Every cell is predicted exactly once per (split, set, model), and R2 agrees with the predictions.
    counts = p.group_by("split", "feature_set", "model", "cell_id").len()["len"]
    assert (counts == 1).all()
    one = p.filter(
        (pl.col("split") == "random") & (pl.col("feature_set") == "raw") & (pl.col("model") == "linear")
    )
    y, yp = one["y"].to_numpy(), one["y_pred"].to_numpy()
    pooled = 1 - np.mean((y - yp) ** 2) / np.var(y)
    assert r2(m, "raw", "random", "linear") == pytest.approx(pooled, abs=0.02)


def test_seeded_and_reproducible(world, population):
    again = run(world, "population", only=("pca", "random"), models=("lightgbm",))
    same = population.metrics.filter(
        pl.col("feature_set").is_in(["pca", "random"]) & (pl.col("model") == "lightgbm")
    )
    assert again.metrics.equals(same)
    other = run(world, "population", only=("pca", "random"), models=("lightgbm",), seed=1)
    assert not other.metrics.equals(same)


def test_spatial_folds_keep_blocks_together():
    lat = np.random.default_rng(0).uniform(47.0, 47.3, 2000)
    lng = np.random.default_rng(1).uniform(9.4, 9.7, 2000)
    cells = np.unique(s2.latlng_to_cell_id(lat, lng, 13))
    level = ev.choose_block_level(cells, 5, 13)
    folds = ev.spatial_folds(cells, 5, level, seed=0)
    blocks = s2.parent(cells, level)
    per_block = pl.DataFrame({"b": blocks, "f": folds}).group_by("b").agg(pl.col("f").n_unique())
    assert (per_block["f"] == 1).all()
    assert set(folds.tolist()) == set(range(5))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= np.bincount(np.unique(blocks, return_inverse=True)[1]).max()
    rnd = ev.random_folds(len(cells), 5, seed=0)
    assert np.bincount(rnd).max() - np.bincount(rnd).min() <= 1


def test_fusion_and_external_tables(world):
    _, sets = world
    cells = sets["raw"]["cell_id"].to_numpy()
    ext = pl.DataFrame(
        {"token": s2.to_token(cells[::2]), "a": np.arange(len(cells[::2]), dtype=float), "b": 1.0}
    )
    external = ev.embedding_features(ext, prefix="x")
    fused = ev.fuse(sets["embedding"], external)
    assert fused.width == 1 + DIM + 2 and fused["cell_id"].to_list() == sorted(cells[::2].tolist())
    with pytest.raises(ValueError, match="duplicate cells"):
        ev.embedding_features(pl.concat([ext, ext]))
    with pytest.raises(ValueError, match="'cell_id' or 'token'"):
        ev.embedding_features(ext.drop("token"))


def test_transfer_between_regions(world):
    truth, sets = world
    # Two "regions": west and east halves of the world.
    cells = truth["cell_id"].to_numpy()
    west = s2.cell_center(cells)[1] < np.median(s2.cell_center(cells)[1])
    regions = {"west": cells[west], "east": cells[~west]}
    targets = {
        r: truth.filter(pl.col("cell_id").is_in(c.tolist())).select(
            "cell_id", target=pl.col("population").log()
        )
        for r, c in regions.items()
    }
    fsets = {
        r: {n: df.filter(pl.col("cell_id").is_in(c.tolist())) for n, df in sets.items() if n != "pca"}
        for r, c in regions.items()
    }
    out = ev.evaluate_transfer(targets, fsets, "east", task="population")
    m = out.metrics
    assert set(m["split"]) == {"transfer"} and set(m["scope"]) == {ev.CROSS_REGION_SCOPE}
    assert set(m["region"]) == {"east"} and (m["n_cells"] == (~west).sum()).all()
    assert r2(m, "raw", "transfer") > r2(m, "random", "transfer") + 0.3
    assert m["std"].is_null().all()


def test_transfer_from_too_few_training_cells_is_refused(world):
    truth, sets = world
    cells = truth["cell_id"].to_numpy()
    regions = {"tiny": cells[:11], "big": cells[11:]}
    targets = {
        r: truth.filter(pl.col("cell_id").is_in(c.tolist())).select("cell_id", target=pl.col("income"))
        for r, c in regions.items()
    }
    fsets = {r: {"raw": sets["raw"].filter(pl.col("cell_id").is_in(c.tolist()))} for r, c in regions.items()}
    with pytest.raises(
        ev.InsufficientDataError, match="training regions tiny have 11 usable cells; need at least 20"
    ):
        ev.evaluate_transfer(targets, fsets, "big", task="income")
    # The other way round trains on the big region and tests on the 11 cells, which is allowed.
    assert ev.evaluate_transfer(targets, fsets, "tiny", task="income").metrics.height


def test_too_few_cells_is_a_clear_error(world):
    truth, sets = world
    few = truth.head(10).select("cell_id", target=pl.col("income"))
    with pytest.raises(
        ev.InsufficientDataError, match="10 image cells have both a target and every feature set"
    ):
        ev.evaluate(few, sets, task="income", region="syn", image_level=SPEC.image_level)


def test_metrics_to_delta_and_back(tmp_path, population):
    uri = str(tmp_path / "evaluation_metrics")
    m = population.metrics
    write_partition(m, uri, {"scope": "syn"})
    other = m.with_columns(scope=pl.lit("other"), region=pl.lit("other"))
    write_partition(other, uri, {"scope": "other"})
    write_partition(m, uri, {"scope": "syn"})  # re-run replaces only its own rows
    back = pl.read_delta(uri)
    assert back.height == 2 * m.height
    assert back.filter(pl.col("scope") == "syn").sort(m.columns).equals(m.sort(m.columns))
    assert read_table(uri, {"scope": "other"}).height == m.height
    con = duckdb_connect()
    (n,) = con.execute(f"SELECT count(*) FROM delta_scan('{uri}') WHERE metric = 'r2'").fetchone()
    assert n == 2 * m.filter(pl.col("metric") == "r2").height


def test_plots_and_report(tmp_path, world, population):
    from s2vec_core import evaluation_plots as ep
    from s2vec_core.evaluation_report import write_report

    _, sets = world
    p = population.predictions
    one = p.filter(
        (pl.col("split") == "spatial")
        & (pl.col("feature_set") == "embedding")
        & (pl.col("model") == "lightgbm")
    )
    emb = sets["embedding"]
    plots = {
        "R2 bars": ep.r2_bars(population.metrics, "lightgbm"),
        "Predicted vs actual": ep.predicted_vs_actual(p, "random", "linear"),
        "Embedding map": ep.embedding_map(emb["cell_id"].to_numpy(), emb.drop("cell_id").to_numpy()),
        "Residual map": ep.residual_map(one),
    }
    assert all(png.startswith(b"\x89PNG") and len(png) > 5000 for png in plots.values())
    with pytest.raises(ValueError, match="one prediction per cell"):
        ep.residual_map(p)
    rgb = ep.embedding_rgb(emb.drop("cell_id").to_numpy())
    assert rgb.shape == (emb.height, 3) and rgb.min() >= 0 and rgb.max() <= 1
    report = write_report(tmp_path / "report", "Synthetic", population.metrics, population.notes, plots)
    text = report.read_text()
    for caption, png in plots.items():
        name = caption.lower().replace(" ", "_") + ".png"
        assert f"![{caption}]({name})" in text and (report.parent / name).read_bytes() == png
    assert "| syn | population | embedding |" in text and "spatial blocks are S2 cells at level" in text
    assert pl.read_csv(report.parent / "metrics.csv").height == population.metrics.height
    # With block counts and learning curves: verdicts first, then the curves as a table, a CSV and a plot.
    from s2vec_core.evaluation_plots import learning_curve_png

    curves = pl.DataFrame(
        {
            "region": "syn",
            "task": "population",
            "split": "spatial",
            "feature_set": ["raw", "raw", "s2vec", "s2vec"],
            "model": "lightgbm",
            "n_train": [25, 240, 25, 240],
            "r2": [0.2, 0.5, 0.3, 0.6],
            "std": [0.1, 0.05, 0.1, 0.04],
        },
        schema=ev.learning_curve_schema(),
    )
    lines = ev.verdicts(population.metrics, population.n_blocks)
    png = learning_curve_png(curves)
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    report = write_report(tmp_path / "r2", "Synthetic", population.metrics, [], {}, "intro", lines, curves)
    text = report.read_text()
    assert text.startswith("# Synthetic\n\n## Verdicts\n\n- " + lines[0]) and text.index(
        "intro"
    ) > text.index(lines[-1])
    assert "| syn | population | spatial | lightgbm | s2vec | 0.3 ± 0.1 | 0.6 ± 0.04 |" in text
    assert pl.read_csv(report.parent / "learning_curves.csv").height == 4


def test_learning_curve_rises_with_labelled_cells():
    rng = np.random.default_rng(0)
    cells = np.unique(s2.latlng_to_cell_id(rng.uniform(47.0, 47.5, 4000), rng.uniform(9.0, 9.6, 4000), 13))
    x = rng.standard_normal((len(cells), 3))
    targets = pl.DataFrame(
        {
            "cell_id": pl.Series(cells, dtype=pl.UInt64),
            "target": np.sin(2 * x[:, 0]) + np.abs(x[:, 1]) + 0.5 * x[:, 2],
        }
    )
    sets = {"signal": ev._frame(cells, x, "x"), "random": ev.random_features(cells, 3)}
    curve = ev.learning_curve(
        targets,
        sets,
        task="t",
        region="r",
        image_level=13,
        sizes=(25, 100, 10**6, None),
        models=("lightgbm",),
    )
    assert curve.schema == ev.learning_curve_schema()
    signal = curve.filter(pl.col("feature_set") == "signal").sort("n_train")
    assert signal["n_train"].to_list()[:2] == [25, 100] and signal.height == 3  # 10**6 > any fold: skipped
    assert signal["n_train"][-1] == pytest.approx(0.8 * len(cells), rel=0.1)
    r2s = signal["r2"].to_list()
    assert r2s[0] < r2s[1] < r2s[2] and r2s[2] > 0.7 and signal["std"].is_not_null().all()
    assert curve.filter(pl.col("feature_set") == "random")["r2"].max() < 0.1


def verdict_metrics(rows: list[tuple[str, float, float | None]], n_cells: int = 500, split: str = "spatial"):
    return pl.DataFrame(
        [
            {
                "scope": "a",
                "region": "a",
                "task": "t",
                "split": split,
                "feature_set": fs,
                "model": "lightgbm",
                "metric": "r2",
                "value": v,
                "std": s,
                "n_folds": 5,
                "n_cells": n_cells,
                "model_version": "",
                "run_id": "",
            }
            for fs, v, s in rows
        ],
        schema=ev.metrics_schema(),
    )


def test_verdicts_name_clear_winners_and_flag_noise():
    clear = verdict_metrics([("raw", 0.7, 0.02), ("s2vec", 0.9, 0.01), ("random", 0.0, 0.02)])
    [text] = ev.verdicts(clear, {("a", "t"): 20})
    assert text == (
        "a/t, spatial/lightgbm: s2vec wins (R2 0.90), +0.20 over raw; s2vec is 0.20 above the best baseline (raw)"
    )
    behind = verdict_metrics([("contextual", 0.91, 0.01), ("s2vec+raw", 0.88, 0.01), ("s2vec", 0.80, 0.02)])
    [text] = ev.verdicts(behind, {("a", "t"): 20})
    assert (
        "contextual wins (R2 0.91), +0.03 over s2vec+raw; s2vec+raw is 0.03 below the best baseline" in text
    )
    noisy = verdict_metrics([("contextual", 0.62, 0.05), ("s2vec", 0.60, 0.04), ("raw", 0.59, 0.03)])
    [text] = ev.verdicts(noisy, {("a", "t"): 20})
    assert "within noise (fold std 0.05)" in text and text.endswith("do not read this as a finding")
    for reason, frame, blocks in [
        ("only 60 cells", verdict_metrics([("raw", 0.7, 0.02), ("s2vec", 0.9, 0.01)], n_cells=60), 20),
        ("only 6 spatial blocks", clear, 6),
        ("one fold", verdict_metrics([("raw", 0.7, None), ("s2vec", 0.9, None)], split="transfer"), None),
    ]:
        [text] = ev.verdicts(frame, {("a", "t"): blocks} if blocks else None)
        assert "within noise" in text and reason in text and "do not read this as a finding" in text, text


def test_block_counts_travel_with_the_evaluation(population):
    assert population.n_blocks[("syn", "population")] >= 5
    assert any(
        "spatial blocks" in v or "wins" in v for v in ev.verdicts(population.metrics, population.n_blocks)
    )
