"""Peer: quackosm 0.19 PBF -> GeoParquet with the taxonomy's keys as the tags filter.

Runs offline: the harness points HOME at a directory whose .duckdb/extensions holds the spatial
extension from the duckdb-ext-spatial wheel (PEERS.md).
"""

import time

from _result import job, report

j = job()
t0 = time.perf_counter()
import duckdb
import quackosm

out = quackosm.convert_pbf_to_parquet(
    j["pbf"],
    tags_filter={k: True for k in j["filter_keys"]},
    working_directory=j["workdir"],
    verbosity_mode="silent",
    ignore_cache=True,
)
work = time.perf_counter() - t0
rows = duckdb.sql(f"select count(*) from read_parquet('{out}')").fetchone()[0]
report({"work_s": work, "features": int(rows)})
