"""s2vec: vectorised `latlng_to_cell_id` on the harness's seeded points (best of `repeats`)."""

import time

import numpy as np
from _result import job, report

from s2vec_core.s2 import latlng_to_cell_id

j = job()
pts = np.load(j["points"])[: j["n"]]
best = float("inf")
for _ in range(j.get("repeats", 3)):
    t0 = time.perf_counter()
    ids = latlng_to_cell_id(pts[:, 0], pts[:, 1], j["level"])
    best = min(best, time.perf_counter() - t0)
np.save(j["out"], ids)
report({"work_s": best, "points": len(ids)})
