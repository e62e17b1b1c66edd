"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # The test models are tiny: a second intra-op thread gains nothing and, on a shared 2-core machine,
    # can cost 10x. Bit-exact resume comparisons across processes also need the same thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
