"""What the latent priors of RPCL-pix2seq (`sketchlab.nn.gmm_prior`) and RPCL-pix2seqH
(`sketchlab.nn.hierarchy_prior`) share: the seeds' constants, the KL warm-up, the weighted EMA
M-step of diagonal Gaussians, rival selection, the Gaussian KL term, and the finite-only write.

Neither prior is learned by gradient. Each is a set of float32 buffers that is rewritten after
every optimiser step by an exponential-moving-average EM step (rate eta = 0.05) computed on the
batch's latent codes; on a schedule, a rival-penalised (RPCL) step replaces the EM step. The
numbers, floors and quirks follow the TensorFlow `model.py` of CMACH508/RPCL-pix2seq
(`calculate_posterior`, `em`, `rpcl`) and CMACH508/RPCL-pix2seqH (`calculate_prob`,
`update_em`, `update_rpcl`); comments name those functions.

How a model uses a prior (the originals compute the update in the same `sess.run` as the
gradient step and assign it to the GMM variables afterwards; in PyTorch order):

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

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from sketchlab.errors import ConfigError

# Constants hard-coded in both seeds' `model.py` (`em`, `rpcl`, `update_em`, `update_rpcl`).
EMA_RATE = 0.05  # eta: new = 0.95 * old + 0.05 * batch estimate
RIVAL_RATE = 1e-4  # RPCL de-learning weight of the rival
VAR_MIN, VAR_MAX = 1e-10, 1e10  # clip of the updated variances
# Default "alive" threshold on a component's weight. Under EM the 1e-5 responsibility floor keeps a
# component that never wins at alpha ~ 1e-5, and RPCL steps clip it to 0; a live component holds
# at least its share of batch wins (1/200 = 5e-3 for one sample of a 200 batch). 1e-3 sits between.
ALIVE_THRESHOLD = 1e-3


def kl_weight(step: int, floor: float = 0.001, decay: float = 0.9999) -> float:
    """KL warm-up of both seeds: `1 - 0.999 * 0.9999**step` (`model.py` `self.kl_weight`)."""
    return 1.0 - (1.0 - floor) * decay**step


def write_if_finite(buffers: list[Tensor], values: list[Tensor], what: str) -> bool:
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
    """One EMA M-step of diagonal Gaussians from weighted encoder outputs (pix2seq's `em` /
    `rpcl`, the level-k part of pix2seqH's `update_em` / `update_rpcl`).

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
    ratio and pulls the component *toward* its rival samples, not away from them.
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
    """Responsibility-weighted KL(N(mu, s2) || N(m_k, v_k)), mean over the batch (pix2seq's
    `get_gaussian_loss`, pix2seqH's `calculate_gaussian_loss`).

    `(1/B) sum_bk resp_bk * 1/2 sum_d [log(v+1e-10) + (s2 + (mu-m)^2)/(v+1e-10) - 1 - log(s2+1e-10)]`.
    Pass the *detached* new prior as `mean`, `var`.
    """
    v = (var + 1e-10).unsqueeze(0)  # (1, K, D)
    diff2 = (mu.unsqueeze(1) - mean.unsqueeze(0)) ** 2  # (B, K, D)
    s2 = var_enc.unsqueeze(1)
    kl = 0.5 * (torch.log(v) + (s2 + diff2) / v - 1.0 - torch.log(s2 + 1e-10)).sum(-1)  # (B, K)
    return (resp * kl).sum(-1).mean()




def check_component(k: int | None, n: int, what: str) -> None:
    """Refuse a `--component` / unit index outside 0..n-1."""
    if k is not None and not 0 <= int(k) < n:
        raise ConfigError(f"--component {k}: the prior has {n} {what}, pick 0..{n - 1}")
