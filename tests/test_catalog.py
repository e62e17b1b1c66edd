"""The regions catalog: validation, clear errors, local and downloaded sources."""

import functools
import http.server
import threading
from pathlib import Path

import polars as pl
import pytest

from s2vec_core import catalog
from s2vec_core.catalog import CROSS_REGION_SCOPE
from s2vec_core.grid import Grid

REPO = Path(__file__).resolve().parent.parent


def test_bundled_catalog_names_the_bundled_extracts(tmp_path):
    regions = catalog.load_catalog(REPO / "regions.toml")
    assert list(regions) == ["liechtenstein", "monaco"]
    for region in regions.values():
        path = catalog.resolve_source(region, tmp_path)
        assert path.is_file() and path.suffix == ".pbf"


@pytest.mark.parametrize("name", ["Monaco", "-x", "a b", "", "a/b", "é", "../x", "monaco\n", "a\nb", None, 7])
def test_bad_region_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid region name"):
        catalog.validate_region_name(name)


def test_region_names_have_a_length_limit():
    assert catalog.validate_region_name("a" * catalog.MAX_REGION_NAME) == "a" * catalog.MAX_REGION_NAME
    with pytest.raises(ValueError, match="at most 64 characters") as err:
        catalog.validate_region_name("a" * 300)
    assert "(300 chars)" in str(err.value) and "a" * 100 not in str(err.value)


def test_the_cross_region_scope_is_not_a_region_name(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        catalog.validate_region_name(CROSS_REGION_SCOPE)
    path = tmp_path / "regions.toml"
    path.write_text(f"[regions.{CROSS_REGION_SCOPE}]\nsource='x.osm.pbf'")
    with pytest.raises(catalog.CatalogError, match="reserved"):
        catalog.load_catalog(path)


def test_a_trailing_newline_in_a_catalog_name_is_refused(tmp_path):
    path = tmp_path / "regions.toml"
    path.write_text('[regions."monaco\\n"]\nsource="x.osm.pbf"')
    with pytest.raises(catalog.CatalogError, match="invalid region name 'monaco\\\\n'"):
        catalog.load_catalog(path)


def test_remote_targets_are_refused_without_printing_the_query(tmp_path):
    path = tmp_path / "regions.toml"
    path.write_text("[regions.a]\nsource='x.osm.pbf'\ntargets='https://h.example/t.parquet?sig=s3cr3t'")
    with pytest.raises(catalog.CatalogError, match="remote targets are not supported") as err:
        catalog.load_catalog(path)
    assert "s3cr3t" not in str(err.value) and "https://h.example/t.parquet" in str(err.value)
    path.write_text("[regions.a]\nsource='x.osm.pbf'\ntargets='t.parquet'")
    assert catalog.load_catalog(path)["a"].targets == str(tmp_path / "t.parquet")


def test_unknown_region_lists_the_known_ones():
    with pytest.raises(KeyError, match="liechtenstein, monaco"):
        catalog.get_region("atlantis", catalog.load_catalog(REPO / "regions.toml"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[regions.Bad]\nsource='x.pbf'", "invalid region name"),
        ("[regions.a]\nbbox=[0,0,1,1]", "needs a `source`"),
        ("[regions.a]\nsource='x.pbf'\nbbox=[1,0,0,1]", "out of range or empty"),
        ("[regions.a]\nsource='x.pbf'\ncolour='red'", "unknown keys"),
        ("[regions.a]\nsource='s3://bucket/x.pbf'", "unsupported source scheme"),
        ("[regions.a\nsource='x.pbf'", "not valid TOML"),
        ("title='nothing'", "no \\[regions"),
    ],
)
def test_malformed_catalogs_give_clear_errors(tmp_path, text, message):
    path = tmp_path / "regions.toml"
    path.write_text(text)
    with pytest.raises(catalog.CatalogError, match=message):
        catalog.load_catalog(path)


def test_missing_local_source_names_the_file(tmp_path):
    path = tmp_path / "regions.toml"
    path.write_text("[regions.a]\nsource='nowhere.osm.pbf'")
    region = catalog.load_catalog(path)["a"]
    with pytest.raises(FileNotFoundError, match="nowhere.osm.pbf"):
        catalog.resolve_source(region, tmp_path / "cache")


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_source_is_downloaded_once_and_checksummed(tmp_path, http_root):
    root, base = http_root
    data = (REPO / "data/osm/monaco-2023.osm.pbf").read_bytes()
    (root / "monaco.osm.pbf").write_bytes(data)
    sha = catalog.sha256_file(REPO / "data/osm/monaco-2023.osm.pbf")
    cat = tmp_path / "regions.toml"
    cat.write_text(f"[regions.m]\nsource='{base}/monaco.osm.pbf'\nsha256='{sha}'")
    region = catalog.load_catalog(cat)["m"]
    first = catalog.resolve_source(region, tmp_path / "cache")
    assert first.read_bytes() == data
    (root / "monaco.osm.pbf").unlink()  # a second resolve must not need the server
    assert catalog.resolve_source(region, tmp_path / "cache") == first


def test_checksum_mismatch_caches_nothing(tmp_path, http_root):
    root, base = http_root
    (root / "x.osm.pbf").write_bytes(b"not the file you want")
    cat = tmp_path / "regions.toml"
    cat.write_text(f"[regions.x]\nsource='{base}/x.osm.pbf'\nsha256='{'0' * 64}'")
    region = catalog.load_catalog(cat)["x"]
    with pytest.raises(ValueError, match="sha256"):
        catalog.resolve_source(region, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_url_is_a_clear_error(tmp_path, http_root):
    _, base = http_root
    cat = tmp_path / "regions.toml"
    cat.write_text(f"[regions.x]\nsource='{base}/missing.osm.pbf'")
    with pytest.raises(OSError, match="download of .*missing.osm.pbf failed"):
        catalog.resolve_source(catalog.load_catalog(cat)["x"], tmp_path / "cache")


def test_grid_validates_levels():
    assert Grid().image_size == 16
    assert Grid(8, 12, (8, 12)).k == 4
    with pytest.raises(ValueError, match="include"):
        Grid(13, 17, (15, 17))
    with pytest.raises(ValueError, match="image_level < pixel_level"):
        Grid(17, 13, (13, 17))
    with pytest.raises(ValueError, match="finest"):
        Grid(13, 17, (13, 17, 18))


def test_images_too_large_for_memory_and_levels_extraction_cannot_reach_are_refused():
    from s2vec_assets.defs.model.assets import RasterConfig
    from s2vec_core.grid import MAX_IMAGE_K, MAX_LEVEL
    from s2vec_core.raster import RasterError, rasterize

    assert Grid(10, 17, (10, 17)).image_size == 1 << MAX_IMAGE_K
    with pytest.raises(ValueError, match="1024 x 1024 pixels .*raise image_level to 10"):
        Grid(7, 17, (7, 17))
    with pytest.raises(RasterError, match="1024 x 1024"):
        rasterize(pl.DataFrame({"level": [17], "cell_id": [0]}), 7, 17)
    with pytest.raises(ValueError, match="1024 x 1024"):  # the Launchpad refuses it before a run starts
        RasterConfig(image_level=7, pixel_level=17)
    # One finest level for features, the extraction's (27..30 are S2 levels, not extractable ones).
    with pytest.raises(ValueError, match=f"<= {MAX_LEVEL}"):
        Grid(22, MAX_LEVEL + 1, (22, MAX_LEVEL + 1))
