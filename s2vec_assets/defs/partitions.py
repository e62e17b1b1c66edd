"""The region partitions, built from the regions catalog (the one source of truth for regions).

Every region-partitioned asset and check uses `region_partitions`. Adding a region means adding it to
`regions.toml` (or the catalog named by `S2VEC_CATALOG`); the code location picks it up on reload.
"""

import dagster as dg

from s2vec_core.catalog import load_catalog

region_partitions = dg.StaticPartitionsDefinition(list(load_catalog()))

# One run per region: a failing region does not sink the others in a backfill.
one_run_per_region = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
