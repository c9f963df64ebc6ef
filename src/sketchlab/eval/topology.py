"""Geometry Score (Khrulkov & Oseledets, ICML 2018), as SketchKnitter reports it.

GS compares the topology of two point clouds: for each cloud, build a witness complex on a few
random landmarks (all points are witnesses), read off how long the complex has i one-dimensional
holes for each i (relative living times, RLT), average the RLT over many landmark draws (MRLT) and
take the squared L2 distance between the two MRLTs.

Faithful to the reference code (KhrulkovV/geometry-score, reimplemented here because it has no
licence): landmarks drawn with replacement; Euclidean (not squared) witness-landmark distances fed
to `gudhi.WitnessComplex`; `max_alpha_square = gamma * max_dist` with
`gamma = 1/128 * N/5000` by default; homology over Z/2; infinite deaths replaced by alpha_max.

Conventions of this implementation (where the sketch papers leave GS's settings open):
* `scale=1000` by default, as piq does and as sketch papers' GS values (3-100) suggest; the
  original code reports unscaled values. Metric tables call the column "GS x1e3".
* Landmark draws come from `numpy.random.default_rng(seed)` drawn up front in the calling process,
  so results do not depend on the number of worker processes.
* `n=100` runs per cloud by default (the reference code's examples; its function default is 1000).

This module imports only numpy, scipy and gudhi (not torch) so that the worker processes that
parallelise the runs start quickly.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Sequence

import numpy as np
from scipy.spatial.distance import cdist

from sketchlab.errors import ConfigError

DEFAULT_LANDMARKS = 64
DEFAULT_I_MAX = 100
DEFAULT_RUNS = 100
DEFAULT_SCALE = 1000.0


def default_gamma(n_points: int) -> float:
    """The reference code's `gamma=None` rule: 1/128 scaled by N/5000."""
    return 1.0 / 128.0 * n_points / 5000.0


def relative_living_times(intervals, alpha_max: float, i_max: int = DEFAULT_I_MAX) -> np.ndarray:
    """RLT of one persistence diagram of dimension 1 (formulas (2)-(3) of the paper).

    `intervals` is a `(k, 2)` array of `[birth, death)`; infinite deaths become `alpha_max`. The
    result `rlt[i]` is the fraction of `[0, alpha_max]` during which exactly i intervals are alive
    (counts >= i_max are dropped). No interval at all means no hole at any scale: `e_0`.
    """
    iv = np.asarray(intervals, dtype=np.float64).reshape(-1, 2).copy()
    rlt = np.zeros(i_max)
    if len(iv) == 0:
        rlt[0] = 1.0
        return rlt
    iv[np.isinf(iv[:, 1]), 1] = alpha_max
    # The number of live intervals can change only at an endpoint; [0, alpha_max] adds the ends.
    switch = np.unique(np.concatenate([iv.ravel(), [0.0, alpha_max]]))
    mid = (switch[:-1] + switch[1:]) / 2
    alive = ((iv[None, :, 0] <= mid[:, None]) & (mid[:, None] < iv[None, :, 1])).sum(1)
    keep = alive < i_max
    np.add.at(rlt, alive[keep], np.diff(switch)[keep])
    return rlt / alpha_max


def witness_intervals(points: np.ndarray, landmark_idx: np.ndarray, gamma: float):
    """One witness-complex persistence run: (H1 intervals, alpha_max)."""
    import gudhi  # optional dependency (`pip install gudhi`), needed only here

    landmarks = points[landmark_idx]
    dist = cdist(points, landmarks)  # Euclidean, as the reference code
    max_dist = float(dist.max())
    order = np.argsort(dist, axis=1)
    table = np.dstack([order, np.take_along_axis(dist, order, axis=1)])
    alpha_max = max_dist * gamma
    tree = gudhi.WitnessComplex(table).create_simplex_tree(max_alpha_square=alpha_max,
                                                           limit_dimension=2)
    tree.persistence(homology_coeff_field=2)  # required before reading intervals
    return tree.persistence_intervals_in_dimension(1), alpha_max


def _rlt_runs(points: np.ndarray, landmark_idx: np.ndarray, gamma: float, i_max: int) -> np.ndarray:
    """RLTs for a stack of landmark draws `(runs, L0)` -> `(runs, i_max)`."""
    out = np.empty((len(landmark_idx), i_max))
    for r, idx in enumerate(landmark_idx):
        intervals, alpha_max = witness_intervals(points, idx, gamma)
        out[r] = relative_living_times(intervals, alpha_max, i_max)
    return out


def _check_gudhi() -> None:
    try:
        import gudhi  # noqa: F401
    except ImportError as e:
        raise ConfigError("the Geometry Score needs gudhi: `pip install gudhi` (or "
                          "`pip install sketchlab[metrics]`), or skip it with --no-gs") from e


def default_workers(runs: int, n_points: int) -> int:
    """Processes worth starting: none for small jobs (a spawned worker costs about a second to
    start), else one per core up to 16 and up to one per 10 runs."""
    if runs * n_points < 200_000:
        return 1
    return max(1, min(os.cpu_count() or 1, 16, runs // 10))


def rlts(point_sets: Sequence[np.ndarray], n: int = DEFAULT_RUNS, landmarks: int = DEFAULT_LANDMARKS,
         gamma: float | None = None, i_max: int = DEFAULT_I_MAX, seeds: Sequence[int] | None = None,
         workers: int | None = None) -> list[np.ndarray]:
    """Algorithm 1 for several clouds at once: per cloud an `(n, i_max)` array of RLTs.

    Cloud k uses landmark draws from `default_rng(seeds[k])` (default `seeds = 0, 1, 2, ...`).
    With `workers > 1` the runs are spread over that many spawned processes (default: chosen by
    `default_workers`).
    """
    _check_gudhi()
    sets = [np.ascontiguousarray(np.asarray(p, dtype=np.float64)) for p in point_sets]
    seeds = list(range(len(sets))) if seeds is None else list(seeds)
    if len(seeds) != len(sets):
        raise ConfigError(f"rlts: {len(sets)} point sets but {len(seeds)} seeds")
    for p in sets:
        if p.ndim != 2 or len(p) < 2:
            raise ConfigError(f"Geometry Score needs an (N >= 2, D) array, got shape {p.shape}")
        if not np.all(np.isfinite(p)):
            raise ConfigError("Geometry Score input holds NaN or inf")
    draws = [np.random.default_rng(s).integers(0, len(p), size=(n, landmarks))
             for p, s in zip(sets, seeds)]
    gammas = [default_gamma(len(p)) if gamma is None else float(gamma) for p in sets]
    if workers is None:
        workers = default_workers(n * len(sets), max(len(p) for p in sets))
    workers = int(workers)
    if workers <= 1:
        return [_rlt_runs(p, d, g, i_max) for p, d, g in zip(sets, draws, gammas)]
    # Chunks of runs per task; each task carries its cloud (a few MB) once.
    chunk = max(1, -(-n * len(sets) // (4 * workers)))
    tasks = [(k, s) for k in range(len(sets)) for s in range(0, n, chunk)]
    out = [np.empty((n, i_max)) for _ in sets]
    # spawn: safe whatever threads the parent (torch, BLAS) has running.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_rlt_runs, sets[k], draws[k][s:s + chunk], gammas[k], i_max)
                   for k, s in tasks]
        for (k, s), fut in zip(tasks, futures):
            out[k][s:s + chunk] = fut.result()
    return out


def mean_rlt(points: np.ndarray, **kw) -> np.ndarray:
    """Algorithm 2's MRLT of one cloud (keywords as `rlts`, with `seed` instead of `seeds`)."""
    seed = kw.pop("seed", 0)
    return rlts([points], seeds=[seed], **kw)[0].mean(0)


def geometry_score_from_mrlt(mrlt_a: np.ndarray, mrlt_b: np.ndarray,
                             scale: float = DEFAULT_SCALE) -> float:
    return float(scale * np.sum((np.asarray(mrlt_a) - np.asarray(mrlt_b)) ** 2))


def geometry_score(points_a: np.ndarray, points_b: np.ndarray, n: int = DEFAULT_RUNS,
                   landmarks: int = DEFAULT_LANDMARKS, gamma: float | None = None,
                   i_max: int = DEFAULT_I_MAX, seed: int = 0, workers: int | None = None,
                   scale: float = DEFAULT_SCALE) -> float:
    """GS(A, B) = scale * sum_i (MRLT_A[i] - MRLT_B[i])^2; A draws landmarks with `seed`, B with
    `seed + 1` (independent draws, so GS(X, X) is small but not exactly 0)."""
    ra, rb = rlts([points_a, points_b], n=n, landmarks=landmarks, gamma=gamma, i_max=i_max,
                  seeds=[seed, seed + 1], workers=workers)
    return geometry_score_from_mrlt(ra.mean(0), rb.mean(0), scale)
