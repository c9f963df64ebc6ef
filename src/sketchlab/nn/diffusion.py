"""Gaussian diffusion pieces: noise schedules, q(x_t | x_0), the posterior, timestep respacing,
and samplers as small objects with one API (diffusers style):

    sampler = DDIMSampler(diffusion, eta=0.0)
    sampler.set_timesteps(30, spacing="ddim")          # or "linear", "quadratic", a strategy object
    for t in sampler.timesteps:                         # original timesteps, strictly decreasing
        eps = model(x, t)
        x = sampler.step(eps, t, x, generator=g).prev_sample

Every sampler reduces one reverse step to the same affine update (derived per sampler in
`set_timesteps`, in float64, from the respaced schedule):

    x0_hat = clamp(a * x_t - b * eps_hat)           # a = sqrt(1/abar_t), b = sqrt(1/abar_t - 1)
    x_prev = c1 * x0_hat + c2 * x_t + sigma * z

so `step()` and the CUDA-graph runner (`StepRunner`) share one formula and one table of
coefficients. This follows OpenAI's improved/guided-diffusion, which SketchKnitter adapted.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn as nn

from sketchlab.errors import ConfigError
from sketchlab.nn.cudagraph import capture, warm_up
from sketchlab.progress import track

# --------------------------------------------------------------------------------------------
# Noise schedules and the forward process
# --------------------------------------------------------------------------------------------


def linear_beta_schedule(num_timesteps: int) -> np.ndarray:
    """DDPM's linear betas, rescaled so any T covers the same range as T=1000 (SketchKnitter's
    `sketch_diffusion/gaussian_diffusion.py` `get_named_beta_schedule("linear", T)`)."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_beta_schedule(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Improved-DDPM's cosine schedule (available in the original, not used by it)."""
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


def beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    if name == "linear":
        return linear_beta_schedule(num_timesteps)
    if name == "cosine":
        return cosine_beta_schedule(num_timesteps)
    raise ConfigError(f"unknown beta schedule {name!r}; use 'linear' or 'cosine'")


def _gather(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] as a float tensor broadcastable against `like` (B, ...)."""
    out = torch.as_tensor(values, dtype=torch.float64, device=t.device)[t.long()]
    return out.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class GaussianDiffusion:
    """The fixed forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), t = 0..T-1."""

    def __init__(self, betas: np.ndarray):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not np.all((betas > 0) & (betas <= 1)):
            raise ConfigError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.alphas_cumprod = np.cumprod(1.0 - betas)
        if self.alphas_cumprod[-1] <= 0:
            raise ConfigError("the noise schedule reaches abar = 0 (a beta of 1): x_0 cannot be "
                              "predicted there; the linear schedule needs T > 20")
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        # Posterior q(x_{t-1} | x_t, x_0) = N(c1 x_0 + c2 x_t, beta~_t).
        self.posterior_variance = betas * (1 - abar_prev) / (1 - abar)
        self.posterior_mean_coef1 = betas * np.sqrt(abar_prev) / (1 - abar)
        self.posterior_mean_coef2 = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)

    @classmethod
    def named(cls, schedule: str = "linear", num_timesteps: int = 1000) -> "GaussianDiffusion":
        return cls(beta_schedule(schedule, num_timesteps))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        return (_gather(np.sqrt(self.alphas_cumprod), t, x0) * x0
                + _gather(np.sqrt(1 - self.alphas_cumprod), t, x0) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and variance of q(x_{t-1} | x_t, x_0)."""
        mean = (_gather(self.posterior_mean_coef1, t, x_t) * x0
                + _gather(self.posterior_mean_coef2, t, x_t) * x_t)
        return mean, _gather(self.posterior_variance, t, x_t)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (_gather(np.sqrt(1 / self.alphas_cumprod), t, x_t) * x_t
                - _gather(np.sqrt(1 / self.alphas_cumprod - 1), t, x_t) * eps)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return ((_gather(np.sqrt(1 / self.alphas_cumprod), t, x_t) * x_t - x0)
                / _gather(np.sqrt(1 / self.alphas_cumprod - 1), t, x_t))

    def scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The network sees t * 1000 / T as a float (the original's `rescale_timesteps=True`)."""
        return t.float() * (1000.0 / self.num_timesteps)


# --------------------------------------------------------------------------------------------
# Timestep respacing: which of the T timesteps a sampler visits
# --------------------------------------------------------------------------------------------


class Spacing(Protocol):
    def __call__(self, num_timesteps: int, steps: int) -> np.ndarray:
        """Ascending unique timesteps in [0, num_timesteps)."""


def stride_spacing(num_timesteps: int, steps: int) -> np.ndarray:
    """The original's "ddimK": range(0, T, i) for the integer stride giving exactly K steps.

    For T=1000, K=30 the stride is 34 and sampling starts at t=986, not 999 (`respace.py`
    `space_timesteps`).
    """
    if steps >= num_timesteps:
        return np.arange(num_timesteps)
    for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == steps:
            return np.arange(0, num_timesteps, stride)
    raise ConfigError(f"cannot make exactly {steps} steps out of {num_timesteps} with an integer "
                      "stride; spread them evenly: --spacing even (Python: spacing='even')")


def even_spacing(num_timesteps: int, steps: int) -> np.ndarray:
    """The original's plain "K": K points from 0 to T-1 at a fractional stride, rounded."""
    if steps > num_timesteps:
        raise ConfigError(f"cannot take {steps} steps out of {num_timesteps}")
    if steps <= 1:
        return np.array([0])
    stride = (num_timesteps - 1) / (steps - 1)
    return np.unique([round(i * stride) for i in range(steps)])


def linear_spacing(num_timesteps: int, steps: int) -> np.ndarray:
    """DDIM paper's "uniform": range(0, T, T // S) (31 steps for T=1000, S=30; the "Linear-DDIMs"
    baseline of SketchKnitter's Table 1, which its repository does not implement)."""
    return np.arange(0, num_timesteps, max(num_timesteps // steps, 1))


def quadratic_spacing(num_timesteps: int, steps: int) -> np.ndarray:
    """DDIM paper's "quadratic": int(linspace(0, sqrt(0.8 T), S)^2), de-duplicated (the first two
    values are both 0; SketchKnitter's "Quadratic-DDIMs" baseline, not in its repository)."""
    seq = np.linspace(0, np.sqrt(num_timesteps * 0.8), steps) ** 2
    return np.unique(seq.astype(np.int64))


class RecognizabilitySpacing:
    """The r-Shortcut schedule (sketchlab's reconstruction; the paper's shortcut function is not in
    the released code): steps where predicted recognizability rises.

    `curve[t]` is the mean predicted recognizability of x_t along sampling trajectories. With
    F(t) the normalised gain from t=T-1 down to t (monotonised by a running maximum, so
    F(T-1)=0, F(0)=1), the S steps are the inverse CDF of F at S equally spaced levels: sparse
    where the curve is flat, dense where it rises. T-1 and 0 are always included and the steps
    are made strictly decreasing. A curve without any rise falls back to even spacing.
    """

    def __init__(self, curve):
        self.curve = np.asarray(curve, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(self.curve)):
            raise ConfigError("recognizability curve holds NaN or inf")

    def __call__(self, num_timesteps: int, steps: int) -> np.ndarray:
        if steps >= num_timesteps:
            return np.arange(num_timesteps)
        curve = self.curve
        if len(curve) >= num_timesteps:  # conditional generation: timesteps 0..t0 only
            curve = curve[:num_timesteps]
        else:  # a coarser curve: stretch it over the timesteps
            curve = np.interp(np.arange(num_timesteps) * (len(curve) - 1) / max(num_timesteps - 1, 1),
                              np.arange(len(curve)), curve)
        # Running max from t = T-1 down to 0: gain never decreases as sampling proceeds.
        gain = np.maximum.accumulate(curve[::-1])[::-1]  # gain[t] = max(curve[t:])
        gain = gain - gain[-1]
        if steps < 2 or gain[0] <= 1e-12:
            return even_spacing(num_timesteps, steps)
        f = gain / gain[0]  # f[T-1] = 0 ... f[0] = 1, non-increasing in t
        levels = np.linspace(0.0, 1.0, steps)
        # For each level q the largest t with f[t] >= q (the first moment the gain reaches q).
        picks = np.array([int(np.nonzero(f >= q - 1e-12)[0].max()) for q in levels])
        picks[-1] = 0  # always finish at t = 0, even if the curve peaks earlier
        return _strictly_decreasing(picks, num_timesteps)[::-1].copy()


def _strictly_decreasing(picks: np.ndarray, num_timesteps: int) -> np.ndarray:
    """Force `picks` (ordered from the first sampling step) to T-1 > ... > 0, moving collisions."""
    t = picks.astype(np.int64).copy()
    t[0] = num_timesteps - 1
    for k in range(1, len(t)):
        t[k] = min(t[k], t[k - 1] - 1)
    t[-1] = max(t[-1], 0)
    for k in range(len(t) - 2, -1, -1):
        t[k] = max(t[k], t[k + 1] + 1)
    return t


SPACINGS: dict[str, Callable[[int, int], np.ndarray]] = {
    "ddim": stride_spacing, "even": even_spacing, "linear": linear_spacing,
    "quadratic": quadratic_spacing,
}


def make_timesteps(num_timesteps: int, steps=None, spacing="ddim") -> np.ndarray:
    """Ascending timesteps to visit. `steps`: None (all T), an int S, an explicit list, or one of
    the original's strings: "ddim30" (stride), "30" or "10,10,10" (even per section)."""
    if steps is None:
        return np.arange(num_timesteps)
    if isinstance(steps, str):
        if steps.startswith("ddim"):
            return stride_spacing(num_timesteps, int(steps[4:]))
        for name in ("linear", "quadratic", "even"):
            if steps.startswith(name):
                return SPACINGS[name](num_timesteps, int(steps[len(name):]))
        return _section_spacing(num_timesteps, [int(s) for s in steps.split(",")])
    if isinstance(steps, (list, tuple, np.ndarray, torch.Tensor)):
        ts = np.unique(np.asarray(steps, dtype=np.int64))
        if len(ts) == 0 or ts[0] < 0 or ts[-1] >= num_timesteps:
            raise ConfigError(f"explicit timesteps must lie in [0, {num_timesteps})")
        return ts
    steps = int(steps)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    steps = min(steps, num_timesteps)
    fn = SPACINGS.get(spacing) if isinstance(spacing, str) else spacing
    if fn is None:
        raise ConfigError(f"unknown spacing {spacing!r}; use one of {sorted(SPACINGS)} or a "
                          "RecognizabilitySpacing")
    ts = np.unique(np.asarray(fn(num_timesteps, steps), dtype=np.int64))
    if len(ts) == 0 or ts[0] < 0 or ts[-1] >= num_timesteps:
        raise ConfigError(f"spacing {spacing!r} produced timesteps outside [0, {num_timesteps})")
    return ts


def _section_spacing(num_timesteps: int, counts: list[int]) -> np.ndarray:
    """The original `space_timesteps` for "K1,K2,...": even spacing within equal sections."""
    size_per, extra = divmod(num_timesteps, len(counts))
    start, out = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ConfigError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        out += [start + round(j * stride) for j in range(count)]
        start += size
    return np.unique(out)


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------

# Columns of a sampler's coefficient table (one row per step, in sampling order).
T_COL, A_COL, B_COL, C1_COL, C2_COL, SIGMA_COL = range(6)


@dataclass
class SamplerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def apply_update(row: torch.Tensor, eps: torch.Tensor, x: torch.Tensor, noise: torch.Tensor | None,
                 clip_x0: float | None):
    """The shared reverse step: x0 = clamp(a x - b eps); x_prev = c1 x0 + c2 x + sigma z."""
    x0 = row[A_COL] * x - row[B_COL] * eps
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    prev = row[C1_COL] * x0 + row[C2_COL] * x
    if noise is not None:
        prev = prev + row[SIGMA_COL] * noise
    return prev, x0


class Sampler:
    """Base class: `set_timesteps(...)`, then `step(eps, t, x)` for each t in `timesteps`."""

    def __init__(self, diffusion: GaussianDiffusion, clip_x0: float | None = None):
        self.diffusion = diffusion
        self.clip_x0 = clip_x0
        self.timesteps: list[int] = []
        self.table = torch.zeros(0, 6, dtype=torch.float64)
        self._index: dict[int, int] = {}

    @property
    def stochastic(self) -> bool:
        return bool((self.table[:, SIGMA_COL] > 0).any())

    def set_timesteps(self, steps=None, spacing="ddim", max_timestep: int | None = None) -> None:
        """Choose the timesteps (see `make_timesteps`); `max_timestep` restricts them to
        [0, max_timestep] (for conditional generation that starts from a partly noised sketch)."""
        horizon = self.diffusion.num_timesteps if max_timestep is None else int(max_timestep) + 1
        if not 1 <= horizon <= self.diffusion.num_timesteps:
            raise ConfigError(f"max_timestep must lie in [0, {self.diffusion.num_timesteps - 1}]")
        used = make_timesteps(horizon, steps, spacing)
        abar = self.diffusion.alphas_cumprod[used]
        abar_prev = np.append(1.0, abar[:-1])
        rows = self._coefficients(abar, abar_prev)
        rows[:, T_COL] = used
        # Sampling order is from the largest timestep down to the smallest.
        self.timesteps = [int(t) for t in used[::-1]]
        self.table = torch.from_numpy(rows[::-1].copy())
        self._index = {t: i for i, t in enumerate(self.timesteps)}

    def _coefficients(self, abar: np.ndarray, abar_prev: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def row(self, timestep: int) -> torch.Tensor:
        if not self.timesteps:
            raise ConfigError(f"{type(self).__name__}: call set_timesteps() before step()")
        try:
            return self.table[self._index[int(timestep)]]
        except KeyError:
            raise ConfigError(f"timestep {int(timestep)} is not in this sampler's schedule") from None

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None
             ) -> SamplerOutput:
        """One reverse step from x_t (`sample`) given the predicted noise (`model_output`).

        `noise` overrides the Gaussian draw (it is multiplied by sigma); with neither `noise` nor
        `generator` the global RNG is used. No noise is drawn when sigma is 0.
        """
        row = self.row(timestep)
        if noise is None and float(row[SIGMA_COL]) > 0:
            noise = torch.randn(sample.shape, generator=generator,
                                device=generator.device if generator is not None else sample.device
                                ).to(sample.device, sample.dtype)
        row = row.to(device=sample.device, dtype=sample.dtype)
        prev, x0 = apply_update(row, model_output.to(sample.dtype), sample, noise, self.clip_x0)
        return SamplerOutput(prev, x0)


def _ratios(abar, abar_prev):
    a = np.sqrt(1.0 / abar)            # x0 = a x_t - b eps
    b = np.sqrt(1.0 / abar - 1.0)
    return a, b


class DDPMSampler(Sampler):
    """Ancestral sampling (`p_sample`) on the (possibly respaced) schedule.

    Respaced betas beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}} (`respace.py` `SpacedDiffusion`).
    The mean is the posterior mean given x0_hat; the variance is the original's fixed *large* beta'_t
    (`FIXED_LARGE_ORIGIN`, `variance="large"`) or the posterior variance (`"small"`). No noise
    is added on the last step.
    """

    def __init__(self, diffusion: GaussianDiffusion, clip_x0: float | None = None,
                 variance: str = "large"):
        super().__init__(diffusion, clip_x0)
        if variance not in ("large", "small"):
            raise ConfigError(f"DDPM variance must be 'large' or 'small', got {variance!r}")
        self.variance = variance

    def _coefficients(self, abar, abar_prev):
        beta = 1.0 - abar / abar_prev
        rows = np.zeros((len(abar), 6))
        rows[:, A_COL], rows[:, B_COL] = _ratios(abar, abar_prev)
        rows[:, C1_COL] = beta * np.sqrt(abar_prev) / (1.0 - abar)
        rows[:, C2_COL] = (1.0 - abar_prev) * np.sqrt(1.0 - beta) / (1.0 - abar)
        var = beta if self.variance == "large" else beta * (1.0 - abar_prev) / (1.0 - abar)
        rows[:, SIGMA_COL] = np.sqrt(var)
        rows[0, SIGMA_COL] = 0.0  # the step that lands on x_0 adds no noise
        return rows


class DDIMSampler(Sampler):
    """DDIM (`ddim_sample`): x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps' + s z,
    with eps' recomputed from the (maybe clipped) x0 and s = eta * sqrt((1 - abar_prev) /
    (1 - abar)) * sqrt(1 - abar / abar_prev). eta = 0 is deterministic; eta = 1 has the DDPM
    posterior mean and the posterior ("small") variance."""

    def __init__(self, diffusion: GaussianDiffusion, eta: float = 0.0, clip_x0: float | None = None):
        super().__init__(diffusion, clip_x0)
        if eta < 0:
            raise ConfigError(f"DDIM eta must be >= 0, got {eta}")
        self.eta = float(eta)

    def _coefficients(self, abar, abar_prev):
        a, b = _ratios(abar, abar_prev)
        sigma = self.eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
        k = np.sqrt(np.clip(1.0 - abar_prev - sigma ** 2, 0.0, None))
        # eps' = (a x - x0) / b, so k eps' = (k a / b) x - (k / b) x0.
        rows = np.zeros((len(abar), 6))
        rows[:, A_COL], rows[:, B_COL] = a, b
        rows[:, C1_COL] = np.sqrt(abar_prev) - k / b
        rows[:, C2_COL] = k * a / b
        rows[:, SIGMA_COL] = sigma
        return rows


def make_sampler(name: str, diffusion: GaussianDiffusion, clip_x0: float | None = None,
                 eta: float = 0.0) -> Sampler:
    if name == "ddpm":
        return DDPMSampler(diffusion, clip_x0)
    if name in ("ddim", "rshortcut"):
        return DDIMSampler(diffusion, eta=eta, clip_x0=clip_x0)
    raise ConfigError(f"unknown sampler {name!r}; use 'ddpm', 'ddim' or 'rshortcut'")


# --------------------------------------------------------------------------------------------
# The reverse loop: plain, and as a replayable step (bf16 shadow weights + CUDA graph)
# --------------------------------------------------------------------------------------------

# denoiser(x_t (B, N, 2), t (B,) float original timesteps, mask (B, N)) -> (eps, pen_logits)
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]
# callback(step_index, timestep, x_prev, x0_hat, eps_hat, pen_logits)
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def estimated_noise(eps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean(eps_hat^2) over the valid points: the paper's "estimated noise" statistic
    (the original's `p_mean_variance` returns `int(th.sum(model_output))`, a signed sum over the
    whole batch cast to int)."""
    sq = eps.float().square().sum(-1)
    if mask is None:
        return sq.mean(-1) / eps.shape[-1]
    return (sq * mask).sum(-1) / (mask.sum(-1).clamp_min(1) * eps.shape[-1])


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev).to(x.device, x.dtype)


@torch.no_grad()
def reverse_loop(denoiser: Denoiser, sampler: Sampler, x: torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator | None = None, temperature: float = 1.0,
                 callback: StepCallback | None = None, progress: bool | None = False):
    """The plain eager loop: returns (x_0, pen logits of the last denoiser call). `progress`:
    progress per step (True: a bar on a terminal, lines in a log), none (False), or a bar only
    when stderr is a terminal (None)."""
    m = mask[..., None].to(x.dtype)
    table = sampler.table.to(device=x.device, dtype=x.dtype)  # once: no host sync per step
    noisy = (sampler.table[:, SIGMA_COL] > 0).tolist()
    pen = None
    for i, t in enumerate(track(sampler.timesteps, desc="sampling", unit="steps",
                                enabled=progress, leave=False)):
        tt = torch.full((x.shape[0],), float(t), device=x.device)
        eps, pen = denoiser(x, tt, mask)
        eps = eps.float()
        noise = _noise_like(x, generator) * temperature if noisy[i] else None
        x_prev, x0 = apply_update(table[i], eps, x, noise, sampler.clip_x0)
        x = x_prev * m
        if callback is not None:
            callback(i, t, x, x0, eps, pen)
    return x, pen.float()


def bf16_shadow(module: nn.Module, dtype: torch.dtype = torch.bfloat16,
                keep_float32: tuple[str, ...] = ("time_embed",)) -> nn.Module:
    """A copy of `module` in `dtype` for fast inference; the named submodules stay fp32.

    Refresh its weights with `sync_shadow` (an in-place copy, so captured CUDA graphs stay valid).
    """
    shadow = copy.deepcopy(module).to(dtype)
    for name, sub in shadow.named_modules():
        if name in keep_float32:
            sub.float()
    for p in shadow.parameters():
        p.requires_grad_(False)
    return shadow.eval()


@torch.no_grad()
def sync_shadow(shadow: nn.Module, source: nn.Module) -> None:
    dst = list(shadow.state_dict().values())
    src = list(source.state_dict().values())
    if len(dst) != len(src):
        raise RuntimeError("shadow and source modules differ")
    try:  # one fused launch group instead of one copy per tensor (~300 for the 20M UNet)
        torch._foreach_copy_(dst, src)
    except (AttributeError, RuntimeError, TypeError):
        for d, s in zip(dst, src):
            d.copy_(s)


class StepRunner:
    """The reverse steps (denoiser + update) on static buffers, optionally as CUDA graphs.

    A step reads x, the mask, one coefficient-table row and a noise buffer, and writes the next
    x in place, so sampling S steps is S x (row copy, noise fill, graph replay): no Python work
    per layer and no host sync. A deterministic schedule (no step adds noise: DDIM with eta 0,
    the r-Shortcut) of at most `max_loop_steps` steps and no per-step callback goes further: all
    S steps are one graph, captured once per S, that reads its rows from a static table, so the
    whole reverse loop is one table copy and one replay. `use_graph=False` runs the same bodies
    eagerly (CPU, tests). Every sampler is the same affine update, so one runner serves them all.
    """

    def __init__(self, denoiser: Denoiser, shape: tuple[int, ...], device, clip_x0: float | None,
                 use_graph: bool, warmup: int = 3, max_loop_steps: int = 100):
        self.denoiser = denoiser
        self.clip_x0 = clip_x0
        self.device = torch.device(device)
        self.use_graph = use_graph
        self.max_loop_steps = max_loop_steps
        self.x = torch.zeros(shape, device=self.device)
        self.mask = torch.ones(shape[:-1], device=self.device)
        self.row = torch.zeros(6, device=self.device)
        self.noise = torch.zeros(shape, device=self.device)
        self.graph = None
        self._loops: dict[int, tuple] = {}  # S -> (graph or None, static table (S, 6))
        if use_graph:
            body = torch.no_grad()(self._body)
            warm_up(body, warmup, self.device)
            self.graph, _ = capture(body)
        else:
            with torch.no_grad():
                self._body()  # allocates the output buffers

    def _body(self, row: torch.Tensor | None = None, add_noise: bool = True) -> None:
        """One step from self.x with `row` (default self.row) and, if `add_noise`, self.noise
        (the whole-loop graph passes its table rows and adds none)."""
        row = self.row if row is None else row
        t = row[T_COL].expand(self.x.shape[0])
        eps, pen = self.denoiser(self.x, t, self.mask)
        self.eps = eps.float()
        self.pen = pen.float()
        prev, self.x0 = apply_update(row, self.eps, self.x, self.noise if add_noise else None,
                                     self.clip_x0)
        self.x.copy_(prev * self.mask[..., None])

    def _loop_body(self, table: torch.Tensor) -> None:
        for i in range(table.shape[0]):
            self._body(table[i], add_noise=False)

    def _loop(self, steps: int) -> tuple:
        """The whole-loop graph for `steps` deterministic steps (captured on first use)."""
        entry = self._loops.get(steps)
        if entry is None:
            table = torch.zeros(steps, 6, device=self.device)
            graph = None
            if self.use_graph:  # no warm-up of its own: it runs the body the step graph warmed up
                graph, _ = capture(lambda: torch.no_grad()(self._loop_body)(table))
            entry = self._loops[steps] = (graph, table)
        return entry

    @torch.no_grad()
    def run(self, sampler: Sampler, x: torch.Tensor, mask: torch.Tensor,
            generator: torch.Generator | None = None, temperature: float = 1.0,
            callback: StepCallback | None = None, progress: bool | None = False,
            rows: int | None = None):
        """Sample from `x` (the static batch); noise is drawn for the first `rows` sketches
        only (the rest pad a short last batch), so the random stream matches `reverse_loop`
        run on those rows."""
        table = sampler.table.to(device=self.device, dtype=torch.float32)
        table[:, SIGMA_COL] *= temperature
        self.x.copy_(x)
        self.mask.copy_(mask)
        self.noise.zero_()
        noisy = (sampler.table[:, SIGMA_COL] > 0).tolist()
        if (callback is None and not any(noisy) and len(noisy) <= self.max_loop_steps):
            graph, static_table = self._loop(len(noisy))
            static_table.copy_(table)
            if graph is not None:
                graph.replay()
            else:
                self._loop_body(static_table)
            return self.x.clone(), self.pen.clone()
        noise = self.noise[:rows] if rows is not None else self.noise
        for i, t in enumerate(track(sampler.timesteps, desc="sampling", unit="steps",
                                    enabled=progress, leave=False)):
            self.row.copy_(table[i])
            if noisy[i]:
                if generator is None or generator.device == self.device:
                    noise.normal_(generator=generator)
                else:
                    noise.copy_(_noise_like(noise, generator))
            if self.graph is not None:
                self.graph.replay()
            else:
                self._body()
            if callback is not None:
                callback(i, t, self.x, self.x0, self.eps, self.pen)
        return self.x.clone(), self.pen.clone()
