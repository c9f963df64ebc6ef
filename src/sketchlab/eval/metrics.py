"""Sample-quality metrics for sketch generation, as the papers' evaluation code defines them.

* `recognition_accuracy` -- Rec: top-k accuracy of a sketch classifier on generated sketches
  against the category of their reference (RPCL-pix2seq, SP-gra2seq and SketchGloc's Rec).
* `retrieval_metrics` -- Ret: re-encoded generated sketches retrieve the code they were generated
  from among all N codes (the same papers' Ret; SketchGloc's `retrieval.py`).
* `fid` / `frechet_distance` -- FID (Heusel et al. 2017; pytorch-fid's `calculate_frechet_distance`).
* `inception_score` -- IS on a classifier's softmax (Salimans et al. 2016, 10 splits).
* `precision_recall` -- improved precision and recall, k = 3 (Kynkaanniemi et al. 2019).
* `geometry_score` -- GS (Khrulkov & Oseledets 2018; implemented in `sketchlab.eval.topology`).

Feature-based metrics take plain `(N, D)` arrays: which network made them is the caller's choice
(`sketchlab.eval.features.FeatureExtractor`). With sketchlab's default, a Sketch-a-Net trained on
the experiment's categories, FID/IS/P-R are *not* comparable with figures computed with the
ImageNet Inception-v3 that the papers' FID and IS use.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from scipy import linalg

from sketchlab.errors import ConfigError
from sketchlab.eval.topology import (  # noqa: F401  (re-exported: the metrics API lives here)
    geometry_score, geometry_score_from_mrlt, mean_rlt, relative_living_times, rlts)


def _as_matrix(x, name: str, dtype=np.float64) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(dtype, copy=False)
    if a.ndim != 2 or len(a) == 0:
        raise ConfigError(f"{name}: expected a non-empty (N, D) array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{name}: holds NaN or inf")
    return a


def _as_tensor(x, name: str, device=None, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    t = t.to(device=device, dtype=dtype)
    if t.ndim != 2 or len(t) == 0:
        raise ConfigError(f"{name}: expected a non-empty (N, D) array, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{name}: holds NaN or inf")
    return t


# Distance tiles hold at most this many entries (128 MiB in float64), whatever N is.
_TILE_ENTRIES = 1 << 24


def _block_rows(block_size: int | None, n_cols: int) -> int:
    if block_size is not None:
        return max(1, int(block_size))
    return max(1, min(4096, _TILE_ENTRIES // max(1, n_cols)))


def _squared_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """`||a_i - b_j||^2` for a block of rows, by the expansion (clamped at 0 against rounding)."""
    return ((a * a).sum(1, keepdim=True) + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


# ------------------------------------------------------------------------------------------------
# Rec
# ------------------------------------------------------------------------------------------------


def recognition_accuracy(logits, labels, ks: Sequence[int] = (1,)) -> dict[str, float]:
    """`{"rec@k": fraction of sketches whose label is among the k highest logits}`.

    k larger than the number of classes is skipped (it would be 1 by construction).
    """
    lg = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
    lb = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1).to(lg.device)
    if lg.ndim != 2 or len(lg) != len(lb) or len(lb) == 0:
        raise ConfigError(f"recognition_accuracy: logits {tuple(lg.shape)} and labels "
                          f"{tuple(lb.shape)} do not match")
    if int(lb.min()) < 0 or int(lb.max()) >= lg.shape[1]:
        raise ConfigError(f"recognition_accuracy: labels must lie in [0, {lg.shape[1]})")
    out = {}
    for k in ks:
        if k > lg.shape[1]:
            continue
        top = lg.topk(k, dim=1).indices
        out[f"rec@{k}"] = float((top == lb[:, None]).any(1).double().mean())
    return out


# ------------------------------------------------------------------------------------------------
# Ret
# ------------------------------------------------------------------------------------------------


def retrieval_ranks(gallery_codes, query_codes, block_size: int | None = None,
                    device=None) -> np.ndarray:
    """0-based rank of query i's own gallery item i among all N gallery items.

    Distance is the mean squared difference over the code dimensions; gallery items at the same
    distance rank by index (lowest first), as the seeds' repeated argmin does. Every query is
    counted (the seeds' chunking silently skips `N mod chunks` queries; with the papers' N it
    skipped none).

    Fast path: distances by the float64 expansion `|q|^2 + |g|^2 - 2 q.g` in blocks; the few
    entries within rounding distance of the query's own distance are recomputed exactly as
    `sum (q - g)^2`, so ties are resolved exactly as the plain computation resolves them.
    """
    g = _as_tensor(gallery_codes, "gallery codes", device)
    q = _as_tensor(query_codes, "query codes", device)
    if g.shape != q.shape:
        raise ConfigError(f"retrieval: gallery {tuple(g.shape)} and queries {tuple(q.shape)} must "
                          f"have the same shape (query i was generated from gallery item i)")
    n = len(g)
    block_size = _block_rows(block_size, n)
    g_sq = (g * g).sum(1)
    ranks = torch.empty(n, dtype=torch.int64, device=g.device)
    for s in range(0, n, block_size):
        e = min(s + block_size, n)
        qb = q[s:e]
        own_idx = torch.arange(s, e, device=g.device)
        own = ((qb - g[s:e]) ** 2).sum(1)  # exact
        d = _squared_distances(qb, g, g_sq)
        # Rounding error of the expansion is far below this band (float64, relative 1e-10).
        tol = 1e-10 * ((qb * qb).sum(1, keepdim=True) + g_sq[None, :]) + 1e-300
        below = d < own[:, None] - tol
        near = (d - own[:, None]).abs() <= tol
        r = below.sum(1)
        qi, gj = near.nonzero(as_tuple=True)
        exact = ((qb[qi] - g[gj]) ** 2).sum(1)
        before = (exact < own[qi]) | ((exact == own[qi]) & (gj < own_idx[qi]))
        r.index_add_(0, qi, before.to(r.dtype))
        ranks[s:e] = r
    return ranks.cpu().numpy()


def retrieval_metrics(gallery_codes, query_codes, ks: Sequence[int] = (1, 10, 50),
                      block_size: int | None = None, device=None) -> dict[str, float]:
    """`{"ret@k": fraction of queries whose own code is among their k nearest gallery codes}`.

    `gallery_codes[i]` is the code sketch i was generated from (in conditional generation, the
    encoding of reference i); `query_codes[i]` is the encoding of generated sketch i.
    """
    ranks = retrieval_ranks(gallery_codes, query_codes, block_size, device)
    return {f"ret@{k}": float(np.mean(ranks < k)) for k in ks}


# ------------------------------------------------------------------------------------------------
# FID
# ------------------------------------------------------------------------------------------------


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (N - 1) covariance of `(N, D)` features, in float64."""
    f = _as_matrix(features, "features")
    if len(f) < 2:
        raise ConfigError("FID needs at least 2 feature vectors per set")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrtm_trace(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """Tr sqrt(S1 S2) as the guided-diffusion evaluator computes it (scipy sqrtm)."""
    with warnings.catch_warnings():
        # The evaluator calls sqrtm(disp=False): a singular product is handled by the retry below.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ConfigError(f"FID: sqrtm has an imaginary component of "
                              f"{np.max(np.abs(covmean.imag)):.3g}; the covariances are degenerate "
                              f"(too few samples for the feature dimension?)")
        covmean = covmean.real
    return float(np.trace(covmean))


def _eigh_trace(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) = sum sqrt(eig(A S2 A)) with A = S1^(1/2) (both symmetric PSD)."""
    w, v = np.linalg.eigh(sigma1)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = a @ sigma2 @ a
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "sqrtm", eps: float = 1e-6) -> float:
    """`||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr sqrt(S1 S2)` in float64.

    `method="sqrtm"` is the guided-diffusion evaluator's computation (retry with `eps * I` added
    when sqrtm is not finite; imaginary parts up to 1e-3 on the diagonal dropped, larger ones
    refused); `"eigh"` is the symmetric-eigenvalue formulation (faster, same value).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1),) * 2:
        raise ConfigError(f"FID: shapes do not match: mu {mu1.shape} vs {mu2.shape}, "
                          f"sigma {sigma1.shape} vs {sigma2.shape}")
    if method == "sqrtm":
        tr_covmean = _sqrtm_trace(sigma1, sigma2, eps)
    elif method == "eigh":
        tr_covmean = _eigh_trace(sigma1, sigma2)
    else:
        raise ConfigError(f"FID: unknown method {method!r} (sqrtm or eigh)")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    # A squared distance: a slightly negative result (identical sets) is float rounding in the
    # trace of the matrix square root, not a distance below zero.
    return max(value, 0.0)


def fid(features_a, features_b, method: str = "sqrtm") -> float:
    """FID between two `(N, D)` feature sets."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b),
                            method=method)


# ------------------------------------------------------------------------------------------------
# IS
# ------------------------------------------------------------------------------------------------


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """`exp(E_x KL(p(y|x) || p(y)))`, mean and std over `splits` consecutive splits.

    `p(y)` is the marginal within each split (as Salimans et al. and torch-fidelity). On a sketch
    classifier's logits this is a "sketch IS": bounded by the number of classes.
    """
    lg = _as_tensor(logits, "logits", "cpu")
    n = len(lg)
    splits = max(1, min(int(splits), n))
    logp = torch.log_softmax(lg, dim=1)
    scores = []
    for i in range(splits):
        part = logp[i * n // splits:(i + 1) * n // splits]
        p = part.exp()
        log_marginal = p.mean(0).log()
        terms = torch.where(p > 0, p * (part - log_marginal), torch.zeros_like(p))
        scores.append(float(terms.sum(1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------------------------
# Improved precision / recall
# ------------------------------------------------------------------------------------------------


def knn_radii(features, k: int = 3, block_size: int | None = None, device=None) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest neighbour in the same set (self excluded:
    the (k+1)-th smallest value with the self-distance 0 included, as `np.partition(..., k)`)."""
    x = _as_tensor(features, "features", device)
    if len(x) <= k:
        raise ConfigError(f"precision/recall with k={k} needs more than {k} points per set, "
                          f"got {len(x)}")
    x_sq = (x * x).sum(1)
    block_size = _block_rows(block_size, len(x))
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for s in range(0, len(x), block_size):
        d = _squared_distances(x[s:s + block_size], x, x_sq)
        out[s:s + block_size] = d.kthvalue(k + 1, dim=1).values
    return out


def manifold_coverage(queries, manifold, radii: torch.Tensor, block_size: int | None = None,
                      device=None) -> float:
    """Fraction of `queries` inside the union of balls `B(manifold_j, radius_j)` (`<=`)."""
    q = _as_tensor(queries, "queries", device)
    m = _as_tensor(manifold, "manifold", device)
    radii = radii.to(m.device, m.dtype)
    m_sq = (m * m).sum(1)
    block_size = _block_rows(block_size, len(m))
    inside = 0
    for s in range(0, len(q), block_size):
        d = _squared_distances(q[s:s + block_size], m, m_sq)
        inside += int((d <= radii[None, :]).any(1).sum())
    return inside / len(q)


def precision_recall(real_features, fake_features, k: int = 3, block_size: int | None = None,
                     device=None) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake
    manifold) of Kynkaeaenniemi et al. 2019, with k-NN balls in squared Euclidean distance."""
    real = _as_tensor(real_features, "real features", device)
    fake = _as_tensor(fake_features, "fake features", device)
    if real.shape[1] != fake.shape[1]:
        raise ConfigError(f"precision/recall: feature sizes differ ({real.shape[1]} vs "
                          f"{fake.shape[1]})")
    precision = manifold_coverage(fake, real, knn_radii(real, k, block_size), block_size)
    recall = manifold_coverage(real, fake, knn_radii(fake, k, block_size), block_size)
    return precision, recall
