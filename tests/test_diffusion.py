"""Diffusion pieces against hand-computed values; sampler contracts; respacing rules."""

import math

import numpy as np
import pytest
import torch

from sketchlab.errors import ConfigError
from sketchlab.nn.diffusion import (
    DDIMSampler, DDPMSampler, GaussianDiffusion, RecognizabilitySpacing, StepRunner,
    estimated_noise, linear_beta_schedule, make_timesteps, reverse_loop,
)

# A 4-step toy schedule: betas 0.1..0.4 -> alphas 0.9, 0.8, 0.7, 0.6;
# abar = 0.9, 0.72, 0.504, 0.3024 (worked by hand; all values below follow from these).
TOY = GaussianDiffusion(np.array([0.1, 0.2, 0.3, 0.4]))


def scalar(v):
    return torch.tensor([[v]], dtype=torch.float64)


def test_linear_schedule_endpoints():
    b = linear_beta_schedule(1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    assert np.cumprod(1 - b)[-1] == pytest.approx(4.04e-5, rel=0.01)  # spec 4.1: ~4.0e-5
    b100 = linear_beta_schedule(100)
    assert b100[0] == pytest.approx(1e-3) and b100[-1] == pytest.approx(0.2)


def test_toy_cumulative_products():
    np.testing.assert_allclose(TOY.alphas_cumprod, [0.9, 0.72, 0.504, 0.3024])


def test_q_sample_hand_value():
    # sqrt(0.504) * 1 + sqrt(0.496) * 0.5
    x = TOY.q_sample(scalar(1.0), torch.tensor([2]), scalar(0.5))
    assert float(x) == pytest.approx(1.062065911205134, abs=1e-12)


def test_posterior_hand_values():
    # t = 2: c1 = 0.3 sqrt(0.72) / 0.496, c2 = 0.28 sqrt(0.7) / 0.496, var = 0.3 * 0.28 / 0.496
    mean, var = TOY.q_posterior(scalar(1.0), scalar(2.0), torch.tensor([2]))
    assert float(mean) == pytest.approx(0.5132226637644296 + 2 * 0.47230807949504267, abs=1e-12)
    assert float(var) == pytest.approx(0.16935483870967744, abs=1e-12)
    # t = 0: the posterior is x_0 itself.
    mean0, var0 = TOY.q_posterior(scalar(1.5), scalar(-3.0), torch.tensor([0]))
    assert float(mean0) == pytest.approx(1.5) and float(var0) == 0.0


def test_predict_x0_and_eps_invert_each_other():
    x0, eps = torch.randn(3, 5, 2, dtype=torch.float64), torch.randn(3, 5, 2, dtype=torch.float64)
    t = torch.tensor([0, 2, 3])
    xt = TOY.q_sample(x0, t, eps)
    torch.testing.assert_close(TOY.predict_x0(xt, t, eps), x0)
    torch.testing.assert_close(TOY.predict_eps(xt, t, x0), eps)


def test_ddpm_step_hand_values():
    s = DDPMSampler(TOY)
    s.set_timesteps()
    assert s.timesteps == [3, 2, 1, 0]
    # x_t = 1, eps_hat = 0.2 at t = 2: x0 = sqrt(1/0.504) - sqrt(1/0.504 - 1) * 0.2
    out = s.step(scalar(0.2), 2, scalar(1.0), noise=scalar(0.0))
    assert float(out.pred_original_sample) == pytest.approx(1.2101840754427688, abs=1e-12)
    assert float(out.prev_sample) == pytest.approx(1.093401974339074, abs=1e-12)  # c1 x0 + c2 x
    # fixed *large* variance: sigma^2 = beta_2 = 0.3
    out = s.step(scalar(0.2), 2, scalar(1.0), noise=scalar(1.0))
    assert float(out.prev_sample) == pytest.approx(1.093401974339074 + math.sqrt(0.3), abs=1e-12)
    # the last step adds no noise and returns x0_hat (c1 = 1, c2 = 0)
    out = s.step(scalar(0.2), 0, scalar(1.0), noise=scalar(5.0))
    assert float(out.prev_sample) == pytest.approx(float(out.pred_original_sample), abs=1e-12)


def test_ddpm_step_mean_equals_posterior_of_x0_hat():
    d = GaussianDiffusion(linear_beta_schedule(50))
    s = DDPMSampler(d)
    s.set_timesteps()
    x, eps = torch.randn(4, 8, 2, dtype=torch.float64), torch.randn(4, 8, 2, dtype=torch.float64)
    for t in (49, 20, 1):
        tt = torch.full((4,), t)
        mean, _ = d.q_posterior(d.predict_x0(x, tt, eps), x, tt)
        out = s.step(eps, t, x, noise=torch.zeros_like(x))
        torch.testing.assert_close(out.prev_sample, mean)


def test_ddim_step_hand_values_and_clipping():
    s = DDIMSampler(TOY, eta=0.0)
    s.set_timesteps()
    # x_prev = sqrt(0.72) x0 + sqrt(0.28) eps
    out = s.step(scalar(0.2), 2, scalar(1.0))
    assert float(out.prev_sample) == pytest.approx(1.132705291918049, abs=1e-12)
    # clipped: x0 = 1, eps' = (sqrt(1/0.504) - 1) / sqrt(1/0.504 - 1) recomputed from it
    s = DDIMSampler(TOY, eta=0.0, clip_x0=1.0)
    s.set_timesteps()
    out = s.step(scalar(0.2), 2, scalar(1.0))
    assert float(out.pred_original_sample) == 1.0
    assert float(out.prev_sample) == pytest.approx(1.0664704878199676, abs=1e-12)
    assert not s.stochastic


def test_ddim_full_schedule_eta1_has_the_ddpm_mean_path():
    """DDIM with S = T and eta = 1 has the DDPM posterior mean at every step (DDIM paper)."""
    d = GaussianDiffusion(linear_beta_schedule(100))
    ddim, ddpm = DDIMSampler(d, eta=1.0), DDPMSampler(d, variance="small")
    ddim.set_timesteps()
    ddpm.set_timesteps()
    assert ddim.timesteps == ddpm.timesteps == list(range(99, -1, -1))
    torch.testing.assert_close(ddim.table, ddpm.table)
    g = torch.Generator().manual_seed(0)
    x_a = x_b = torch.randn(2, 6, 2, dtype=torch.float64, generator=g)
    for t in ddim.timesteps:
        eps = torch.sin(3 * x_a + t)  # any deterministic "model"
        z = torch.randn(x_a.shape, dtype=torch.float64, generator=g)
        x_a = ddim.step(eps, t, x_a, noise=z).prev_sample
        x_b = ddpm.step(torch.sin(3 * x_b + t), t, x_b, noise=z).prev_sample
    torch.testing.assert_close(x_a, x_b)


def test_ddim_eta0_deterministic_and_consistent_with_x0():
    """If eps_hat is the true noise, one DDIM step lands exactly on q(x_prev | x0) mean path."""
    d = GaussianDiffusion(linear_beta_schedule(1000))
    s = DDIMSampler(d)
    s.set_timesteps(30)
    x0, eps = torch.randn(2, 5, 2, dtype=torch.float64), torch.randn(2, 5, 2, dtype=torch.float64)
    t, t_next = s.timesteps[0], s.timesteps[1]
    xt = d.q_sample(x0, torch.full((2,), t), eps)
    out = s.step(eps, t, xt)
    torch.testing.assert_close(out.prev_sample, d.q_sample(x0, torch.full((2,), t_next), eps))


def test_respacing_rules():
    assert list(make_timesteps(1000, "ddim30")) == list(range(0, 1000, 34))  # starts at 986 (B19)
    assert make_timesteps(1000, 30, "ddim")[-1] == 986
    even = make_timesteps(1000, "30")
    assert len(even) == 30 and even[0] == 0 and even[-1] == 999 and even[1] == 34 and even[2] == 69
    lin = make_timesteps(1000, 30, "linear")
    assert len(lin) == 31 and lin[1] == 33 and lin[-1] == 990  # range(0, T, T // S)
    quad = make_timesteps(1000, 30, "quadratic")
    assert quad[0] == 0 and quad[-1] == 800 and np.all(np.diff(quad) > 0)
    assert list(make_timesteps(1000, "10,10")) == list(make_timesteps(1000, "10,10"))
    assert list(make_timesteps(10, [7, 3, 3, 0])) == [0, 3, 7]
    with pytest.raises(ConfigError):
        make_timesteps(10, [10])
    with pytest.raises(ConfigError):
        make_timesteps(10, 5, "nonsense")


def test_respaced_betas_and_original_timesteps():
    s = DDPMSampler(TOY)
    s.set_timesteps([0, 2])
    assert s.timesteps == [2, 0]  # the model is called with the ORIGINAL timesteps
    # beta'_1 = 1 - abar_2 / abar_0 = 1 - 0.504 / 0.9 = 0.44
    out = s.step(scalar(0.2), 2, scalar(1.0), noise=scalar(1.0))
    assert float(out.prev_sample) == pytest.approx(1.16933260586442 + 0.66332495807108, abs=1e-12)
    # S = T respacing is the identity
    full = DDPMSampler(TOY)
    full.set_timesteps(4)
    plain = DDPMSampler(TOY)
    plain.set_timesteps()
    torch.testing.assert_close(full.table, plain.table)


def test_sampler_contract():
    d = GaussianDiffusion(linear_beta_schedule(100))
    for s in (DDPMSampler(d), DDIMSampler(d), DDIMSampler(d, eta=0.5)):
        with pytest.raises(ConfigError):
            s.step(torch.zeros(1, 2), 5, torch.zeros(1, 2))  # before set_timesteps
        s.set_timesteps(10)
        ts = s.timesteps
        assert all(isinstance(t, int) for t in ts)
        assert all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] == 0
        with pytest.raises(ConfigError):
            s.step(torch.zeros(1, 2), ts[0] - 1, torch.zeros(1, 2))  # not in the schedule
        x = torch.randn(3, 4, 2)
        out = s.step(torch.randn(3, 4, 2), ts[0], x, generator=torch.Generator().manual_seed(1))
        assert out.prev_sample.shape == x.shape and out.pred_original_sample.shape == x.shape
        assert out.prev_sample.dtype == x.dtype
        again = s.step(out.prev_sample * 0 + 1, ts[0], x, generator=torch.Generator().manual_seed(1))
        same = s.step(out.prev_sample * 0 + 1, ts[0], x, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(again.prev_sample, same.prev_sample)
        s.set_timesteps(5, max_timestep=40)  # conditional generation: start part-way
        assert s.timesteps[0] <= 40 and s.timesteps[-1] == 0


def test_recognizability_spacing():
    T, S = 1000, 30
    t = np.arange(T)
    curve = 0.7 / (1 + np.exp((t - 150) / 40.0)) + 0.02  # flat at large t, rises near t = 0
    steps = RecognizabilitySpacing(curve)(T, S)
    assert len(steps) == S and steps[0] == 0 and steps[-1] == T - 1
    assert np.all(np.diff(steps) > 0)
    # dense where the curve rises, sparse where it is flat
    assert np.sum(steps < 300) > 3 * np.sum(steps >= 300)
    # a noisy, non-monotone curve still gives a valid schedule
    noisy = curve + np.random.default_rng(0).normal(0, 0.05, T)
    steps = RecognizabilitySpacing(noisy)(T, S)
    assert len(steps) == S and steps[-1] == T - 1 and np.all(np.diff(steps) > 0)
    # a curve that only rises in the last few steps: collisions are pushed apart
    steep = (t < 3).astype(float)
    steps = RecognizabilitySpacing(steep)(T, S)
    assert len(steps) == S and steps[0] == 0 and steps[-1] == T - 1 and np.all(np.diff(steps) > 0)
    # no rise at all: even spacing
    np.testing.assert_array_equal(RecognizabilitySpacing(np.ones(T))(T, S),
                                  make_timesteps(T, S, "even"))
    s = DDIMSampler(GaussianDiffusion(linear_beta_schedule(T)))
    s.set_timesteps(S, spacing=RecognizabilitySpacing(curve))
    assert s.timesteps[0] == T - 1 and len(s.timesteps) == S
    # conditional generation from t0 = 400 uses the curve's values at t = 0..400
    s.set_timesteps(10, spacing=RecognizabilitySpacing(curve), max_timestep=400)
    assert s.timesteps[0] == 400 and len(s.timesteps) == 10
    np.testing.assert_array_equal(s.timesteps[::-1], RecognizabilitySpacing(curve[:401])(401, 10))


def test_degenerate_schedule_is_refused():
    with pytest.raises(ConfigError, match="T > 20"):
        GaussianDiffusion(linear_beta_schedule(20))


def test_estimated_noise():
    eps = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # (1 + 1 + 4 + 0) / 4 over the two real points
    assert float(estimated_noise(eps, mask)) == pytest.approx(1.5)


def test_step_runner_matches_plain_loop():
    """The static-buffer step used for CUDA graphs equals the plain loop (CPU, no capture)."""
    d = GaussianDiffusion(linear_beta_schedule(50))
    w = torch.randn(2, 2) * 0.3

    def denoiser(x, t, mask):
        return torch.tanh(x @ w + t[:, None, None] / 20), x[..., :2] * 0.5

    mask = torch.tensor([[1.0] * 6 + [0.0] * 2, [1.0] * 8])
    x = torch.randn(2, 8, 2) * mask[..., None]
    for sampler in (DDPMSampler(d, clip_x0=1.0), DDIMSampler(d, eta=0.0), DDIMSampler(d, eta=0.7)):
        sampler.set_timesteps(7, spacing="even")
        a, pen_a = reverse_loop(denoiser, sampler, x, mask, torch.Generator().manual_seed(3), 0.8)
        runner = StepRunner(denoiser, (2, 8, 2), "cpu", sampler.clip_x0, use_graph=False)
        b, pen_b = runner.run(sampler, x, mask, torch.Generator().manual_seed(3), 0.8)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pen_a, pen_b)
        assert torch.all(a[0, 6:] == 0)  # padding rows stay exactly zero
        # Only the deterministic schedule runs as one whole-loop body (one graph on CUDA).
        assert list(runner._loops) == ([7] if not sampler.stochastic else [])


def test_step_runner_whole_loop_and_per_step_paths_agree():
    """Deterministic DDIM: the whole-loop body, the per-step path (taken with a callback) and a
    schedule longer than max_loop_steps all give the plain loop's result; one runner serves
    several step counts and re-reads the table each run."""
    d = GaussianDiffusion(linear_beta_schedule(60))
    w = torch.randn(2, 2) * 0.3

    def denoiser(x, t, mask):
        return torch.tanh(x @ w + t[:, None, None] / 30), x * 0.5

    mask = torch.ones(3, 5)
    x = torch.randn(3, 5, 2)
    runner = StepRunner(denoiser, (3, 5, 2), "cpu", None, use_graph=False, max_loop_steps=10)
    seen = []
    for steps, spacing in ((6, "even"), (6, "quadratic"), (9, "even"), (12, "even")):
        sampler = DDIMSampler(d, eta=0.0)
        sampler.set_timesteps(steps, spacing=spacing)
        plain, _ = reverse_loop(denoiser, sampler, x, mask)
        whole, _ = runner.run(sampler, x, mask)
        stepped, _ = runner.run(sampler, x, mask, callback=lambda i, *a: seen.append(i))
        torch.testing.assert_close(whole, plain, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(stepped, plain, rtol=1e-6, atol=1e-6)
    assert sorted(runner._loops) == [6, 9]  # 12 > max_loop_steps: per step
    assert seen[:6] == list(range(6))
