"""The regions catalog: which regions exist and where their OSM extracts come from.

One TOML file (`regions.toml` at the repository root by default) is the single source of truth for the
region partitions. A source is a local path (relative to the catalog file) or an http(s) URL that is
downloaded once into a cache directory, checksummed, and reused.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "regions.toml"
_KNOWN_KEYS = {"source", "bbox", "sha256", "targets"}


class CatalogError(ValueError):
    """The catalog file or one of its entries is malformed."""


@dataclass(frozen=True)
class Region:
    name: str
    source: str
    """Absolute local path or http(s) URL."""
    bbox: tuple[float, float, float, float] | None = None
    """(lon_min, lat_min, lon_max, lat_max)."""
    sha256: str | None = None
    targets: str | None = None
    """Optional targets file (Parquet/CSV) for evaluation, absolute path or URL."""

    @property
    def is_remote(self) -> bool:
        return self.source.startswith(("http://", "https://"))


def validate_region_name(name: str) -> str:
    """Return `name` if it is a region slug, else raise ValueError."""
    if not isinstance(name, str) or not REGION_NAME.match(name):
        raise ValueError(f"invalid region name {name!r}: must match {REGION_NAME.pattern}")
    return name


def default_catalog_path() -> Path:
    return Path(os.environ.get("S2VEC_CATALOG", DEFAULT_CATALOG))


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, Region]:
    """Read and validate the catalog; regions come back in file order."""
    path = Path(path) if path is not None else default_catalog_path()
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CatalogError(f"regions catalog not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"regions catalog {path} is not valid TOML: {e}") from None
    entries = doc.get("regions")
    if not isinstance(entries, dict) or not entries:
        raise CatalogError(f"regions catalog {path} has no [regions.<name>] entries")
    return {name: _parse_region(name, entry, path.parent, path) for name, entry in entries.items()}


def get_region(name: str, catalog: dict[str, Region] | None = None) -> Region:
    """Look a region up by name with a clear error for bad or unknown names."""
    validate_region_name(name)
    catalog = load_catalog() if catalog is None else catalog
    if name not in catalog:
        raise KeyError(f"unknown region {name!r}; the catalog has: {', '.join(sorted(catalog))}")
    return catalog[name]


def _parse_region(name: str, entry: object, base: Path, path: Path) -> Region:
    try:
        validate_region_name(name)
    except ValueError as e:
        raise CatalogError(f"{path}: {e}") from None
    if not isinstance(entry, dict):
        raise CatalogError(f"{path}: region {name!r} must be a table")
    unknown = set(entry) - _KNOWN_KEYS
    if unknown:
        raise CatalogError(f"{path}: region {name!r} has unknown keys {sorted(unknown)}")
    source = entry.get("source")
    if not isinstance(source, str) or not source:
        raise CatalogError(f"{path}: region {name!r} needs a `source` (path or http(s) URL)")
    bbox = entry.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise CatalogError(f"{path}: region {name!r} bbox must be [lon_min, lat_min, lon_max, lat_max]")
        lon0, lat0, lon1, lat1 = map(float, bbox)
        if not (-180 <= lon0 < lon1 <= 180 and -90 <= lat0 < lat1 <= 90):
            raise CatalogError(f"{path}: region {name!r} bbox {bbox} is out of range or empty")
        bbox = (lon0, lat0, lon1, lat1)
    sha = entry.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise CatalogError(f"{path}: region {name!r} sha256 must be 64 lowercase hex digits")
    targets = entry.get("targets")
    if targets is not None and not isinstance(targets, str):
        raise CatalogError(f"{path}: region {name!r} targets must be a path or URL")
    return Region(name, _absolute(source, base), bbox, sha, _absolute(targets, base) if targets else None)


def _absolute(source: str, base: Path) -> str:
    if source.startswith(("http://", "https://")):
        return source
    if "://" in source:
        raise CatalogError(f"unsupported source scheme in {source!r}: use a local path or http(s) URL")
    return str((base / source).resolve())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_source(region: Region, cache_dir: str | os.PathLike, timeout_s: float = 120.0) -> Path:
    """Local path of the region's extract, downloading a URL once into `cache_dir`.

    A download goes to a temporary file and is renamed into place only when complete (and matching
    `region.sha256` when given), so an interrupted download never leaves a file that looks cached.
    """
    if not region.is_remote:
        path = Path(region.source)
        if not path.is_file():
            raise FileNotFoundError(f"region {region.name!r}: source file not found: {path}")
        _verify(region, path)
        return path
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    url_key = hashlib.sha256(region.source.encode()).hexdigest()[:16]
    target = cache / f"{region.name}-{url_key}.osm.pbf"
    if target.is_file():
        _verify(region, target)
        return target
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(region.source, timeout=timeout_s) as resp, open(tmp, "wb") as out:
            while block := resp.read(1 << 20):
                out.write(block)
        _verify(region, tmp)
        os.replace(tmp, target)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, ValueError):
            raise
        raise OSError(f"region {region.name!r}: download of {region.source} failed: {e}") from e
    return target


def _verify(region: Region, path: Path) -> None:
    if region.sha256 and (actual := sha256_file(path)) != region.sha256:
        raise ValueError(
            f"region {region.name!r}: {path} has sha256 {actual}, catalog expects {region.sha256}"
        )
