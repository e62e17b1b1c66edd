"""Targets files: validation errors with clear messages, aggregation to image cells, cell areas."""

import numpy as np
import polars as pl
import pytest
import s2sphere

from s2vec_core import s2
from s2vec_core.targets import TargetsError, cell_area_km2, load_targets, to_image_cells, validate_targets

LEVEL = 13
# Points around Vaduz, a few hundred metres apart: some share an image cell, some do not.
LAT = np.array([47.1410, 47.1412, 47.1650, 47.2000, 47.0600])
LNG = np.array([9.5215, 9.5217, 9.5100, 9.5300, 9.5500])
VAL = np.array([1.0, 3.0, 5.0, 7.0, 11.0])


def write_csv(tmp_path, text: str, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def points_frame() -> pl.DataFrame:
    return pl.DataFrame({"lat": LAT, "lng": LNG, "value": VAL})


@pytest.mark.parametrize("agg", ["mean", "sum", "density"])
def test_points_aggregate_per_image_cell(tmp_path, agg):
    path = tmp_path / "t.parquet"
    points_frame().write_parquet(path)
    out = load_targets(path, LEVEL, agg=agg)
    cells = s2.latlng_to_cell_id(LAT, LNG, LEVEL)
    assert out["cell_id"].dtype == pl.UInt64 and out["cell_id"].to_list() == sorted(set(cells.tolist()))
    for row in out.iter_rows(named=True):
        vals = VAL[cells == row["cell_id"]]
        expected = {
            "mean": vals.mean(),
            "sum": vals.sum(),
            "density": vals.sum() / cell_area_km2(np.array([row["cell_id"]], np.uint64))[0],
        }[agg]
        assert row["target"] == pytest.approx(expected) and row["n"] == len(vals)


def test_point_density_without_value_counts_points(tmp_path):
    path = write_csv(tmp_path, "lat,lng\n" + "\n".join(f"{a},{b}" for a, b in zip(LAT, LNG)))
    out = load_targets(path, LEVEL, value_column=None, agg="density")
    area = cell_area_km2(out["cell_id"].to_numpy())
    assert np.allclose(out["target"].to_numpy() * area, out["n"].to_numpy())
    assert int(out["n"].sum()) == len(LAT)


def test_cells_by_token_and_finer_cells_roll_up(tmp_path):
    fine = s2.latlng_to_cell_id(LAT, LNG, LEVEL + 7)
    path = write_csv(
        tmp_path, "token,value\n" + "\n".join(f"{t},{v}" for t, v in zip(s2.to_token(fine), VAL))
    )
    by_token = load_targets(path, LEVEL, agg="sum")
    by_id = to_image_cells(
        validate_targets(pl.DataFrame({"cell_id": fine.view(np.int64), "value": VAL})), LEVEL, "sum"
    )
    assert by_token.equals(by_id)
    assert by_token["target"].sum() == pytest.approx(VAL.sum())
    assert set(by_token["cell_id"].to_list()) == set(s2.parent(fine, LEVEL).tolist())


def test_cell_ids_as_text_in_either_spelling(tmp_path):
    ids = s2.latlng_to_cell_id(LAT, LNG, LEVEL)
    ids = np.unique(ids)
    signed = ids.view(np.int64)
    path = write_csv(tmp_path, "cell_id,value\n" + "\n".join(f"{s},{i}" for i, s in enumerate(signed)))
    path2 = write_csv(tmp_path, "cell_id,value\n" + "\n".join(f"{u},{i}" for i, u in enumerate(ids)), "u.csv")
    assert load_targets(path, LEVEL).equals(load_targets(path2, LEVEL))


@pytest.mark.parametrize(
    "csv, match",
    [
        ("x,y,value\n1,2,3\n", "need either point columns"),
        ("lat,value\n47.1,3\n", r"point targets lack column\(s\) \['lng'\]"),
        ("lat,lng\n47.1,9.5\n", "value column 'value' is missing"),
        ("lat,lng,value\n91.0,9.5,1\n47.1,9.5,2\n", r"values of 'lat' outside \[-90, 90\] \(rows \[0\]\)"),
        ("lat,lng,value\n47.1,9.5,1\n47.1,-181,2\n", r"values of 'lng' outside \[-180, 180\] \(rows \[1\]\)"),
        ("lat,lng,value\n47.1,9.5,1\n47.2,9.5,abc\n", r"'value' has 1 non-numeric values \(row 1: 'abc'\)"),
        (
            "lat,lng,value\n47.1,9.5,1\n47.2,9.5,\n",
            r"'value' has 1 missing or non-finite values \(rows \[1\]\)",
        ),
        ("lat,lng,value\n47.1,9.5,1\n47.1,9.5,1\n", r"2 rows duplicate lat/lng/value"),
        ("token,value\n47a1,1\n47a1,2\n", "duplicate cell_id"),
        ("token,value\nzzzz,1\n", "invalid S2 tokens"),
        ("cell_id,value\n12x,1\n", "'cell_id' has 1 non-integer values"),
        ("cell_id,value\n2,1\n", "invalid S2 cell ids"),
        ("lat,lng,value\n", "no rows"),
    ],
)
def test_validation_errors_are_clear(tmp_path, csv, match):
    path = write_csv(tmp_path, csv)
    with pytest.raises(TargetsError, match=match) as err:
        load_targets(path, LEVEL)
    assert str(path) in str(err.value)


def test_both_point_and_cell_columns_is_ambiguous():
    with pytest.raises(TargetsError, match="need either"):
        validate_targets(pl.DataFrame({"lat": [47.1], "lng": [9.5], "token": ["47a1"], "value": [1.0]}))


def test_cells_coarser_than_image_level_are_refused():
    coarse = s2.latlng_to_cell_id(LAT[:1], LNG[:1], LEVEL - 1)
    with pytest.raises(TargetsError, match=f"image level {LEVEL} or finer"):
        to_image_cells(validate_targets(pl.DataFrame({"cell_id": coarse, "value": [1.0]})), LEVEL)


def test_unknown_aggregation():
    with pytest.raises(TargetsError, match="unknown aggregation 'median'"):
        to_image_cells(validate_targets(points_frame()), LEVEL, "median")


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "t.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(TargetsError, match=f"targets file {bad} is malformed"):
        load_targets(bad, LEVEL)
    with pytest.raises(TargetsError, match="not found"):
        load_targets(tmp_path / "nope.csv", LEVEL)
    # A URL (e.g. in the Launchpad's `targets`) is refused for what it is, its query never printed.
    with pytest.raises(TargetsError, match=r"https://example\.org/t\.csv is a URL; .*local") as url:
        load_targets("https://example.org/t.csv?sig=s3cr3t", LEVEL)
    assert "s3cr3t" not in str(url.value)
    other = write_csv(tmp_path, "{}", "t.json")
    with pytest.raises(TargetsError, match="unsupported format '.json'"):
        load_targets(other, LEVEL)
    ragged = write_csv(tmp_path, 'lat,lng,value\n47.1,9.5,1\n"47.2,9.5,2\n', "r.csv")
    with pytest.raises(TargetsError, match="malformed"):
        load_targets(ragged, LEVEL)


def test_validation_leaves_input_untouched(tmp_path):
    path = write_csv(tmp_path, "lat,lng,value\n47.1,9.5,1\n47.2,9.5,abc\n")
    before = path.read_bytes()
    with pytest.raises(TargetsError):
        load_targets(path, LEVEL)
    assert path.read_bytes() == before


def test_cell_area_matches_s2sphere_and_children_sum_to_parent():
    ids = np.unique(s2.latlng_to_cell_id(LAT, LNG, LEVEL))
    ours = cell_area_km2(ids)
    ref = [s2sphere.Cell(s2sphere.CellId(int(i))).exact_area() * 6371.0088**2 for i in ids]
    assert np.allclose(ours, ref, rtol=1e-6)
    first, last = s2.children_range(ids[:1], LEVEL + 1)
    children = np.arange(4, dtype=np.uint64) * (last[0] - first[0]) // np.uint64(3) + first[0]
    assert cell_area_km2(children).sum() == pytest.approx(ours[0], rel=1e-9)
