"""Files that live beside the Delta tables: raster shards, model checkpoints, evaluation reports.

They sit under the warehouse root at the same keys whether the root is a directory or an object store
(`s3://bucket/prefix`, `az://`, `gs://`), so one warehouse URI says where everything is. Training reads
memory-mapped shards and torch writes checkpoints to files, so on an object store every artifact also
has a local copy under a cache directory (`S2VEC_ARTIFACT_CACHE`, default `~/.cache/s2vec/artifacts`):
writers build it there and `publish` it; readers `fetch` it, which downloads only what changed.

A directory is published as a new version (`<key>/@<version>/...`) and then made current by rewriting
the one small `<key>/CURRENT` object, so a reader sees the old set or the new one, never a mix, and a
failed upload leaves the previous version current. A single file is one PUT, which object stores
apply atomically. Objects go through obstore (Rust's `object_store`, the crate delta-rs is built on),
configured from the same storage options the Delta tables get; credentials come from the environment
(AWS_* / AZURE_* / GOOGLE_*), as for deltalake.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from s2vec_core import leftovers, settings

CURRENT = "CURRENT"
"""The object naming a published directory's current version (its content: the version id)."""
VERSION_FILE = ".artifact-version"
"""In a fetched directory's local copy: the version it holds, so an unchanged fetch downloads nothing."""

# delta-rs options that are not object-store settings (locking, commit behaviour): obstore refuses them.
_DELTA_ONLY = {"aws_s3_allow_unsafe_rename", "aws_s3_locking_provider", "delta_dynamo_table_name"}
# object_store's client (HTTP) settings, shared by every store; the rest are the store's own.
_CLIENT = {
    "allow_http",
    "allow_invalid_certificates",
    "connect_timeout",
    "default_content_type",
    "http1_only",
    "http2_only",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
    "proxy_url",
    "timeout",
    "user_agent",
}
_PREFIX = {"s3": "aws_", "s3a": "aws_", "az": "azure_", "abfs": "azure_", "abfss": "azure_", "gs": "google_"}


class ArtifactError(RuntimeError):
    """An artifact is missing from the store or could not be moved."""


def is_remote(root: str) -> bool:
    """Whether `root` is an object-store URI (`file://` and plain paths are local)."""
    return "://" in root and not root.startswith("file://")


def default_cache_dir() -> Path:
    return settings.artifact_cache_dir()


def obstore_options(root: str, storage_options: dict[str, str] | None) -> tuple[dict, dict]:
    """(store config, client options) for obstore from deltalake-style storage options.

    deltalake accepts `endpoint` and `aws_endpoint` alike and mixes client settings (`allow_http`) in;
    obstore wants the store's prefixed names and the client ones apart."""
    prefix = _PREFIX.get(root.split("://", 1)[0], "")
    config, client = {}, {}
    for key, value in (storage_options or {}).items():
        name = key.lower()
        bare = name.removeprefix(prefix) if prefix else name
        if name in _DELTA_ONLY:
            continue
        if bare in _CLIENT:
            client[bare] = value
        else:
            config[name if name.startswith(prefix) else prefix + name] = value
    # obstore reads the store's settings from the environment (AWS_ENDPOINT_URL, ...) but not the
    # client's, which deltalake does read (AWS_ALLOW_HTTP): take those from there too.
    for key in sorted(_CLIENT - client.keys()) if prefix else ():
        if (var := f"{prefix}{key}".upper()) in os.environ:
            client[key] = os.environ[var]
    return config, client


@dataclass(frozen=True)
class ArtifactStore:
    """The artifacts of one warehouse root; `local(key)` is where a key's files are on this machine."""

    root: str
    storage_options: dict[str, str] | None = None
    cache_dir: Path | None = None

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    def uri(self, key: str) -> str:
        """Where `key` lives, for people and metadata (no credentials: storage options stay out)."""
        if self.remote:
            return f"{self.root.rstrip('/')}/{key}"
        return str(self._local_root() / key)

    def local(self, key: str) -> Path:
        """The local path of `key`: under the root itself when it is a directory, else in the cache."""
        return self._local_root() / key

    def _local_root(self) -> Path:
        if not self.remote:
            return Path(self.root.removeprefix("file://")).resolve()
        digest = hashlib.sha256(self.root.rstrip("/").encode()).hexdigest()[:16]
        return (self.cache_dir or default_cache_dir()) / digest

    def _store(self):
        from obstore.store import from_url

        config, client = obstore_options(self.root, self.storage_options)
        return from_url(self.root.rstrip("/"), config=config, client_options=client)

    # -- directories ------------------------------------------------------------------------------

    def publish_dir(self, key: str) -> str | None:
        """Upload `local(key)` as a new version of `key` and make it current; returns the version (None
        for a local root, where the directory already is the artifact). Older versions are deleted."""
        if not self.remote:
            return None
        import obstore

        source = self.local(key)
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.name != VERSION_FILE)
        if not files:
            raise ArtifactError(f"nothing to publish: {source} holds no files")
        store = self._store()
        version = uuid.uuid4().hex[:16]
        for path in files:
            obstore.put(store, f"{key}/@{version}/{path.relative_to(source).as_posix()}", path)
        obstore.put(store, f"{key}/{CURRENT}", version.encode())
        (source / VERSION_FILE).write_text(version)
        self._delete_versions(store, key, keep=version)
        return version

    def fetch_dir(self, key: str) -> Path:
        """`local(key)` holding the current version of `key` (downloaded only when it changed)."""
        target = self.local(key)
        if not self.remote:
            if not target.is_dir():
                raise ArtifactError(f"{target} does not exist")
            return target
        import obstore

        store = self._store()
        version = self._current(store, key)
        have = target / VERSION_FILE
        if have.exists() and have.read_text() == version:
            return target
        leftovers.sweep(target)
        tmp = leftovers.temporary_sibling(target)
        shutil.rmtree(tmp, ignore_errors=True)
        prefix = f"{key}/@{version}/"
        for batch in obstore.list(store, prefix=prefix):
            for meta in batch:
                path = tmp / meta["path"].removeprefix(prefix)
                path.parent.mkdir(parents=True, exist_ok=True)
                _download(store, meta["path"], path)
        (tmp / VERSION_FILE).write_text(version)
        _swap_in(tmp, target)
        return target

    def has_dir(self, key: str) -> bool:
        """Whether `key` has a published version (locally: whether the directory exists)."""
        if not self.remote:
            return self.local(key).is_dir()
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            obstore.head(self._store(), f"{key}/{CURRENT}")
        except (FileNotFoundError, NotFoundError):
            return False
        return True

    def delete(self, key: str) -> None:
        """Remove every object and the local copy under `key`."""
        shutil.rmtree(self.local(key), ignore_errors=True)
        if self.remote:
            self._delete_versions(self._store(), key, keep=None)

    def _current(self, store, key: str) -> str:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return bytes(obstore.get(store, f"{key}/{CURRENT}").bytes()).decode().strip()
        except (FileNotFoundError, NotFoundError) as e:
            raise ArtifactError(f"{self.uri(key)} has not been published (no {CURRENT} object)") from e

    def _delete_versions(self, store, key: str, keep: str | None) -> None:
        import obstore

        stale = [
            meta["path"]
            for batch in obstore.list(store, prefix=f"{key}/")
            for meta in batch
            if keep is None or not meta["path"].startswith((f"{key}/@{keep}/", f"{key}/{CURRENT}"))
        ]
        if stale:
            obstore.delete(store, stale)

    # -- single files -----------------------------------------------------------------------------

    def publish_file(self, key: str) -> None:
        """Upload `local(key)` to `key` (one atomic PUT; a no-op for a local root)."""
        if self.remote:
            import obstore

            target = self.local(key)
            result = obstore.put(self._store(), key, target)
            if result.get("e_tag"):
                _tag_file(target).write_text(str(result["e_tag"]))

    def fetch_file(self, key: str) -> Path:
        """`local(key)`, downloaded unless the local copy is the store's (same ETag as last fetched)."""
        target = self.local(key)
        if not self.remote:
            return target
        import obstore
        from obstore.exceptions import NotFoundError

        store = self._store()
        try:
            meta = obstore.head(store, key)
        except (FileNotFoundError, NotFoundError) as e:
            raise FileNotFoundError(f"{self.uri(key)} does not exist in the warehouse") from e
        tag = _tag_file(target)
        remote_tag = str(meta.get("e_tag") or meta["last_modified"])
        if target.exists() and tag.exists() and tag.read_text() == remote_tag:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        leftovers.sweep(target)
        tmp = leftovers.temporary_sibling(target)
        _download(store, key, tmp)
        os.replace(tmp, target)
        tag.write_text(remote_tag)
        return target

    def has_file(self, key: str) -> bool:
        if not self.remote:
            return self.local(key).is_file()
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            obstore.head(self._store(), key)
        except (FileNotFoundError, NotFoundError):
            return False
        return True


def _tag_file(target: Path) -> Path:
    """Beside a fetched file: the ETag of the object it was downloaded from."""
    return target.with_name(f".{target.name}.etag")


def _download(store, path: str, target: Path) -> None:
    import obstore

    with open(target, "wb") as out:
        out.writelines(obstore.get(store, path).stream())


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace directory `target` by `tmp` with renames, so a crash leaves one of them whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = leftovers.temporary_sibling(target, "old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def raster_key(region: str) -> str:
    """A region's raster shard directory."""
    return f"rasters/{region}"


def checkpoint_key(training_key: str) -> str:
    """A training run's checkpoint file (the key hashes configs and rasters, see mae_model)."""
    return f"models/mae/{training_key}/checkpoint.pt"


def report_key(scope: str) -> str:
    """An evaluation report's directory (report.md and its PNGs)."""
    return f"reports/evaluation/{scope}"


def staging_key(table: str, region: str, run_id: str | None = None) -> str:
    """Where a run's steps hand a region's intermediate files to the step that writes `table` (all
    runs' when `run_id` is None)."""
    key = f"staging/{table}/{region}"
    return f"{key}/{run_id}" if run_id else key
