"""Suite-wide settings and shared fixtures."""

import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # The test models are tiny: a second intra-op thread gains nothing and, on a shared 2-core machine,
    # can cost 10x. Bit-exact resume comparisons across processes also need the same thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dagster_instance(tmp_path_factory):
    """A real Dagster instance with the project's dagster.yaml in a temporary DAGSTER_HOME."""
    import dagster as dg

    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance
