"""RPCL-pix2seq and RPCL-pix2seqH models: data, losses and schedules against hand computations,
the prior's update discipline, resume, sampling, the latent tools and the command line."""

import dataclasses
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from sketchlab.data import strokes as S
from sketchlab.data.image_aug import area_resize
from sketchlab.data.raster import rasterize
from sketchlab.data.sketches import Sketches
from sketchlab.data.synthetic import make_doodle_splits, make_doodles
from sketchlab.errors import CheckpointError, ConfigError, DataError
from sketchlab.latent.codes import label_agreement
from sketchlab.nn.gmm_prior import alpha_kl, gmm_update
from sketchlab.nn.hierarchy_prior import hierarchy_update, structural_kl
from sketchlab.nn.rpcl import gaussian_kl
from sketchlab.models.rpcl_pix2seq import Config as PConfig
from sketchlab.models.rpcl_pix2seq import RPCLPix2Seq
from sketchlab.models.rpcl_pix2seqh import Config as HConfig
from sketchlab.models.rpcl_pix2seqh import RPCLPix2SeqH
from sketchlab.nn.mixture import mixture_loss_terms
from sketchlab.runs import load_model
from sketchlab.train import checkpoint as ckpt
from sketchlab.train.trainer import Trainer, prepare_data

HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="the t-SNE latent map needs scikit-learn "
                                   "(pip install scikit-learn, or sketchlab[latent])")

TINY = dict(dec_model="lstm", dec_rnn_size=16, z_size=8, batch_size=8, max_valid_batches=1)
TINY_P = dict(TINY, num_mixture=2, num_sub=2)
TINY_H = dict(TINY, num_layer_j=4, num_layer_i=4)
# RPCL-pix2seqH's KL terms in the training-mode case of `test_pix2seqh_training_path_uses_the_sampled_z`
KL_IJ_PINNED, KL_G_PINNED = 0.74633, 4.99967
MODELS = [(RPCLPix2Seq, PConfig, TINY_P), (RPCLPix2SeqH, HConfig, TINY_H)]
IDS = ["pix2seq", "pix2seqh"]


@pytest.fixture(scope="module")
def doodles():
    raw = make_doodles(4, ["fish", "house"])
    return raw.in_units(S.scale_factor(raw))


def build(cls, cfg_cls, tiny, sketches, **over):
    torch.manual_seed(0)
    return cls(cfg_cls(**{**tiny, "max_seq_len": int(sketches.lengths.max()), **over}))


def grads(*modules):
    return [p.grad for m in modules for p in m.parameters()]


# --------------------------------------------------------------------------------------------
# config, data
# --------------------------------------------------------------------------------------------


def test_config_defaults_are_the_seeds_code_values():
    c = PConfig()
    assert (c.batch_size, c.dec_model, c.dec_rnn_size, c.z_size) == (200, "hyper", 2048, 128)
    assert c.num_mixture * c.num_sub == 10 and c.max_seq_len == -1
    assert (c.learning_rate, c.decay_rate, c.min_learning_rate, c.lr_decay_every) == (1e-3, 0.9999, 1e-5, 3.0)
    assert (c.adam_beta1, c.clip_mode, c.grad_clip) == (0.5, "value", 1.0)
    assert (c.recurrent_dropout_prob, c.random_scale_factor, c.augment_stroke_prob) == (0.9, 0.1, 0.1)
    assert (c.png_scale_ratio, c.de_weight, c.temperature, c.rpcl_start) == (0.98, 0.5, 0.24, 500)
    assert (c.patience, c.reload_best, c.valid_metric, c.eval_every) == (5, True, "recon", 0)
    h = HConfig()
    assert (h.num_layer_j, h.num_layer_i, h.rpcl_start, h.kl_multiplier) == (16, 16, 100, 0.1)
    assert (h.image_phase_steps, h.image_phase_every, h.batch_size) == (1000, 4, 200)
    with pytest.raises(ConfigError, match="max_seq_len"):
        RPCLPix2Seq(PConfig(**TINY_P))                    # -1 is filled in from the data only
    with pytest.raises(ConfigError, match="num_layer_i"):
        RPCLPix2SeqH(HConfig(**{**TINY_H, "num_layer_i": 3, "max_seq_len": 10}))


def test_adapt_config_takes_the_longest_sketch_and_inits(doodles):
    splits = make_doodle_splits(6, 3, 3, categories=["fish"])
    data = prepare_data(RPCLPix2Seq, PConfig(**TINY_P), splits)
    assert data.config.max_seq_len == max(int(s.lengths.max()) for s in splits.values())
    m = build(RPCLPix2Seq, PConfig, TINY_P, doodles, z_size=128, dec_rnn_size=64)
    # spec 3.4: init-state FC std sqrt(2/128), output FC std sqrt(2/H), zero biases
    assert m.fc_init.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)
    assert m.head.linear.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.05)
    assert m.fc_init.bias.abs().max() == 0 and m.head.linear.bias.abs().max() == 0


def test_make_batch_augments_the_sequence_not_the_image(doodles):
    m = build(RPCLPix2Seq, PConfig, TINY_P, doodles)
    items = list(doodles)
    T = m.config.max_seq_len
    tb = m.make_batch(items, True, np.random.default_rng(0))
    eb = m.make_batch(items, False, np.random.default_rng(0))
    assert tb["strokes"].shape == (len(items), T + 1, 5) and tb["raster_strokes"].shape == (len(items), T, 3)
    assert torch.equal(eb["strokes"], torch.from_numpy(S.pad_batch(items, T)))
    assert not torch.equal(tb["strokes"], eb["strokes"])        # stretched and thinned
    assert torch.equal(tb["raster_strokes"], eb["raster_strokes"])  # the image is not re-rendered
    assert (tb["png_size"] == 47).all() and "png_size" not in eb
    # eval image = seq2png raster in [-1, 1]; training image = its 47-px INTER_AREA copy, top-left
    x_eval, x_train = m.images(eb), m.images(tb)
    ref = torch.from_numpy(rasterize(items).astype(np.float32)) / 255 * 2 - 1
    assert (x_eval - ref).abs().max() <= 2 / 255 + 1e-6          # torch vs numpy kernel: 1 grey level
    assert (x_train[:, 47, :] == 1).all() and (x_train[:, :, 47] == 1).all()
    assert torch.allclose(x_train[:, :47, :47], area_resize(x_eval, 47, 47), atol=1e-5)
    with pytest.raises(DataError, match="longer"):
        m.make_batch([np.zeros((T + 1, 3), np.float32)], False, np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# losses and schedules
# --------------------------------------------------------------------------------------------


def _seq_terms_by_hand(m, batch, z, training):
    raw = m.decode(batch["strokes"][:, :-1], z)
    per = mixture_loss_terms(raw, batch["strokes"][:, 1:], training=training, reduction="none")
    return per["offset"].sum(1).mean(), per["pen"].sum(1).mean()


@pytest.mark.parametrize("training", [False, True])
def test_pix2seq_loss_is_the_spec_sum(doodles, training):
    m = build(RPCLPix2Seq, PConfig, TINY_P, doodles)
    m.train(training)
    batch = m.make_batch(list(doodles), training, np.random.default_rng(1))
    step = 2000
    torch.manual_seed(5)
    out = m.loss(batch, step)
    # by hand, drawing the same noise in the same order (z's eps, then dropout masks)
    torch.manual_seed(5)
    x, mu, var = m.encode_dist(batch)
    z = mu + var.sqrt() * torch.randn_like(mu) if training else mu
    old = m.prior.state()
    gamma = m.prior.posterior(z)                                 # OLD prior
    new = gmm_update(gamma.detach(), mu.detach(), var.detach(), old)
    off, pen = _seq_terms_by_hand(m, batch, z, training)
    image = ((x - m.image_decoder(z)) ** 2).sum((1, 2)).mean()
    la, lg = alpha_kl(gamma, new.alpha), gaussian_kl(gamma, mu, var, new.mean, new.var)
    w = 1 - 0.999 * 0.9999 ** step
    assert out["kl_weight"].item() == pytest.approx(w)
    for name, value in [("offset", off), ("pen", pen), ("image", image), ("kl_alpha", la), ("kl_gauss", lg)]:
        assert out[name].item() == pytest.approx(value.item(), rel=1e-5), name
    assert out["loss"].item() == pytest.approx((w * (la + lg) + off + pen + 0.5 * image).item(), rel=1e-5)
    assert out["n_alive"].item() == 4
    # eval masks the pen loss at padding, training does not (spec 4.6.3)
    padded = (batch["strokes"][:, 1:, 4] == 1).any()
    assert padded
    m.train(not training)
    torch.manual_seed(5)
    other = m.loss(batch, step)["pen"].item()
    assert (other > out["pen"].item()) == (not training)


def test_pix2seq_rpcl_schedule(doodles):
    m = build(RPCLPix2Seq, PConfig, TINY_P, doodles)
    batch = m.make_batch(list(doodles), True, np.random.default_rng(0))
    flags = {s: m.loss(batch, s)["rpcl"].item() for s in (0, 499, 500, 501, 502, 503, 504, 600)}
    assert flags == {0: 0, 499: 0, 500: 0, 501: 1, 502: 0, 503: 0, 504: 1, 600: 1}


def test_pix2seqh_phase_schedule_terms_and_branch_gradients(doodles):
    m = build(RPCLPix2SeqH, HConfig, TINY_H, doodles)
    batch = m.make_batch(list(doodles), True, np.random.default_rng(0))
    seq_branch = (m.decoder, m.fc_init, m.head)
    cases = [(0, False), (1, True), (2, True), (3, True), (4, False), (999, True), (1000, False), (1001, False)]
    for step, image_step in cases:
        m.zero_grad(set_to_none=False)
        torch.manual_seed(step)
        out = m.loss(batch, step)
        assert ("recon" in out) == (not image_step) and ("image" in out) == image_step, step
        assert out["image_step"].item() == float(image_step)
        w = 0.1 * (1 - 0.999 * 0.9999 ** step)
        branch = out["image"] if image_step else out["recon"]
        assert out["loss"].item() == pytest.approx((w * (out["kl_ij"] + out["kl_gauss"]) + branch).item(), rel=1e-5)
        out["loss"].backward()
        g_seq, g_img = grads(*seq_branch), grads(m.image_decoder)
        assert all(g is not None for g in g_seq + g_img), step    # zero, not None: Adam still moves
        zero_seq = all((g == 0).all() for g in g_seq)
        zero_img = all((g == 0).all() for g in g_img)
        assert (zero_seq, zero_img) == ((True, False) if image_step else (False, True)), step
        assert any((p.grad != 0).any() for p in m.encoder.parameters())
    flags = {s: m.loss(batch, s)["rpcl"].item() for s in (99, 100, 101, 102, 201)}
    assert flags == {99: 0, 100: 0, 101: 0, 102: 1, 201: 1}
    m.eval()
    ev = m.loss(m.make_batch(list(doodles), False, np.random.default_rng(0)), 5)
    assert {"recon", "image"} <= set(ev) and ev["image_step"].item() == 0


def test_pix2seqh_kl_terms_follow_the_updated_prior(doodles):
    m = build(RPCLPix2SeqH, HConfig, TINY_H, doodles)
    m.eval()
    batch = m.make_batch(list(doodles), False, np.random.default_rng(0))
    out = m.loss(batch, 1000)
    _, mu, var = m.encode_dist(batch)
    new, post = hierarchy_update(mu, mu, var, m.prior.state(), rpcl=False)
    new = new.detach()
    assert out["kl_ij"].item() == pytest.approx(structural_kl(post.p_j, post.p_ji, new.q_i, new.q_j_given_i).item(), rel=1e-5)
    assert out["kl_gauss"].item() == pytest.approx(gaussian_kl(post.p_j, mu, var, new.mean, new.var).item(), rel=1e-5)
    assert out["n_alive"].item() == 4 and out["n_alive_units"].item() == 4


def test_pix2seqh_training_path_uses_the_sampled_z(doodles):
    """In training the E-steps of the hierarchy's update run on z = mu + sqrt(var) eps, the
    M-steps on mu and var (spec 5.3): the KL terms and the staged prior follow that z, drawn
    right after the encoder from torch's RNG; computed with z = mu they differ."""
    m = build(RPCLPix2SeqH, HConfig, TINY_H, doodles, use_recurrent_dropout=False)
    m.train()
    batch = m.prepare_step(m.make_batch(list(doodles), True, np.random.default_rng(0)))
    step = 1000                       # a sequence step after the image phase, an EM step
    state = m.prior.state()
    torch.manual_seed(7)
    out = m.loss(batch, step)
    torch.manual_seed(7)
    with torch.no_grad():
        _, mu, var = m.encode_dist(batch)
        z = mu + var.sqrt() * torch.randn_like(mu)
        new, post = hierarchy_update(z, mu, var, state, rpcl=False)
        kl_ij = structural_kl(post.p_j, post.p_ji, new.q_i, new.q_j_given_i)
        kl_g = gaussian_kl(post.p_j, mu, var, new.mean, new.var)
        _, post_mu = hierarchy_update(mu, mu, var, state, rpcl=False)
    assert out["kl_ij"].item() == pytest.approx(kl_ij.item(), rel=1e-5)
    assert out["kl_gauss"].item() == pytest.approx(kl_g.item(), rel=1e-5)
    w = 0.1 * (1 - 0.999 * 0.9999 ** step)
    assert out["loss"].item() == pytest.approx(w * (kl_ij + kl_g).item() + out["recon"].item(), rel=1e-5)
    assert not torch.allclose(post.p_j, post_mu.p_j, atol=1e-4)      # the noise matters here
    # pinned values of this case (tiny model, seed 0 weights, 4+4 doodles, torch seed 7)
    assert out["kl_ij"].item() == pytest.approx(KL_IJ_PINNED, rel=1e-4)
    assert out["kl_gauss"].item() == pytest.approx(KL_G_PINNED, rel=1e-4)
    # the staged update is the one computed from that z, written only after the step
    m.on_step_end(step)
    for name, value in zip(("mean", "var", "q_i", "q_j_given_i"), new):
        torch.testing.assert_close(getattr(m.prior, name), value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,cfg,tiny", MODELS, ids=IDS)
def test_prior_is_written_only_in_on_step_end_never_by_the_optimiser(doodles, cls, cfg, tiny):
    m = build(cls, cfg, tiny, doodles)
    assert not any(n.startswith("prior.") for n, _ in m.named_parameters())
    assert {n for n, _ in m.named_buffers() if n.startswith("prior.")}
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    batch = m.make_batch(list(doodles), True, np.random.default_rng(0))
    before = {k: v.clone() for k, v in m.prior.state_dict().items()}
    out = m.loss(batch, 0)
    out["loss"].backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in m.prior.state_dict().items())
    staged = [t.clone() for t in m.prior._pending]
    m.on_step_end(0)
    now = m.prior.state_dict()
    assert any(not torch.equal(before[k], now[k]) for k in before)
    assert all(torch.equal(a, b) for a, b in zip(staged, m.prior.state()))
    m.eval()                                                      # evaluation never stages
    m.loss(m.make_batch(list(doodles), False, np.random.default_rng(0)), 1)
    m.on_step_end(1)
    assert all(torch.equal(now[k], v) for k, v in m.prior.state_dict().items())


@pytest.mark.parametrize("cls,cfg,tiny", MODELS, ids=IDS)
def test_dead_components_and_underflow_stay_finite(doodles, cls, cfg, tiny):
    m = build(cls, cfg, tiny, doodles)
    with torch.no_grad():
        m.prior.mean.mul_(1e3)              # every code far from every mean: likelihoods underflow
        m.prior.var[0] = 1e-10              # a collapsed variance
        if cls is RPCLPix2Seq:
            m.prior.alpha.copy_(torch.tensor([0.0, 0.0, 0.5, 0.5]))   # two components at zero weight
        else:
            m.prior.q_i.copy_(torch.tensor([1e-10, 1e-10, 0.5, 0.5]))
    batch = m.make_batch(list(doodles), True, np.random.default_rng(0))
    step = 600 if cls is RPCLPix2Seq else 102                     # an RPCL step: empty components
    out = m.loss(batch, step)
    assert out["rpcl"].item() == 1
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.on_step_end(step)
    assert all(torch.isfinite(b).all() for b in m.prior.buffers())
    g = m.generate(2, component=0)                                # sampling a dead one still works
    assert (g.component == 0).all()


# --------------------------------------------------------------------------------------------
# resume, checkpoints
# --------------------------------------------------------------------------------------------


def _run(cls, cfg_cls, tiny, run_dir, max_steps, seed, device="cpu", **over):
    splits = make_doodle_splits(24, 8, 8, categories=["fish", "house"])
    cfg = cfg_cls(**{**tiny, "patience": 0, "reload_best": False, "checkpoint_every": 3, "rpcl_start": 2,
                     **({"image_phase_steps": 4} if cls is RPCLPix2SeqH else {}), **over})
    data = prepare_data(cls, cfg, splits)
    torch.manual_seed(seed)
    model = cls(data.config)
    tr = Trainer(model, data, run_dir, progress=False, max_steps=max_steps, log=lambda m: None,
                 device=torch.device(device))
    tr.train()
    model.trainer_graph_mode = tr.graph_mode
    return model


@pytest.mark.gpu
@pytest.mark.parametrize("cls,cfg,tiny", MODELS, ids=IDS)
def test_graphed_training_matches_eager_on_cuda(tmp_path, cls, cfg, tiny):
    """Whole-step CUDA graphs (one per EM/RPCL, image/sequence key) train like eager steps."""
    over = dict(recurrent_dropout_prob=1.0, amp=False, random_scale_factor=0.0, augment_stroke_prob=0.0)
    eager = _run(cls, cfg, tiny, tmp_path / "e", 8, 0, "cuda", cuda_graph=False, **over)
    graph = _run(cls, cfg, tiny, tmp_path / "g", 8, 0, "cuda", cuda_graph=True, **over)
    assert graph.trainer_graph_mode and not eager.trainer_graph_mode
    for (k, a), (_, b) in zip(eager.state_dict().items(), graph.state_dict().items()):
        # Same schedule, same data; the random stream of z differs once a second graph is
        # captured mid-run, which moves Adam's lr-sized steps a little (measured ~1e-3 on an H100).
        assert torch.allclose(a, b, rtol=1e-2, atol=3e-3), k


@pytest.mark.gpu
def test_a_rewind_under_cuda_graphs_keeps_the_captured_tensors(tmp_path):
    """Rewinds to the best checkpoint mid-run (a huge lr makes evaluations worse) must load the
    optimizer state INTO the tensors the captured graphs read and write, or the graphs go on
    updating orphaned moments with a stale learning rate."""
    splits = make_doodle_splits(24, 8, 8, categories=["fish", "house"])
    cfg = PConfig(**{**TINY_P, "rpcl_start": 2, "recurrent_dropout_prob": 1.0, "amp": False,
                     "learning_rate": 0.5, "min_learning_rate": 0.5, "eval_every": 3,
                     "reload_best": True, "patience": 50, "cuda_graph": True})
    data = prepare_data(RPCLPix2Seq, cfg, splits)
    msgs = []
    tr = Trainer(RPCLPix2Seq(data.config), data, tmp_path / "g", progress=False, max_steps=15,
                 log=msgs.append, device=torch.device("cuda"))
    tr.train()
    assert tr.graph_mode and tr.graphed is not None and tr.graphed.graphs
    assert tr.rewinds > 0 and any("rewound" in m for m in msgs)
    assert tr.graphed.held_ids() == tr.graphed.captured_ids


@pytest.mark.parametrize("cls,cfg,tiny", MODELS, ids=IDS)
def test_resume_matches_uninterrupted_run_prior_included(tmp_path, cls, cfg, tiny):
    full = _run(cls, cfg, tiny, tmp_path / "full", 7, seed=0)   # an epoch is 6 steps
    _run(cls, cfg, tiny, tmp_path / "cut", 4, seed=0)
    resumed = _run(cls, cfg, tiny, tmp_path / "cut", 7, seed=123)   # fresh init, restored from disk
    a, b = full.state_dict(), resumed.state_dict()
    prior_keys = [k for k in a if k.startswith("prior.")]
    assert prior_keys
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # and the stored prior moved away from its initial state
    fresh = cls(full.config).prior.state_dict()
    assert not torch.allclose(fresh["var"], a["prior.var"])


def test_sketch_rnn_checkpoint_is_refused(tmp_path):
    from sketchlab.models.sketch_rnn import Config as SConfig
    from sketchlab.models.sketch_rnn import SketchRNN

    splits = make_doodle_splits(16, 8, 8, categories=["fish"])
    scfg = SConfig(enc_rnn_size=8, dec_rnn_size=8, z_size=8, batch_size=8, max_seq_len=200, eval_every=0)
    sdata = prepare_data(SketchRNN, scfg, splits)
    Trainer(SketchRNN(sdata.config), sdata, tmp_path / "run", progress=False, max_steps=1,
            log=lambda m: None).train()
    data = prepare_data(RPCLPix2Seq, PConfig(**TINY_P), splits)
    model = RPCLPix2Seq(data.config)
    with pytest.raises(CheckpointError, match="sketch-rnn"):
        Trainer(model, data, tmp_path / "run", progress=False, max_steps=2, log=lambda m: None).train()
    with pytest.raises(CheckpointError, match="sketch-rnn"):
        ckpt.load_weights(tmp_path / "run" / "model.safetensors", model, "rpcl-pix2seq")
    with pytest.raises(CheckpointError, match="sketch-rnn"):
        load_model(tmp_path / "run", expect_model="rpcl-pix2seq")


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,cfg,tiny", MODELS, ids=IDS)
def test_generate_conditional_prior_and_component(doodles, cls, cfg, tiny):
    m = build(cls, cfg, tiny, doodles)
    m.scale_factor = doodles.scale_factor
    label = "component" if cls is RPCLPix2Seq else "level_k"
    cond = m.generate(references=doodles, seed=0)
    z = m.encode_sketches(doodles)
    assert len(cond) == len(doodles) and np.allclose(cond.z, z.numpy(), atol=1e-6)
    assert np.array_equal(cond.component, m.latent_labels(z)[label])
    assert np.array_equal(cond.category, doodles.category) and cond.category_names == doodles.category_names
    assert cond.scale_factor == doodles.scale_factor
    assert len(m.generate(3, references=doodles)) == 3
    a, b = m.generate(5, seed=7), m.generate(5, seed=7)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.z, b.z)
    assert a.z.shape == (5, 8) and ((a.component >= 0) & (a.component < 4)).all()
    with torch.no_grad():
        m.prior.var.fill_(1e-8)
    k = m.generate(4, component=2)
    assert (k.component == 2).all() and np.allclose(k.z, m.prior.mean[2].numpy(), atol=1e-3)
    with pytest.raises(ConfigError):
        m.generate(2, component=4)
    with pytest.raises(ConfigError):
        m.generate(references=doodles, component=1)
    with pytest.raises(ConfigError):
        m.generate()
    with pytest.raises(ConfigError):
        m.generate(2, temperature=0.0)
    dec = m.decode_codes(torch.from_numpy(k.z))
    assert np.array_equal(dec.component, m.latent_labels(torch.from_numpy(k.z))[label])


@pytest.mark.parametrize("cls,cfg,tiny", MODELS, ids=IDS)
def test_standard_prior_and_completion(doodles, cls, cfg, tiny):
    m = build(cls, cfg, tiny, doodles)
    m.scale_factor = doodles.scale_factor
    assert (m.can_sample, m.can_encode, m.can_complete, m.has_components, m.can_heal) == (
        True, True, True, True, False)
    # the originals' sample.py: z ~ N(0, I), labelled with the most responsible component
    std = m.generate(5, seed=3, prior="standard")
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(std.z, z.numpy(), atol=1e-6)
    # pinned: torch's CPU generator seeded 3 gives these N(0, 1) draws (the first two codes' head)
    np.testing.assert_allclose(std.z[:2, :4], [[-0.0766, 0.3599, -0.7820, 0.0715],
                                               [-0.0517, -0.3060, 0.2485, -0.2226]], atol=1e-4)
    # the sketches are those codes decoded (the decoder's own generator, seeded alike)
    np.testing.assert_array_equal(std.points, m.decode_codes(z, seed=3).points)
    label = "component" if cls is RPCLPix2Seq else "level_k"
    assert np.array_equal(std.component, m.latent_labels(z)[label])
    with pytest.raises(ConfigError, match="N\\(0, I\\)"):
        m.generate(2, prior="standard", component=1)
    with pytest.raises(ConfigError, match="prior"):
        m.generate(references=doodles, prior="standard")
    with pytest.raises(ConfigError, match="learned, standard"):
        m.generate(2, prior="uniform")
    # completion: z = mu of the prefix's own image; each result starts with its prefix
    halves = Sketches.from_list([s[:len(s) // 2] for s in doodles[:3]], category=doodles.category[:3],
                                category_names=doodles.category_names,
                                scale_factor=doodles.scale_factor)
    out = m.complete(halves, n_per_prefix=2, seed=1)
    repeated = halves.select(np.repeat(np.arange(3), 2))
    assert len(out) == 6 and out.category.tolist() == repeated.category.tolist()
    for i in range(6):
        np.testing.assert_array_equal(out[i][:len(repeated[i])], repeated[i])
    zp = m.encode_sketches(repeated)
    np.testing.assert_allclose(out.z, zp.numpy(), atol=1e-6)
    assert np.array_equal(out.component, m.latent_labels(zp)[label])
    with pytest.raises(ConfigError, match="prefix"):
        m.complete(halves, component=0)


def test_pix2seqh_sample_a_unit(doodles):
    m = build(RPCLPix2SeqH, HConfig, TINY_H, doodles)
    q = torch.zeros(4, 4)
    q[1, 1] = q[3, 1] = 0.5                     # unit 1 holds Gaussians 1 and 3 only
    q[:, [0, 2, 3]] = torch.eye(4)[:, [0, 2, 3]]
    with torch.no_grad():
        m.prior.q_j_given_i.copy_(q)
    out = m.generate(40, unit=1, seed=0)
    assert set(out.component.tolist()) == {1, 3}
    with pytest.raises(ConfigError):
        m.generate(2, unit=1, component=1)
    # RPCL-pix2seq has no units: its Options lack the field (the CLI refuses --unit), and the
    # refusal names the model that takes it
    assert "unit" not in {f.name for f in dataclasses.fields(RPCLPix2Seq.Options)}
    with pytest.raises(ConfigError, match="rpcl-pix2seqh"):
        build(RPCLPix2Seq, PConfig, TINY_P, doodles).generate(2, unit=1)


# --------------------------------------------------------------------------------------------
# latent tools
# --------------------------------------------------------------------------------------------


def test_label_agreement_by_hand():
    res = label_agreement([0, 0, 1, 1], [5, 5, 5, 7])
    assert res["table"] == [[2, 0], [1, 1]] and res["purity"] == 0.75
    # MI = sum p log(p / (pr pc)) with p = (.5, 0, .25, .25), pr = (.5, .5), pc = (.75, .25)
    mi = 0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.375) + 0.25 * math.log(0.25 / 0.125)
    hr, hc = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert res["nmi"] == pytest.approx(mi / ((hr + hc) / 2))
    assert label_agreement([0, 1, 2], [4, 5, 6])["nmi"] == pytest.approx(1.0)


@needs_sklearn
def test_tsne_latent_map_of_rpcl(tmp_path, doodles):
    from PIL import Image

    from sketchlab.latent.maps import latent_map

    rpcl = build(RPCLPix2SeqH, HConfig, TINY_H, doodles)
    info = latent_map(rpcl, doodles, tmp_path / "map.png", thumbnails=4)
    assert info["labels"].keys() == {"category", "level_k", "level_l"} and info["centres"] == 4
    assert Image.open(tmp_path / "map.png").size[0] > 1000


def test_latent_tools_for_rpcl_and_sketch_rnn(tmp_path, doodles):
    from sketchlab.latent.maps import analogy_strip, interpolation_strip, latent_map
    from sketchlab.models.sketch_rnn import Config as SConfig
    from sketchlab.models.sketch_rnn import SketchRNN

    rpcl = build(RPCLPix2SeqH, HConfig, TINY_H, doodles)
    info = latent_map(rpcl, doodles, tmp_path / "map.png", thumbnails=4, method="pca")
    assert info["labels"].keys() == {"category", "level_k", "level_l"} and info["centres"] == 4
    torch.manual_seed(0)
    srnn = SketchRNN(SConfig(enc_rnn_size=8, dec_rnn_size=8, z_size=8, max_seq_len=int(doodles.lengths.max())))
    assert latent_map(srnn, doodles, tmp_path / "map2.png", thumbnails=2, method="pca")["method"] == "pca"
    out = interpolation_strip(srnn, doodles, 0, 5, tmp_path / "strip.svg", steps=3)
    assert len(out) == 3 and "<svg" in (tmp_path / "strip.svg").read_text()
    out = analogy_strip(rpcl, doodles, 0, 1, 5, tmp_path / "analogy.png", samples=2)
    assert len(out) == 2 and (tmp_path / "analogy.png").is_file()
    z = rpcl.encode_sketches(doodles[[0, 1, 5]])
    assert np.allclose(out.z[0], (z[2] + z[1] - z[0]).numpy(), atol=1e-5)
    with pytest.raises(ConfigError):
        interpolation_strip(srnn, doodles, 0, 99, tmp_path / "x.png")


# --------------------------------------------------------------------------------------------
# command line, end to end
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", ["rpcl-pix2seq", "rpcl-pix2seqh"])
def test_cli_train_sample_and_latent_tools(tmp_path, model):
    import sketchlab.cli as cli
    from sketchlab.cli import main

    if "sketchlab.cli.latent" not in cli.CLI_MODULES:   # until the lead lists it
        cli.CLI_MODULES.append("sketchlab.cli.latent")
    run = tmp_path / "run"
    hp = "dec_model=lstm,dec_rnn_size=16,z_size=8,batch_size=8,max_valid_batches=1," + (
        "num_mixture=2,num_sub=2" if model == "rpcl-pix2seq" else "num_layer_j=4,num_layer_i=4")
    assert main(["train", model, "--out", str(run), "--categories", "fish,house", "--max-steps", "3",
                 "--hparams", hp, "--no-progress", "--device", "cpu"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["max_seq_len"] > 0 and cfg["model"] == model
    assert main(["sample", str(run), "--out", str(tmp_path / "u.npz"), "--n", "3", "--device", "cpu"]) == 0
    assert main(["sample", str(run), "--out", str(tmp_path / "c.npz"), "--n", "4",
                 "--condition-on", "test", "--device", "cpu"]) == 0
    cond = Sketches.load(tmp_path / "c.npz")
    assert len(cond) == 4 and cond.z is not None and cond.category is not None
    assert main(["sample", str(run), "--out", str(tmp_path / "k.npz"), "--n", "3", "--component", "1",
                 "--device", "cpu"]) == 0
    assert (Sketches.load(tmp_path / "k.npz").component == 1).all()
    assert main(["sample", str(run), "--out", str(tmp_path / "s.npz"), "--n", "3", "--prior", "standard",
                 "--device", "cpu"]) == 0
    if model == "rpcl-pix2seqh":
        assert main(["sample", str(run), "--out", str(tmp_path / "i.npz"), "--n", "3", "--unit", "2",
                     "--device", "cpu"]) == 0
    else:
        assert main(["sample", str(run), "--out", str(tmp_path / "i.npz"), "--n", "3", "--unit", "2",
                     "--device", "cpu"]) == 2          # no units in RPCL-pix2seq: a clear error
    method = "tsne" if HAVE_SKLEARN else "pca"          # t-SNE needs scikit-learn (`latent` extra)
    assert main(["latent", "map", str(run), "--out", str(tmp_path / "map.png"), "--n", "30",
                 "--thumbnails", "5", "--method", method, "--device", "cpu"]) == 0
    assert main(["latent", "interpolate", str(run), "--out", str(tmp_path / "i.png"), "--a", "0",
                 "--b", "3", "--steps", "3", "--device", "cpu"]) == 0
    assert main(["latent", "analogy", str(run), "--a", "0", "--b", "1", "--c", "2", "--samples", "1",
                 "--out", str(tmp_path / "a.svg"), "--device", "cpu"]) == 0
    for f in ("map.png", "i.png", "a.svg", "c.png"):
        assert (tmp_path / f).is_file(), f


@pytest.mark.parametrize("cls,cfg,tiny", MODELS, ids=IDS)
def test_paper_preset_samples_the_standard_prior_by_default(doodles, cls, cfg, tiny):
    """sample.py's unconditional codes are N(0, I): the paper preset's default (`sample_prior`);
    a chosen component or `prior="learned"` still samples the learned mixture."""
    from sketchlab.models import preset

    name = "rpcl-pix2seq" if cls is RPCLPix2Seq else "rpcl-pix2seqh"
    assert preset(name, "paper").sample_prior == "standard" and cfg().sample_prior == "learned"
    m = build(cls, cfg, tiny, doodles, sample_prior="standard")
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    np.testing.assert_allclose(m.generate(3, seed=4).z, z.numpy(), atol=1e-6)
    learned = m.generate(3, seed=4, prior="learned")
    assert not np.allclose(learned.z, z.numpy())
    assert m.generate(3, seed=4, component=1).component.tolist() == [1, 1, 1]
    refs = m.generate(references=doodles[np.arange(2)], seed=4)          # conditional: unaffected
    np.testing.assert_allclose(refs.z, m.encode_sketches(doodles[np.arange(2)]).numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="sample_prior"):
        build(cls, cfg, tiny, doodles, sample_prior="uniform")
