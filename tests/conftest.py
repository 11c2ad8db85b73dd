import os

import pytest
import torch

# Accuracy against a float64 reference, per dtype: (absolute tolerance, scaled by max|reference| or not).
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1e-2,
}


@pytest.fixture(autouse=True, scope="session")
def _text_cache_dir(tmp_path_factory):
    """Text embeddings are cached in a folder of this test session, never in the user's cache folder."""
    os.environ["CORA_CACHE_DIR"] = str(tmp_path_factory.mktemp("cora_cache"))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state: random weights and inputs are reproducible."""
    torch.manual_seed(0)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: builds or exports something; seconds to a minute")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def cpu_and_cuda():
    return ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))
