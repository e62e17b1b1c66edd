"""What every Delta commit of an asset says about where it came from (see s2vec_core.warehouse.COMMIT_KEYS)."""

import dagster as dg


def commit_info(context: dg.AssetExecutionContext, model_version: str = "") -> dict[str, str]:
    """Run id, asset, region (the partition; '' for all-region assets) and model version of this write."""
    return {
        "run_id": context.run_id,
        "asset": context.asset_key.to_user_string(),
        "region": context.partition_key if context.has_partition_key else "",
        "model_version": model_version,
    }
