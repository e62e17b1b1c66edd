"""`s2vec`: the shell's way into the product. Queries print JSON lines; `run` runs the pipeline.

    s2vec lookup --lat 47.14 --lng 9.52            the embedding of the cell holding a point
    s2vec similar --token 479b2f --k 5             the 5 most similar cells (cosine, exact)
    s2vec aggregate --token 479b2f --token 479b31  area-weighted mean over cells (or --polygon)
    s2vec versions | s2vec history                 the model registry, a table's commits by run
    s2vec remove-region NAME                       delete a region dropped from the catalog
    s2vec run [--regions a,b] [--config FILE]      the whole asset graph through Dagster (`make run`)

Query commands read the warehouse with s2vec_core only (`--warehouse`, default `$S2VEC_WAREHOUSE` or
the repo's `./warehouse`); only `run` loads Dagster. Errors go to stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from s2vec_core import lifecycle, query, registry, warehouse
from s2vec_core.catalog import CatalogError, load_catalog


def _regions(text: str | None) -> list[str] | None:
    return [r.strip() for r in text.split(",") if r.strip()] if text else None


def _where(args: argparse.Namespace) -> dict:
    return {
        "warehouse_root": args.warehouse,
        "model_version": args.model_version,
        "as_of": args.as_of,
        "level": args.level,
    }


def _emit(df: pl.DataFrame, args: argparse.Namespace) -> None:
    if getattr(args, "no_embedding", False) and "embedding" in df.columns:
        df = df.drop("embedding")
    sys.stdout.write(df.write_ndjson())


def _lookup(args) -> None:
    snap = query.snapshot(**_where(args))
    _emit(
        query.lookup(
            args.lat,
            args.lng,
            tokens=args.token,
            cell_ids=args.cell_id,
            regions=_regions(args.regions),
            source=snap,
        ),
        args,
    )


def _similar(args) -> None:
    snap = query.snapshot(**_where(args))
    token, cell_id = (args.token or [None])[0], (args.cell_id or [None])[0]
    if args.lat is not None or args.lng is not None:
        cell = query.lookup(args.lat, args.lng, source=snap)
        if cell.height != 1:
            raise query.QueryError("similar takes one point")
        cell_id = cell["cell_id"][0]
    vector = json.loads(args.vector) if args.vector else None
    _emit(
        query.similar(
            token=token, cell_id=cell_id, vector=vector, k=args.k, regions=_regions(args.regions), source=snap
        ),
        args,
    )


def _aggregate(args) -> None:
    polygon = json.loads(args.polygon) if args.polygon else None
    _emit(
        query.aggregate(
            tokens=args.token,
            cell_ids=args.cell_id,
            polygon=polygon,
            regions=_regions(args.regions),
            **_where(args),
        ),
        args,
    )


def _versions(args) -> None:
    _emit(query.versions(args.warehouse), args)


def _history(args) -> None:
    _emit(query.history(args.table, args.warehouse), args)


def _remove_region(args) -> None:
    catalog = load_catalog(args.catalog) if args.catalog else load_catalog()
    versions = lifecycle.remove_region(args.warehouse or warehouse.default_root(), args.region, catalog)
    for table, version in versions.items():
        print(json.dumps({"table": table, "version": version}))


def _run(args) -> int:
    from s2vec_assets import run

    return run.main(
        [
            *(["--regions", args.regions] if args.regions else []),
            *(["--config", args.config] if args.config else []),
        ]
    )


def _dev(args) -> int:
    """`make dev`: refuse a busy port at once (dagster dev would say "Serving" and run on headless),
    make the instance's schema under the home's lock, then become `dagster dev`."""
    import socket

    from s2vec_assets.instance import open_instance

    with socket.socket() as probe:
        if probe.connect_ex((args.host, args.port)) == 0:
            print(
                f"s2vec dev: {args.host}:{args.port} is already in use (another `make dev`?). Stop it, or "
                f"pick another port: make dev PORT={args.port + 1}",
                file=sys.stderr,
            )
            return 2
    os.environ.setdefault("DAGSTER_HOME", str(Path(__file__).resolve().parent.parent / "dagster_home"))
    with open_instance():
        pass
    dagster = Path(sys.executable).parent / "dagster"
    os.execv(dagster, [str(dagster), "dev", "-h", args.host, "-p", str(args.port)])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="s2vec",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True)

    def reader(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--warehouse", help="warehouse root (default $S2VEC_WAREHOUSE or ./warehouse)")
        return p

    def embeddings(name: str, help_: str) -> argparse.ArgumentParser:
        p = reader(name, help_)
        p.add_argument("--model-version", help="pin a model version (or a unique prefix); default: current")
        p.add_argument("--as-of", help="a cell_embeddings Delta version, an ISO timestamp, or run:<run id>")
        p.add_argument("--level", type=int, help="S2 level of the embeddings (default: the image level)")
        p.add_argument("--regions", help="comma-separated regions to read (default: all)")
        p.add_argument("--no-embedding", action="store_true", help="leave the vectors out of the output")
        p.add_argument("--token", action="append", help="an S2 token (repeatable)")
        p.add_argument(
            "--cell-id", action="append", type=int, help="an S2 cell id, int64 or uint64 (repeatable)"
        )
        return p

    p = embeddings("lookup", "embedding of the cell holding each point / token / cell id")
    p.add_argument("--lat", type=float, action="append")
    p.add_argument("--lng", type=float, action="append")
    p.set_defaults(func=_lookup)
    p = embeddings("similar", "the k most similar cells by cosine, query cell excluded")
    p.add_argument("--lat", type=float)
    p.add_argument("--lng", type=float)
    p.add_argument("--vector", help="a JSON list of floats instead of a cell")
    p.add_argument("--k", type=int, default=5)
    p.set_defaults(func=_similar)
    p = embeddings("aggregate", "area-weighted mean embedding over cells or a polygon")
    p.add_argument("--polygon", help="JSON ring [[lng, lat], ...]")
    p.set_defaults(func=_aggregate)
    reader("versions", "the registry of model versions").set_defaults(func=_versions)
    p = reader("history", "a table's commits: version, time, run id, asset, region, model version")
    p.add_argument("--table", default="cell_embeddings")
    p.set_defaults(func=_history)
    p = reader("remove-region", "delete a region that left the catalog from every table (one commit each)")
    p.add_argument("region")
    p.add_argument("--catalog", help="regions.toml (default $S2VEC_CATALOG or the repo's)")
    p.set_defaults(func=_remove_region)
    p = sub.add_parser("run", help="materialise the asset graph through Dagster (what `make run` does)")
    p.add_argument("--regions")
    p.add_argument("--config")
    p.set_defaults(func=_run)
    p = sub.add_parser("dev", help="the Dagster UI (what `make dev` does); refuses a busy port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=_dev)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (
        query.QueryError,
        registry.VersionError,
        warehouse.WarehouseError,
        lifecycle.LifecycleError,
        CatalogError,
    ) as e:
        print(f"s2vec {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
