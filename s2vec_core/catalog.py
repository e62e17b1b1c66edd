"""The regions catalog: which regions exist and where their OSM extracts come from.

One TOML file (`regions.toml` at the repository root by default) is the single source of truth for the
region partitions. A source is a local path (relative to the catalog file) or an http(s) URL that is
downloaded once into a cache directory and reused. Whatever its origin, an extract is used only when it
is a complete, well-framed OSM PBF (`pbf_framing`) matching the catalog's `sha256` when one is given;
error messages print URLs without their query string (signed URLs carry secrets there).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from s2vec_core import leftovers, settings
from s2vec_core.pbf_framing import PBFFramingError, check_pbf_framing

REGION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
"""A region slug, matched with `fullmatch` (so no trailing newline slips through)."""
MAX_REGION_NAME = 64
_KNOWN_KEYS = {"source", "bbox", "sha256", "targets"}


class CatalogError(ValueError):
    """The catalog file or one of its entries is malformed."""


class SourceError(ValueError):
    """A region's extract is unusable: not a complete OSM PBF, or not the file the catalog pins."""


class DownloadError(OSError):
    """A region's extract could not be downloaded; nothing was cached."""


@dataclass(frozen=True)
class Region:
    name: str
    source: str
    """Absolute local path or http(s) URL."""
    bbox: tuple[float, float, float, float] | None = None
    """(lon_min, lat_min, lon_max, lat_max)."""
    sha256: str | None = None
    targets: str | None = None
    """Optional targets file (Parquet/CSV) for evaluation, absolute local path (URLs are refused)."""

    @property
    def is_remote(self) -> bool:
        return self.source.startswith(("http://", "https://"))


CROSS_REGION_SCOPE = "cross_region"
"""The pseudo-region the evaluation writes cross-region (transfer) metrics under."""
RESERVED_REGION_NAMES = frozenset({CROSS_REGION_SCOPE})
"""Names a region may not take: pseudo-regions the pipeline writes rows under."""


def validate_region_name(name: str) -> str:
    """Return `name` if it is a region slug, else raise ValueError. The one rule for region names:
    lowercase letters, digits, `_` and `-`, starting with a letter or digit, at most MAX_REGION_NAME
    characters, and not a reserved name."""
    shown = (
        repr(name)
        if not isinstance(name, str) or len(name) <= 72
        else f"{name[:64]!r}... ({len(name)} chars)"
    )
    if not isinstance(name, str) or not REGION_NAME.fullmatch(name):
        raise ValueError(
            f"invalid region name {shown}: must match {REGION_NAME.pattern} (lowercase letters, digits, "
            "'_' and '-', starting with a letter or digit)"
        )
    if len(name) > MAX_REGION_NAME:
        raise ValueError(f"invalid region name {shown}: at most {MAX_REGION_NAME} characters")
    if name in RESERVED_REGION_NAMES:
        raise ValueError(
            f"invalid region name {shown}: reserved (the evaluation writes cross-region metrics under it)"
        )
    return name


def default_catalog_path() -> Path:
    return settings.catalog_path()


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
        raise CatalogError(f"{path}: region {name!r} targets must be a local path")
    if isinstance(targets, str) and "://" in targets:
        raise CatalogError(
            f"{path}: region {name!r} targets {redact_url(targets)!r} is a URL; remote targets are not "
            "supported: download the file and give its path (relative to the catalog)"
        )
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


def redact_url(url: str) -> str:
    """`url` without its query string, fragment and credentials: what error messages may print (a signed
    URL's query is a secret). A local path comes back as it is."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"


def resolve_source(
    region: Region,
    cache_dir: str | os.PathLike,
    timeout_s: float = 120.0,
    *,
    tries: int = 3,
    backoff_s: float = 0.5,
    sleep: Callable[[float], object] = time.sleep,
) -> Path:
    """Local path of the region's extract, downloading a URL once into `cache_dir`.

    A local source must be a well-framed OSM PBF (see `pbf_framing`) matching `region.sha256` when
    given. A download goes to a temporary file and is renamed into the cache only when it is complete
    (as many bytes as the server's Content-Length), matches `region.sha256` when given and is a
    well-framed OSM PBF, so neither a cut-short transfer nor an error page served with HTTP 200 can
    become a cached input. Connection errors, short reads and 5xx answers are retried `tries` times in
    all, waiting `backoff_s`, then twice that, ... (`sleep` is injectable for tests); a retry resumes
    with a Range request when the server advertised `Accept-Ranges: bytes`, else downloads again from
    the start. A cached file that fails those checks is deleted and fetched again once.
    """
    if not region.is_remote:
        path = Path(region.source)
        if not path.is_file():
            raise FileNotFoundError(f"region {region.name!r}: source file not found: {path}")
        _verify(region, path)
        try:
            check_pbf_framing(path)
        except PBFFramingError as e:
            raise SourceError(
                f"region {region.name!r}: {path}: unreadable OSM file ({e}). The catalog's `source` for "
                "this region must be a complete .osm.pbf extract: replace the file with a fresh, complete "
                "copy (or point `source` at one) and run again."
            ) from None
        return path
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    url_key = hashlib.sha256(region.source.encode()).hexdigest()[:16]
    target = cache / f"{region.name}-{url_key}.osm.pbf"
    if target.is_file():
        try:
            _verify(region, target)
            check_pbf_framing(target)
            return target
        except (SourceError, PBFFramingError):
            target.unlink(missing_ok=True)  # a poisoned cache entry (e.g. an older cut download): fetch again
    leftovers.sweep(target)
    fd, name = tempfile.mkstemp(dir=cache, prefix=f"{leftovers.temporary_sibling(target).name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        _download(region, tmp, target, timeout_s, tries, backoff_s, sleep)
        shown = redact_url(region.source)
        _verify(region, tmp, what=f"the download of {shown}", cached=target)
        try:
            check_pbf_framing(tmp)
        except PBFFramingError as e:
            raise SourceError(
                f"region {region.name!r}: {shown}: unreadable OSM file ({e}); nothing was cached (the "
                f"cache file would be {target}). The server may have sent an error page instead of the "
                f"extract: open the URL, fix the `source` of [regions.{region.name}] in the catalog and run "
                "again."
            ) from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


class _Retry(Exception):
    """A transient download failure: another try may succeed."""


@dataclass
class _Transfer:
    total: int | None = None
    """Content-Length of the full answer, when the server gave one."""
    ranges: bool = False
    """The server advertised `Accept-Ranges: bytes`: a retry may resume."""
    validator: str | None = None
    """ETag or Last-Modified of the full answer, sent as If-Range so a changed file restarts."""


def _download(
    region: Region,
    tmp: Path,
    target: Path,
    timeout_s: float,
    tries: int,
    backoff_s: float,
    sleep: Callable[[float], object],
) -> None:
    shown = redact_url(region.source)
    state = _Transfer()
    tries = max(1, tries)
    for attempt in range(1, tries + 1):
        try:
            _fetch_once(region.source, tmp, timeout_s, state)
            return
        except (urllib.error.HTTPError, ValueError) as e:  # 404, 403, a malformed URL: no retry helps
            failure = str(e)
            break
        except _Retry as e:
            failure = f"{e}; tried {attempt} times" if attempt > 1 else str(e)
            if attempt < tries:
                sleep(backoff_s * 2 ** (attempt - 1))
    detail = failure.replace(region.source, shown)
    if query := urllib.parse.urlsplit(region.source).query:
        detail = detail.replace(query, "<query hidden>")
    raise DownloadError(
        f"region {region.name!r}: download of {shown} failed ({detail}); nothing was cached (the cache "
        f"file would be {target}). Check that the URL is reachable (and, for a signed URL, not expired), "
        f"or fix the `source` of [regions.{region.name}] in the catalog, then run again."
    ) from None


def _fetch_once(url: str, tmp: Path, timeout_s: float, state: _Transfer) -> None:
    """One request into `tmp`: a Range continuation of what it holds when possible, else from scratch.
    Raises _Retry for what another try may fix, HTTPError for an answer it will not."""
    have = tmp.stat().st_size
    headers = {"User-Agent": "s2vec"}
    if have and state.ranges and state.total is not None and have < state.total:
        headers["Range"] = f"bytes={have}-"
        if state.validator:
            headers["If-Range"] = state.validator
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            if resp.status == 206 and "Range" in headers:
                span = re.fullmatch(
                    r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", "").strip()
                )
                if not span or int(span[1]) != have or span[2] not in ("*", str(state.total)):
                    state.ranges = False  # a continuation that does not fit: start again
                    raise _Retry("unexpected Content-Range in the answer to a resume")
                mode = "ab"
            else:
                have, mode = 0, "wb"
                length = resp.headers.get("Content-Length", "").strip()
                state.total = int(length) if length.isdigit() else None
                state.ranges = resp.headers.get("Accept-Ranges", "").strip().lower() == "bytes"
                etag = resp.headers.get("ETag")
                state.validator = (
                    etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
                )
            with open(tmp, mode) as out:
                while block := resp.read(1 << 20):
                    out.write(block)
                    have += len(block)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # the range no longer fits the file: start again
            state.ranges = False
            raise _Retry(str(e)) from e
        if e.code >= 500 or e.code in (408, 429):
            raise _Retry(str(e)) from e
        raise
    except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, incomplete chunk
        raise _Retry(str(e)) from e
    if state.total is not None and have != state.total:
        raise _Retry(f"the connection closed after {have} of {state.total} bytes")


def _verify(region: Region, path: Path, what: str | None = None, cached: Path | None = None) -> None:
    if region.sha256 and (actual := sha256_file(path)) != region.sha256:
        if cached is None:
            raise SourceError(
                f"region {region.name!r}: {path} has sha256 {actual}, catalog expects {region.sha256}"
            )
        raise SourceError(
            f"region {region.name!r}: {what} has sha256 {actual}, the catalog expects {region.sha256}; "
            f"nothing was cached (the cache file would be {cached}). If the extract changed upstream, "
            f"update `sha256` of [regions.{region.name}] in the catalog, else fix its `source`, then run again."
        )
