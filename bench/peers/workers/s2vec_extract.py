"""s2vec: `s2vec_core.osm.extract_cells(pbf, level)` (per-pixel-cell channel values, split line lengths)."""

import time

from _result import job, report

j = job()
t0 = time.perf_counter()
from s2vec_core.osm import extract_cells  # noqa: E402  (import time counts as work: users pay it too)

stats: dict = {}
df = extract_cells(j["pbf"], j["level"], stats=stats)
report({"work_s": time.perf_counter() - t0, "cells": df.height, "channels": df.width - 1, "stats": stats})
