"""The query API on a small warehouse with cells on all six S2 faces, two model versions and a registry.

Every answer is checked against a brute-force numpy answer and, where the README documents SQL,
against DuckDB `delta_scan` running that SQL.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from s2vec_core import query, registry, s2, vectors, warehouse
from s2vec_core.tables import CELL_EMBEDDINGS
from s2vec_core.targets import cell_area_km2

LEVEL = 10
TOKEN_LEVEL = 12
V1 = hashlib.sha256(b"model one").hexdigest()
V2 = hashlib.sha256(b"model two").hexdigest()
# One point per cube face, plus San Francisco (face 4, negative int64 ids).
FACE_POINTS = [
    (1.0, 1.0),
    (1.0, 91.0),
    (80.0, 10.0),
    (1.0, 179.0),
    (1.0, -89.0),
    (-80.0, 10.0),
    (37.77, -122.42),
]
REGIONS = {"east": FACE_POINTS[:4], "west": FACE_POINTS[4:]}


def _cells_around(points, level: int, n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lat = np.concatenate(
        [np.full(n, p[0]) + rng.uniform(-0.5, 0.5, n) for p in points] + [[p[0] for p in points]]
    )
    lng = np.concatenate(
        [np.full(n, p[1]) + rng.uniform(-0.5, 0.5, n) for p in points] + [[p[1] for p in points]]
    )
    return np.unique(s2.latlng_to_cell_id(lat, lng, level))


def _rows(region: str, cells: np.ndarray, level: int, version: str, dim: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(cells.size, dim)).astype(np.float32) * 5
    df = pl.DataFrame(
        {
            "region": region,
            "level": pl.Series(np.full(cells.size, level), dtype=pl.Int8),
            "cell_id": s2.as_int64(cells),
            "token": s2.to_token(cells),
            "model_version": version,
            "embedding": pl.Series(raw, dtype=pl.Array(pl.Float32, dim)),
        }
    )
    return vectors.normalise(df)


def _record(version: str, regions, dim: int) -> registry.ModelRecord:
    return registry.ModelRecord(
        model_version=version,
        regions=regions,
        image_level=LEVEL,
        pixel_level=LEVEL + 4,
        token_level=TOKEN_LEVEL,
        dim=dim,
        token_dim=3,
        taxonomy_version="t",
        model_config={"width": dim // 2},
        train_config={"epochs": 1},
        training_loss=0.5,
        holdout_loss=0.6,
        checkpoint="/nowhere",
        run_id=f"train-{version[:4]}",
    )


def build_warehouse(root, regions=REGIONS, overlap: bool = True) -> dict:
    """v1 (dim 8) embedded everywhere, then v2 (dim 6, plus token rows) trained and embedded: v2 current."""
    uri = warehouse.table_uri(root, CELL_EMBEDDINGS.name)
    cells = {r: _cells_around(points, LEVEL, seed=i) for i, (r, points) in enumerate(regions.items())}
    if overlap:  # one cell in both regions' extracts
        cells["west"] = np.unique(np.append(cells["west"], cells["east"][0]))
    for version, dim, seed in ((V1, 8, 10), (V2, 6, 20)):
        registry.record_trained(
            str(root), _record(version, list(cells), dim), commit={"run_id": f"train-{version[:4]}"}
        )
        for i, (region, ids) in enumerate(cells.items()):
            frame = _rows(region, ids, LEVEL, version, dim, seed + i)
            if version == V2:
                children = s2.children_range(ids[:3], TOKEN_LEVEL)[0]
                frame = pl.concat([frame, _rows(region, children, TOKEN_LEVEL, version, 3, seed + 7)])
            run = f"embed-{version[:4]}-{region}"
            warehouse.write_partition(
                frame,
                uri,
                {"region": region, "model_version": version},
                commit={
                    "run_id": run,
                    "asset": "cell_embeddings",
                    "region": region,
                    "model_version": version,
                },
            )
            registry.promote_if_complete(str(root), version, commit={"run_id": run})
    return {"uri": uri, "cells": cells, "root": str(root)}


@pytest.fixture(scope="module")
def wh(tmp_path_factory):
    return build_warehouse(tmp_path_factory.mktemp("warehouse"))


def _stored(wh, version=V2, level=LEVEL) -> pl.DataFrame:
    return (
        pl.read_delta(wh["uri"])
        .filter(pl.col("model_version") == version, pl.col("level") == level)
        .sort("region")
        .unique("cell_id", keep="first", maintain_order=True)
    )


def test_registry_has_one_current_version_and_the_retired_one(wh):
    table = query.versions(wh["root"])
    assert dict(zip(table["model_version"], table["status"], strict=True)) == {V1: "retired", V2: "current"}
    assert registry.current(wh["root"]) == V2
    row = table.filter(pl.col("model_version") == V2)
    assert (row["dim"][0], row["token_dim"][0], row["image_level"][0]) == (6, 3, LEVEL)
    assert row["regions"][0].to_list() == ["east", "west"]


def test_lookup_points_on_all_six_faces_one_row_each_in_order(wh):
    lat, lng = np.array([p[0] for p in FACE_POINTS]), np.array([p[1] for p in FACE_POINTS])
    faces = s2.latlng_to_face_xy(lat, lng, LEVEL)[0]
    assert set(faces.tolist()) == set(range(6)) and faces[-1] == 4
    got = query.lookup(lat, lng, warehouse_root=wh["root"])
    assert got.height == len(FACE_POINTS) and got["lat"].to_list() == lat.tolist()
    expected = s2.latlng_to_cell_id(lat, lng, LEVEL)
    assert (s2.as_uint64(got["cell_id"].to_numpy()) == expected).all()
    assert (got["cell_id"].to_numpy()[faces >= 4] < 0).all()  # the int64 bit pattern of faces 4-5
    assert got["model_version"].unique().to_list() == [V2] and got["embedding"].null_count() == 0
    stored = _stored(wh).select("cell_id", "embedding")
    joined = got.join(stored, on="cell_id", suffix="_stored")
    assert joined.height == got.height and (joined["embedding"] == joined["embedding_stored"]).all()


def test_every_id_form_of_a_face_4_cell_gives_the_same_row(wh):
    sf = s2.latlng_to_cell_id(np.array([37.77]), np.array([-122.42]), 30)  # a leaf cell: finer than the table
    cell = s2.parent(sf, LEVEL)
    assert int(s2.latlng_to_face_xy(np.array([37.77]), np.array([-122.42]), LEVEL)[0][0]) == 4
    assert s2.as_int64(cell)[0] < 0
    answers = [
        query.lookup([37.77], [-122.42], warehouse_root=wh["root"]),
        query.lookup(tokens=[s2.to_token(cell)[0]], warehouse_root=wh["root"]),
        query.lookup(tokens=s2.to_token(sf).tolist(), warehouse_root=wh["root"]),
        query.lookup(cell_ids=cell, warehouse_root=wh["root"]),  # uint64
        query.lookup(cell_ids=s2.as_int64(cell), warehouse_root=wh["root"]),  # int64
        query.lookup(cell_ids=[int(cell[0])], warehouse_root=wh["root"]),  # a Python int > 2**63
    ]
    for got in answers:
        assert got.select(query.RESULT_COLUMNS).equals(answers[0].select(query.RESULT_COLUMNS))
    assert answers[0]["region"][0] == "west" and answers[0]["embedding"][0] is not None
    sim = query.similar(token=s2.to_token(cell)[0], k=3, warehouse_root=wh["root"])
    assert int(s2.as_int64(cell)[0]) not in sim["cell_id"].to_list()
    agg = query.aggregate(cell_ids=cell, warehouse_root=wh["root"])
    assert np.allclose(agg["embedding"][0].to_numpy(), answers[0]["embedding"][0].to_numpy(), atol=1e-6)
    con = warehouse.duckdb_connect()
    (token,) = con.execute(
        f"SELECT token FROM delta_scan('{wh['uri']}') WHERE cell_id = $id AND level = $level "
        "AND model_version = $v AND region = 'west'",
        {"id": int(s2.as_int64(cell)[0]), "level": LEVEL, "v": V2},
    ).fetchone()
    assert token == s2.to_token(cell)[0]


def test_a_loaded_snapshot_answers_like_the_table(wh):
    lat, lng = np.array([p[0] for p in FACE_POINTS] + [0.0]), np.array([p[1] for p in FACE_POINTS] + [-30.0])
    cold = query.lookup(lat, lng, warehouse_root=wh["root"])
    for regions in (None, ["west", "east"]):
        snap = query.load(query.snapshot(wh["root"]), regions)
        assert query.lookup(lat, lng, source=snap, regions=regions).equals(
            query.lookup(lat, lng, warehouse_root=wh["root"], regions=regions)
        )
    assert query.lookup(lat, lng, source=query.load(query.snapshot(wh["root"]))).equals(cold)


def test_uncovered_points_give_a_null_embedding_not_a_missing_row(wh):
    got = query.lookup([0.0, 1.0, -45.0], [-30.0, 1.0, 60.0], warehouse_root=wh["root"])
    assert got.height == 3
    assert got["embedding"].is_null().to_list() == [True, False, True]
    assert got["region"].is_null().to_list() == [True, False, True]
    assert got["token"].null_count() == 0  # the containing cell is still named


def test_a_cell_in_two_regions_gives_one_row_and_regions_choose(wh):
    shared = s2.as_uint64(np.array([s2.as_int64(wh["cells"]["east"][0])[()]]))
    assert query.lookup(cell_ids=shared, warehouse_root=wh["root"])["region"].to_list() == ["east"]
    pick = query.lookup(cell_ids=shared, regions=["west", "east"], warehouse_root=wh["root"])
    assert pick["region"].to_list() == ["west"]


def test_pin_prefix_and_old_version_are_honoured_with_their_own_dims(wh):
    old = query.lookup([1.0], [1.0], model_version=V1[:10], warehouse_root=wh["root"])
    assert old["model_version"][0] == V1 and len(old["embedding"][0]) == 8
    assert len(query.lookup([1.0], [1.0], warehouse_root=wh["root"])["embedding"][0]) == 6
    tokens = query.lookup([1.0], [1.0], level=TOKEN_LEVEL, warehouse_root=wh["root"])
    assert tokens["level"][0] == TOKEN_LEVEL
    with pytest.raises(registry.VersionError, match="matches 0"):
        query.lookup([1.0], [1.0], model_version="ffff", warehouse_root=wh["root"])


def test_no_current_version_and_two_present_is_an_error_naming_them(tmp_path):
    uri = warehouse.table_uri(tmp_path, CELL_EMBEDDINGS.name)
    cells = _cells_around(FACE_POINTS[:1], LEVEL, n=5)
    for i, version in enumerate((V1, V2)):
        warehouse.write_partition(
            _rows("east", cells, LEVEL, version, 4, i), uri, {"region": "east", "model_version": version}
        )
    with pytest.raises(registry.VersionError, match="none is current.*pin one"):
        query.lookup([1.0], [1.0], warehouse_root=str(tmp_path))
    assert (
        query.lookup([1.0], [1.0], model_version=V1, warehouse_root=str(tmp_path))["model_version"][0] == V1
    )
    with pytest.raises(registry.VersionError, match="never mix"):
        registry.check_one_version(pl.read_delta(uri))


def test_similar_is_exact_excludes_the_query_and_stays_in_one_version(wh):
    stored = _stored(wh)
    q = stored.row(5, named=True)
    got = query.similar(token=q["token"], k=7, warehouse_root=wh["root"])
    matrix = vectors.to_matrix(stored["embedding"])
    scores = matrix @ np.asarray(q["embedding"], np.float32)
    scores[stored["cell_id"].to_numpy() == q["cell_id"]] = -np.inf
    best = np.argsort(-scores, kind="stable")[:7]
    assert got["cell_id"].to_list() == stored["cell_id"].to_numpy()[best].tolist()
    assert np.allclose(got["score"].to_numpy(), scores[best], atol=1e-6)
    assert q["cell_id"] not in got["cell_id"].to_list() and got["model_version"].unique().to_list() == [V2]
    west = query.similar(token=q["token"], k=3, regions=["west"], warehouse_root=wh["root"])
    assert set(west["region"]) == {"west"}
    by_vector = query.similar(vector=np.asarray(q["embedding"]) * 3, k=1, warehouse_root=wh["root"])
    assert by_vector["cell_id"].to_list() == [q["cell_id"]]  # a vector query excludes nothing
    with pytest.raises(query.QueryError, match="has 8 values"):
        query.similar(vector=np.ones(8), warehouse_root=wh["root"])


def test_as_of_a_version_timestamp_or_run_reads_the_table_then(wh):
    hist = query.history(warehouse_root=wh["root"])
    runs = hist.filter(pl.col("run_id").is_not_null())
    assert runs.height == hist.height and set(runs["asset"]) == {"cell_embeddings"}
    last_v1 = int(hist.filter(pl.col("model_version") == V1)["version"].max())
    # After v1's last region write v1 was current (v2 was not trained yet).
    old = query.lookup([1.0], [1.0], as_of=last_v1, warehouse_root=wh["root"])
    assert old["model_version"][0] == V1
    by_run = query.lookup([1.0], [1.0], as_of=f"run:embed-{V1[:4]}-west", warehouse_root=wh["root"])
    assert by_run["model_version"][0] == V1 and by_run.equals(old)
    when = hist.filter(pl.col("version") == last_v1)["timestamp"][0]
    assert query.lookup([1.0], [1.0], as_of=when.isoformat(), warehouse_root=wh["root"]).equals(old)
    assert warehouse.version_of_run(wh["uri"], f"embed-{V1[:4]}-west") == last_v1
    with pytest.raises(query.QueryError, match="did not exist"):
        query.lookup([1.0], [1.0], as_of=datetime(2000, 1, 1, tzinfo=UTC), warehouse_root=wh["root"])


def test_aggregate_is_the_area_weighted_mean_of_cells_or_a_polygon(wh):
    stored = _stored(wh).filter(pl.col("region") == "east")
    some = stored.head(6)
    got = query.aggregate(tokens=some["token"].to_list(), warehouse_root=wh["root"])
    w = cell_area_km2(s2.as_uint64(some["cell_id"].to_numpy()))
    expected = (vectors.to_matrix(some["embedding"]) * w[:, None]).sum(0) / w.sum()
    assert np.allclose(got["embedding"][0].to_numpy(), expected, atol=1e-6)
    assert (got["cells"][0], got["covered"][0]) == (6, 6)
    parent = s2.parent(s2.as_uint64(some["cell_id"].to_numpy()[:1]), LEVEL - 2)
    coarse = query.aggregate(cell_ids=parent, warehouse_root=wh["root"])
    assert coarse["cells"][0] == 16 and 1 <= coarse["covered"][0] <= 16
    ring = [[0.5, 0.5], [1.5, 0.5], [1.5, 1.5], [0.5, 1.5]]  # around the face-0 point
    poly = query.aggregate(polygon=ring, warehouse_root=wh["root"])
    lat, lng = s2.cell_center(stored["cell_id"].to_numpy())
    inside = (lat > 0.5) & (lat < 1.5) & (lng > 0.5) & (lng < 1.5)
    assert poly["covered"][0] == inside.sum() > 0


def test_tables_state_their_facts_and_commits_carry_provenance(wh):
    facts = warehouse.table_facts(warehouse.table_uri(wh["root"], "model_versions"))
    assert "ODbL" in facts["licence"] and "int64" in facts["cell_id"]
    versions_history = query.history("model_versions", warehouse_root=wh["root"])
    assert versions_history["run_id"].null_count() == 0


# ----------------------------------------------------------------------------------------------
# The README's "For downstream teams" section: every block runs, and its SQL gives the API's answers.

README = Path(__file__).resolve().parent.parent / "README.md"
README_REGIONS = {"liechtenstein": [(47.14, 9.52)], "monaco": [(43.73, 7.42)]}


def readme_blocks() -> list[tuple[str, str]]:
    section = README.read_text().split("## For downstream teams", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL)


@pytest.fixture
def readme_warehouse(tmp_path, monkeypatch):
    build_warehouse(tmp_path / "warehouse", regions=README_REGIONS, overlap=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("S2VEC_WAREHOUSE", str(tmp_path / "warehouse"))
    return tmp_path


def test_the_downstream_readme_section_runs_and_its_sql_matches_the_api(readme_warehouse):
    blocks = readme_blocks()
    assert {kind for kind, _ in blocks} == {"bash", "python", "sql"}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    namespace: dict = {}
    sql = []
    for kind, code in blocks:
        if kind == "python":
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README is ours
        elif kind == "bash":
            for line in code.splitlines():
                command = line.split("  #")[0].strip()
                done = subprocess.run(
                    command, shell=True, env=env, capture_output=True, text=True, timeout=120, check=False
                )
                assert done.returncode == 0, (command, done.stderr[-2000:])
                rows = [json.loads(x) for x in done.stdout.splitlines()]
                assert rows, command
                if " versions" in command:
                    assert [r["status"] for r in rows] == ["current", "retired"]
                    continue
                assert all(r["model_version"] == V2 for r in rows), command
                if " lookup " in command:
                    assert len(rows) == 2 and rows[0]["region"] == "liechtenstein"
                if " similar " in command:
                    assert len(rows) == 5 and "embedding" not in rows[0]
        else:
            sql.append(code)
    lookup_sql, similar_sql, aggregate_sql = sql
    con, cell_id = namespace["con"], namespace["cell_id"]
    api_row = query.lookup(cell_ids=[cell_id]).select(query.RESULT_COLUMNS)
    sql_row = con.execute(lookup_sql, {"cell_id": cell_id}).pl()
    assert sql_row.height == 1
    for column in query.RESULT_COLUMNS:
        assert sql_row[column].to_list() == api_row[column].to_list(), column
    for k in (1, 5, 12):
        api = query.similar(cell_id=cell_id, k=k)
        top = con.execute(similar_sql, {"cell_id": cell_id, "k": k}).pl()
        assert top["cell_id"].to_list() == api["cell_id"].to_list()
        assert np.allclose(top["score"].to_numpy(), api["score"].to_numpy(), atol=1e-6)
        assert top["model_version"].unique().to_list() == [V2]
    (sql_mean,) = con.execute(aggregate_sql).fetchone()
    api_mean = query.aggregate(cell_ids=namespace["cells"]["cell_id"].to_numpy())["embedding"][0]
    assert np.allclose(sql_mean, api_mean.to_numpy(), atol=1e-6)
    assert namespace["same"]["model_version"][0] == V2  # the last run made v2 current
    assert namespace["pinned"]["model_version"][0] == V1
    assert namespace["current_rows"]["model_version"].unique().to_list() == [V2]


def test_promotion_is_one_commit_and_a_rerun_keeps_the_record(tmp_path):
    root = str(tmp_path)
    uri = warehouse.table_uri(root, CELL_EMBEDDINGS.name)
    cells = _cells_around(FACE_POINTS[:1], LEVEL, n=5)
    for version in (V1, V2):
        registry.record_trained(root, _record(version, ["east", "west"], 4))
        for region in ("east", "west"):
            assert not registry.promote_if_complete(root, version)  # not every region embedded yet
            warehouse.write_partition(
                _rows(region, cells, LEVEL, version, 4, 0), uri, {"region": region, "model_version": version}
            )
        before = warehouse.table_version(warehouse.table_uri(root, "model_versions"))
        assert registry.promote_if_complete(root, version)
        assert warehouse.table_version(warehouse.table_uri(root, "model_versions")) == before + 1
    first = query.versions(root).filter(pl.col("model_version") == V2).row(0, named=True)
    assert registry.record_trained(root, _record(V2, ["east", "west"], 4)) == "current"  # an unchanged re-run
    again = query.versions(root).filter(pl.col("model_version") == V2).row(0, named=True)
    assert (again["status"], again["trained_at"], again["run_id"]) == (
        "current",
        first["trained_at"],
        first["run_id"],
    )
    assert query.versions(root).filter(pl.col("status") == "current").height == 1
