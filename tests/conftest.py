"""Suite-wide settings and shared fixtures."""

import shutil
import subprocess
import sys
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


def materialize_selection(
    defs, resources, instance, selection, partition=None, run_config=None, *, checks=True
):
    """`dg.materialize` of `selection` that returns a failed run instead of raising, so a test can assert
    on its events; `checks=False` leaves the asset checks out."""
    import dagster as dg

    return dg.materialize(
        [*defs.assets, *defs.asset_checks] if checks else defs.assets,
        selection=selection,
        partition_key=partition,
        resources=resources,
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
    )


def run_bench(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python bench/<script> args...` from the repository root, as a user runs it; output captured."""
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
