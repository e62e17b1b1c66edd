"""The synthetic world: a valid PBF, seeded, the requested size, and objects that follow the fields."""

import numpy as np
import polars as pl
import pytest

from s2vec_core import s2
from s2vec_core.features import cell_features
from s2vec_core.osm import extract_cells, pbf_info
from s2vec_core.synthetic import LatentFields, WorldSpec, world_cells, world_half_width_km, write_world

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
    assert (targets["population"] > 0).all() and (targets["income"] > 0).all()
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


def test_seeded(tmp_path, world):
    path, targets, _ = world
    again = write_world(tmp_path / "again.osm.pbf", SPEC)
    assert again.equals(targets)
    assert extract_cells(tmp_path / "again.osm.pbf", 15).equals(extract_cells(path, 15))
    other = write_world(tmp_path / "other.osm.pbf", WorldSpec(n_image_cells=200, seed=4))
    assert not np.allclose(other["income"].to_numpy(), targets["income"].to_numpy())


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


def test_bad_specs():
    with pytest.raises(ValueError, match="n_image_cells"):
        WorldSpec(n_image_cells=0)
    with pytest.raises(ValueError, match="image_level < pixel_level"):
        WorldSpec(image_level=17, pixel_level=13)
