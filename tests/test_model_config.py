"""The model's knobs are defined once (s2vec_core.model_config) and reach the Dagster config generated
from them; the code location loads without torch, lightgbm or sklearn (each run worker imports it)."""

import dataclasses
import json
import subprocess
import sys

import dagster as dg
import numpy as np
import pytest

from s2vec_assets.defs.model.assets import ModelConfig
from s2vec_core import raster
from s2vec_core.model_config import DATA_FIELDS, MAEConfig, TrainConfig, default_model_config, knobs
from s2vec_core.taxonomy import CHANNEL_NAMES


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A real shard set: two 8x8 images of every taxonomy channel, with a 10x10 context window."""
    rng = np.random.default_rng(0)
    rasters = raster.Rasters(
        image_ids=np.array([1, 3], dtype=np.uint64),
        tensors=rng.poisson(0.5, (2, len(CHANNEL_NAMES), 8, 8)).astype(np.float32),
        channels=tuple(CHANNEL_NAMES),
        image_level=10,
        pixel_level=13,
        context=rng.poisson(0.5, (2, len(CHANNEL_NAMES), 10, 10)).astype(np.float32),
        context_ring=2,
    )
    directory = tmp_path_factory.mktemp("shards")
    raster.write_shards(rasters, directory, shard_size=4)
    return raster.open_shards(directory)


def test_every_user_field_of_both_dataclasses_is_a_dagster_field_with_its_default():
    schema = ModelConfig.to_fields_dict()
    expected = {
        f.name: f.default
        for owner in (MAEConfig, TrainConfig)
        for f in dataclasses.fields(owner)
        if f.name not in DATA_FIELDS
    }
    assert set(expected) <= set(schema)
    assert set(schema) - set(expected) == {"nproc_per_node"}
    defaults = ModelConfig()
    assert {name: getattr(defaults, name) for name in expected} == expected
    # The fields a hand-written copy had missed are there, documented where the dataclass says why.
    assert {"mlp_ratio", "cache_mb", "layout_weight", "context_patch"} <= set(schema)
    docs = {k.name: k.doc for k in knobs()}
    assert schema["summary_weight"].description == docs["summary_weight"] != ""


def test_configs_are_the_shards_shape_plus_the_knobs(shards):
    model, train = ModelConfig(width=16, heads=2, mlp_ratio=2.0, cache_mb=1, epochs=3).configs(shards)
    base = default_model_config(shards)
    assert (model.in_channels, model.image_size, model.context_size) == (len(CHANNEL_NAMES), 8, 10)
    assert model.layout_groups
    assert model.layout_groups == base.layout_groups
    assert (model.width, model.heads, model.mlp_ratio) == (16, 2, 2.0)
    assert dataclasses.replace(model, width=base.width, heads=base.heads, mlp_ratio=base.mlp_ratio) == base
    assert train == TrainConfig(cache_mb=1, epochs=3)


def test_a_config_that_does_not_fit_is_refused_with_the_reason(shards):
    with pytest.raises(dg.Failure, match="patch_size 3"):
        ModelConfig(patch_size=3).configs(shards)
    with pytest.raises(ValueError, match="invalid TrainConfig"):
        ModelConfig(holdout_fraction=0.7)
    with pytest.raises(ValueError, match="multiple of nproc_per_node"):
        ModelConfig(batch_size=9, nproc_per_node=2)


def test_the_code_location_loads_without_torch_lightgbm_or_sklearn():
    code = (
        "import sys, json\n"
        "from s2vec_assets.definitions import defs\n"
        "d = defs()\n"
        "assert len(list(d.assets)) >= 7\n"
        "print(json.dumps(sorted(m for m in ('torch', 'lightgbm', 'sklearn', 'matplotlib', "
        "'great_expectations') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("owner", [MAEConfig, TrainConfig])
def test_a_misspelt_key_in_a_stored_config_is_refused(owner):
    good = (owner(in_channels=3) if owner is MAEConfig else owner()).to_dict()
    assert owner.from_dict(good).to_dict() == good
    with pytest.raises(ValueError, match=f"unknown {owner.__name__} keys \\['epohcs'\\]"):
        owner.from_dict({**good, "epohcs": 3})
