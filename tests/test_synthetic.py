"""The synthetic world: a valid PBF, seeded, the requested size, and objects that follow the fields."""

import numpy as np
import polars as pl
import pytest

from s2vec_core import s2
from s2vec_core.features import cell_features
from s2vec_core.osm import extract_cells, pbf_info
from s2vec_core.synthetic import (
    LatentFields,
    WorldSpec,
    pixel_model,
    world_cells,
    world_half_width_km,
    write_world,
)

SPEC = WorldSpec(n_image_cells=200, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / "world.osm.pbf"
    targets = write_world(path, SPEC)
    image = cell_features(extract_cells(path, SPEC.pixel_level), [SPEC.image_level, SPEC.pixel_level], "syn")
    image = image.filter(pl.col("level") == SPEC.image_level).with_columns(
        pl.col("cell_id").reinterpret(signed=False)
    )
    return path, targets, image


def test_size_cells_and_targets(world):
    path, targets, _ = world
    assert abs(targets.height - SPEC.n_image_cells) <= 0.1 * SPEC.n_image_cells
    ids = targets["cell_id"].to_numpy()
    assert (s2.cell_level(ids) == SPEC.image_level).all() and len(np.unique(ids)) == len(ids)
    assert np.array_equal(ids, world_cells(SPEC))
    assert targets.columns == ["cell_id", "population", "income", "arrangement", "population_3km"]
    assert (targets["population"] > 0).all() and (targets["income"] > 0).all()
    assert targets["arrangement"].is_between(0, 1).all() and targets["arrangement"].std() > 0.1
    info = pbf_info(path)
    assert info["nodes"] > 1000 and info["ways"] > 100


def test_targets_are_the_fields_averaged_over_pixels(world):
    _, targets, _ = world
    fields = LatentFields(SPEC, world_half_width_km(SPEC))
    one = targets.row(0, named=True)
    first, last = s2.children_range(np.array([one["cell_id"]], np.uint64), SPEC.pixel_level)
    step = (last[0] - first[0]) // np.uint64(4 ** (SPEC.pixel_level - SPEC.image_level) - 1)
    pixels = first[0] + step * np.arange(4 ** (SPEC.pixel_level - SPEC.image_level), dtype=np.uint64)
    assert (s2.parent(pixels, SPEC.image_level) == one["cell_id"]).all()
    lat, lng = s2.cell_center(pixels)
    assert one["population"] == pytest.approx(fields.population(lat, lng).mean())
    assert one["income"] == pytest.approx(fields.income(lat, lng).mean())
    assert one["arrangement"] == pytest.approx(fields.arrangement(lat, lng).mean())


def test_seeded(tmp_path, world):
    path, targets, _ = world
    again = write_world(tmp_path / "again.osm.pbf", SPEC)
    assert again.equals(targets)
    assert extract_cells(tmp_path / "again.osm.pbf", 15).equals(extract_cells(path, 15))
    other = write_world(tmp_path / "other.osm.pbf", WorldSpec(n_image_cells=200, seed=4))
    for col in ("income", "arrangement", "population_3km"):
        assert not np.allclose(other[col].to_numpy(), targets[col].to_numpy())


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_objects_follow_the_fields(world):
    _, targets, image = world
    df = targets.join(image, on="cell_id")
    assert spearman(df["population"], df["building_count"]) > 0.8
    assert spearman(df["population"], df["road_residential_m"]) > 0.7
    assert spearman(df["population"], df["forest_m2"]) < -0.5
    # Income shows in the mix: upmarket POIs (fashion, offices, banks) per bus stop, where there are POIs.
    urban = df.filter(pl.col("amenity_any") >= 10)
    mix = (urban["shop_fashion"] + urban["office_business"] + urban["amenity_finance"] + 1) / (
        urban["pt_bus_stop"] + 1
    )
    assert urban.height > 20 and spearman(urban["income"], mix) > 0.4


def test_arrangement_keeps_expected_totals_per_cell():
    # Only the layout moves: every POI type's Poisson mean summed over a cell is the same at any strength.
    cells = world_cells(SPEC)
    fields = LatentFields(SPEC, world_half_width_km(SPEC))
    flat = pixel_model(fields, WorldSpec(n_image_cells=200, seed=3, arrangement_strength=0.0), cells)
    arranged = pixel_model(fields, SPEC, cells)
    np.testing.assert_allclose(arranged.poi.sum(-1), flat.poi.sum(-1), rtol=1e-10)
    assert not np.allclose(arranged.poi, flat.poi, rtol=0.1)
    np.testing.assert_array_equal(arranged.population, flat.population)


def test_arrangement_shows_in_poi_layout(world):
    # Concentration: the chance that two of a cell's POIs share a pixel (unbiased at any count).
    path, targets, _ = world
    pixels = extract_cells(path, SPEC.pixel_level)
    n = sum(pixels[c] for c in ("amenity_any", "shop_any", "tourism_any", "office_any", "pt_stop_any"))
    per_cell = (
        pl.DataFrame({"cell_id": s2.parent(pixels["cell_id"].to_numpy(), SPEC.image_level), "n": n})
        .group_by("cell_id")
        .agg(total=pl.col("n").sum(), pairs=(pl.col("n") * (pl.col("n") - 1)).sum())
        .filter(pl.col("total") >= 10)
        .join(targets, on="cell_id")
    )
    shared = per_cell["pairs"] / (per_cell["total"] * (per_cell["total"] - 1))
    assert per_cell.height > 40 and spearman(per_cell["arrangement"], shared) > 0.3


def test_population_3km_is_the_smoothed_neighbourhood(world):
    _, targets, _ = world
    pop, pop3 = np.log(targets["population"].to_numpy()), np.log(targets["population_3km"].to_numpy())
    assert np.isfinite(pop3).all() and (targets["population_3km"] > 0).all()
    assert np.abs(pop3 - pop).mean() > 0.1  # not the cell's own density
    # Smoother: east neighbours (same face, i + 1) differ less (log units; ~0.8x in this world).
    face, i, j = s2.face_ij(targets["cell_id"].to_numpy(), SPEC.image_level)
    key = {(f, a, b): k for k, (f, a, b) in enumerate(zip(face.tolist(), i.tolist(), j.tolist()))}
    pairs = np.array([(k, key[(f, a + 1, b)]) for (f, a, b), k in key.items() if (f, a + 1, b) in key])
    assert len(pairs) > 100
    step = np.abs(np.diff(pop[pairs], axis=1)).mean()
    step3 = np.abs(np.diff(pop3[pairs], axis=1)).mean()
    assert step3 < 0.9 * step
    # The disc mean shrinks to the field at the centre.
    fields = LatentFields(SPEC, world_half_width_km(SPEC))
    lat, lng = np.array([46.0, 46.01]), np.array([8.0, 8.02])
    np.testing.assert_allclose(fields.population_within(lat, lng, 1e-6), fields.population(lat, lng))


def test_bad_specs():
    with pytest.raises(ValueError, match="n_image_cells"):
        WorldSpec(n_image_cells=0)
    with pytest.raises(ValueError, match="image_level < pixel_level"):
        WorldSpec(image_level=17, pixel_level=13)
    with pytest.raises(ValueError, match="arrangement_strength"):
        WorldSpec(arrangement_strength=1.5)
    with pytest.raises(ValueError, match="neighbourhood_km"):
        WorldSpec(neighbourhood_km=0)
