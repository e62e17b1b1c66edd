"""The product's environment variables, read here and nowhere else.

Each is a default: a Dagster resource, the CLI or a library caller passing an explicit value wins.
Keeping the reads in one module makes the list below the whole story (the README's "Environment"
section is checked against it), and lets tests point every tool at a temporary world at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Variable:
    name: str
    doc: str


VARIABLES = (
    Variable(
        "S2VEC_WAREHOUSE", "warehouse root: a directory or an s3:// / az:// / gs:// URI (default ./warehouse)"
    ),
    Variable("S2VEC_CATALOG", "the regions catalog (default ./regions.toml)"),
    Variable("S2VEC_CACHE", "downloaded extracts (default ~/.cache/s2vec/osm)"),
    Variable(
        "S2VEC_ARTIFACT_CACHE",
        "local copies of rasters and checkpoints of an object-store warehouse (default ~/.cache/s2vec/artifacts)",
    ),
    Variable("S2VEC_REPORTS", "where evaluation reports go (default: beside the warehouse)"),
    Variable("S2VEC_DEVICE", "auto (CUDA when present), cpu, cuda or cuda:N"),
    Variable("S2VEC_EXECUTOR", "in_process (default: one process per run) or multiprocess (one per step)"),
    Variable("S2VEC_TRAINING_TAGS", "a YAML file of run tags for the model job (the k8s GPU pod spec)"),
)


def _get(name: str) -> str | None:
    assert name in _NAMES, f"{name} is not one of settings.VARIABLES"
    value = os.environ.get(name, "").strip()
    return value or None


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def warehouse_root() -> str:
    return _get("S2VEC_WAREHOUSE") or str(REPO_ROOT / "warehouse")


def catalog_path() -> Path:
    return Path(_get("S2VEC_CATALOG") or REPO_ROOT / "regions.toml")


def osm_cache_dir() -> Path:
    return Path(_get("S2VEC_CACHE") or _cache_home() / "s2vec" / "osm")


def artifact_cache_dir() -> Path:
    return Path(_get("S2VEC_ARTIFACT_CACHE") or _cache_home() / "s2vec" / "artifacts")


def reports_dir() -> Path | None:
    value = _get("S2VEC_REPORTS")
    return Path(value) if value else None


def device() -> str:
    return _get("S2VEC_DEVICE") or "auto"


def executor() -> str | None:
    return _get("S2VEC_EXECUTOR")


def training_tags_file() -> Path | None:
    value = _get("S2VEC_TRAINING_TAGS")
    return Path(value) if value else None


_NAMES = frozenset(v.name for v in VARIABLES)
