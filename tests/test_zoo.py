"""The pretrained zoo: names resolve wherever a run is accepted, damaged entries are refused,
the zoo is read-only, a recipe trains; every installed entry loads, verifies and samples."""

import json

import numpy as np
import pytest
import torch

from sketchlab import runs, zoo
from sketchlab.cli import main
from sketchlab.data.sketches import Sketches
from sketchlab.errors import CheckpointError, ConfigError

TINY = "enc_rnn_size=8,dec_rnn_size=16,z_size=4,max_seq_len=40,batch_size=8,eval_every=0"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "sketch-rnn", "--categories", "star,fish", "--limit-per-category", "24",
                 "--out", str(out), "--max-steps", "3", "--hparams", TINY, "--no-progress",
                 "--device", "cpu"]) == 0
    return out


@pytest.fixture
def tiny_zoo(tiny_run, tmp_path, monkeypatch):
    """A zoo folder holding one entry exported from a 3-step run, in place of the package's."""
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    card = {"description": "a test entry", "data": {"name": "doodles"},
            "recipe": {"model": "sketch-rnn", "categories": ["star", "fish"], "hparams": TINY,
                       "max_steps": 2, "data_dir": "builtin"},
            "metrics": {"valid_loss": 1.0}}
    zoo.export_run(tiny_run, "tiny-doodles", card, zoo_dir=zoo.ZOO_DIR)
    return zoo.ZOO_DIR


def test_export_casts_to_float16_and_records_the_hash(tiny_zoo):
    card = zoo.read_card("tiny-doodles")
    assert card["model"] == "sketch-rnn" and card["categories"] == ["star", "fish"]
    assert card["weights"]["dtype"] == "float16"
    weights = tiny_zoo / "tiny-doodles" / "model.safetensors"
    assert card["weights"]["sha256"] == zoo.sha256_file(weights)
    # trained on the built-in doodles, which every installation has
    assert json.loads((tiny_zoo / "tiny-doodles" / "config.json").read_text())["data_dir"] == "builtin"


def test_the_markdown_table_has_a_row_per_entry_with_its_metrics(tiny_zoo):
    lines = zoo.markdown_table().splitlines()
    assert lines[0].startswith("| entry | model | steps |") and len(lines) == 3
    card = zoo.read_card("tiny-doodles")
    assert lines[2].startswith("| `tiny-doodles` | sketch-rnn |")
    assert lines[2].endswith(f"| {zoo.summary(card)} |") and "valid_loss 1.000" in lines[2]


def test_names_resolve_and_a_local_path_wins(tiny_zoo, tmp_path, monkeypatch):
    assert runs.resolve("tiny-doodles") == tiny_zoo / "tiny-doodles"
    assert runs.resolve("zoo:tiny-doodles") == tiny_zoo / "tiny-doodles"
    model = runs.load_model("tiny-doodles")
    assert model.name == "sketch-rnn" and list(model.categories) == ["star", "fish"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-doodles").mkdir()
    assert runs.resolve("tiny-doodles").resolve() == tmp_path / "tiny-doodles"   # local wins
    assert runs.resolve("zoo:tiny-doodles") == tiny_zoo / "tiny-doodles"    # unless forced


def test_unknown_names_list_the_entries(tiny_zoo, capsys):
    with pytest.raises(ConfigError, match="did you mean tiny-doodles"):
        runs.resolve("tiny-doodle")
    assert main(["sample", "no-such-model", "--out", "x.npz"]) == 2
    err = capsys.readouterr().err
    assert "pretrained models: tiny-doodles" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="no such run directory"):
        runs.resolve("./runs/missing")


def test_damaged_entries_are_refused_by_name(tiny_zoo):
    weights = tiny_zoo / "tiny-doodles" / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))              # one flipped bit
    with pytest.raises(CheckpointError, match="tiny-doodles.*damaged.*sha256"):
        runs.load_model("tiny-doodles")
    weights.write_bytes(blob[: len(blob) // 2])                          # truncated
    with pytest.raises(CheckpointError, match="tiny-doodles.*damaged"):
        runs.load_model("zoo:tiny-doodles")
    (tiny_zoo / "tiny-doodles" / "card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="card.*damaged"):
        runs.load_model("tiny-doodles")


def test_the_zoo_is_read_only(tiny_zoo, capsys):
    for out in (str(tiny_zoo / "tiny-doodles"), "zoo:tiny-doodles"):
        assert main(["train", "sketch-rnn", "--out", out, "--max-steps", "1", "--hparams", TINY,
                     "--no-progress"]) == 2
        assert "read-only" in capsys.readouterr().err


def test_zoo_list_info_and_a_recipe_trains(tiny_zoo, tmp_path, capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-doodles" in out and "sketch-rnn" in out and "valid loss 1.000" in out
    assert main(["zoo", "info", "tiny-doodles"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"]["max_steps"] == 2
    assert main(["zoo", "train", "tiny-doodles", "--out", str(tmp_path / "again"), "--quiet"]) == 0
    state_step = runs.load_model(tmp_path / "again", which="latest")
    assert state_step.name == "sketch-rnn"
    assert (tmp_path / "again" / "log.csv").read_text().count("\n") >= 2


@pytest.mark.parametrize("name", zoo.names())
def test_every_installed_entry_verifies_loads_and_draws(name):
    """Each shipped entry: its hash verifies, it loads by name, and it does its job at tiny size
    (a judge scores, a sampler samples, a conditional model reconstructs)."""
    import sketchlab
    from sketchlab.data.synthetic import make_doodles

    zoo.verify(name)
    card = zoo.read_card(name)
    sketch = make_doodles(1, categories=["star"], seed=0)
    if card["model"] == "sketch-a-net":
        judge = runs.load_judge(name, device="cpu")
        features, logits = judge.extract(sketch)
        assert logits.shape == (1, len(card["recipe"]["categories"]))
        assert np.isfinite(features).all()
        return
    model = sketchlab.load(name, device="cpu")
    assert model.name == card["model"]
    if "can_sample" in model.capabilities:
        steps = {"sampler": "ddim", "steps": 5} if card["model"] == "sketchknitter" else {}
        drawn = model.sample(n=2, seed=0, **steps)
    else:
        drawn = model.reconstruct(sketch, seed=0)
    assert len(drawn) == (2 if "can_sample" in model.capabilities else 1)
    assert all(len(s) > 0 and np.isfinite(s).all() for s in drawn)


def test_a_pretrained_model_on_a_data_folder_asks_for_it(tiny_run, tmp_path, monkeypatch, capsys):
    from sketchlab.data.synthetic import write_npz_dataset

    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    data = tmp_path / "data"
    write_npz_dataset(data, 30, categories=["star", "fish"])
    run = tmp_path / "on-files"
    assert main(["train", "sketch-rnn", "--data-dir", str(data), "--categories", "star,fish",
                 "--out", str(run), "--max-steps", "2", "--hparams", TINY, "--no-progress"]) == 0
    zoo.export_run(run, "on-files", {}, zoo_dir=zoo.ZOO_DIR)
    out = tmp_path / "s.npz"
    assert main(["sample", "on-files", "--condition-on", "test", "--out", str(out)]) == 2
    assert "on-files is a pretrained model: give its data folder with --data-dir" in capsys.readouterr().err
    assert main(["sample", "on-files", "--condition-on", "test", "--data-dir", str(data),
                 "--out", str(out)]) == 0
    assert len(Sketches.load(out)) > 0


def test_a_knitter_export_ships_the_ema_network_only(tmp_path, monkeypatch):
    """SketchKnitter samples with its EMA network: the export leaves the training network out
    (half the file) and loading restores it as the EMA's copy."""
    from safetensors import safe_open

    import sketchlab

    run = tmp_path / "knitter"
    assert main(["train", "sketchknitter", "--categories", "star,fish", "--limit-per-category",
                 "16", "--out", str(run), "--max-steps", "2", "--no-progress", "--device", "cpu",
                 "--hparams", "num_points=32,model_channels=32,lift_dim=16,channel_mult=[1,2],"
                              "num_res_blocks=1,batch_size=4,diffusion_steps=30,eval_every=0,"
                              "class_cond=1"]) == 0
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    out = runs.export_to_zoo(run, "tiny-knitter", {}, zoo_dir=zoo.ZOO_DIR)
    with safe_open(str(out / zoo.WEIGHTS), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("unet.") for k in keys)
    assert any(k.startswith("ema.module.") for k in keys)
    model = sketchlab.load("tiny-knitter", device="cpu")
    unet, ema = model.module.unet.state_dict(), model.module.ema.module.state_dict()
    assert unet.keys() == ema.keys() and all(torch.equal(unet[k], ema[k]) for k in unet)
    a = model.sample(2, seed=0, sampler="ddim", steps=4)
    b = model.sample(2, seed=0, sampler="ddim", steps=4, use_ema=False)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
