"""cell_features of a region extracted in S2 shards (forced by a tiny `shard_mb`) equal the whole-file
extraction's, through the real asset and Delta table."""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from s2vec_assets.definitions import defs as load_defs
from s2vec_assets.defs.resources import WarehouseResource
from s2vec_core import bbox, features, osm, shards, warehouse
from s2vec_core.catalog import default_catalog_path, get_region, load_catalog

REGION = "liechtenstein"
PBF = Path(__file__).resolve().parents[1] / "data/osm/liechtenstein-2013-08-03.osm.pbf"
SHARD_MB = 0.1


@pytest.mark.system
@pytest.mark.slow
def test_sharded_cell_features_equal_the_whole_extraction(tmp_path, dagster_instance):
    assert shards.plan_shards(PBF, int(SHARD_MB * 2**20)).cells.size > 1
    defs = load_defs()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=["osm_extract", "cell_features"],
        partition_key=REGION,
        resources={**defs.resources, "warehouse": WarehouseResource(root=str(tmp_path))},
        instance=dagster_instance,
        run_config={"ops": {"cell_features": {"config": {"shard_mb": SHARD_MB}}}},
        raise_on_error=False,
    )
    assert result.success
    sharded = warehouse.read_table(warehouse.table_uri(tmp_path, "cell_features")).sort("level", "cell_id")
    levels = sorted(sharded["level"].unique())
    box = get_region(REGION, load_catalog(default_catalog_path())).bbox  # the asset keeps the catalog's bbox
    whole = features.cell_features(bbox.clip(osm.extract_cells_long(PBF, levels[-1]), box), levels, REGION)
    whole = whole.with_columns(pl.col("cell_id").cast(sharded["cell_id"].dtype)).sort("level", "cell_id")
    assert whole.height > 1000 and whole.select("level", "cell_id").equals(sharded.select("level", "cell_id"))
    channels = [c for c in whole.columns if whole[c].dtype == pl.Float64]
    np.testing.assert_allclose(
        sharded.select(channels).to_numpy(), whole.select(channels).to_numpy(), rtol=1e-9
    )
