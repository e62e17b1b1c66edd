"""The region partitions, built from the regions catalog (the one source of truth for regions).

Every region-partitioned asset and check uses `region_partitions`. Adding a region means adding it to
`regions.toml` (or the catalog named by `S2VEC_CATALOG`); the code location picks it up on reload.
"""

import dagster as dg

from s2vec_core.catalog import load_catalog

region_partitions = dg.StaticPartitionsDefinition(list(load_catalog()))

# Backfill policy of every region-partitioned asset: one run per region, so a failing region does
# not sink the others. That is Dagster's behaviour without a policy (None), and deliberately not
# `BackfillPolicy.multi_run(1)`, which also runs one region per run but tags runs with a partition
# *range*: Dagster 1.13 then records partitioned check results without their partition.
one_run_per_region: dg.BackfillPolicy | None = None
