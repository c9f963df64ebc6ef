"""RPCL-pix2seq's latent prior: a K-component diagonal GMM held as buffers, updated by EM and
rival-penalised (RPCL) steps. The pieces it shares with the hierarchical prior of RPCL-pix2seqH
live in `sketchlab.nn.rpcl`, which also describes how a model uses a prior."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from sketchlab.errors import ConfigError
from sketchlab.nn.rpcl import (
    ALIVE_THRESHOLD,
    EMA_RATE,
    RIVAL_RATE,
    check_component,
    ema_gaussian_update,
    gaussian_kl,
    rpcl_signs,
    write_if_finite,
)

GAMMA_FLOOR = 1e-5  # pix2seq clips every responsibility into [1e-5, 1]
PI_SEED = 3.1416  # pix2seq's log-likelihood constant uses 2 * 3.1416, not 2 * pi


class GMMState(NamedTuple):
    mean: Tensor  # (K, D)
    var: Tensor  # (K, D)
    alpha: Tensor  # (K,)

    def detach(self) -> "GMMState":
        return GMMState(*(t.detach() for t in self))


def gmm_log_likelihood(z: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """pix2seq's per-component log N(z; m_k, diag v_k), float32 (`model.py` `calculate_prob`).

    `-1/2 sum_d (z-m)^2/(1e-30+v) - sum_d log sqrt(v+1e-30) - D/2 log(2*3.1416)`; (B, K).
    """
    d = z.shape[-1]
    diff2 = (z.unsqueeze(1) - mean.unsqueeze(0)) ** 2
    quad = (diff2 / (1e-30 + var.unsqueeze(0))).sum(-1)
    log_det = torch.log(torch.sqrt(var + 1e-30)).sum(-1)
    return -0.5 * quad - log_det - 0.5 * d * math.log(2 * PI_SEED)


def gmm_posterior(z: Tensor, state: GMMState, faithful: bool = False) -> Tensor:
    """Responsibilities gamma (B, K) of the GMM for codes z (B, D) (`model.py`
    `calculate_posterior`).

    Both paths end the seeds' way: clip into [1e-5, 1], then renormalise with +1e-10, so no
    responsibility is ever below ~1e-5 (this floor drives the elimination dynamics: EM steps
    lift a component that never wins only to alpha ~ 1e-5, so it never wins again).

    * `faithful=True` is the seeds' arithmetic: exp of the float64 log-likelihood with NO shift,
      `alpha p / (1e-300 + sum alpha p)`. When every component underflows (log-likelihoods below
      about -745, e.g. a code far from every mean or tiny variances) all ratios are 0, the clip
      lifts them to 1e-5 and gamma becomes uniform 1/K.
    * `faithful=False` (default) computes the same ratio as a float32 softmax of
      `log alpha + loglik`: identical wherever the seeds' version does not underflow, and
      near-one-hot on the best component where it does. It also runs on devices without float64.
    """
    loglik = gmm_log_likelihood(z, state.mean, state.var)
    if faithful:
        p = torch.exp(loglik.double())
        num = state.alpha.double().unsqueeze(0) * p
        r = (num / (1e-300 + num.sum(-1, keepdim=True))).float()
    else:
        # log(0) = -inf for a component whose weight was clipped to 0: softmax gives it 0.
        r = torch.softmax(torch.log(state.alpha).unsqueeze(0) + loglik, dim=-1)
    r = r.clamp(GAMMA_FLOOR, 1.0)
    return r / (1e-10 + r.sum(-1, keepdim=True))


def gmm_update(
    weights: Tensor, mu: Tensor, var_enc: Tensor, state: GMMState, eta: float = EMA_RATE
) -> GMMState:
    """The seed's `model.py` `em` / `rpcl` batch update, computed from the OLD state.

    `weights` are gamma for EM or `rpcl_signs(gamma)` for RPCL (hard, NOT multiplied by gamma).
    `alpha' = clip((1-eta) alpha + eta mean_b w, 0, 1) / sum`; a component that only ever rivals
    gets a negative estimate and is clipped to 0.
    """
    if weights.shape[0] == 0:
        raise ValueError("gmm_update: empty batch")
    mean, var = ema_gaussian_update(weights, mu, var_enc, state.mean, state.var, eta, "batch")
    alpha = ((1.0 - eta) * state.alpha + eta * weights.mean(0)).clamp(0.0, 1.0)
    return GMMState(mean, var, alpha / alpha.sum())


def alpha_kl(resp: Tensor, alpha: Tensor) -> Tensor:
    """`mean_b sum_k gamma log(gamma/(alpha'+1e-10) + 1e-10)` = mean_b KL(gamma_b || alpha')
    (`model.py` `get_alpha_loss`)."""
    return (resp * torch.log(resp / (alpha.unsqueeze(0) + 1e-10) + 1e-10)).sum(-1).mean()


class GMMPrior(nn.Module):
    """RPCL-pix2seq's latent prior: K diagonal Gaussians with weights alpha, held as buffers.

    Schedule (`model.py` `build_RPCL_pix2seq`): step s > `rpcl_start` and s % `rpcl_every` == 0
    -> RPCL, else EM. Components are never removed: losers end with alpha ~ 0 and never win again;
    `n_alive()` counts those with alpha > `alive_threshold`.
    """

    def __init__(
        self,
        n_components: int = 10,
        z_size: int = 128,
        faithful_posterior: bool = False,
        rpcl_start: int = 500,
        rpcl_every: int = 3,
        eta: float = EMA_RATE,
        rival_rate: float = RIVAL_RATE,
        alive_threshold: float = ALIVE_THRESHOLD,
    ):
        super().__init__()
        if n_components < 2:
            raise ConfigError(f"the GMM prior needs at least 2 components, got {n_components}")
        self.n_components, self.z_size = n_components, z_size
        self.faithful_posterior = faithful_posterior
        self.rpcl_start, self.rpcl_every = rpcl_start, rpcl_every
        self.eta, self.rival_rate, self.alive_threshold = eta, rival_rate, alive_threshold
        # `model.py` `config_model`: m ~ U(-1, 1), v = 1, alpha = 1/K
        self.register_buffer("mean", torch.rand(n_components, z_size) * 2 - 1)
        self.register_buffer("var", torch.ones(n_components, z_size))
        self.register_buffer("alpha", torch.full((n_components,), 1.0 / n_components))
        self._pending: GMMState | None = None

    def state(self) -> GMMState:
        return GMMState(self.mean, self.var, self.alpha)

    def is_rpcl_step(self, step: int) -> bool:
        return step > self.rpcl_start and step % self.rpcl_every == 0

    def posterior(self, z: Tensor) -> Tensor:
        """gamma (B, K) under the stored parameters; `argmax(-1)` is the seeds' `gau_label`."""
        return gmm_posterior(z.float(), self.state(), self.faithful_posterior)

    def forward(self, z: Tensor, mu: Tensor, var_enc: Tensor, step: int) -> dict[str, Tensor]:
        """Posterior, update and KL terms for one batch (`model.py` `build_RPCL_pix2seq`).

        z is the sampled code (E-step), mu / var_enc the encoder outputs (M-step). gamma carries
        gradient to z; the update does not (it is built from detached inputs, as the original's
        loss sees the update only through `tf.stop_gradient`).
        Returns gamma, label, loss_alpha, loss_gauss and the new state; stages the new state for
        `on_step_end` when training.
        """
        z, mu, var_enc = z.float(), mu.float(), var_enc.float()
        state = self.state()
        gamma = gmm_posterior(z, state, self.faithful_posterior)
        rpcl = self.is_rpcl_step(step)
        with torch.no_grad():
            g = gamma.detach()
            weights = rpcl_signs(g, self.rival_rate) if rpcl else g
            new = gmm_update(weights, mu.detach(), var_enc.detach(), state, self.eta)
        if self.training:
            self._pending = new
        return {
            "gamma": gamma,
            "label": gamma.argmax(-1),
            "loss_alpha": alpha_kl(gamma, new.alpha),
            "loss_gauss": gaussian_kl(gamma, mu, var_enc, new.mean, new.var),
            "new_state": new,
            "rpcl": rpcl,
        }

    @torch.no_grad()
    def on_step_end(self) -> bool:
        """Write the staged update into the buffers (after the optimiser step). True if written."""
        new, self._pending = self._pending, None
        if new is None:
            return False
        return write_if_finite([self.mean, self.var, self.alpha], [new.mean, new.var, new.alpha],
                                "GMM prior")

    def alive_mask(self, threshold: float | None = None) -> Tensor:
        return self.alpha > (self.alive_threshold if threshold is None else threshold)

    def n_alive(self, threshold: float | None = None) -> int:
        return int(self.alive_mask(threshold).sum())

    @torch.no_grad()
    def sample(
        self, n: int, component: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """n codes z ~ N(m_k, diag v_k) with k = `component`, or k ~ alpha when None.

        Not in the seeds (their `sample.py` "unconditional" mode draws N(0, I)); this is the
        paper-consistent way to sample one mode of the prior. Returns (z (n, D), k (n,)).
        """
        check_component(component, self.n_components, "components")
        dev = self.mean.device
        if component is None:
            k = torch.multinomial(self.alpha.cpu(), n, replacement=True, generator=generator)
        else:
            k = torch.full((n,), int(component), dtype=torch.long)
        eps = torch.randn(n, self.z_size, generator=generator)
        k = k.to(dev)
        return self.mean[k] + self.var[k].sqrt() * eps.to(dev), k
