"""RPCL-pix2seqH's latent prior: a two-level hierarchy (level-l units over shared level-k
Gaussians) held as buffers, updated by EM and rival-penalised (RPCL) steps. The pieces it shares
with the GMM prior of RPCL-pix2seq live in `sketchlab.nn.rpcl`, which also describes how a model
uses a prior."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
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
    winner_and_rival,
    write_if_finite,
)


class HierarchyState(NamedTuple):
    mean: Tensor  # (J, D) level-k Gaussian means
    var: Tensor  # (J, D) level-k Gaussian variances
    q_i: Tensor  # (I,) level-l unit weights q(i)
    q_j_given_i: Tensor  # (J, I) q(j|i), columns sum to 1

    def detach(self) -> "HierarchyState":
        return HierarchyState(*(t.detach() for t in self))

    def q_j(self) -> Tensor:
        """Level-k weights q(j) = sum_i q(j|i) q(i); never stored (the seed's `q_j_old`)."""
        return self.q_j_given_i @ self.q_i


class HierarchyPosterior(NamedTuple):
    p_j: Tensor  # (B, J) gamma: level-k posterior; label_j = argmax
    p_i: Tensor  # (B, I) pi: level-l posterior; label_i = argmax
    p_ji: Tensor  # (B, J, I) kappa: p(i | z, j), normalised over i
    rho: Tensor  # (B, J, I) p(j | z, i), normalised over j


def diag_heavy_q(n: int) -> Tensor:
    """`de_ij` of a fresh run (`train.py` `prepare`): (1 + n*I) normalised per column -> diag
    (n+1)/(2n), off 1/(2n)."""
    q = 1.0 + n * torch.eye(n)
    return q / q.sum(0, keepdim=True)


def hierarchy_log_prob(z: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """pix2seqH's `model.py` `calculate_prob`: likelihoods (B, J) in float64, scaled per sample.

    `l = -1/2 sum (z-m)^2/(1e-10+v) - sum log sqrt(v+1e-10)` (no 2*pi), then
    `l + 700 - max_j l`, clipped to [-700, 700], and `exp` in float64. The per-sample scale
    cancels in every ratio; relative weights below ~e^-1400 end up exactly 0. Gradient flows
    through the shift and the clip (0 where clipped), as in the seed.
    """
    diff2 = (z.unsqueeze(1) - mean.unsqueeze(0)) ** 2
    ll = -0.5 * (diff2 / (1e-10 + var.unsqueeze(0))).sum(-1) - torch.log(torch.sqrt(var + 1e-10)).sum(-1)
    # The seed adds the shift in float32, where one ulp at 700 is 6e-5: that rounds every
    # likelihood ratio by up to ~3e-5. We shift in float64 (same result, minus that noise).
    ll = ll.double()
    ll = (ll + 700.0 - ll.max(-1, keepdim=True).values).clamp(-700.0, 700.0)
    return torch.exp(ll)


def _normalise(x: Tensor, dim: int) -> Tensor:
    return x / (x.sum(dim, keepdim=True) + 1e-10)


def level_k_posterior(prob: Tensor, q_j: Tensor) -> Tensor:
    """gamma_bj = normalise_j(clip(q_j P_bj / (1e-300 + sum_j q_j P_bj), 0, 1)) -> float32."""
    num = q_j.double().unsqueeze(0) * prob
    r = (num / (1e-300 + num.sum(-1, keepdim=True))).clamp(0.0, 1.0).float()
    return _normalise(r, -1)


def unit_responsibility(prob: Tensor, q_j_given_i: Tensor) -> Tensor:
    """rho_b[j, i] = p(j | z, i) = normalise_j(clip(P_bj Q_ji / (sum_j P_bj Q_ji + 1e-300), 0, 1))."""
    num = prob.unsqueeze(-1) * q_j_given_i.double().unsqueeze(0)  # (B, J, I)
    r = (num / (num.sum(1, keepdim=True) + 1e-300)).clamp(0.0, 1.0).float()
    return _normalise(r, 1)


def merge_target(rho: Tensor, rpcl: bool = False, rival_rate: float = RIVAL_RATE) -> Tensor:
    """The "merge" target T (J, I) for q(j|i) (`update_em` / `update_rpcl`'s
    `heuristics_j_given_yi`; needs I == J).

    Co-responsibility of Gaussian c with unit i's own Gaussian j = i:
    `C[c, i] = sum_b rho_b[i, i] rho_b[c, i]` (c != i), `C[i, i] = 0`; `win_i = argmax_c C[c, i]`
    (lowest index on ties, so an all-zero column picks 0). `T = 0.5 onehot(win) + 0.5 I`, and in
    RPCL steps also `- rival_rate * onehot(riv)` with riv the argmax after zeroing the winner.
    No gradient: T is built from argmaxes only.
    """
    n = rho.shape[-1]
    eye = torch.eye(n, dtype=rho.dtype, device=rho.device)
    own = torch.diagonal(rho, dim1=1, dim2=2)  # (B, I): rho_b[i, i]
    co = torch.einsum("bi,bci->ci", own, rho) * (1 - eye)
    win, riv = winner_and_rival(co.transpose(0, 1))  # per column i
    target = 0.5 * F.one_hot(win, n).T.to(rho.dtype) + 0.5 * eye
    if rpcl:
        target = target - rival_rate * F.one_hot(riv, n).T.to(rho.dtype)
    return target


def unit_posterior(prob: Tensor, q_j_given_i: Tensor, q_i: Tensor) -> Tensor:
    """pi_b[i] = normalise_i(clip(q_i L_bi / (1e-300 + sum_i q_i L_bi), 1e-10, 1)), L = P Q."""
    lik = prob @ q_j_given_i.double()  # (B, I)
    num = q_i.double().unsqueeze(0) * lik
    r = (num / (1e-300 + num.sum(-1, keepdim=True))).clamp(1e-10, 1.0).float()
    return _normalise(r, -1)


def unit_given_gaussian(p_i: Tensor, rho: Tensor, p_j: Tensor) -> Tensor:
    """kappa_b[j, i] = normalise_i(pi_b[i] rho_b[j, i] / (gamma_bj + 1e-10)) = p(i | z, j)."""
    return _normalise(p_i.unsqueeze(1) * rho / (p_j.unsqueeze(-1) + 1e-10), -1)


def hierarchy_update(
    z: Tensor,
    mu: Tensor,
    var_enc: Tensor,
    state: HierarchyState,
    rpcl: bool = False,
    eta: float = EMA_RATE,
    rival_rate: float = RIVAL_RATE,
) -> tuple[HierarchyState, HierarchyPosterior]:
    """The seed's `model.py` `update_em` (rpcl=False) / `update_rpcl` (rpcl=True).

    E-steps use the sampled z, M-steps the encoder mu / var_enc; everything starts from the OLD
    `state`. Runs inside autograd: the returned posteriors depend on the new means and variances,
    which depend on this batch, so gradient flows through the update (as in the seed, which
    stops the gradient only on the prior arguments of its KL terms). Detach the new
    state before using it as a prior in the loss or writing it to buffers.
    """
    if z.shape[0] == 0:
        raise ValueError("hierarchy_update: empty batch")
    m, v, q_i, q = state
    # Level k with the old parameters.
    q_j0 = q @ q_i
    gamma0 = level_k_posterior(hierarchy_log_prob(z, m, v), q_j0)
    if rpcl:  # weights multiplied by the soft posterior, unlike pix2seq's `rpcl`
        w = gamma0 * rpcl_signs(gamma0.detach(), rival_rate)
    else:
        w = gamma0
    m_new, v_new = ema_gaussian_update(w, mu, var_enc, m, v, eta, "blended")
    q_j_new = _normalise(((1.0 - eta) * q_j0 + eta * w.mean(0)).clamp(0.0, 1.0), -1)
    # Level-k posterior re-evaluated with the new parameters: this is what the loss uses.
    prob = hierarchy_log_prob(z, m_new, v_new)
    p_j = level_k_posterior(prob, q_j_new)
    # Level l: p(j | z, i) with the OLD q(j|i), then the merge update of q(j|i).
    rho = unit_responsibility(prob, q)
    target = merge_target(rho.detach(), rpcl, rival_rate)
    q_new = _normalise(((1.0 - eta) * q + eta * target).clamp(1e-10, 1.0), 0)
    # Level-l posterior with the NEW q(j|i) and the OLD q(i).
    p_i = unit_posterior(prob, q_new, q_i)
    p_ji = unit_given_gaussian(p_i, rho, p_j)
    w_i = p_i * rpcl_signs(p_i.detach(), rival_rate) if rpcl else p_i
    q_i_new = _normalise(((1.0 - eta) * q_i + eta * w_i.mean(0)).clamp(1e-10, 1.0), -1)
    return HierarchyState(m_new, v_new, q_i_new, q_new), HierarchyPosterior(p_j, p_i, p_ji, rho)


def structural_kl(p_j: Tensor, p_ji: Tensor, q_i: Tensor, q_j_given_i: Tensor) -> Tensor:
    """L_IJ = mean_b sum_ji g k log(g k / (q'_i Q'_ji + 1e-10) + 1e-10), g k = q(j, i | x)
    (`model.py` `calculate_ij_loss`)."""
    joint = p_j.unsqueeze(-1) * p_ji  # (B, J, I)
    prior = (q_i.unsqueeze(0) * q_j_given_i).unsqueeze(0)  # (1, J, I)
    return (joint * torch.log(joint / (prior + 1e-10) + 1e-10)).sum((1, 2)).mean()


class HierarchicalPrior(nn.Module):
    """RPCL-pix2seqH's prior p(z) = sum_i q(i) sum_j q(j|i) N(z; m_j, v_j), held as buffers.

    J level-k Gaussians are shared by I level-l units; the seed requires I == J (`update_em`
    adds `winner_merge` (J, I) to `tf.diag(ones(J))`, and `train.py` `prepare` builds a square
    `de_ij`). Schedule (`build_RPCL_pix2seqH`): s > `rpcl_start` (100) and s % 3 == 0 -> RPCL,
    else EM. Gaussians die by drifting to the origin with vanishing variance (no posterior floor,
    so an unused Gaussian's batch mean is 0), units by losing q(i) to the RPCL penalty; `n_alive()`
    counts Gaussians with q(j) > threshold, `n_alive_units()` units with q(i) > threshold.
    """

    def __init__(
        self,
        n_gaussians: int = 16,
        n_units: int = 16,
        z_size: int = 128,
        rpcl_start: int = 100,
        rpcl_every: int = 3,
        eta: float = EMA_RATE,
        rival_rate: float = RIVAL_RATE,
        alive_threshold: float = ALIVE_THRESHOLD,
    ):
        super().__init__()
        if n_units != n_gaussians:
            raise ConfigError(
                f"num_layer_i ({n_units}) must equal num_layer_j ({n_gaussians}): the seed's "
                "q(j|i) update anchors unit i on Gaussian i"
            )
        if n_gaussians < 2:
            raise ConfigError(f"the hierarchy needs at least 2 Gaussians, got {n_gaussians}")
        self.n_gaussians, self.n_units, self.z_size = n_gaussians, n_units, z_size
        self.rpcl_start, self.rpcl_every = rpcl_start, rpcl_every
        self.eta, self.rival_rate, self.alive_threshold = eta, rival_rate, alive_threshold
        # `model.py` `config_model`'s initial values (with `train.py` `prepare`'s diagonal-heavy
        # q(j|i) of a fresh run)
        self.register_buffer("mean", torch.rand(n_gaussians, z_size) * 2 - 1)
        self.register_buffer("var", torch.ones(n_gaussians, z_size))
        self.register_buffer("q_i", torch.full((n_units,), 1.0 / n_units))
        self.register_buffer("q_j_given_i", diag_heavy_q(n_gaussians))
        self._pending: HierarchyState | None = None

    def state(self) -> HierarchyState:
        return HierarchyState(self.mean, self.var, self.q_i, self.q_j_given_i)

    def is_rpcl_step(self, step: int) -> bool:
        return step > self.rpcl_start and step % self.rpcl_every == 0

    def forward(self, z: Tensor, mu: Tensor, var_enc: Tensor, step: int) -> dict[str, Tensor]:
        """Update (with gradient, as the seed) and the KL terms L_G and L_IJ for one batch
        (`model.py` `build_RPCL_pix2seqH`).

        The prior arguments of both KL terms are the detached new state; the posteriors keep
        their gradient through the update. Stages the new state for `on_step_end` when training.
        """
        z, mu, var_enc = z.float(), mu.float(), var_enc.float()
        rpcl = self.is_rpcl_step(step)
        new, post = hierarchy_update(z, mu, var_enc, self.state(), rpcl, self.eta, self.rival_rate)
        prior = new.detach()
        if self.training:
            self._pending = prior
        return {
            "p_j": post.p_j,
            "p_i": post.p_i,
            "p_ji": post.p_ji,
            "label_j": post.p_j.argmax(-1),
            "label_i": post.p_i.argmax(-1),
            "loss_ij": structural_kl(post.p_j, post.p_ji, prior.q_i, prior.q_j_given_i),
            "loss_gauss": gaussian_kl(post.p_j, mu, var_enc, prior.mean, prior.var),
            "new_state": prior,
            "rpcl": rpcl,
        }

    @torch.no_grad()
    def posterior(self, z: Tensor) -> HierarchyPosterior:
        """Posteriors under the STORED parameters (labels for sampling and t-SNE).

        The seed's sample.py instead reads labels off `update_em` run on the batch, i.e. after a
        non-persisted 0.05 EMA step, which makes them batch-dependent; use
        `hierarchy_update(...)` directly to reproduce that.
        """
        state = self.state()
        prob = hierarchy_log_prob(z.float(), state.mean, state.var)
        p_j = level_k_posterior(prob, state.q_j())
        rho = unit_responsibility(prob, state.q_j_given_i)
        p_i = unit_posterior(prob, state.q_j_given_i, state.q_i)
        return HierarchyPosterior(p_j, p_i, unit_given_gaussian(p_i, rho, p_j), rho)

    @torch.no_grad()
    def on_step_end(self) -> bool:
        """Write the staged update into the buffers (after the optimiser step). True if written."""
        new, self._pending = self._pending, None
        if new is None:
            return False
        return write_if_finite(list(self.state()), list(new), "hierarchical prior")

    def q_j(self) -> Tensor:
        return self.state().q_j()

    def n_alive(self, threshold: float | None = None) -> int:
        """Level-k Gaussians with q(j) = sum_i q(j|i) q(i) above the threshold."""
        return int((self.q_j() > (self.alive_threshold if threshold is None else threshold)).sum())

    def n_alive_units(self, threshold: float | None = None) -> int:
        return int((self.q_i > (self.alive_threshold if threshold is None else threshold)).sum())

    @torch.no_grad()
    def sample(
        self,
        n: int,
        component: int | None = None,
        unit: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """n codes from the hierarchy; returns (z (n, D), gaussian j (n,), unit i (n,)).

        `component=j` draws z ~ N(m_j, v_j) (its unit i ~ q(i | j) ∝ q(j|i) q(i)); `unit=i`
        draws j ~ q(j|i) then z; neither: i ~ q(i), j ~ q(j|i). Not in the seeds (their
        `sample.py` "unconditional" mode draws N(0, I)).
        """
        check_component(component, self.n_gaussians, "level-k Gaussians")
        check_component(unit, self.n_units, "level-l units")
        if component is not None and unit is not None:
            raise ConfigError("pick either a Gaussian (component) or a unit, not both")
        q = self.q_j_given_i.cpu()
        if component is not None:
            j = torch.full((n,), int(component), dtype=torch.long)
            i = torch.multinomial(q[int(component)] * self.q_i.cpu(), n, True, generator=generator)
        else:
            if unit is not None:
                i = torch.full((n,), int(unit), dtype=torch.long)
            else:
                i = torch.multinomial(self.q_i.cpu(), n, True, generator=generator)
            # one categorical draw per sample from column q(. | i_b)
            j = torch.multinomial(q.T[i], 1, generator=generator).squeeze(1)
        eps = torch.randn(n, self.z_size, generator=generator)
        dev = self.mean.device
        j, i = j.to(dev), i.to(dev)
        return self.mean[j] + self.var[j].sqrt() * eps.to(dev), j, i
