"""The mixture head against hand-computed densities, the originals' masking/reduction rules,
temperature-sampling statistics and extreme inputs."""

import math

import pytest
import torch

from sketchlab.errors import ConfigError
from sketchlab.nn.mixture import (
    MixtureHead,
    _inverse_cdf,
    draw_noise,
    mixture_loss_terms,
    mixture_nll,
    offset_nll,
    sample_step,
    split_params,
)


def raw_from(pen, pi, mux, muy, sx, sy, rho):
    """Raw head output from activated parameters (lists of length M, pen of length 3)."""
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    parts = [t(pen), torch.log(t(pi)), t(mux), t(muy), torch.log(t(sx)), torch.log(t(sy)), torch.atanh(t(rho))]
    return torch.cat(parts)


def direct_nll(raw, dx, dy):
    """The originals' formula verbatim, in float64: -log(sum pi N2 + 1e-6)."""
    p = split_params(raw.double())
    pi, sx, sy, rho = p.pi, p.sigma_x, p.sigma_y, p.rho
    nx, ny = dx.unsqueeze(-1) - p.mu_x, dy.unsqueeze(-1) - p.mu_y
    z = (nx / sx) ** 2 + (ny / sy) ** 2 - 2 * rho * nx * ny / (sx * sy)
    neg_rho = 1 - rho**2
    n2 = torch.exp(-z / (2 * neg_rho)) / (2 * math.pi * sx * sy * torch.sqrt(neg_rho))
    return -torch.log((pi * n2).sum(-1) + 1e-6)


def test_layout_pen_first_then_six_chunks():
    raw = torch.arange(123.0)
    p = split_params(raw)
    assert p.pen_logits.tolist() == [0.0, 1.0, 2.0]
    assert p.pi_logits[0] == 3 and p.mu_x[0] == 23 and p.mu_y[0] == 43
    assert p.log_sigma_x[0] == 63 and p.log_sigma_y[0] == 83 and p.rho_raw[0] == 103 and p.rho_raw[-1] == 122
    with pytest.raises(ConfigError):
        split_params(torch.zeros(10))


def test_one_component_density_by_hand():
    # mu = (0, 0), sigma = (2, 1), rho = 0.5, target (1, 0.5):
    # zx = 0.5, zy = 0.5, Z = 0.25 + 0.25 - 2*0.5*0.5*0.5 = 0.25, 1 - rho^2 = 0.75,
    # N2 = exp(-0.25 / 1.5) / (2 pi * 2 * 1 * sqrt(0.75)) = 0.8464817249 / 10.8827961854 = 0.0777816391
    # NLL = -log(0.0777816391 + 1e-6) = 2.5538370210
    raw = raw_from([0, 0, 0], [1.0], [0.0], [0.0], [2.0], [1.0], [0.5]).float()
    nll = offset_nll(raw, torch.tensor(1.0), torch.tensor(0.5))
    assert nll.item() == pytest.approx(2.5538370210, abs=2e-6)
    assert torch.exp(-nll).item() - 1e-6 == pytest.approx(0.0777816391, abs=1e-7)


def test_two_component_density_by_hand():
    # pi = (0.25, 0.75); target (0, 0).
    # comp 1: mu (0, 0), sigma (1, 1), rho 0: N2 = 1 / (2 pi) = 0.1591549431
    # comp 2: mu (1, -1), sigma (0.5, 2), rho -0.3: zx = -2, zy = 0.5,
    #   Z = 4 + 0.25 - 2(-0.3)(-2)(0.5) = 3.65, 1 - rho^2 = 0.91,
    #   N2 = exp(-3.65 / 1.82) / (2 pi * 0.5 * 2 * sqrt(0.91)) = 0.1345937219 / 5.9937767743 = 0.0224555780
    # sum = 0.25 * 0.1591549431 + 0.75 * 0.0224555780 = 0.0566304193; NLL = -log(sum + 1e-6) = 2.8711913369
    raw = raw_from([0, 0, 0], [0.25, 0.75], [0.0, 1.0], [0.0, -1.0], [1.0, 0.5], [1.0, 2.0], [0.0, -0.3]).float()
    nll = offset_nll(raw, torch.tensor(0.0), torch.tensor(0.0))
    assert nll.item() == pytest.approx(2.8711913369, abs=2e-6)


def test_matches_original_formula_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    raw = (torch.randn(4, 7, 123, generator=g) * 0.7).double().requires_grad_()
    dx, dy = torch.randn(4, 7, generator=g).double(), torch.randn(4, 7, generator=g).double()
    ours = offset_nll(raw, dx, dy)
    theirs = direct_nll(raw, dx, dy)
    assert torch.allclose(ours.double(), theirs, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(ours.sum(), raw)[0]
    g2 = torch.autograd.grad(theirs.sum(), raw)[0]
    assert torch.allclose(g1.double(), g2, rtol=1e-4, atol=1e-5)


def test_epsilon_floor_bounds_the_loss():
    # A target far from every component: sum pi N2 underflows and the loss is -log(1e-6).
    raw = raw_from([0, 0, 0], [1.0], [0.0], [0.0], [1.0], [1.0], [0.0]).float()
    nll = offset_nll(raw, torch.tensor(1e3), torch.tensor(-1e3))
    assert nll.item() == pytest.approx(-math.log(1e-6), rel=1e-6)


def _toy_batch():
    # B = 2, T = 3; sketch 0 ends after 2 points, sketch 1 after 3.
    target = torch.tensor(
        [
            [[0.5, 0.0, 1, 0, 0], [0.0, 0.5, 0, 1, 0], [0, 0, 0, 0, 1]],
            [[0.1, 0.2, 1, 0, 0], [0.3, 0.1, 1, 0, 0], [0.2, 0.2, 0, 1, 0]],
        ]
    )
    raw = torch.zeros(2, 3, 123)  # pen logits 0 -> CE = log 3 for every row
    return raw, target


def test_masking_train_vs_eval():
    raw, target = _toy_batch()
    tr = mixture_loss_terms(raw, target, training=True, reduction="none")
    ev = mixture_loss_terms(raw, target, training=False, reduction="none")
    log3 = math.log(3.0)
    # Pen CE: every row in training (end-of-sketch rows included), masked by 1 - p3 in eval.
    assert torch.allclose(tr["pen"], torch.full((2, 3), log3))
    assert torch.allclose(ev["pen"], torch.tensor([[log3, log3, 0.0], [log3, log3, log3]]))
    # Offset NLL: masked in both modes; all 20 components are N(0, I), rho 0.
    assert tr["offset"][0, 2] == 0 and ev["offset"][0, 2] == 0
    expect = -math.log(math.exp(-0.5 * 0.25) / (2 * math.pi) + 1e-6)
    assert tr["offset"][0, 0].item() == pytest.approx(expect, abs=1e-5)
    assert torch.equal(tr["offset"], ev["offset"])


def test_reductions():
    raw, target = _toy_batch()
    per = mixture_loss_terms(raw, target, training=True, reduction="none")
    total = (per["offset"] + per["pen"]).sum()
    assert mixture_nll(raw, target, True, "sum_time_mean_batch").item() == pytest.approx(total.item() / 2, rel=1e-6)
    assert mixture_nll(raw, target, True, "mean").item() == pytest.approx(total.item() / 6, rel=1e-6)
    with pytest.raises(ConfigError):
        mixture_nll(raw, target, True, "sum")


def test_extreme_inputs_stay_finite():
    B, T, M = 2, 6, 20
    raw = torch.zeros(B, T, 3 + 6 * M)
    p = split_params(raw)
    with torch.no_grad():
        p.pi_logits[..., 0] = 100.0
        p.pi_logits[..., 1] = -100.0
        p.log_sigma_x[..., :5] = -80.0  # sigma ~ 2e-35
        p.log_sigma_y[..., 5:10] = 40.0
        p.rho_raw[..., 10:15] = 30.0  # rho == 1 in float32
        p.rho_raw[..., 15:] = -30.0
        p.mu_x[..., 3] = 1e6
        p.pen_logits[..., 0] = 1e4
    target = torch.zeros(B, T, 5)
    target[..., 0] = torch.tensor([0.0, 1e-30, 1e6, -1e6, 3.0, 0.0])
    target[..., 2] = 1
    raw.requires_grad_()
    loss = mixture_nll(raw, target, training=True) + mixture_nll(raw, target, training=False, reduction="mean")
    assert torch.isfinite(loss)
    (g,) = torch.autograd.grad(loss, raw)
    assert torch.isfinite(g).all()
    rows = sample_step(raw.detach()[:, 0], 0.5, torch.Generator().manual_seed(0))
    assert torch.isfinite(rows).all()


def test_sample_step_follows_the_formula_given_noise():
    # 1 component: the offset is mu + tau * L n with L the Cholesky factor of the covariance.
    raw = raw_from([0.0, 0.0, 0.0], [1.0], [1.0], [-1.0], [2.0], [1.0], [0.5]).float()[None]
    noise = torch.tensor([[0.3, 0.2, 1.5, -0.7]])
    row = sample_step(raw, 0.5, noise=noise)[0]
    assert row[0].item() == pytest.approx(1.0 + 2.0 * 0.5 * 1.5, abs=1e-5)
    assert row[1].item() == pytest.approx(-1.0 + 1.0 * 0.5 * (0.5 * 1.5 + math.sqrt(0.75) * -0.7), abs=1e-5)
    # pen logits equal: u = 0.2 < 1/3 -> p1 whatever the temperature.
    assert row[2:].tolist() == [1.0, 0.0, 0.0]


def test_temperature_scales_std_and_sharpens_pi_and_pen():
    n, tau = 20000, 0.5
    g = torch.Generator().manual_seed(1)
    raw = raw_from([0, 0, 0], [1.0], [1.0], [-1.0], [2.0], [1.0], [0.5]).float().expand(n, -1)
    rows = sample_step(raw, tau, g)
    dx, dy = rows[:, 0], rows[:, 1]
    assert dx.std().item() == pytest.approx(2.0 * tau, rel=0.03)
    assert dy.std().item() == pytest.approx(1.0 * tau, rel=0.03)
    assert dx.mean().item() == pytest.approx(1.0, abs=0.03)
    assert torch.corrcoef(torch.stack([dx, dy]))[0, 1].item() == pytest.approx(0.5, abs=0.03)
    # pi = (0.2, 0.3, 0.5), tau 0.5 -> pi' ~ pi^2 = (0.04, 0.09, 0.25) / 0.38; components told apart by mu_x.
    raw = raw_from([0.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 100.0, 200.0], [0.0] * 3, [1e-3] * 3, [1e-3] * 3, [0.0] * 3)
    rows = sample_step(raw.float().expand(n, -1), tau, g)
    freq = torch.bincount((rows[:, 0] / 100).round().long(), minlength=3).float() / n
    assert torch.allclose(freq, torch.tensor([0.04, 0.09, 0.25]) / 0.38, atol=0.015)
    # pen q = (0.6, 0.3, 0.1), tau 2 -> q' ~ sqrt(q).
    raw = raw_from([math.log(0.6), math.log(0.3), math.log(0.1)], [1.0], [0.0], [0.0], [1.0], [1.0], [0.0])
    rows = sample_step(raw.float().expand(n, -1), 2.0, g)
    q = torch.tensor([0.6, 0.3, 0.1]).sqrt()
    assert torch.allclose(rows[:, 2:].mean(0), q / q.sum(), atol=0.015)
    assert (rows[:, 2:].sum(1) == 1).all()


def test_per_sketch_temperature_and_greedy():
    raw = raw_from([0.1, 2.0, -1.0], [0.2, 0.7, 0.1], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1, 1, 1], [1, 1, 1], [0, 0, 0]).float()
    rows = sample_step(raw.expand(3, -1), greedy=True)
    assert rows.tolist() == [[2.0, 5.0, 0.0, 1.0, 0.0]] * 3
    # A tiny temperature collapses onto the greedy choice (std * tau -> 0, pi' -> one-hot).
    g = torch.Generator().manual_seed(0)
    rows = sample_step(raw.expand(2, -1), torch.tensor([1e-4, 1.0]), g)
    assert rows[0, :2].tolist() == pytest.approx([2.0, 5.0], abs=1e-3) and rows[0, 3] == 1


def test_inverse_cdf_edge_returns_last_index():
    probs = torch.tensor([[0.3, 0.3, 0.3999]])  # sums to 0.9999 (rounding)
    assert _inverse_cdf(probs, torch.tensor([0.99995])).item() == 2
    assert _inverse_cdf(probs, torch.tensor([0.3])).item() == 0  # first index with cdf >= u
    assert _inverse_cdf(probs, torch.tensor([0.30001])).item() == 1


def test_generator_makes_sampling_reproducible():
    raw = torch.randn(5, 123)
    a = sample_step(raw, 0.7, torch.Generator().manual_seed(3))
    b = sample_step(raw, 0.7, torch.Generator().manual_seed(3))
    c = sample_step(raw, 0.7, noise=draw_noise((5,), "cpu", torch.Generator().manual_seed(3)))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_head_shapes_and_inits():
    head = MixtureHead(64)
    assert head(torch.zeros(2, 5, 64)).shape == (2, 5, 123)
    bound = math.sqrt(6 / (64 + 123))
    assert head.linear.weight.abs().max() <= bound and head.linear.weight.abs().max() > 0.9 * bound
    assert head.linear.bias.abs().max() <= math.sqrt(3 / 123)
    head = MixtureHead(2048, bias=False, init_std=math.sqrt(1 / 2048))
    assert head.linear.bias is None
    assert head.linear.weight.std().item() == pytest.approx(math.sqrt(1 / 2048), rel=0.02)
    assert MixtureHead(8, n_components=5)(torch.zeros(1, 8)).shape == (1, 33)
