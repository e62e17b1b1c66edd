"""s2vec: `s2vec_core.osm.extract_cells_long(pbf, level)` (per-pixel-cell channel values, split line lengths;
the sparse (cell, channel, value) form the product's cell_features asset consumes)."""

import time

from _result import job, report

j = job()
t0 = time.perf_counter()
from s2vec_core.osm import extract_cells_long

stats: dict = {}
df = extract_cells_long(j["pbf"], j["level"], stats=stats)
report(
    {"work_s": time.perf_counter() - t0, "cells": df["cell_id"].n_unique(), "rows": df.height, "stats": stats}
)
