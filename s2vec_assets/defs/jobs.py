"""The named jobs: what the UI lists under Jobs and what `make run` (s2vec_assets.run) launches.

- `region_pipeline`: every region-partitioned asset (extract, features, rasters, embeddings, the
  per-region report) and their checks; one run per region (pick the partition in the Launchpad).
- `model`: every unpartitioned asset (the model trained on all regions, the cross-region evaluation)
  and their checks.

`S2VEC_TRAINING_TAGS` may name a YAML file of run tags for the `model` job: the Kubernetes deployment
points it at `deploy/k8s/gpu_training_tags.yaml`, so the run pod that trains requests a GPU node.

Both select by partitioning, not by name, so an asset added under `s2vec_assets/defs/` joins the job
that matches its partitions. A run of either job may select a subset of its assets (`make run` runs it
stage by stage, the UI's "Materialize" on a few assets does the same).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.definitions.asset_selection import KeysAssetSelection
from dagster_shared.record import record

from s2vec_assets.defs.partitions import region_partitions
from s2vec_core import settings

REGION_JOB = "region_pipeline"
MODEL_JOB = "model"


@record
class PartitionedAssets(dg.AssetSelection):
    """The materialisable assets with (`partitioned=True`) or without a partitions definition."""

    partitioned: bool

    def resolve_inner(self, asset_graph, allow_missing: bool) -> set[dg.AssetKey]:
        return {
            key
            for key in asset_graph.materializable_asset_keys
            if (asset_graph.get(key).partitions_def is not None) == self.partitioned
        }

    def to_serializable_asset_selection(self, asset_graph) -> dg.AssetSelection:
        return KeysAssetSelection(selected_keys=sorted(self.resolve(asset_graph)))

    def to_selection_str(self) -> str:
        return "partitioned assets" if self.partitioned else "unpartitioned assets"


region_pipeline = dg.define_asset_job(
    REGION_JOB,
    selection=PartitionedAssets(partitioned=True),
    partitions_def=region_partitions,
    description="Every region-partitioned asset and its checks, for one region per run.",
)


def training_tags() -> Mapping[str, object]:
    """The `model` job's run tags from the file `S2VEC_TRAINING_TAGS` names; none when it is unset."""
    path = settings.training_tags_file()
    if not path:
        return {}
    tags = yaml.safe_load(Path(path).read_text())
    if not isinstance(tags, dict):
        raise TypeError(f"S2VEC_TRAINING_TAGS={path} must hold a mapping of run tags")
    return tags


model = dg.define_asset_job(
    MODEL_JOB,
    selection=PartitionedAssets(partitioned=False),
    tags=training_tags(),
    description="The assets spanning all regions (the model, the cross-region evaluation) and their checks.",
)

JOB_NAMES: Sequence[str] = (REGION_JOB, MODEL_JOB)
