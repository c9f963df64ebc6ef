"""sketch-rnn: encoder plumbing, KL schedule, loss modes, train/resume/sample through the CLI."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from sketchlab.cli import main
from sketchlab.config import apply_hparams
from sketchlab.data import strokes as S
from sketchlab.data.sources import load_splits
from sketchlab.data.sketches import Sketches
from sketchlab.errors import CheckpointError, ConfigError, DataError
from sketchlab.models.sketch_rnn import Config, SketchRNN, last_valid, reverse_padded
from sketchlab.nn.mixture import draw_noise, sample_step
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
    assert main(["sample", str(run), "--out", str(cond), "--condition-on", "test", "--strength", "0.1"]) == 2
    assert "models that heal: sp-gra2seq" in capsys.readouterr().err
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


def test_capabilities_and_options_are_declared():
    m, _ = tiny_model()
    assert (m.can_sample, m.can_encode, m.can_complete, m.can_heal, m.has_components) == (
        True, True, True, False, False)
    assert {f.name for f in dataclasses.fields(m.Options)} == {
        "temperature", "batch_size", "greedy", "sample_z"}
    uncond = SketchRNN(apply_hparams(Config(), TINY + ",conditional=0"))
    assert not uncond.can_encode and uncond.can_complete and SketchRNN.can_encode
    with pytest.raises(ConfigError, match="cannot decode latent codes; models that can: .*rpcl-pix2seq"):
        uncond.decode_codes(torch.zeros(1, 4))
    with pytest.raises(ConfigError, match="cannot heal.*sp-gra2seq, sketchgloc, sketchknitter"):
        m.heal(Sketches.from_list([np.ones((3, 3), np.float32)]), strength=0.1)
    with pytest.raises(ConfigError, match="no sampling option 'component'.*rpcl-pix2seq, rpcl-pix2seqh"):
        m.generate(2, component=1)
    with pytest.raises(ConfigError, match="batch_size"):
        m.generate(2, batch_size=0)
    # an Options object and keyword overrides combine; the overrides win
    a = m.generate(3, seed=1, options=m.Options(temperature=0.3, greedy=True))
    b = m.generate(3, seed=1, options=m.Options(temperature=0.9), temperature=0.3, greedy=True)
    assert np.array_equal(a.points, b.points)
    # a one-category model's samples carry that category (set_data: what open_run gives it)
    m.set_data(3.0, ["star"])
    free = m.generate(2)
    assert free.category_names == ("star",) and free.category.tolist() == [0, 0]
    assert free.scale_factor == 3.0


def _prefixes(data, k=3):
    """The first half of k test sketches, with their categories."""
    test = data.splits["test"]
    halves = [test[i][:max(1, len(test[i]) // 2)] for i in range(k)]
    return Sketches.from_list(halves, category=test.category[:k], category_names=test.category_names,
                              scale_factor=test.scale_factor)


def _complete_by_hand(m, prefixes, z, temperature, noise):
    """The reference: one sketch at a time, the decoder stepped over S0, p_1 .. p_{L-1}
    (teacher-forced), then sampled from p_L on with the given noise rows."""
    T = m.config.max_seq_len
    out = []
    with torch.no_grad():
        for b, s in enumerate(prefixes):
            L = len(s)
            rows5 = torch.from_numpy(S.pad_batch([s], T))[0]
            zb = None if z is None else z[b:b + 1]
            step = lambda x, st: m.decoder.step(x if zb is None else torch.cat([x, zb], 1), st)  # noqa: E731
            state = (torch.zeros(1, m.decoder.state_size) if zb is None
                     else torch.tanh(m.fc_init(zb)))
            for t in range(L):
                _, state = step(rows5[t:t + 1], state)
            prev, drawn = rows5[L:L + 1], []
            for t in range(L, T):
                h, state = step(prev, state)
                prev = sample_step(m.head(h), temperature, noise=noise[t, b:b + 1])
                drawn.append(prev[0].numpy())
            cont = S.stroke5_to_stroke3(np.array(drawn)) if drawn else np.zeros((0, 3), np.float32)
            out.append(np.concatenate([s, cont], 0))
    return out


@pytest.mark.parametrize("conditional", [True, False])
def test_complete_continues_each_prefix_like_a_hand_rolled_loop(conditional):
    m, data = tiny_model("use_recurrent_dropout=0" + ("" if conditional else ",conditional=0"))
    prefixes = _prefixes(data)
    out = m.complete(prefixes, n_per_prefix=2, seed=5, temperature=0.4)
    assert len(out) == 6 and out.category.tolist() == np.repeat(prefixes.category, 2).tolist()
    repeated = prefixes.select(np.repeat(np.arange(3), 2))
    for i in range(6):
        np.testing.assert_array_equal(out[i][:len(repeated[i])], repeated[i])   # the prefix, exactly
        assert len(out[i]) <= m.config.max_seq_len
    z = m.encode_sketches(repeated) if conditional else None
    if conditional:
        np.testing.assert_allclose(out.z, z.numpy(), atol=1e-6)              # z = mu of the prefix
    noise = draw_noise((m.config.max_seq_len, 6), "cpu", torch.Generator().manual_seed(5))
    expected = _complete_by_hand(m, list(repeated), z, 0.4, noise)
    for got, want in zip(out, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    again = m.complete(prefixes, n_per_prefix=2, seed=5, temperature=0.4)
    assert np.array_equal(again.points, out.points)
    # a prefix as long as a rollout has nothing left to draw; an empty one is refused
    full = Sketches.from_list([np.tile(prefixes[0], (40, 1))[:40]])
    np.testing.assert_array_equal(m.complete(full, greedy=True)[0], full[0])
    with pytest.raises(DataError, match="empty"):
        m.complete(Sketches.from_list([np.zeros((0, 3), np.float32)]))
