import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SKETCHLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    import torch

    # One intra-op thread: the tests use small tensors, and OpenMP threads spinning against other
    # processes on a 2-core machine made tiny loops up to 30x slower.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA device; none is present")
    no_data = pytest.mark.skip(reason=f"real data folder {SHARED_DATA} is absent (fresh clone)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "realdata" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(no_data)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
