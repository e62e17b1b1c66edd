"""Peer: pyrosm 0.25 reading POIs, buildings and the full network (the harness gives it an empty TMPDIR)."""

import time

from _result import job, report

j = job()
t0 = time.perf_counter()
from pyrosm import OSM

osm = OSM(j["pbf"])
rows = {}
for name, get in (
    ("pois", osm.get_pois),
    ("buildings", osm.get_buildings),
    ("network", lambda: osm.get_network("all")),
):
    t = time.perf_counter()
    gdf = get()
    rows[name] = 0 if gdf is None else len(gdf)
    rows[name + "_s"] = round(time.perf_counter() - t, 2)
report({"work_s": time.perf_counter() - t0, **rows})
