"""The documented paper-scale run config stays valid against the real asset graph."""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from s2vec_assets.definitions import defs
from s2vec_core.grid import Grid
from s2vec_core.model_config import MAEConfig, knobs

CONFIG = Path(__file__).resolve().parent.parent / "deploy/paper_scale.yaml"


@pytest.fixture(scope="module")
def job():
    return defs().resolve_implicit_global_asset_job_def()


def test_paper_scale_config_validates_and_is_paper_sized(job):
    run_config = yaml.safe_load(CONFIG.read_text())
    processed = dg.validate_run_config(job, run_config)["ops"]
    raster = processed["raster_tensors"]["config"]
    grid = Grid(
        raster["image_level"],
        raster["pixel_level"],
        tuple(processed["cell_features.cell_features_write"]["config"]["levels"]),
    )
    assert (grid.image_level, grid.pixel_level, grid.image_size) == (8, 12, 16)
    model = processed["mae_model"]["config"]
    # The yaml is the paper preset in run-config form: every model knob equals MAEConfig.paper()'s.
    paper = MAEConfig.paper(in_channels=1)
    shape = [k.name for k in knobs() if k.owner is MAEConfig]
    assert {k: model[k] for k in shape} == {k: getattr(paper, k) for k in shape}
    assert (paper.width, paper.depth, paper.heads, paper.decoder_width) == (256, 6, 8, 128)


def test_a_misspelt_knob_is_refused(job):
    run_config = yaml.safe_load(CONFIG.read_text())
    run_config["ops"]["mae_model"]["config"]["widht"] = 256
    with pytest.raises(dg.DagsterInvalidConfigError, match="widht"):
        dg.validate_run_config(job, run_config)
