"""The latent priors of RPCL-pix2seq (a K-component GMM) and RPCL-pix2seqH (a two-level hierarchy).

Neither prior is learned by gradient. Each is a set of float32 buffers that is rewritten after
every optimiser step by an exponential-moving-average EM step (rate eta = 0.05) computed on the
batch's latent codes; on a schedule, a rival-penalised (RPCL) step replaces the EM step. The
numbers, floors and quirks follow docs/specs/rpcl-pix2seq.md (sections 4 and 5); comments cite
its sections.

How a model uses a prior (spec 6.2):

    out = prior(z, mu, var, step)      # posteriors from the OLD buffers, the update computed from
                                       # the OLD buffers, loss terms against the detached NEW state
    loss = ... + w_kl * (out["loss_alpha"] + out["loss_gauss"])
    loss.backward(); optimizer.step()
    prior.on_step_end()                # the trainer calls model.on_step_end(step) -> this

`forward` only *stages* the new state (when the module is in training mode); `on_step_end`
writes it. Evaluation (`.eval()`) never touches the buffers. All buffers are persistent, so
`state_dict()` / safetensors checkpoints carry the prior exactly.

Names: `mean`, `var`, `alpha` are the seeds' `de_mu`, `de_sigma2`, `de_alpha`; in the hierarchy
`q_i` is `de_i` (level-l unit weights q(i)) and `q_j_given_i` is `de_ij` (q(j|i), columns sum
to 1 over j).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sketchlab.errors import ConfigError

# Constants hard-coded in both seeds (spec section 1).
EMA_RATE = 0.05  # eta: new = 0.95 * old + 0.05 * batch estimate
RIVAL_RATE = 1e-4  # RPCL de-learning weight of the rival
VAR_MIN, VAR_MAX = 1e-10, 1e10  # clip of the updated variances
GAMMA_FLOOR = 1e-5  # pix2seq clips every responsibility into [1e-5, 1]
PI_SEED = 3.1416  # pix2seq's log-likelihood constant uses 2 * 3.1416, not 2 * pi
# Default "alive" threshold on a component's weight. Under EM the 1e-5 responsibility floor keeps a
# component that never wins at alpha ~ 1e-5, and RPCL steps clip it to 0; a live component holds
# at least its share of batch wins (1/200 = 5e-3 for one sample of a 200 batch). 1e-3 sits between.
ALIVE_THRESHOLD = 1e-3


def kl_weight(step: int, floor: float = 0.001, decay: float = 0.9999) -> float:
    """KL warm-up of both seeds: `1 - 0.999 * 0.9999**step` (spec 4.6)."""
    return 1.0 - (1.0 - floor) * decay**step


def _write_if_finite(buffers: list[Tensor], values: list[Tensor], what: str) -> bool:
    """Copy `values` into `buffers` unless any holds NaN/inf (a diverged batch keeps the prior).

    Sync-free, so it can run inside a captured CUDA graph: the choice is a `torch.where`. Outside
    a capture the decision is read back, warned about and returned.
    """
    ok = torch.stack([torch.isfinite(v).all() for v in values]).all()
    for buf, value in zip(buffers, values):
        buf.copy_(torch.where(ok, value.to(buf.dtype), buf))
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return True
    if not bool(ok):
        warnings.warn(f"{what} update held NaN/inf (diverged batch); the prior was kept")
        return False
    return True


# --------------------------------------------------------------------------------------------
# Shared pieces: weighted EMA moments, rival selection, Gaussian KL
# --------------------------------------------------------------------------------------------


def winner_and_rival(resp: Tensor) -> tuple[Tensor, Tensor]:
    """Winner `argmax_k resp` and rival `argmax_k (resp - resp * onehot(winner))` per row.

    Ties go to the lowest index (torch.argmax and TF argmax agree). With a zero row the rival is
    index 0 and may equal the winner, exactly as in the seeds' masking arithmetic.
    """
    win = resp.argmax(-1)
    masked = resp - resp * F.one_hot(win, resp.shape[-1]).to(resp.dtype)
    return win, masked.argmax(-1)


def rpcl_signs(resp: Tensor, rival_rate: float = RIVAL_RATE) -> Tensor:
    """`1[k = winner] - rival_rate * 1[k = rival]` per row (float, same shape as `resp`)."""
    win, riv = winner_and_rival(resp)
    k = resp.shape[-1]
    return F.one_hot(win, k).to(resp.dtype) - rival_rate * F.one_hot(riv, k).to(resp.dtype)


def ema_gaussian_update(
    weights: Tensor,
    mu: Tensor,
    var_enc: Tensor,
    mean: Tensor,
    var: Tensor,
    eta: float = EMA_RATE,
    spread_about: str = "batch",
) -> tuple[Tensor, Tensor]:
    """One EMA M-step of diagonal Gaussians from weighted encoder outputs (spec 4.3 / 5.3).

    weights (B, K) (soft responsibilities, or signed RPCL weights), mu / var_enc (B, D) the
    encoder's mean and variance (not the sampled z), mean / var (K, D) the old parameters.

        N_k   = sum_b w_bk
        m~_k  = sum_b w_bk mu_b / (N_k + 1e-10)
        m_k'  = (1 - eta) m_k + eta m~_k
        v~_k  = sum_b w_bk [(mu_b - c_k)^2 + s2_b] / (N_k + 1e-10)
        v_k'  = clip((1 - eta) v_k + eta v~_k, 1e-10, 1e10)

    `spread_about="batch"` centres v~ on the batch mean c = m~ (pix2seq); `"blended"` on the new
    mean c = m' (pix2seqH). Quirks kept on purpose: N_k = 0 gives m~ = v~ = 0, so the component
    drifts to the origin and to zero variance; a negative N_k (a pure RPCL rival) cancels in the
    ratio and pulls the component *toward* its rival samples (spec 4.5).
    """
    n = weights.sum(0)
    denom = (n + 1e-10).unsqueeze(-1)
    batch_mean = weights.transpose(0, 1) @ mu / denom
    new_mean = (1.0 - eta) * mean + eta * batch_mean
    if spread_about == "batch":
        centre = batch_mean
    elif spread_about == "blended":
        centre = new_mean
    else:
        raise ValueError(f"spread_about must be 'batch' or 'blended', not {spread_about!r}")
    spread = (mu.unsqueeze(1) - centre.unsqueeze(0)) ** 2 + var_enc.unsqueeze(1)  # (B, K, D)
    batch_var = (weights.unsqueeze(-1) * spread).sum(0) / denom
    new_var = ((1.0 - eta) * var + eta * batch_var).clamp(VAR_MIN, VAR_MAX)
    return new_mean, new_var


def gaussian_kl(resp: Tensor, mu: Tensor, var_enc: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """Responsibility-weighted KL(N(mu, s2) || N(m_k, v_k)), mean over the batch (spec 4.6.2).

    `(1/B) sum_bk resp_bk * 1/2 sum_d [log(v+1e-10) + (s2 + (mu-m)^2)/(v+1e-10) - 1 - log(s2+1e-10)]`.
    Pass the *detached* new prior as `mean`, `var`.
    """
    v = (var + 1e-10).unsqueeze(0)  # (1, K, D)
    diff2 = (mu.unsqueeze(1) - mean.unsqueeze(0)) ** 2  # (B, K, D)
    s2 = var_enc.unsqueeze(1)
    kl = 0.5 * (torch.log(v) + (s2 + diff2) / v - 1.0 - torch.log(s2 + 1e-10)).sum(-1)  # (B, K)
    return (resp * kl).sum(-1).mean()


# --------------------------------------------------------------------------------------------
# RPCL-pix2seq: K-component GMM (spec section 4)
# --------------------------------------------------------------------------------------------


class GMMState(NamedTuple):
    mean: Tensor  # (K, D)
    var: Tensor  # (K, D)
    alpha: Tensor  # (K,)

    def detach(self) -> "GMMState":
        return GMMState(*(t.detach() for t in self))


def gmm_log_likelihood(z: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """pix2seq's per-component log N(z; m_k, diag v_k), float32 (spec 4.2).

    `-1/2 sum_d (z-m)^2/(1e-30+v) - sum_d log sqrt(v+1e-30) - D/2 log(2*3.1416)`; (B, K).
    """
    d = z.shape[-1]
    diff2 = (z.unsqueeze(1) - mean.unsqueeze(0)) ** 2
    quad = (diff2 / (1e-30 + var.unsqueeze(0))).sum(-1)
    log_det = torch.log(torch.sqrt(var + 1e-30)).sum(-1)
    return -0.5 * quad - log_det - 0.5 * d * math.log(2 * PI_SEED)


def gmm_posterior(z: Tensor, state: GMMState, faithful: bool = False) -> Tensor:
    """Responsibilities gamma (B, K) of the GMM for codes z (B, D) (spec 4.2).

    Both paths end the seeds' way: clip into [1e-5, 1], then renormalise with +1e-10, so no
    responsibility is ever below ~1e-5 (this floor drives the elimination dynamics, spec 4.5).

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
    """The seeds' `em` / `rpcl` batch update, computed from the OLD state (spec 4.3).

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
    """`mean_b sum_k gamma log(gamma/(alpha'+1e-10) + 1e-10)` = mean_b KL(gamma_b || alpha') (4.6.1)."""
    return (resp * torch.log(resp / (alpha.unsqueeze(0) + 1e-10) + 1e-10)).sum(-1).mean()


def _check_component(k: int | None, n: int, what: str) -> None:
    if k is not None and not 0 <= int(k) < n:
        raise ConfigError(f"--component {k}: the prior has {n} {what}, pick 0..{n - 1}")


class GMMPrior(nn.Module):
    """RPCL-pix2seq's latent prior: K diagonal Gaussians with weights alpha, held as buffers.

    Schedule (spec 4.4): step s > `rpcl_start` and s % `rpcl_every` == 0 -> RPCL, else EM.
    Components are never removed (spec 4.5): losers end with alpha ~ 0 and never win again;
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
        # spec 4.1: m ~ U(-1, 1), v = 1, alpha = 1/K
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
        """Posterior, update and KL terms for one batch (spec 4.2-4.6).

        z is the sampled code (E-step), mu / var_enc the encoder outputs (M-step). gamma carries
        gradient to z; the update does not (it is built from detached inputs, spec 4.7).
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
        return _write_if_finite([self.mean, self.var, self.alpha], [new.mean, new.var, new.alpha],
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

        Not in the seeds (their "unconditional" mode is N(0, I), spec 7.3); this is the
        paper-consistent way to sample one mode of the prior. Returns (z (n, D), k (n,)).
        """
        _check_component(component, self.n_components, "components")
        dev = self.mean.device
        if component is None:
            k = torch.multinomial(self.alpha.cpu(), n, replacement=True, generator=generator)
        else:
            k = torch.full((n,), int(component), dtype=torch.long)
        eps = torch.randn(n, self.z_size, generator=generator)
        k = k.to(dev)
        return self.mean[k] + self.var[k].sqrt() * eps.to(dev), k


# --------------------------------------------------------------------------------------------
# RPCL-pix2seqH: two-level hierarchy (spec section 5)
# --------------------------------------------------------------------------------------------


class HierarchyState(NamedTuple):
    mean: Tensor  # (J, D) level-k Gaussian means
    var: Tensor  # (J, D) level-k Gaussian variances
    q_i: Tensor  # (I,) level-l unit weights q(i)
    q_j_given_i: Tensor  # (J, I) q(j|i), columns sum to 1

    def detach(self) -> "HierarchyState":
        return HierarchyState(*(t.detach() for t in self))

    def q_j(self) -> Tensor:
        """Level-k weights q(j) = sum_i q(j|i) q(i); never stored (spec 5.1)."""
        return self.q_j_given_i @ self.q_i


class HierarchyPosterior(NamedTuple):
    p_j: Tensor  # (B, J) gamma: level-k posterior; label_j = argmax
    p_i: Tensor  # (B, I) pi: level-l posterior; label_i = argmax
    p_ji: Tensor  # (B, J, I) kappa: p(i | z, j), normalised over i
    rho: Tensor  # (B, J, I) p(j | z, i), normalised over j


def diag_heavy_q(n: int) -> Tensor:
    """`de_ij` of a fresh run: (1 + n*I) normalised per column -> diag (n+1)/(2n), off 1/(2n)."""
    q = 1.0 + n * torch.eye(n)
    return q / q.sum(0, keepdim=True)


def hierarchy_log_prob(z: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """pix2seqH's `calculate_prob` (spec 5.2): likelihoods (B, J) in float64, scaled per sample.

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
    """The "merge" target T (J, I) for q(j|i) (spec 5.3 / 5.4; needs I == J).

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
    """The seed's `update_em` (rpcl=False) / `update_rpcl` (rpcl=True), spec 5.3 / 5.4.

    E-steps use the sampled z, M-steps the encoder mu / var_enc; everything starts from the OLD
    `state`. Runs inside autograd: the returned posteriors depend on the new means and variances,
    which depend on this batch, so gradient flows through the update (spec 5.8). Detach the new
    state before using it as a prior in the loss or writing it to buffers.
    """
    if z.shape[0] == 0:
        raise ValueError("hierarchy_update: empty batch")
    m, v, q_i, q = state
    # Level k with the old parameters.
    q_j0 = q @ q_i
    gamma0 = level_k_posterior(hierarchy_log_prob(z, m, v), q_j0)
    if rpcl:  # weights multiplied by the soft posterior, unlike pix2seq (spec 5.4)
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
    """L_IJ = mean_b sum_ji g k log(g k / (q'_i Q'_ji + 1e-10) + 1e-10), g k = q(j, i | x) (5.7.2)."""
    joint = p_j.unsqueeze(-1) * p_ji  # (B, J, I)
    prior = (q_i.unsqueeze(0) * q_j_given_i).unsqueeze(0)  # (1, J, I)
    return (joint * torch.log(joint / (prior + 1e-10) + 1e-10)).sum((1, 2)).mean()


class HierarchicalPrior(nn.Module):
    """RPCL-pix2seqH's prior p(z) = sum_i q(i) sum_j q(j|i) N(z; m_j, v_j), held as buffers.

    J level-k Gaussians are shared by I level-l units; the seed requires I == J (spec 5.8).
    Schedule (5.5): s > `rpcl_start` (100) and s % 3 == 0 -> RPCL, else EM. Gaussians die by
    drifting to the origin with vanishing variance, units by losing q(i) (5.6); `n_alive()`
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
                "q(j|i) update anchors unit i on Gaussian i (spec 5.8)"
            )
        if n_gaussians < 2:
            raise ConfigError(f"the hierarchy needs at least 2 Gaussians, got {n_gaussians}")
        self.n_gaussians, self.n_units, self.z_size = n_gaussians, n_units, z_size
        self.rpcl_start, self.rpcl_every = rpcl_start, rpcl_every
        self.eta, self.rival_rate, self.alive_threshold = eta, rival_rate, alive_threshold
        # spec 5.1 (with train.prepare's diagonal-heavy q(j|i) of a fresh run)
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
        """Update (with gradient, spec 5.8) and the KL terms L_G and L_IJ for one batch (5.7).

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
        non-persisted 0.05 EMA step, which makes them batch-dependent (spec 7.4, [BUG?]); use
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
        return _write_if_finite(list(self.state()), list(new), "hierarchical prior")

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
        draws j ~ q(j|i) then z; neither: i ~ q(i), j ~ q(j|i). Not in the seeds (spec 7.3).
        """
        _check_component(component, self.n_gaussians, "level-k Gaussians")
        _check_component(unit, self.n_units, "level-l units")
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
