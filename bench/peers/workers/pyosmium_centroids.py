"""Peer: a plain pyosmium SimpleHandler with node locations, collecting node points and way centroids.

The same C++ KeyFilter (the taxonomy's keys) as s2vec, so it touches the same tagged objects. No cells,
no line splitting, no areas: the floor of "visit every tagged object in Python". Its count of tagged
objects is the unit every tool's throughput is expressed in.
"""

import time

import osmium
from _result import job, report


class Centroids(osmium.SimpleHandler):
    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[float, float]] = []
        self.relations = 0

    def node(self, n) -> None:
        self.points.append((n.location.lon, n.location.lat))

    def way(self, w) -> None:
        xs = ys = 0.0
        k = 0
        for nd in w.nodes:
            loc = nd.location
            if loc.valid():  # clipped extracts reference nodes they do not contain
                xs += loc.lon
                ys += loc.lat
                k += 1
        if k:
            self.points.append((xs / k, ys / k))

    def relation(self, r) -> None:
        self.relations += 1


def count_tagged_objects(pbf: str, filter_keys: list[str]) -> int:
    """Shared with bench/bench_extract.py's peer, so both benches measure the same floor."""
    h = Centroids()
    h.apply_file(pbf, locations=True, filters=[osmium.filter.KeyFilter(*filter_keys)])
    return len(h.points) + h.relations


if __name__ == "__main__":
    j = job()
    t0 = time.perf_counter()
    tagged = count_tagged_objects(j["pbf"], j["filter_keys"])
    report({"work_s": time.perf_counter() - t0, "tagged_objects": tagged})
