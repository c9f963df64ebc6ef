"""Corruptions of stroke-3 sketches for healing and refinement experiments.

* `mask_points`: drop a fraction of the points (the pen lifts over each gap);
* `mask_patches`: drop every point inside randomly chosen cells of a grid over the sketch's
  bounding box until a fraction p of the points is gone (a vector analogue of SketchHealer's
  patch masking, p in {0.1, 0.3} in SketchKnitter Fig. 3);
* `drop_strokes`: drop whole strokes;
* `deform`: Gaussian noise on the offsets with std = level x the sketch's offset std
  ("DL 10..50%" in SketchKnitter Table 4 as level 0.1..0.5; the paper's exact protocol is not
  published, and the released code has no working conditional sampler).

Removing points never moves the points that remain: a removed point's offset is carried into
the next kept point, and the point before a gap lifts the pen so the gap is not drawn.
"""

from __future__ import annotations

import numpy as np

from sketchlab.data.strokes import stroke_ids, to_absolute, validate_stroke3

__all__ = ["remove_points", "mask_points", "mask_patches", "drop_strokes", "deform"]


def remove_points(sketch: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep the rows where `keep` is True; kept points stay at their absolute positions."""
    s = validate_stroke3(sketch, "remove_points")
    keep = np.asarray(keep, dtype=bool).reshape(-1)
    if len(keep) != len(s):
        raise ValueError("remove_points: keep mask and sketch differ in length")
    if not keep.any():
        keep = keep.copy()
        keep[0] = True  # never return an empty sketch
    absolute = to_absolute(s)
    idx = np.nonzero(keep)[0]
    out = absolute[idx].copy()
    out[1:, :2] = absolute[idx[1:], :2] - absolute[idx[:-1], :2]
    # Lift the pen before each gap, so the jump over removed points is not drawn.
    gap_before_next = np.diff(idx) > 1
    out[:-1, 2] = np.maximum(out[:-1, 2], gap_before_next)
    return out.astype(np.float32)


def mask_points(sketch: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    s = validate_stroke3(sketch, "mask_points")
    n_drop = int(round(p * len(s)))
    keep = np.ones(len(s), bool)
    keep[rng.choice(len(s), size=min(n_drop, len(s) - 1), replace=False)] = False
    return remove_points(s, keep)


def mask_patches(sketch: np.ndarray, p: float, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    """Drop the points of random grid cells (of a `grid` x `grid` split of the bounding box)
    until at least a fraction `p` of the points is gone."""
    s = validate_stroke3(sketch, "mask_patches")
    xy = to_absolute(s)[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    cell = np.minimum(((xy - lo) / span * grid).astype(int), grid - 1)
    cell_id = cell[:, 0] * grid + cell[:, 1]
    keep = np.ones(len(s), bool)
    target = int(round(p * len(s)))
    for c in rng.permutation(grid * grid):
        if (~keep).sum() >= target:
            break
        keep[cell_id == c] = False
    return remove_points(s, keep)


def drop_strokes(sketch: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Drop each stroke with probability p (at least one stroke survives)."""
    s = validate_stroke3(sketch, "drop_strokes")
    stroke = stroke_ids(s[:, 2])
    n = int(stroke[-1]) + 1
    dropped = rng.random(n) < p
    if dropped.all():
        dropped[rng.integers(n)] = False
    return remove_points(s, ~dropped[stroke])


def deform(sketch: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, (level * std(offsets))^2) to every dx, dy."""
    s = validate_stroke3(sketch, "deform").copy()
    std = float(s[:, :2].std()) or 1.0
    s[:, :2] += rng.normal(0.0, level * std, size=(len(s), 2)).astype(np.float32)
    return s
