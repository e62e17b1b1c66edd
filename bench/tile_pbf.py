"""Tile a real OSM extract N times over non-overlapping lon/lat offsets, with fresh ids, into one PBF.

Benchmarks need large realistic files; the bundled extracts are small. Each copy is shifted by a
whole multiple of the source's bbox (plus a margin) on a square-ish grid, so copies never overlap,
and each copy's node/way/relation ids are offset by `copy * P`, where `P` is the next power of ten
above the largest id of that type in the source, referenced ids included. That keeps ids compact:
osmium-tool sizes some indexes by the largest id, and inflated ids made it run out of memory.

    python bench/tile_pbf.py data/osm/liechtenstein-2013-08-03.osm.pbf bench/data/liechtenstein-x64.osm.pbf --copies 64
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import osmium

# Gap between neighbouring copies, as a share of the source bbox.
MARGIN = 0.05


@dataclass
class Source:
    """The whole source extract held in memory as plain tuples (it is small by assumption)."""

    nodes: list[tuple[int, float, float, list[tuple[str, str]]]] = field(default_factory=list)
    ways: list[tuple[int, list[int], list[tuple[str, str]]]] = field(default_factory=list)
    relations: list[tuple[int, list[tuple[str, int, str]], list[tuple[str, str]]]] = field(
        default_factory=list
    )
    max_id: dict[str, int] = field(default_factory=lambda: {"n": 0, "w": 0, "r": 0})
    bbox: list[float] = field(default_factory=lambda: [180.0, 90.0, -180.0, -90.0])


def read_source(path: Path) -> Source:
    """Read every object of `path`, tracking the largest id per type (own and referenced) and the bbox."""
    src = Source()
    mx = src.max_id
    for o in osmium.FileProcessor(str(path)):
        tags = [(t.k, t.v) for t in o.tags]
        if o.is_node():
            if not o.location.valid():
                continue
            lon, lat = o.location.lon, o.location.lat
            src.nodes.append((o.id, lon, lat, tags))
            b = src.bbox
            b[0], b[1], b[2], b[3] = min(b[0], lon), min(b[1], lat), max(b[2], lon), max(b[3], lat)
            mx["n"] = max(mx["n"], o.id)
        elif o.is_way():
            refs = [n.ref for n in o.nodes]
            src.ways.append((o.id, refs, tags))
            mx["w"] = max(mx["w"], o.id)
            if refs:
                mx["n"] = max(mx["n"], max(refs))
        elif o.is_relation():
            members = [(m.type, m.ref, m.role) for m in o.members]
            src.relations.append((o.id, members, tags))
            mx["r"] = max(mx["r"], o.id)
            for t, ref, _ in members:
                mx[t] = max(mx[t], ref)
    if not src.nodes:
        raise ValueError(f"{path}: no nodes with a location, nothing to tile")
    return src


def id_step(max_id: int) -> int:
    """The next power of ten strictly above `max_id`."""
    return 10 ** (len(str(max(max_id, 1))))


def copy_offsets(bbox: list[float], copies: int) -> list[tuple[float, float]]:
    """(dlon, dlat) per copy on a grid of whole bbox steps; refuses offsets that leave valid latitudes."""
    cols = math.ceil(math.sqrt(copies))
    rows = math.ceil(copies / cols)
    step_lon = (bbox[2] - bbox[0]) * (1 + MARGIN) + 1e-4
    step_lat = (bbox[3] - bbox[1]) * (1 + MARGIN) + 1e-4
    if bbox[3] + (rows - 1) * step_lat > 85.0 or bbox[0] + (cols - 1) * step_lon > 180.0:
        raise ValueError(
            f"{copies} copies of a {step_lon:.3f} x {step_lat:.3f} degree extract do not fit the globe"
        )
    return [((c % cols) * step_lon, (c // cols) * step_lat) for c in range(copies)]


def tile(src: Source, out: Path, copies: int) -> dict[str, int]:
    """Write `copies` shifted copies of `src` to `out` (nodes, then ways, then relations: sorted by id)."""
    offsets = copy_offsets(src.bbox, copies)
    step = {t: id_step(m) for t, m in src.max_id.items()}
    hdr = osmium.io.Header()
    hdr.set("generator", "s2vec bench/tile_pbf.py")
    _, last_lat = offsets[-1]
    max_dlon = max(o[0] for o in offsets)
    hdr.add_box(
        osmium.osm.Box(
            osmium.osm.Location(src.bbox[0], src.bbox[1]),
            osmium.osm.Location(src.bbox[2] + max_dlon, src.bbox[3] + last_lat),
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    Node, Way, Relation = osmium.osm.mutable.Node, osmium.osm.mutable.Way, osmium.osm.mutable.Relation
    with osmium.SimpleWriter(str(out), header=hdr) as w:
        for c, (dlon, dlat) in enumerate(offsets):
            dn = c * step["n"]
            for nid, lon, lat, tags in src.nodes:
                w.add_node(Node(id=nid + dn, location=(lon + dlon, lat + dlat), tags=tags, version=1))
        for c in range(copies):
            dn, dw = c * step["n"], c * step["w"]
            for wid, refs, tags in src.ways:
                w.add_way(Way(id=wid + dw, nodes=[r + dn for r in refs], tags=tags, version=1))
        for c in range(copies):
            d = {t: c * s for t, s in step.items()}
            for rid, members, tags in src.relations:
                mem = [(t, ref + d[t], role) for t, ref, role in members]
                w.add_relation(Relation(id=rid + d["r"], members=mem, tags=tags, version=1))
    return {
        "nodes": copies * len(src.nodes),
        "ways": copies * len(src.ways),
        "relations": copies * len(src.relations),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="input .osm.pbf")
    ap.add_argument("output", type=Path, help="output .osm.pbf (put it under bench/data/, git-ignored)")
    ap.add_argument("--copies", type=int, default=64)
    args = ap.parse_args(argv)
    if args.copies < 1:
        ap.error("--copies must be >= 1")
    t0 = time.perf_counter()
    src = read_source(args.source)
    counts = tile(src, args.output, args.copies)
    size = args.output.stat().st_size
    print(
        f"{args.output}: {args.copies} copies, {size / 1e6:.1f} MB, "
        + ", ".join(f"{v:,} {k}" for k, v in counts.items())
        + f" in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
