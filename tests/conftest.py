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


# Tiny stand-ins for every zoo entry the demo shows: (name, model, categories, hparams).
BUILTIN = "star,fish,house,sun,cup"
ENTRIES = [
    ("sketch-rnn-spg5", "sketch-rnn", BUILTIN, "enc_rnn_size=8,dec_rnn_size=16,z_size=4,batch_size=8"),
    ("sketch-rnn-sheep", "sketch-rnn", "fish", "conditional=0,dec_rnn_size=16,batch_size=8"),
    ("rpcl-pix2seq-spg5", "rpcl-pix2seq", BUILTIN,
     "dec_model=lstm,dec_rnn_size=16,z_size=4,batch_size=8,cnn_channels=[4,4,4,4]"),
    ("rpcl-pix2seqh-spg5", "rpcl-pix2seqh", BUILTIN,
     "dec_model=lstm,dec_rnn_size=16,z_size=4,batch_size=8,cnn_channels=[4,4,4,4]"),
    ("sp-gra2seq-spg5", "sp-gra2seq", BUILTIN,
     "graph_picture_size=32,cnn_channels=[4,4,4,4],dec_rnn_size=16,z_size=4,num_mixture=3,batch_size=4"),
    ("sketchgloc-spg5", "sketchgloc", BUILTIN,
     "enc_rnn_size=8,dec_model=lstm,dec_rnn_size=16,z_size=4,batch_size=4"),
    ("sketchknitter-spg5", "sketchknitter", BUILTIN,
     "num_points=64,model_channels=64,lift_dim=16,channel_mult=[1,2],num_res_blocks=1,"
     "diffusion_steps=50,batch_size=8,class_cond=1"),
    ("judge-spg5", "sketch-a-net", BUILTIN, "width=0.125,batch_size=16"),
]


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Every zoo entry the demo and the README use, trained 2 steps on the built-in doodles
    (a stand-in zoo folder: patch `sketchlab.zoo.ZOO_DIR` to it)."""
    from sketchlab import zoo
    from sketchlab.cli import main

    root = tmp_path_factory.mktemp("zoo")
    for name, model, cats, hp in ENTRIES:
        run = root / "runs" / name
        assert main(["train", model, "--categories", cats, "--limit-per-category", "16",
                     "--out", str(run), "--max-steps", "2", "--hparams", hp + ",eval_every=0",
                     "--no-progress", "--device", "cpu"]) == 0
        zoo.export_run(run, name, {"metrics": {"valid_loss": 1.0}}, zoo_dir=root / "zoo")
    return root / "zoo"
