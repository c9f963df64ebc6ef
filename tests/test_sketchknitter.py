"""SketchKnitter: the network against the spec's layer table, the loss, pen decoding, EMA,
conditional refinement, the fast sampling path against the plain one, and a tiny train + sample."""

import math

import numpy as np
import pytest
import torch

from sketchlab.data.corrupt import deform, drop_strokes, mask_patches, mask_points, remove_points
from sketchlab.data.strokes import to_absolute
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.models.knitter_shortcut import calibrate_shortcut
from sketchlab.models.sketchknitter import (
    Config, Options, SketchKnitter, config_from_original, decode_pen, faithful_scale_factor,
)
from sketchlab.nn.unet1d import AttentionBlock, UNet1D, timestep_embedding

TINY = dict(num_points=32, model_channels=32, lift_dim=32, channel_mult=(1, 2), num_res_blocks=1,
            diffusion_steps=50)


def tiny(**kw) -> SketchKnitter:
    torch.manual_seed(0)
    return SketchKnitter(Config(**{**TINY, **kw}))


def circles(n, rng, min_len=6, max_len=24):
    """One-stroke closed polygons of random radius and point count (normalised units)."""
    out = []
    for _ in range(n):
        k = int(rng.integers(min_len, max_len + 1))
        r = rng.uniform(1.0, 2.0)
        ang = np.linspace(0, 2 * np.pi, k) + rng.uniform(0, 2 * np.pi)
        xy = np.c_[r * np.cos(ang), r * np.sin(ang)]
        s = np.zeros((k, 3), np.float32)
        s[:, :2] = np.diff(np.vstack([[0, 0], xy]), axis=0)
        s[-1, 2] = 1
        out.append(s)
    return out


def randomize(module, std=0.05):
    """Replace the zero-inits so the network's outputs depend on its input (the EMA copy
    holds its weights as buffers)."""
    g = torch.Generator().manual_seed(1)
    weights = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    assert weights
    with torch.no_grad():
        for p in weights:
            p.copy_(torch.randn(p.shape, generator=g) * std)


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


def test_parameter_count_matches_the_original():
    with torch.device("meta"):
        assert sum(p.numel() for p in UNet1D().parameters()) == 20_334_276  # "20.33M" (spec 3.4)
        assert sum(p.numel() for p in UNet1D(num_res_blocks=3).parameters()) == 26_527_236
        faithful = SketchKnitter(Config(faithful=True))
        default = SketchKnitter(Config())
    assert sum(p.numel() for p in faithful.parameters()) == 20_334_276  # EMA is not a parameter
    # the default adds the mask feature to the Linear(2 -> 128) lifting: 128 weights
    assert sum(p.numel() for p in default.parameters()) == 20_334_276 + 128


def test_block_shapes_follow_the_spec_table():
    net = UNet1D()
    shapes = {}
    for name in ("input_blocks", "output_blocks"):
        for i, block in enumerate(getattr(net, name)):
            block.register_forward_hook(
                lambda m, a, out, k=f"{name[:2]}{i}": shapes.__setitem__(k, tuple(out.shape)))
    net.middle_block.register_forward_hook(lambda m, a, out: shapes.__setitem__("mid", out.shape))
    eps, pen = net(torch.randn(2, 96, 2), torch.tensor([0.0, 999.0]))
    assert eps.shape == pen.shape == (2, 96, 2)
    assert shapes["in0"] == (2, 96, 128) and shapes["in2"] == (2, 96, 128)
    assert shapes["in3"] == (2, 96, 64) and shapes["in5"] == (2, 192, 64)
    assert shapes["in6"] == (2, 192, 32) and shapes["in8"] == (2, 288, 32)
    assert shapes["in9"] == (2, 288, 16) and shapes["in11"] == (2, 384, 16)
    assert tuple(shapes["mid"]) == (2, 384, 16)
    assert shapes["ou2"] == (2, 384, 32) and shapes["ou5"] == (2, 288, 64)
    assert shapes["ou8"] == (2, 192, 128) and shapes["ou11"] == (2, 96, 128)
    # only the middle block has attention (B9)
    assert sum(isinstance(m, AttentionBlock) for m in net.modules()) == 1


def test_state_dict_names_match_the_original():
    sd = UNet1D().state_dict()
    expected = {
        "time_embed.0.weight": (384, 96), "time_embed.2.weight": (384, 384),
        "input_blocks.0.0.weight": (128, 2), "input_blocks.1.0.in_layers.2.weight": (96, 96, 3),
        "input_blocks.1.0.emb_layers.1.weight": (192, 384),
        "input_blocks.3.0.op.weight": (96, 96, 3), "input_blocks.4.0.skip_connection.weight": (192, 96, 1),
        "middle_block.1.qkv.weight": (1152, 384, 1), "middle_block.1.proj_out.weight": (384, 384, 1),
        "output_blocks.0.0.in_layers.0.weight": (768,), "output_blocks.2.1.conv.weight": (384, 384, 3),
        "out.0.weight": (96,), "out.2.weight": (2, 128), "pen_state_out.0.weight": (2, 128),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key


def test_load_original_weights():
    m = tiny(faithful=True)
    net = UNet1D(num_points=32, model_channels=32, lift_dim=32, channel_mult=(1, 2),
                 num_res_blocks=1)
    randomize(net)
    m.load_original_weights(net.state_dict())
    for k, v in net.state_dict().items():
        assert torch.equal(m.unet.state_dict()[k], v) and torch.equal(m.ema.module.state_dict()[k], v)
    with pytest.raises(ConfigError):
        tiny().load_original_weights(net.state_dict())  # the default mode has a mask input
    with pytest.raises(ConfigError):
        m.load_original_weights({"input_blocks.0.0.weight": torch.zeros(128, 2)})


def test_zero_inits():
    net = UNet1D()
    eps, pen = net(torch.randn(2, 96, 2), torch.tensor([3.0, 500.0]))
    assert torch.all(eps == 0)  # the eps head is zero-initialised (spec 3.5)
    assert pen.abs().sum() > 0  # the pen head is not


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 4)
    # half = 2, freqs = [1, exp(-ln(10000) / 2) = 0.01]
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                             [math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)]])
    torch.testing.assert_close(emb, expected)


def test_attention_uses_the_legacy_head_then_qkv_order():
    torch.manual_seed(0)
    att = AttentionBlock(64, num_heads=4)
    randomize(att, 0.2)
    x = torch.randn(2, 64, 16)
    # guided-diffusion's QKVAttentionLegacy, written out
    qkv = att.qkv(att.norm(x)).reshape(2 * 4, 3 * 16, 16)
    q, k, v = qkv.split(16, dim=1)
    scale = 1 / math.sqrt(math.sqrt(16))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    h = torch.einsum("bts,bcs->bct", w, v).reshape(2, 64, 16)
    torch.testing.assert_close(att(x), x + att.proj_out(h), rtol=1e-5, atol=1e-5)


def test_points_layout_requires_points_equal_channels():
    with pytest.raises(ConfigError, match="must equal model_channels"):
        UNet1D(num_points=64, model_channels=96)


def test_sequence_layout_variant():
    net = UNet1D(num_points=32, in_features=3, model_channels=32, channel_mult=(1, 2),
                 num_res_blocks=1, layout="sequence")
    eps, pen = net(torch.randn(2, 32, 3), torch.tensor([1.0, 2.0]))
    assert eps.shape == pen.shape == (2, 32, 2) and torch.all(eps == 0)


def test_clip_auto_is_the_training_data_bound():
    train = Sketches.from_list([np.array([[0.5, -3.25, 0], [1.0, 2.0, 1]], np.float32),
                                np.array([[-2.5, 0.0, 1]], np.float32)])
    splits = {"train": train, "valid": train.select([1])}
    cfg = SketchKnitter.adapt_config(Config(**TINY), splits)
    assert cfg.clip_x0 == 3.25 and cfg.clip == 3.25  # the largest |dx|, |dy| of train
    assert SketchKnitter.adapt_config(Config(**TINY, faithful=True), splits).clip == 1.0  # B2
    assert SketchKnitter.adapt_config(Config(**TINY, clip_x0=None), splits).clip is None
    assert Config(**TINY).clip is None  # no data seen: no clamp
    # the clamp bounds every generated offset
    m = SketchKnitter(Config(**{**TINY, "clip_x0": 0.2}))
    out = m.generate(3, sampler="ddim", steps=5, lengths=[8, 12, 20],
                     generator=torch.Generator().manual_seed(0))
    assert np.abs(out.points[:, :2]).max() <= 0.2 + 1e-6
    # the clip_x0 option overrides the config's for one call (<= 0: no clamp)
    free = SketchKnitter(Config(**{**TINY, "clip_x0": None}))
    free.load_state_dict(m.state_dict())
    same = free.generate(3, sampler="ddim", steps=5, lengths=[8, 12, 20], clip_x0=0.2,
                         generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(same.points, out.points)
    off = m.generate(3, sampler="ddim", steps=5, lengths=[8, 12, 20], clip_x0=0,
                     generator=torch.Generator().manual_seed(0))
    assert np.abs(off.points[:, :2]).max() > 0.2


def test_config_from_the_original_flags():
    # sample.sh's flags
    cfg = config_from_original({"image_size": 96, "num_channels": 96, "num_res_blocks": 3,
                                "diffusion_steps": 100, "noise_schedule": "linear",
                                "use_ddim": "True", "timestep_respacing": "ddim30",
                                "pen_break": 0.1, "attention_resolutions": "16,8",
                                "ema_rate": "0.9999", "clip_denoised": "True"})
    assert cfg.faithful and cfg.num_points == cfg.model_channels == 96 and cfg.num_res_blocks == 3
    assert cfg.diffusion_steps == 100 and cfg.sampler == "ddim" and cfg.sample_steps == "ddim30"
    assert cfg.pen_break == 0.1 and cfg.clip == 1.0 and cfg.ema_rate == 0.9999
    # the original as its sample.sh runs it: bin_pen's rule, no EMA warm-up, float32
    assert cfg.pen_rule == "original" and not cfg.ema_warms_up and cfg.amp is False
    assert config_from_original({"use_fp16": "True"}).amp is True
    m = SketchKnitter(Config(**{**TINY, "sample_steps": "ddim5", "sampler": "ddim"}))
    assert len(m.make_sampler().timesteps) == 5
    with pytest.raises(ConfigError, match="learn_sigma"):
        config_from_original({"learn_sigma": True})
    with pytest.raises(ConfigError, match="must be equal"):
        config_from_original({"image_size": 96, "num_channels": 128})
    with pytest.raises(ConfigError, match="unknown"):
        config_from_original({"image_sise": 96})


# ---------------------------------------------------------------------------------------------
# Data, loss, pen decoding, EMA
# ---------------------------------------------------------------------------------------------


def test_pen_decoding_known_case():
    # softmax([0, ln 3]) = [0.25, 0.75]; softmax([ln 9, 0])[1] = 0.1; softmax([2, 2])[1] = 0.5
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(9.0), 0.0], [2.0, 2.0], [5.0, -5.0]]])
    assert decode_pen(logits).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert decode_pen(logits, pen_break=0.09).tolist() == [[1.0, 1.0, 1.0, 0.0]]
    assert decode_pen(logits, pen_break=0.8).tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_original_pen_decoding_known_case():
    """sample.py's bin_pen thresholds column 2 of cat(sample, logits): the RAW class-0 logit.
    Class-0 logits 0, ln 9 = 2.197, 2, 5, -0.3, 0.1: lifted where >= 0.5 (sample.py), >= 0.1
    (sample.sh), whatever class 1's logit says."""
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(9.0), 0.0], [2.0, 2.0], [5.0, -5.0],
                            [-0.3, 4.0], [0.1, 0.0]]])
    assert decode_pen(logits, 0.5, "original").tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0, 0.0]]
    assert decode_pen(logits, 0.1, "original").tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0, 1.0]]
    # the corrected rule on the same logits reads P(lift): nearly the opposite
    assert decode_pen(logits, 0.5).tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]
    with pytest.raises(ConfigError, match="probability, original"):
        decode_pen(logits, 0.5, "argmax")


def _constant_pen_logits(m, logit0: float, logit1: float):
    """Make the pen head output (logit0, logit1) for every point (weights 0, bias set)."""
    with torch.no_grad():
        for net in (m.unet, m.ema.module):
            net.pen_state_out[0].weight.zero_()
            net.pen_state_out[0].bias.copy_(torch.tensor([logit0, logit1]))


@torch.no_grad()
def test_faithful_samples_decode_the_pen_as_the_original():
    """Pen logits (0.7, 0) everywhere: P(lift) = sigmoid(-0.7) = 0.33 keeps the pen down under
    the corrected rule; the original's raw class-0 logit 0.7 >= 0.5 lifts it at every point."""
    kw = dict(sampler="ddim", steps=3, generator=None)
    faithful, clean = tiny(faithful=True), tiny()
    for m in (faithful, clean):
        _constant_pen_logits(m, 0.7, 0.0)
        m.set_data_stats(1.0, lengths=[5, 7])
    assert faithful.config.pen_rule == "original" and clean.config.pen_rule == "probability"
    f = faithful.generate(2, **{**kw, "generator": torch.Generator().manual_seed(0)})
    c = clean.generate(2, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert np.all(f.points[:, 2] == 1.0) and np.all(c.points[:, 2] == 0.0)
    # the rule and its threshold are options too, in either mode
    f2 = faithful.generate(2, pen_decoding="probability", **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert np.all(f2.points[:, 2] == 0.0)
    c2 = clean.generate(2, pen_decoding="original", pen_break=0.8,
                        **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert np.all(c2.points[:, 2] == 0.0)
    c3 = SketchKnitter(Config(**{**TINY, "pen_decoding": "original"}))
    assert c3.config.pen_rule == "original"
    with pytest.raises(ConfigError, match="pen_decoding"):
        SketchKnitter(Config(**{**TINY, "pen_decoding": "logit"}))


def test_faithful_ema_and_weights_are_the_originals():
    """faithful: EMA at the rate from step 0 (no warm-up), samples from the final weights;
    the corrected mode warms up and samples the best checkpoint. Each is its own switch."""
    f, c = tiny(faithful=True), tiny()
    assert not f.ema.warmup and f.ema.decay() == 0.9999
    assert c.ema.warmup and c.ema.decay() == pytest.approx(2 / 11)
    assert f.default_checkpoint() == "latest" and c.default_checkpoint() == "best"
    assert tiny(faithful=True, ema_warmup=True).ema.warmup
    assert tiny(sample_from="latest").default_checkpoint() == "latest"
    with pytest.raises(ConfigError, match="sample_from"):
        tiny(sample_from="final")
    # one EMA step at 0.9999 from a copy of the initial weights: theta_ema moves by 1e-4
    w0 = f.unet.time_embed[0].weight.detach().clone()
    with torch.no_grad():
        f.unet.time_embed[0].weight.add_(1.0)
    f.on_step_end(0)
    torch.testing.assert_close(f.ema.module.time_embed[0].weight, w0 + 1e-4, rtol=0, atol=1e-6)


def test_open_run_samples_the_final_weights_when_faithful(tmp_path):
    from sketchlab.runs import open_run
    from sketchlab.train import checkpoint as ckpt

    for faithful in (True, False):
        run = tmp_path / f"f{int(faithful)}"
        run.mkdir()
        m = tiny(faithful=faithful)
        ckpt.write_run_config(run, "sketchknitter", m.config, 1.0, ("star",))
        with torch.no_grad():
            m.unet.pen_state_out[0].bias.fill_(1.0)
        ckpt.save_weights(run / "best.safetensors", m, {"model": "sketchknitter", "step": 2})
        with torch.no_grad():
            m.unet.pen_state_out[0].bias.fill_(2.0)
        ckpt.save_weights(run / "model.safetensors", m, {"model": "sketchknitter", "step": 4})
        loaded = open_run(run).model
        assert float(loaded.unet.pen_state_out[0].bias[0]) == (2.0 if faithful else 1.0)
        assert float(open_run(run, which="best").model.unet.pen_state_out[0].bias[0]) == 1.0
        assert float(open_run(run, which="latest").model.unet.pen_state_out[0].bias[0]) == 2.0


def test_make_batch_pads_and_masks():
    m = tiny()
    a = np.array([[1, 2, 0], [3, 4, 1]], np.float32)
    long = np.tile(np.array([[1, 0, 0]], np.float32), (40, 1))
    b = m.make_batch([a, long])
    assert b["x0"].shape == (2, 32, 2) and b["pen"].dtype == torch.long
    assert b["mask"][0].tolist() == [1.0, 1.0] + [0.0] * 30
    assert b["x0"][0, :2].tolist() == [[1, 2], [3, 4]] and torch.all(b["x0"][0, 2:] == 0)
    assert b["pen"][0, :3].tolist() == [0, 1, 0]
    assert b["mask"][1].sum() == 32 and b["pen"][1, 31] == 1  # truncated: last point lifts
    assert m.keep_sketch(a) and not m.keep_sketch(long)
    with pytest.raises(DataError):
        m.make_batch([np.zeros((0, 3), np.float32)])
    with pytest.raises(DataError):
        m.make_batch([np.array([[np.nan, 0, 0]], np.float32)])


def test_optional_training_augmentation():
    s = circles(4, np.random.default_rng(0), 20, 20)
    plain = tiny().make_batch(s, True, np.random.default_rng(1))
    m = tiny(random_scale=0.2, augment_prob=0.5)
    aug = m.make_batch(s, True, np.random.default_rng(1))
    assert not torch.equal(aug["x0"], plain["x0"]) and aug["mask"].sum() < plain["mask"].sum()
    valid = m.make_batch(s, False, np.random.default_rng(1))
    assert torch.equal(valid["x0"], plain["x0"])


def test_scale_factors():
    sketches = [np.array([[3, 4, 1], [0, 0, 0]], np.float32)]
    # faithful (B3): std of [3, 4, 1, 0, 0, 0]; corrected: std of [3, 4, 0, 0]
    assert faithful_scale_factor(sketches) == pytest.approx(math.sqrt(26 / 6 - (8 / 6) ** 2))
    m = tiny(faithful=True)
    assert m.compute_scale_factor(m.config, sketches) == pytest.approx(1.5986, abs=1e-4)
    m = tiny()
    assert m.compute_scale_factor(m.config, sketches) == pytest.approx(math.sqrt(6.25 - 1.75 ** 2))


def _zero_heads(m):
    with torch.no_grad():
        for p in m.unet.pen_state_out.parameters():
            p.zero_()


def test_loss_hand_value_masks_padding():
    """With both heads zero, eps_hat = 0 and pen logits = 0: mse = mean(noise^2) over the real
    rows of each sketch, CE = ln 2, loss = mse + 0.01 ln 2."""
    m = tiny()
    _zero_heads(m)
    batch = m.make_batch([np.ones((3, 3), np.float32), np.ones((5, 3), np.float32)])
    noise = torch.randn(2, 32, 2)
    out = m.loss(batch, 0, t=torch.tensor([10, 40]), noise=noise)
    mse = (noise[0, :3].square().mean() + noise[1, :5].square().mean()) / 2
    assert out["mse"].item() == pytest.approx(float(mse), rel=1e-5)
    assert out["pen_ce"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert out["loss"].item() == pytest.approx(float(mse) + 0.01 * math.log(2), rel=1e-5)
    # padding rows hold no information: changing the noise there changes nothing
    noise2 = noise.clone()
    noise2[0, 3:] = 7.0
    m2 = m.loss(batch, 0, t=torch.tensor([10, 40]), noise=noise2)
    assert m2["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)


def test_pen_cross_entropy_term_hand_computed():
    """The loss's pen term with a non-trivial pen head: the mean cross-entropy of the logits the
    UNet gives for x_t, against the pen bits, over the real rows (corrected) or all 32 rows,
    padding (pen 0) included (faithful, the original's `training_losses`); loss = mse + 0.01 CE."""
    for faithful in (False, True):
        m = tiny(faithful=faithful)
        randomize(m.unet)
        sketches = [np.array([[0.5, 0.2, 0], [0.1, -0.3, 1], [0.4, 0.4, 0]], np.float32),
                    np.array([[1.0, 0.0, 1], [-0.2, 0.6, 0], [0.0, 0.3, 0], [0.2, 0.2, 1]], np.float32)]
        batch = m.make_batch(sketches, False)
        t, noise = torch.tensor([7, 33]), torch.randn(2, 32, 2, generator=torch.Generator().manual_seed(3))
        out = m.loss(batch, 0, t=t, noise=noise)
        mask = torch.ones(2, 32) if faithful else batch["mask"]
        x_t = m.diffusion.q_sample(batch["x0"], t, noise) * mask[..., None]
        inp = x_t if faithful else torch.cat([x_t, mask[..., None]], -1)
        with torch.no_grad():
            _, logits = m.unet(inp, m.diffusion.scale_timesteps(t))
        ce, count = 0.0, 0
        for b in range(2):
            rows = 32 if faithful else len(sketches[b])
            for n in range(rows):
                pen = int(sketches[b][n, 2]) if n < len(sketches[b]) else 0
                l0, l1 = (float(v) for v in logits[b, n])
                ce += math.log(math.exp(l0) + math.exp(l1)) - (l1 if pen else l0)
                count += 1
        assert out["pen_ce"].item() == pytest.approx(ce / count, rel=1e-5)
        assert out["loss"].item() == pytest.approx(out["mse"].item() + 0.01 * ce / count, rel=1e-5)
        assert out["pen_ce"].item() != pytest.approx(math.log(2), rel=1e-3)   # not the trivial head


def test_faithful_loss_covers_padding():
    m = tiny(faithful=True)
    _zero_heads(m)
    batch = m.make_batch([np.ones((3, 3), np.float32), np.ones((5, 3), np.float32)])
    noise = torch.randn(2, 32, 2)
    out = m.loss(batch, 0, t=torch.tensor([10, 40]), noise=noise)
    assert out["mse"].item() == pytest.approx(float(noise.square().mean()), rel=1e-5)


def test_loss_records_training_lengths():
    m = tiny()
    m.train()
    m.loss(m.make_batch([np.ones((3, 3), np.float32)] * 2 + [np.ones((7, 3), np.float32)]), 0)
    assert m.length_counts[3] == 2 and m.length_counts[7] == 1 and m.length_counts.sum() == 3
    m.eval()
    m.loss(m.make_batch([np.ones((3, 3), np.float32)]), 0)
    assert m.length_counts.sum() == 3


def test_ema_is_a_buffer_with_warmup():
    m = tiny(ema_rate=0.9)
    names = {n for n, _ in m.named_parameters()}
    assert not any(n.startswith("ema.") for n in names)
    assert any(k.startswith("ema.module.") for k in m.state_dict())
    w0 = m.unet.time_embed[0].weight.detach().clone()
    with torch.no_grad():
        m.unet.time_embed[0].weight.add_(1.0)
    m.on_step_end(0)
    # warm-up: d = min(0.9, (1 + 1) / (10 + 1)) = 2/11
    d = 2 / 11
    torch.testing.assert_close(m.ema.module.time_embed[0].weight, d * w0 + (1 - d) * (w0 + 1))
    assert int(m.ema.num_updates) == 1
    m2 = tiny(ema_rate=0.5, ema_warmup=False)
    assert m2.ema.decay() == 0.5


# ---------------------------------------------------------------------------------------------
# Sampling and conditional generation
# ---------------------------------------------------------------------------------------------


def test_generate_lengths_units_and_faithful_rows():
    m = tiny()
    with pytest.raises(ConfigError, match="length distribution"):
        m.generate(2, sampler="ddim", steps=3)
    m.set_data_stats(2.5, lengths=[4, 4, 9])
    s = m.generate(6, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0))
    assert isinstance(s, Sketches) and len(s) == 6 and s.scale_factor == 2.5
    assert set(s.lengths.tolist()) <= {4, 9}
    assert set(np.unique(s.points[:, 2]).tolist()) <= {0.0, 1.0}
    f = tiny(faithful=True)
    s = f.generate(3, sampler="ddpm", steps=5, generator=torch.Generator().manual_seed(0))
    assert s.lengths.tolist() == [32, 32, 32]
    assert np.abs(s.points[:, :2]).max() <= 1.0  # faithful clamps x0_hat to [-1, 1] (B2)
    with pytest.raises(ConfigError):
        m.generate(0)
    with pytest.raises(ConfigError, match="r-Shortcut"):
        m.generate(2, sampler="rshortcut")


def test_generate_is_reproducible_and_batches_agree():
    m = tiny()
    randomize(m.ema.module)
    m.set_data_stats(1.0, lengths=[5, 9, 12])
    kw = dict(sampler="ddim", steps=4, lengths=[5, 9, 12, 12, 5])
    a = m.generate(5, generator=torch.Generator().manual_seed(4), **kw)
    b = m.generate(5, generator=torch.Generator().manual_seed(4), **kw)
    np.testing.assert_array_equal(a.points, b.points)
    assert a.lengths.tolist() == [5, 9, 12, 12, 5]


def test_heal_is_sdedit_hand_value():
    """An untrained model predicts eps = 0, so deterministic DDIM from t_s returns
    x_ts / sqrt(abar_ts) = c + sqrt(1 / abar_ts - 1) * noise exactly."""
    m = tiny()
    m.set_data_stats(2.0)
    rng = np.random.default_rng(0)
    cond = circles(3, rng)
    out = m.heal(Sketches.from_list(cond, scale_factor=2.0), strength=0.3, sampler="ddim",
                   steps=4, generator=torch.Generator().manual_seed(7))
    smp = m.make_sampler("ddim", 4, max_timestep=14)  # t0 = 0.3 * 50 - 1
    t_s = smp.timesteps[0]
    assert t_s <= 14
    noise = torch.randn((3, 32, 2), generator=torch.Generator().manual_seed(7))
    abar = m.diffusion.alphas_cumprod[t_s]
    for i, c in enumerate(cond):
        expected = c[:, :2] + math.sqrt(1 / abar - 1) * noise[i, :len(c)].numpy()
        np.testing.assert_allclose(out[i][:, :2], expected, rtol=1e-4, atol=1e-4)
    assert out.lengths.tolist() == [len(c) for c in cond]
    # strength 0 returns the input; raw-unit input is converted to the model's units
    same = m.heal(Sketches.from_list(cond, scale_factor=1.0), strength=0.0)
    np.testing.assert_allclose(same[0][:, :2], cond[0][:, :2] / 2.0)
    np.testing.assert_array_equal(same[0][:, 2], cond[0][:, 2])
    more = m.heal(cond, strength=0.5, sampler="ddim", steps=3, extra_points=4)
    assert more.lengths.tolist() == [len(c) + 4 for c in cond]
    with pytest.raises(DataError, match="at most 32"):
        m.heal([np.zeros((40, 3), np.float32)], strength=0.5)
    with pytest.raises(DataError):
        m.heal([np.array([[np.nan, 0, 0]], np.float32)], strength=0.5)
    with pytest.raises(ConfigError):
        m.heal(cond, strength=1.5)
    # heal's strength is SketchKnitter's noise_level (t0 / T); the old keyword points there
    by_name = m.generate(references=Sketches.from_list(cond, scale_factor=2.0), noise_level=0.3,
                         sampler="ddim", steps=4, generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(by_name.points, out.points)
    assert (m.heal_option, m.can_heal, m.can_sample, m.can_encode) == ("noise_level", True, True, False)
    with pytest.raises(ConfigError, match="noise_level here"):
        m.generate(references=cond, strength=0.3)
    with pytest.raises(ConfigError, match="not both"):
        m.heal(cond, strength=0.3, noise_level=0.3)


def test_fast_path_matches_plain_path():
    """bf16 shadow weights + the static-buffer step (CUDA graph on GPU) vs the fp32 eager loop."""
    m = tiny()
    randomize(m.ema.module)
    m.set_data_stats(1.0, lengths=[10, 20, 32])
    for sampler in ("ddim", "ddpm"):
        kw = dict(sampler=sampler, steps=8, lengths=[10, 20, 32], batch_size=2)
        eps_plain, eps_fast = [], []
        plain = m.generate(3, fast=False, generator=torch.Generator().manual_seed(2),
                           callback=lambda *a: eps_plain.append(a[4].clone()), **kw)
        fast = m.generate(3, fast=True, fast_dtype=torch.bfloat16,
                          generator=torch.Generator().manual_seed(2),
                          callback=lambda *a: eps_fast.append(a[4].clone()), **kw)
        assert fast.lengths.tolist() == plain.lengths.tolist()
        # same noise stream (a short last batch is padded on the fast path), bf16 network
        for a, b in zip(eps_fast, eps_plain):
            assert float((a[:len(b)] - b).norm() / b.norm()) < 0.02
        err = np.linalg.norm(fast.points[:, :2] - plain.points[:, :2]) / np.linalg.norm(
            plain.points[:, :2])
        assert err < 0.01
    kw = dict(sampler="ddim", steps=8, lengths=[10, 20, 32], batch_size=2)
    # the shadow is refreshed from the live weights on every call
    with torch.no_grad():
        m.ema.module.out[2].weight.mul_(3.0)
    plain2 = m.generate(3, fast=False, generator=torch.Generator().manual_seed(2), **kw)
    fast2 = m.generate(3, fast=True, fast_dtype=torch.bfloat16,
                       generator=torch.Generator().manual_seed(2), **kw)
    by_name = m.generate(3, fast=True, fast_dtype="bfloat16",       # the command line's spelling
                         generator=torch.Generator().manual_seed(2), **kw)
    np.testing.assert_array_equal(by_name.points, fast2.points)
    assert not np.allclose(fast2.points, fast.points)
    np.testing.assert_allclose(fast2.points[:, :2], plain2.points[:, :2], rtol=0.01, atol=0.5)


def test_callback_reports_estimated_noise():
    from sketchlab.nn.diffusion import estimated_noise

    m = tiny()
    randomize(m.ema.module)
    m.set_data_stats(1.0, lengths=[8])
    seen = []
    m.generate(2, sampler="ddpm", steps=6, callback=lambda i, t, x, x0, eps, pen: seen.append(
        (i, t, estimated_noise(eps).clone())))
    # the original's "ddim" stride spacing: range(0, 50, 9) -> sampling starts at 45
    assert [s[0] for s in seen] == list(range(6)) and seen[0][1] == 45 and seen[-1][1] == 0
    assert all(s[2].shape == (2,) for s in seen)


def test_encode_returns_pooled_middle_features():
    m = tiny()
    z = m.encode(m.make_batch(circles(3, np.random.default_rng(1))))
    assert z.shape == (3, 64) and torch.isfinite(z).all()


def test_state_dict_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    m = tiny()
    randomize(m.ema.module)
    m.set_data_stats(3.0, lengths=[6, 7])
    m.set_shortcut_curve(np.linspace(1, 0, 50))
    save_file(m.state_dict(), tmp_path / "model.safetensors")
    m2 = tiny()
    m2.load_state_dict(load_file(tmp_path / "model.safetensors"))
    kw = dict(sampler="ddim", steps=3)
    a = m.generate(2, generator=torch.Generator().manual_seed(0), **kw)
    b = m2.generate(2, generator=torch.Generator().manual_seed(0), **kw)
    np.testing.assert_array_equal(a.points, b.points)
    assert b.scale_factor == 3.0


@pytest.mark.slow
def test_tiny_train_and_sample():
    """150 Adam steps on one-stroke polygons: the loss falls far below its start, and samples
    (finite, of the training lengths, in the data's units) move from the untrained model's
    blown-up offsets towards the data's scale."""
    rng = np.random.default_rng(0)
    data = circles(256, rng)
    ref = np.abs(np.concatenate(data)[:, :2]).mean()
    m = tiny(ema_rate=0.99)
    m.set_data_stats(1.0, lengths=[len(s) for s in data])

    def sample_scale(kw):
        s = m.generate(32, generator=torch.Generator().manual_seed(0), **kw)
        assert len(s) == 32 and np.all(np.isfinite(s.points))
        assert s.lengths.min() >= 6 and s.lengths.max() <= 24 and s.scale_factor == 1.0
        return np.abs(s.points[:, :2]).mean() / ref

    samplers = (dict(sampler="ddpm"), dict(sampler="ddim", steps=10))
    before = [sample_scale(kw) for kw in samplers]
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()
    losses = []
    for step in range(150):
        idx = rng.choice(len(data), 16, replace=False)
        out = m.loss(m.make_batch([data[i] for i in idx], True, rng), step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        m.on_step_end(step)
        losses.append(out["loss"].item())
    m.eval()
    assert np.mean(losses[-30:]) < 0.4 * np.mean(losses[:10])
    after = [sample_scale(kw) for kw in samplers]
    print("loss", np.mean(losses[:10]), np.mean(losses[-30:]), "scale before/after", before, after)
    for b, a in zip(before, after):
        assert a < 0.1 * b


@pytest.mark.slow
def test_rshortcut_calibration_end_to_end():
    m = tiny(recognizer_hidden=16, recognizer_layers=1)
    randomize(m.ema.module, 0.02)
    m.set_data_stats(1.0, lengths=[8, 12])

    def score_fn(sk: Sketches) -> np.ndarray:  # "recognizable" = small offsets
        return np.array([np.exp(-np.abs(s[:, :2]).mean()) for s in sk])

    predictor, curve, info = calibrate_shortcut(
        m, score_fn, n_sketches=16, batch_size=8, record_steps=10, epochs=3, pilot=8,
        generator=torch.Generator().manual_seed(0))
    assert curve.shape == (50,) and np.all(np.isfinite(curve)) and np.all((curve >= 0) & (curve <= 1))
    assert info["tuples"] == 16 * 10 and len(info["bce"]) == 3
    assert torch.allclose(m.shortcut_curve, torch.as_tensor(curve, dtype=torch.float32))
    s = m.generate(4, sampler="rshortcut", steps=6, generator=torch.Generator().manual_seed(1))
    assert len(s) == 4
    smp = m.make_sampler("rshortcut", 6)
    assert smp.timesteps[0] == 49 and smp.timesteps[-1] == 0 and len(smp.timesteps) == 6
    with pytest.raises(ConfigError):
        calibrate_shortcut(m, lambda sk: np.zeros(3), n_sketches=8, batch_size=8, record_steps=2,
                           epochs=1, pilot=8)


# ---------------------------------------------------------------------------------------------
# Corruptions
# ---------------------------------------------------------------------------------------------


def test_remove_points_keeps_absolute_positions():
    s = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1], [2, 2, 0], [1, 1, 1]], np.float32)
    out = remove_points(s, np.array([True, False, True, True, False]))
    np.testing.assert_allclose(to_absolute(out)[:, :2], to_absolute(s)[[0, 2, 3], :2])
    # the pen lifts before each gap: after point 0 (point 1 removed)
    assert out[:, 2].tolist() == [1, 1, 0]


def test_corruptions():
    rng = np.random.default_rng(0)
    s = circles(1, rng, 40, 40)[0]
    for p in (0.1, 0.3):
        assert len(mask_points(s, p, rng)) == 40 - round(p * 40)
        assert len(mask_patches(s, p, rng)) <= 40 - round(p * 40)
    np.testing.assert_array_equal(deform(s, 0.0, rng), s)
    moved = deform(s, 0.3, rng)
    assert moved.shape == s.shape and not np.allclose(moved, s)
    multi = np.concatenate([s[:10], s[10:20], s[20:]])
    multi[[9, 19], 2] = 1
    kept = drop_strokes(multi, 0.99, np.random.default_rng(1))
    assert len(kept) in (10, 20)  # exactly one stroke survives


@pytest.mark.gpu
def test_cuda_graph_path_matches_plain_path_on_gpu():
    """On CUDA: the graphed step in fp32 replays the plain loop (same noise stream); in bf16 it
    stays close. Also with a short last batch (static-shape padding)."""
    dev = torch.device("cuda")
    m = tiny().to(dev)
    randomize(m.ema.module)
    m.set_data_stats(1.0, lengths=[10, 20, 32])
    for sampler in ("ddim", "ddpm"):
        kw = dict(sampler=sampler, steps=8, lengths=[10, 20, 32], batch_size=2, device=dev)
        plain = m.generate(3, fast=False, generator=torch.Generator(dev).manual_seed(2), **kw)
        graph32 = m.generate(3, fast=True, fast_dtype=torch.float32,
                             generator=torch.Generator(dev).manual_seed(2), **kw)
        np.testing.assert_allclose(graph32.points, plain.points, rtol=1e-3, atol=1e-3)
        graph16 = m.generate(3, fast=True, generator=torch.Generator(dev).manual_seed(2), **kw)
        err = np.linalg.norm(graph16.points[:, :2] - plain.points[:, :2]) / np.linalg.norm(
            plain.points[:, :2])
        assert err < 0.01
    # DDIM ran as one whole-loop graph per runner
    loops = [entry[1]._loops for entry in m._fast_cache.values()]
    assert loops and all(8 in lp and lp[8][0] is not None for lp in loops)


@pytest.mark.gpu
def test_amp_off_samples_in_float32_on_gpu(monkeypatch):
    """amp=False (the original, the paper preset): the CUDA fast path runs float32 weights, so it
    replays the plain float32 loop; with amp on (the default) it runs bf16 shadow weights."""
    dev = torch.device("cuda")
    seen = []
    for amp in (False, True):
        m = tiny(amp=amp).to(dev)
        randomize(m.ema.module)
        m.set_data_stats(1.0, lengths=[10, 20])
        real = m._runner
        monkeypatch.setattr(m, "_runner", lambda net, b, d, c, dtype, clip, real=real: (
            seen.append(dtype), real(net, b, d, c, dtype, clip))[1])
        kw = dict(sampler="ddim", steps=6, lengths=[10, 20], device=dev)
        fast = m.generate(2, generator=torch.Generator(dev).manual_seed(1), **kw)
        plain = m.generate(2, fast=False, generator=torch.Generator(dev).manual_seed(1), **kw)
        if not amp:
            np.testing.assert_allclose(fast.points, plain.points, rtol=1e-4, atol=1e-4)
    assert seen == [torch.float32, torch.bfloat16]


def test_train_and_sample_through_the_cli(tmp_path, capsys):
    """`sketchlab train sketchknitter` (the generic trainer) then `sketchlab sample` with DDIM and
    with conditional refinement of test sketches."""
    from sketchlab.cli import main

    hp = ("num_points=32,model_channels=32,lift_dim=16,channel_mult=[1,2],num_res_blocks=1,"
          "diffusion_steps=50,batch_size=8,eval_every=0,ema_rate=0.9")
    run = tmp_path / "run"
    assert main(["train", "sketchknitter", "--out", str(run), "--categories", "star",
                 "--limit-per-category", "24", "--hparams", hp, "--max-steps", "4",
                 "--no-progress"]) == 0
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--out", str(out), "--n", "5", "--sampler", "ddim",
                 "--steps", "5"]) == 0
    sk = Sketches.load(out)
    assert len(sk) == 5 and all(0 < n <= 32 for n in sk.lengths) and sk.scale_factor == 1.0
    assert main(["sample", str(run), "--out", str(out), "--condition-on", "test", "--n", "3",
                 "--strength", "0.3", "--sampler", "ddim", "--steps", "5"]) == 0
    assert len(Sketches.load(out)) == 3
    assert main(["sample", str(run), "--out", str(out), "--sampler", "rshortcut", "--n", "2"]) == 2
    assert "calibrat" in capsys.readouterr().err.lower()
    # options of other models are refused, naming the models that take them
    assert main(["sample", str(run), "--out", str(out), "--n", "2", "--greedy"]) == 2
    err = capsys.readouterr().err
    assert "--greedy does not apply to a sketchknitter model" in err and "sketch-rnn" in err
    assert main(["sample", str(run), "--out", str(out), "--n", "2", "--strength", "0.3"]) == 2
    assert "--condition-on" in capsys.readouterr().err


def test_class_conditional_unet_adds_a_label_embedding_to_the_timestep_embedding():
    from sketchlab.nn.unet1d import UNet1D

    torch.manual_seed(0)
    kw = dict(num_points=32, model_channels=32, lift_dim=32, channel_mult=(1, 2),
              num_res_blocks=1, num_heads=2)
    plain, cond = UNet1D(**kw), UNet1D(**kw, num_classes=3)
    assert plain.label_emb is None and tuple(cond.label_emb.weight.shape) == (3, 128)
    with torch.no_grad():   # as if trained: the zero-initialised output layers would hide emb
        for p in plain.parameters():
            p.normal_(0.0, 0.2)
    cond.load_state_dict({**plain.state_dict(), "label_emb.weight": torch.zeros(3, 128)})
    x, t = torch.randn(2, 32, 2), torch.tensor([10.0, 500.0])
    y = torch.tensor([0, 2])
    # a zero label embedding is the unconditional network; another label changes the output
    assert torch.equal(cond(x, t, y=y)[1], plain(x, t)[1])
    with torch.no_grad():
        cond.label_emb.weight[2] = 1.0
    assert torch.equal(cond(x[:1], t[:1], y=y[:1])[1], plain(x[:1], t[:1])[1])
    assert not torch.allclose(cond(x[1:], t[1:], y=y[1:])[1], plain(x[1:], t[1:])[1])
    with pytest.raises(ValueError, match="needs labels"):
        cond(x, t)
    with pytest.raises(ValueError, match="needs labels"):
        plain(x, t, y=y)


def test_class_conditional_knitter_trains_on_categories_and_samples_each_class(tmp_path, capsys):
    """class_cond=1: the trainer's category labels condition the UNet; samples carry the class
    they were drawn for (in turn, or --category), the fast static-buffer path agrees with the
    plain loop, references keep their own class."""
    from sketchlab.cli import main
    from sketchlab.runs import load_model

    hp = ("num_points=32,model_channels=32,lift_dim=16,channel_mult=[1,2],num_res_blocks=1,"
          "diffusion_steps=50,batch_size=8,eval_every=0,ema_rate=0.9,class_cond=1")
    run = tmp_path / "run"
    assert main(["train", "sketchknitter", "--out", str(run), "--categories", "star,fish",
                 "--limit-per-category", "24", "--hparams", hp, "--max-steps", "3",
                 "--no-progress"]) == 0
    model = load_model(run)
    assert model.config.num_classes == 2 and tuple(model.unet.label_emb.weight.shape)[0] == 2
    opts = dict(sampler="ddim", steps=4, seed=0)
    mixed = model.generate(4, **opts)
    assert mixed.category.tolist() == [0, 1, 0, 1] and mixed.category_names == ("star", "fish")
    fish = model.generate(3, category="fish", **opts)
    assert fish.category.tolist() == [1, 1, 1]
    # a class changes the drawing (same noise, same lengths)
    lengths = [20, 20]
    a = model.generate(2, category=0, lengths=lengths, **opts)
    b = model.generate(2, category=1, lengths=lengths, **opts)
    assert not np.allclose(a.points, b.points)
    fast = model.generate(2, category=1, lengths=lengths, fast=True, batch_size=4, **opts)
    assert np.allclose(fast.points, b.points, atol=1e-4)
    with pytest.raises(ConfigError, match="--category 'cat': this model draws star, fish"):
        model.generate(2, category="cat", **opts)
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--out", str(out), "--n", "2", "--category", "star",
                 "--sampler", "ddim", "--steps", "3"]) == 0
    assert Sketches.load(out).category_names == ("star", "fish")
    assert Sketches.load(out).category.tolist() == [0, 0]
