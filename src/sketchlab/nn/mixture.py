"""The sketch-rnn output head: a bivariate-Gaussian mixture over the pen offset plus a 3-way pen
softmax (Graves 2013, eqs. 18-25), its loss and its temperature sampling.

Layout of the raw head output, shared by magenta sketch-rnn and all the seeds (pen logits first):

    [pen_logits (3) | pi (M) | mu_x (M) | mu_y (M) | log sigma_x (M) | log sigma_y (M) | rho (M)]

with pi = softmax, sigma = exp, rho = tanh and M = 20 (hard-coded in every original).

Loss (`lil_loss` / magenta `lossfunc`), for a target row (dx, dy, p1, p2, p3):

    L_off = -log( sum_j pi_j N2_j(dx, dy) + 1e-6 ) * (1 - p3)
    L_pen = -sum_c p_c log softmax(pen_logits)_c              (* (1 - p3) in eval only)

The offset term is computed as `-logsumexp([log pi_j + log N2_j]_j, log 1e-6)`, which is the
original expression exactly (log(S + eps) = logsumexp over the M terms plus log eps), only
evaluated without forming N2: far targets, tiny sigmas and |rho| -> 1 give large negative
log-densities instead of 0 * inf or inf / inf, and the eps term bounds the loss by -log(1e-6)
just as in the original. Two safety clamps act only where the float32 original would already
overflow: the standardised offsets are clipped to +-1e4 (density < exp(-5e7), far below the
1e-6 floor) and 1 - rho^2 is floored at 1e-6 (|rho_raw| > ~7.3).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sketchlab.errors import ConfigError

N_PEN = 3
N_COMPONENTS = 20
EPSILON = 1e-6  # the originals' `-log(result + 1e-6)`
_LOG_EPS = math.log(EPSILON)
_LOG_2PI = math.log(2.0 * math.pi)
_Z_CLIP = 1e4
_ONE_MINUS_RHO2_MIN = 1e-6
REDUCTIONS = ("sum_time_mean_batch", "mean", "none")


class MixtureHead(nn.Module):
    """Linear H -> 3 + 6M producing the raw mixture parameters.

    `init_std=None` is magenta sketch-rnn's init (TF `get_variable` default: glorot-uniform for
    the weight and, since TF applies it to 1-D variables too, U(-sqrt(3/n), sqrt(3/n)) for the
    bias). Otherwise the weight is N(0, init_std^2) and the bias zero (RPCL: std sqrt(2/H);
    SP-gra2seq: std sqrt(1/H) and bias=False; SketchGloc: std sqrt(2/H)).
    """

    def __init__(self, hidden: int, n_components: int = N_COMPONENTS, bias: bool = True, init_std: float | None = None):
        super().__init__()
        self.n_components = n_components
        n_out = N_PEN + 6 * n_components
        self.linear = nn.Linear(hidden, n_out, bias=bias)
        with torch.no_grad():
            if init_std is None:
                bound = math.sqrt(6.0 / (hidden + n_out))
                self.linear.weight.uniform_(-bound, bound)
                if bias:
                    bound_b = math.sqrt(3.0 / n_out)
                    self.linear.bias.uniform_(-bound_b, bound_b)
            else:
                self.linear.weight.normal_(0.0, init_std)
                if bias:
                    self.linear.bias.zero_()

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(h)


class MixtureParams(NamedTuple):
    """Raw mixture parameters split along the last axis (activations are properties)."""

    pen_logits: Tensor  # (..., 3)
    pi_logits: Tensor  # (..., M)
    mu_x: Tensor
    mu_y: Tensor
    log_sigma_x: Tensor
    log_sigma_y: Tensor
    rho_raw: Tensor

    @property
    def pi(self) -> Tensor:
        return torch.softmax(self.pi_logits, -1)

    @property
    def sigma_x(self) -> Tensor:
        return torch.exp(self.log_sigma_x)

    @property
    def sigma_y(self) -> Tensor:
        return torch.exp(self.log_sigma_y)

    @property
    def rho(self) -> Tensor:
        return torch.tanh(self.rho_raw)

    @property
    def pen(self) -> Tensor:
        return torch.softmax(self.pen_logits, -1)


def split_params(raw: Tensor) -> MixtureParams:
    """Split raw head output (..., 3 + 6M) into `MixtureParams`."""
    n = raw.shape[-1] - N_PEN
    if n <= 0 or n % 6:
        raise ConfigError(f"mixture head output must have 3 + 6*M values, got {raw.shape[-1]}")
    m = n // 6
    pen = raw[..., :N_PEN]
    rest = raw[..., N_PEN:].split(m, -1)
    return MixtureParams(pen, *rest)


def _one_minus_rho2_log(rho_raw: Tensor) -> Tensor:
    """log(1 - tanh(r)^2) = log(4 sigmoid(2r) sigmoid(-2r)), without the cancellation of
    1 - rho^2 near |rho| = 1, floored at log(1e-6)."""
    v = math.log(4.0) + F.logsigmoid(2 * rho_raw) + F.logsigmoid(-2 * rho_raw)
    return v.clamp_min(math.log(_ONE_MINUS_RHO2_MIN))


def component_log_density(p: MixtureParams, dx: Tensor, dy: Tensor) -> Tensor:
    """log(pi_j N2_j(dx, dy)) for every component j: (..., M). dx, dy are (...)."""
    log_pi = torch.log_softmax(p.pi_logits, -1)
    zx = ((dx.unsqueeze(-1) - p.mu_x) * torch.exp(-p.log_sigma_x.clamp_min(-60.0))).clamp(-_Z_CLIP, _Z_CLIP)
    zy = ((dy.unsqueeze(-1) - p.mu_y) * torch.exp(-p.log_sigma_y.clamp_min(-60.0))).clamp(-_Z_CLIP, _Z_CLIP)
    rho = torch.tanh(p.rho_raw)
    log_1mr2 = _one_minus_rho2_log(p.rho_raw)
    # Z / (1 - rho^2) with Z = zx^2 + zy^2 - 2 rho zx zy, written as a sum of squares so rounding
    # can never make it negative: Z = (zx - rho zy)^2 + (1 - rho^2) zy^2.
    maha = (zx - rho * zy).square() * torch.exp(-log_1mr2) + zy.square()
    log_n2 = -0.5 * maha - _LOG_2PI - p.log_sigma_x - p.log_sigma_y - 0.5 * log_1mr2
    return log_pi + log_n2


def offset_nll(raw: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """-log(sum_j pi_j N2_j(dx, dy) + 1e-6), unmasked, shape (...)."""
    p = split_params(raw.float())
    lp = component_log_density(p, dx.float(), dy.float())
    eps = torch.full_like(lp[..., :1], _LOG_EPS)
    return -torch.logsumexp(torch.cat([lp, eps], -1), -1)


def mixture_loss_terms(raw: Tensor, target: Tensor, training: bool, reduction: str = "sum_time_mean_batch") -> dict[str, Tensor]:
    """The offset and pen terms of `mixture_nll`, each reduced: {"offset": ..., "pen": ...}.

    raw (B, T, 3 + 6M); target (B, T, 5) stroke-5 rows (dx, dy, p1, p2, p3). The offset term is
    masked by 1 - p3 always; the pen cross-entropy only when `training` is False (the originals'
    `is_training` switch: in training the pen loss covers the padding, which teaches stopping).
    Reductions: "sum_time_mean_batch" = sum over T / B (RPCL, SP-gra2seq, SketchGloc);
    "mean" = mean over all B*T entries, masked ones included (magenta sketch-rnn);
    "none" = per-step (B, T).
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if target.shape[-1] != 5 or target.shape[:-1] != raw.shape[:-1]:
        raise ValueError(f"target must be {tuple(raw.shape[:-1]) + (5,)}, got {tuple(target.shape)}")
    with torch.autocast(device_type=raw.device.type, enabled=False):
        target = target.float()
        mask = 1.0 - target[..., 4]
        off = offset_nll(raw, target[..., 0], target[..., 1]) * mask
        pen = -(target[..., 2:] * torch.log_softmax(raw[..., :N_PEN].float(), -1)).sum(-1)
        if not training:
            pen = pen * mask
        if reduction == "none":
            return {"offset": off, "pen": pen}
        if reduction == "mean":
            return {"offset": off.mean(), "pen": pen.mean()}
        B = off.shape[0]
        return {"offset": off.sum() / B, "pen": pen.sum() / B}


def mixture_nll(raw: Tensor, target: Tensor, training: bool, reduction: str = "sum_time_mean_batch") -> Tensor:
    """The reconstruction loss L_R = offset NLL + pen cross-entropy (see `mixture_loss_terms`)."""
    terms = mixture_loss_terms(raw, target, training, reduction)
    return terms["offset"] + terms["pen"]


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def draw_noise(shape, device, generator: torch.Generator | None = None, dtype=torch.float32) -> Tensor:
    """The randomness one `sample_step` consumes per sketch, (*shape, 4): two uniforms (mixture
    index, pen state) and two standard normals (the offset). Drawn on the generator's device and
    moved, so a CPU generator also drives CUDA sampling reproducibly."""
    gdev = generator.device if generator is not None else torch.device(device)
    u = torch.rand(*shape, 2, generator=generator, device=gdev, dtype=dtype)
    n = torch.randn(*shape, 2, generator=generator, device=gdev, dtype=dtype)
    return torch.cat([u, n], -1).to(device)


def _inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """magenta `get_pi_idx`: the first index whose cumulative probability reaches u; when
    rounding leaves the total short of u the original returns -1 (the last index in NumPy)."""
    below = (probs.cumsum(-1) < u.unsqueeze(-1)).sum(-1)
    return below.clamp_max(probs.shape[-1] - 1)


def _adjust_temp(logits: Tensor, temperature: Tensor) -> Tensor:
    """magenta `adjust_temp`: p' proportional to exp(log p / tau), as probabilities."""
    return torch.softmax(torch.log_softmax(logits, -1) / temperature, -1)


def sample_step(
    raw_t: Tensor,
    temperature: float | Tensor = 1.0,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    noise: Tensor | None = None,
) -> Tensor:
    """Draw one stroke-5 row per batch element from raw head output (B, 3 + 6M).

    Exactly the originals' `sample` step: component j ~ pi' with pi' proportional to
    exp(log pi / tau); (dx, dy) ~ N2(mu_j, sigma_j * tau, rho_j) (std scaled by tau, variance by
    tau^2: magenta passes sqrt(tau) and squares it); pen ~ q' proportional to exp(log q / tau).
    `greedy` takes argmax pi, the component mean and argmax pen. `temperature` is a float or a
    per-sketch tensor (B,) / (B, 1). `noise` (B, 4) from `draw_noise` replaces the generator
    (used to pre-draw the randomness of a whole CUDA-graphed loop). No host synchronisation.
    Returns (B, 5) rows (dx, dy, p1, p2, p3) with a one-hot pen state.
    """
    p = split_params(raw_t.float())
    B = raw_t.shape[0]
    if greedy:
        idx = p.pi_logits.argmax(-1)
        pen_idx = p.pen_logits.argmax(-1)
        pick = lambda v: v.gather(-1, idx[:, None])[:, 0]  # noqa: E731
        dx, dy = pick(p.mu_x), pick(p.mu_y)
    else:
        if noise is None:
            noise = draw_noise((B,), raw_t.device, generator)
        noise = noise.float()
        tau = torch.as_tensor(temperature, dtype=torch.float32, device=raw_t.device).reshape(-1, 1)
        idx = _inverse_cdf(_adjust_temp(p.pi_logits, tau), noise[:, 0])
        pen_idx = _inverse_cdf(_adjust_temp(p.pen_logits, tau), noise[:, 1])
        pick = lambda v: v.gather(-1, idx[:, None])[:, 0]  # noqa: E731
        t = tau[:, 0]
        sx, sy = torch.exp(pick(p.log_sigma_x)) * t, torch.exp(pick(p.log_sigma_y)) * t
        rho = torch.tanh(pick(p.rho_raw))
        n1, n2 = noise[:, 2], noise[:, 3]
        # Cholesky of [[sx^2, rho sx sy], [rho sx sy, sy^2]].
        dx = pick(p.mu_x) + sx * n1
        dy = pick(p.mu_y) + sy * (rho * n1 + torch.exp(0.5 * _one_minus_rho2_log(pick(p.rho_raw))) * n2)
    pen = F.one_hot(pen_idx, N_PEN).to(dx.dtype)
    return torch.cat([dx[:, None], dy[:, None], pen], 1).to(raw_t.dtype)
