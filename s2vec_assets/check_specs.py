"""The one way this code location declares asset checks: specs built here, every check a
`@dg.multi_asset_check` over them (so one step runs a region's suite and reads its rows once).

Region-partitioned check specs (one result per region) are a Dagster preview feature, used knowingly:
its warning is silenced here, once, not at every definition.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import dagster as dg

from s2vec_assets.defs.partitions import region_partitions


def check_specs(
    asset: dg.AssetsDefinition,
    checks: Mapping[str, str],
    partitioned: bool = True,
    non_blocking: frozenset[str] = frozenset(),
) -> list[dg.AssetCheckSpec]:
    """One spec per `name: description` in `checks`, per region when `partitioned`. Checks block
    downstream steps unless named in `non_blocking` (a warning, not a stop)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name,
                asset=asset,
                description=description,
                blocking=name not in non_blocking,
                partitions_def=region_partitions if partitioned else None,
            )
            for name, description in checks.items()
        ]
