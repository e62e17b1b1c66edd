"""S2 lat/lng -> cell id throughput: s2vec_core.s2 (vectorised numpy) vs s2sphere (pure Python, the peer).

s2vec converts all N points (default 1M, uniform on the sphere) in one call; best of --runs.
s2sphere takes ~5-10 us a point, so it converts the first --peer-points (default 50k) of the same points
and its rate is scaled to N (its cost is linear: one independent conversion per point). The ids of
that subset are checked equal before any figure is printed. One process, one core (numpy does not
thread these ufuncs).

    .venv/bin/python bench/bench_s2.py --points 1000000 --peer-points 50000 --runs 5
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import s2sphere

from s2vec_core import s2


def random_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)


def time_s2vec(lat: np.ndarray, lng: np.ndarray, level: int, runs: int) -> tuple[float, np.ndarray]:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        ids = s2.latlng_to_cell_id(lat, lng, level)
        best = min(best, time.perf_counter() - t0)
    return best, ids


def time_s2sphere(lat: np.ndarray, lng: np.ndarray, level: int) -> tuple[float, np.ndarray]:
    pairs = list(zip(lat.tolist(), lng.tolist()))
    cell_id, latlng = s2sphere.CellId, s2sphere.LatLng
    t0 = time.perf_counter()
    if level == 30:
        ids = [cell_id.from_lat_lng(latlng.from_degrees(a, b)).id() for a, b in pairs]
    else:
        ids = [cell_id.from_lat_lng(latlng.from_degrees(a, b)).parent(level).id() for a, b in pairs]
    return time.perf_counter() - t0, np.array(ids, dtype=np.uint64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--peer-points", type=int, default=50_000)
    parser.add_argument("--levels", type=int, nargs="+", default=[30, 17])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 < args.peer_points <= args.points:
        parser.error("need 0 < --peer-points <= --points")

    lat, lng = random_points(args.points, args.seed)
    print(
        f"# S2 lat/lng -> cell id, {args.points:,} random points; s2sphere timed on the first "
        f"{args.peer_points:,} and scaled"
    )
    print(
        f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"numpy {np.__version__}, s2sphere {getattr(s2sphere, '__version__', '?')}"
    )
    print("| level | s2vec s | s2vec points/s | s2sphere s (scaled to N) | s2sphere points/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for level in args.levels:
        ours_s, ours = time_s2vec(lat, lng, level, args.runs)
        peer_s, peer = time_s2sphere(lat[: args.peer_points], lng[: args.peer_points], level)
        mismatches = int((ours[: args.peer_points] != peer).sum())
        if mismatches:
            raise SystemExit(f"level {level}: {mismatches} ids differ from s2sphere; no figures")
        peer_rate = args.peer_points / peer_s
        ours_rate = args.points / ours_s
        print(
            f"| {level} | {ours_s:.3f} | {ours_rate:,.0f} | {args.points / peer_rate:.1f} | "
            f"{peer_rate:,.0f} | {ours_rate / peer_rate:.0f}x |"
        )


if __name__ == "__main__":
    main()
