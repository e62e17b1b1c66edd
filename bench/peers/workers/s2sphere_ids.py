"""Peer: s2sphere lat/lng -> cell id, one Python call per point, on the harness's seeded points."""

import time

import numpy as np
import s2sphere
from _result import job, report

j = job()
pts = np.load(j["points"])[: j["n"]]
t0 = time.perf_counter()
ids = [
    s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(a, b)).parent(j["level"]).id()
    for a, b in pts.tolist()
]
work = time.perf_counter() - t0
np.save(j["out"], np.array(ids, dtype=np.uint64))
report({"work_s": work, "points": len(ids)})
