"""Environment variables are read in one module, honoured everywhere, and all documented."""

import re
from pathlib import Path

from s2vec_core import artifacts, catalog, settings, warehouse

REPO = Path(__file__).resolve().parent.parent


def test_only_settings_reads_the_products_environment():
    readers = []
    for path in [*REPO.glob("s2vec_core/**/*.py"), *REPO.glob("s2vec_assets/**/*.py")]:
        text = path.read_text()
        if path.name != "settings.py" and re.search(r"environ(\.get)?[\[(]\s*[\"']S2VEC_", text):
            readers.append(str(path.relative_to(REPO)))
    assert readers == []


def test_each_variable_reaches_its_readers(monkeypatch, tmp_path):
    monkeypatch.setenv("S2VEC_WAREHOUSE", str(tmp_path / "w"))
    monkeypatch.setenv("S2VEC_CATALOG", str(tmp_path / "regions.toml"))
    monkeypatch.setenv("S2VEC_ARTIFACT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("S2VEC_DEVICE", "cpu")
    assert warehouse.default_root() == str(tmp_path / "w")
    assert catalog.default_catalog_path() == tmp_path / "regions.toml"
    assert artifacts.default_cache_dir() == tmp_path / "a"
    assert settings.device() == "cpu"
    monkeypatch.setenv("S2VEC_DEVICE", "  ")  # blank is unset
    monkeypatch.delenv("S2VEC_WAREHOUSE")
    assert settings.device() == "auto" and warehouse.default_root() == str(REPO / "warehouse")


def test_the_readme_documents_every_variable():
    readme = (REPO / "README.md").read_text()
    assert [v.name for v in settings.VARIABLES if f"`{v.name}`" not in readme] == []
