"""sketch-rnn: encoder plumbing, KL schedule, loss modes, train/resume/sample through the CLI."""

import json

import numpy as np
import pytest
import torch

from sketchlab.cli import main
from sketchlab.config import apply_hparams
from sketchlab.data.sources import load_splits
from sketchlab.data.sketches import Sketches
from sketchlab.errors import CheckpointError, ConfigError
from sketchlab.models.sketch_rnn import Config, SketchRNN, last_valid, reverse_padded
from sketchlab.runs import load_model
from sketchlab.train.trainer import Trainer, prepare_data

TINY = "enc_rnn_size=8,dec_rnn_size=16,z_size=4,max_seq_len=40,batch_size=8,eval_every=0"


def tiny_model(extra=""):
    cfg = apply_hparams(Config(), TINY + ("," + extra if extra else ""))
    data = prepare_data(SketchRNN, cfg, load_splits(None, ["star", "fish"], limit_per_category=24))
    return SketchRNN(data.config), data


def test_reverse_padded_and_last_valid():
    x = torch.arange(1, 6, dtype=torch.float32).view(1, 5, 1).repeat(2, 1, 1)   # 1..5 twice
    lengths = torch.tensor([3, 5])
    r = reverse_padded(x, lengths)
    assert r[0, :, 0].tolist() == [3, 2, 1, 4, 5]       # first 3 reversed, padding kept
    assert r[1, :, 0].tolist() == [5, 4, 3, 2, 1]
    assert last_valid(x, lengths)[:, 0].tolist() == [3, 5]


def test_kl_weight_schedule_hand_values():
    m, _ = tiny_model()
    m.train()
    assert m.kl_weight_at(0) == pytest.approx(0.01)
    assert m.kl_weight_at(10000) == pytest.approx(0.5 - 0.49 * 0.99995 ** 10000)
    assert float(m.kl_weight_at(torch.tensor(10000.0, dtype=torch.float64))) == pytest.approx(
        0.5 - 0.49 * 0.99995 ** 10000, rel=1e-6)
    m.eval()
    assert m.kl_weight_at(123) == 0.01       # magenta's eval model never assigns its kl_weight


def test_loss_terms_train_and_eval():
    torch.manual_seed(0)
    m, data = tiny_model("use_recurrent_dropout=0")
    items = [data.splits["train"][i] for i in range(8)]
    batch = m.make_batch(items, False, np.random.default_rng(0))
    assert batch["strokes"].shape == (8, 41, 5) and batch["lengths"].tolist() == [len(s) for s in items]
    m.train()
    torch.manual_seed(1)
    tr = m.loss(batch, 0)
    m.eval()
    torch.manual_seed(1)
    ev = m.loss(batch, 0)
    for k in ("loss", "recon", "offset", "pen", "kl"):
        assert torch.isfinite(tr[k]) and torch.isfinite(ev[k])
    # magenta's eval model is built with is_training=1: the pen loss covers the padding there too
    assert float(ev["pen"]) == pytest.approx(float(tr["pen"]), rel=1e-5)
    assert float(tr["loss"]) == pytest.approx(float(tr["recon"] + 0.01 * torch.clamp(tr["kl"], min=0.2)),
                                              rel=1e-5)


def test_generate_conditional_unconditional_and_codes():
    m, data = tiny_model()
    refs = data.splits["test"].select(range(5))
    out = m.generate(references=refs, temperature=0.5, seed=3)
    assert len(out) == 5 and out.z.shape == (5, 4) and out.category.tolist() == refs.category.tolist()
    again = m.generate(references=refs, temperature=0.5, seed=3)
    assert np.array_equal(out.points, again.points)            # seeded
    free = m.generate(n=7, temperature=0.5)
    assert len(free) == 7 and all(len(s) <= 40 for s in free)
    dec = m.decode_codes(torch.zeros(2, 4), temperature=0.1)
    assert len(dec) == 2
    with pytest.raises(ConfigError):
        m.generate()
    uncond = SketchRNN(apply_hparams(Config(), TINY + ",conditional=0"))
    assert len(uncond.generate(n=3)) == 3
    with pytest.raises(ConfigError, match="unconditional"):
        uncond.generate(references=refs)


def test_train_resume_sample_through_cli(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "sketch-rnn", "--out", str(run), "--categories", "star,fish",
            "--limit-per-category", "24", "--hparams", TINY, "--no-progress"]
    assert main(args + ["--max-steps", "3"]) == 0
    assert main(args + ["--max-steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and "step 5" in out
    info = json.loads((run / "config.json").read_text())
    assert info["model"] == "sketch-rnn" and info["config"]["dec_rnn_size"] == 16
    assert (run / "loss.png").is_file()
    samples = tmp_path / "s.npz"
    assert main(["sample", str(run), "--out", str(samples), "--n", "6", "--temperature", "0.3"]) == 0
    sk = Sketches.load(samples)
    assert len(sk) == 6 and sk.scale_factor == 1.0 and (tmp_path / "s.png").is_file()
    cond = tmp_path / "c.npz"
    assert main(["sample", str(run), "--out", str(cond), "--condition-on", "test", "--n", "4"]) == 0
    assert Sketches.load(cond).category_names == ("star", "fish")
    # options of other models are refused, checkpoints of other models too
    assert main(["sample", str(run), "--out", str(cond), "--component", "2"]) == 2
    assert "--component does not apply" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="sketch-rnn"):
        load_model(run, expect_model="rpcl-pix2seq")


@pytest.mark.gpu
def test_graphed_training_matches_eager_on_cuda(tmp_path):
    def run(graph: bool):
        torch.manual_seed(0)
        m, data = tiny_model(f"use_recurrent_dropout=0,cuda_graph={int(graph)},amp=0")
        tr = Trainer(m, data, tmp_path / f"g{int(graph)}", device=torch.device("cuda"),
                     progress=False, max_steps=6, log=lambda s: None)
        assert tr.graph_mode == graph
        tr.train()
        return m
    a, b = run(False), run(True)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5), k
