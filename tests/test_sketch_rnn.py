"""sketch-rnn: encoder plumbing, KL schedule, loss modes, train/resume/sample through the CLI."""

import dataclasses
import json
import math

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
from sketchlab.nn.mixture import draw_noise, mixture_loss_terms, sample_step
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


# --------------------------------------------------------------------------------------------
# Against hand-computed values: the KL term, the KL weights, the bidirectional encoder, and
# max_seq_len from the data (magenta `model.py` / `sketch_rnn_train.py`)
# --------------------------------------------------------------------------------------------


def test_kl_term_and_the_training_vs_validation_kl_weights_hand_values(monkeypatch):
    m, data = tiny_model("use_recurrent_dropout=0")            # z_size 4
    batch = m.make_batch([data.splits["train"][i] for i in range(2)], False, np.random.default_rng(0))
    mu = torch.tensor([[1.0, 0.0, -2.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    presig = torch.tensor([[0.0, math.log(2.0), 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    monkeypatch.setattr(m, "encode_dist", lambda b: (mu, presig))
    # -0.5 (1 + presig - mu^2 - exp(presig)) per element: 0.5, (1 - ln 2) / 2, 2, (0.25 + e^-1) / 2
    # in row 0, zeros in row 1; magenta takes the mean over batch x z
    kl = (0.5 + (1 - math.log(2.0)) / 2 + 2.0 + (0.25 + math.exp(-1.0)) / 2) / 8
    assert kl == pytest.approx(0.370296, abs=1e-6)
    step = 10000
    batch["step"] = torch.tensor(float(step), dtype=torch.float64)   # as the trainer passes it
    w_train = 0.5 - (0.5 - 0.01) * 0.99995 ** step                     # 0.202804
    assert w_train == pytest.approx(0.202804, abs=1e-6)
    m.train()
    tr = m.loss(batch, step)
    assert float(tr["kl"]) == pytest.approx(kl, rel=1e-6)
    # loss - recon is float32 arithmetic on a loss of order 1: an absolute tolerance
    assert float(tr["loss"] - tr["recon"]) == pytest.approx(w_train * kl, abs=2e-6)
    m.eval()                                  # validation: magenta's never-assigned kl_weight 0.01
    ev = m.loss(batch, step)
    assert float(ev["loss"] - ev["recon"]) == pytest.approx(0.01 * kl, abs=2e-6)
    # below kl_tolerance the KL cost is the tolerance (max(KL, 0.2)) and carries no gradient
    monkeypatch.setattr(m, "encode_dist", lambda b: (torch.zeros(2, 4), torch.zeros(2, 4)))
    m.train()
    low = m.loss(batch, step)
    assert float(low["kl"]) == 0.0
    assert float(low["loss"] - low["recon"]) == pytest.approx(w_train * 0.2, abs=2e-6)


def _lstm_by_hand(xs, W_xh, W_hh, b):
    """magenta's LSTMCell with one unit, in scalar Python: gates (i, j, f, o), forget bias +1."""
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    c = h = 0.0
    for x in xs:
        g = [sum(x[k] * W_xh[k][n] for k in range(5)) + h * W_hh[n] + b[n] for n in range(4)]
        c = c * sig(g[2] + 1.0) + sig(g[0]) * math.tanh(g[1])
        h = math.tanh(c) * sig(g[3])
    return h


def test_bidirectional_encoder_hand_computed():
    m = SketchRNN(Config(enc_rnn_size=1, dec_rnn_size=4, z_size=1, max_seq_len=5,
                         use_recurrent_dropout=False))
    fw = [[0.5, 1.0, -0.5, 0.25], [0.3, -0.7, 0.2, 0.1], [0.1, 0.2, 0.0, -0.3], [-0.2, 0.4, 0.1, 0.0],
          [0.0, 0.0, 0.0, 0.0]]
    bw = [[-0.4, 0.6, 0.3, 0.2], [0.9, 0.1, -0.2, 0.5], [0.0, -0.3, 0.4, 0.1], [0.2, 0.2, 0.2, 0.2],
          [0.0, 0.0, 0.0, 0.0]]
    with torch.no_grad():
        m.enc_fw.W_xh.copy_(torch.tensor(fw))
        m.enc_fw.W_hh.copy_(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
        m.enc_fw.bias.copy_(torch.tensor([0.05, -0.05, 0.1, 0.0]))
        m.enc_bw.W_xh.copy_(torch.tensor(bw))
        m.enc_bw.W_hh.copy_(torch.tensor([[-0.3, 0.5, 0.2, -0.1]]))
        m.enc_bw.bias.zero_()
        m.fc_mu.weight.copy_(torch.tensor([[1.0, -2.0]]))
        m.fc_mu.bias.fill_(0.5)
        m.fc_presig.weight.copy_(torch.tensor([[0.5, 0.25]]))
        m.fc_presig.bias.fill_(-1.0)
    a = np.array([[1.0, 0.5, 0], [-0.5, 1.0, 1]], np.float32)                  # 2 points
    b = np.array([[0.2, -0.3, 0], [0.4, 0.1, 0], [-1.0, 0.5, 1]], np.float32)  # 3 points
    m.eval()
    batch = m.make_batch([a, b], False, np.random.default_rng(0))
    mu, presig = m.encode_dist(batch)
    for row, s in enumerate((a, b)):
        xs = [[p[0], p[1], 1.0 - p[2], p[2], 0.0] for p in s.tolist()]          # stroke-5, S0 excluded
        h_fw = _lstm_by_hand(xs, fw, [0.1, 0.2, 0.3, 0.4], [0.05, -0.05, 0.1, 0.0])
        h_bw = _lstm_by_hand(xs[::-1], bw, [-0.3, 0.5, 0.2, -0.1], [0.0] * 4)    # the real points only
        assert float(mu[row, 0]) == pytest.approx(h_fw - 2.0 * h_bw + 0.5, abs=1e-6)
        assert float(presig[row, 0]) == pytest.approx(0.5 * h_fw + 0.25 * h_bw - 1.0, abs=1e-6)
    # the padding after a short sketch changes nothing: alone, a encodes to the same code
    alone = m.encode_dist(m.make_batch([a], False, np.random.default_rng(0)))[0]
    assert float(alone[0, 0]) == pytest.approx(float(mu[0, 0]), abs=1e-6)


def test_max_seq_len_comes_from_the_data_and_no_sketch_is_left_out():
    raw = load_splits(None, ["star", "fish"], limit_per_category=24)
    cfg = apply_hparams(Config(), "enc_rnn_size=8,dec_rnn_size=16,z_size=4,batch_size=8")
    assert cfg.max_seq_len == -1 and cfg.max_seq_len_cap == 0
    with pytest.raises(ConfigError, match="max_seq_len=-1"):
        SketchRNN(cfg)                                   # T must come from the data first
    data = prepare_data(SketchRNN, cfg, raw)
    longest = max(int(sk.lengths.max()) for sk in raw.values())
    assert data.config.max_seq_len == longest            # over train, valid and test together
    assert {k: len(v) for k, v in data.splits.items()} == {k: len(v) for k, v in raw.items()}
    m = SketchRNN(data.config)
    batch = m.make_batch([data.splits["train"][i] for i in range(8)], False, np.random.default_rng(0))
    assert batch["strokes"].shape == (8, longest + 1, 5)
    # r_cost is the mean over batch x T with T the data's longest sketch (magenta)
    m.eval()
    torch.manual_seed(0)
    out = m.loss(batch, 0)
    torch.manual_seed(0)
    mu, presig = m.encode_dist(batch)
    z = mu + torch.exp(presig / 2) * torch.randn_like(mu)
    per_step = mixture_loss_terms(m.decode(batch["strokes"][:, :-1], z), batch["strokes"][:, 1:],
                                  training=True, reduction="none")
    assert float(out["offset"]) == pytest.approx(float(per_step["offset"].sum()) / (8 * longest), rel=1e-5)
    assert float(out["pen"]) == pytest.approx(float(per_step["pen"].sum()) / (8 * longest), rel=1e-5)
    # sampling rolls out T steps
    assert m.generate(2, seed=0, temperature=0.1).lengths.max() <= longest
    # a cap below the longest sketch leaves the longer ones out, counted in a warning
    lengths = np.concatenate([sk.lengths for sk in raw.values()])
    cap = int(np.sort(lengths)[-5]) - 1
    n_over = int((lengths > cap).sum())
    with pytest.warns(UserWarning, match=f"longer than max_seq_len_cap={cap} points") as rec:
        capped = prepare_data(SketchRNN, apply_hparams(cfg, f"max_seq_len_cap={cap}"), raw)
    warned = sum(int(str(w.message).split(" of ")[0]) for w in rec.list if "max_seq_len_cap" in str(w.message))
    assert warned == n_over
    assert capped.config.max_seq_len == int(lengths[lengths <= cap].max())
    assert sum(len(v) for v in capped.splits.values()) == len(lengths) - n_over


@pytest.mark.realdata
def test_omniglot_max_seq_len_is_its_longest_sketch(shared_data):
    """magenta's sketch_rnn_train.py on omniglot: T = 157, the longest of its 32,000 sketches,
    where sketchlab used to pad to 250 (the offset term scaled by 157/250)."""
    raw = load_splits(shared_data / "sketchrnn", ["omniglot"])
    data = prepare_data(SketchRNN, apply_hparams(Config(), "enc_rnn_size=8,dec_rnn_size=8,z_size=4"), raw)
    assert data.config.max_seq_len == max(int(sk.lengths.max()) for sk in raw.values())
    assert {k: len(v) for k, v in data.splits.items()} == {k: len(v) for k, v in raw.items()}
