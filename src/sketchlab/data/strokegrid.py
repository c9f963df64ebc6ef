"""SketchGloc's data pieces: stroke statistics, the reorganisation noise, stroke chunks and the
nine grid graphs (after CMACH508/SketchGloc `rebranch/utils.py`: `preprocess_data` /
`get_max_len`, `DataLoader._get_batch_from_indices`, `stroke_pbias`, `get_box`, `get_relgrid`).

All functions work on one normalised stroke-3 sketch `(n, 3)` (rows `(dx, dy, p)`, row 0 the
first point's position from the origin) except `stroke_stats` (a whole dataset) and
`grid_graphs` (a batch of chunk boxes, in torch so it runs on the model's device).

Pipeline of `SketchGloc.make_batch` for one sketch D (the original's `_get_batch_from_indices`):

    D  -> [train: random_scale] -> bound (origin-inclusive) -> [train: augment_strokes, stroke_pbias]
       -> faithful_roundtrip (identity but for single-point first/last strokes)
       -> A = cumsum(D)                      the decoder's ABSOLUTE target
       -> Ã = reorganise(A, prob * bound)    each stroke but the first rigidly moved
       -> chunks of Ã (a stroke split every L+1 points), first S kept -> encoder input, boxes
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from sketchlab.data.strokes import bounds, stroke_ids
from sketchlab.data.sketches import Sketches
from sketchlab.errors import DataError

# The original assumes a 48-px canvas centred on the origin in `stroke_pbias` (utils.width).
PBIAS_CANVAS = 48.0
N_RELATIONS = 9
SELF_RELATION = 4          # c = 3 * gx + gy with (gx, gy) = (1, 1)


# --------------------------------------------------------------------------------------------
# Dataset statistics (`utils.py` `preprocess_data` -> `get_max_len`)
# --------------------------------------------------------------------------------------------


def stroke_lengths_and_counts(sk: Sketches) -> tuple[np.ndarray, np.ndarray]:
    """Point count of every stroke and stroke count of every sketch, as the original's
    `get_max_len` counts them: a stroke ends at a pen-up row; points after a sketch's last pen-up
    form no stroke (`np.split(...)[:-1]`)."""
    pen = sk.points[:, 2] > 0.5
    ups = np.nonzero(pen)[0]
    n = len(sk)
    if len(ups) == 0:
        return np.zeros(0, np.int64), np.zeros(n, np.int64)
    sketch_of = np.searchsorted(sk.offsets, ups, side="right") - 1
    prev = np.concatenate([[-1], ups[:-1]])
    prev_sketch = np.concatenate([[-1], sketch_of[:-1]])
    start = np.where(prev_sketch == sketch_of, prev + 1, sk.offsets[sketch_of])
    return (ups - start + 1).astype(np.int64), np.bincount(sketch_of, minlength=n).astype(np.int64)


def percentile_999(values: np.ndarray) -> int:
    """`sort(values)[int(0.999 * len)]`, the original's 99.9th percentile (no interpolation)."""
    if len(values) == 0:
        raise DataError("no stroke ends with a pen-up: cannot size SketchGloc's stroke chunks")
    s = np.sort(values)
    return int(s[int(0.999 * len(s))])


def stroke_stats(splits: Iterable[Sketches]) -> tuple[int, int, int]:
    """(T, L, S) over the given splits together: the longest sketch, the 99.9th percentile of
    stroke lengths (points) and of strokes per sketch (`utils.py` `get_max_len`: sorted values
    at index int(0.999 n))."""
    lengths, counts, longest = [], [], 0
    for sk in splits:
        if len(sk) == 0:
            continue
        le, co = stroke_lengths_and_counts(sk)
        lengths.append(le)
        counts.append(co)
        longest = max(longest, int(sk.lengths.max()))
    if not counts:
        raise DataError("no sketch to size SketchGloc's batches from")
    return longest, percentile_999(np.concatenate(lengths)), max(1, percentile_999(np.concatenate(counts)))


# --------------------------------------------------------------------------------------------
# Per-sketch steps of the batch construction (`DataLoader._get_batch_from_indices`)
# --------------------------------------------------------------------------------------------


def origin_bound(sketch: np.ndarray) -> float:
    """max(max_x - min_x, max_y - min_y) of the cumulative positions, the origin included
    (`seq2png.get_bounds`): the scale of the reorganisation noise."""
    if len(sketch) == 0:
        return 0.0
    x0, x1, y0, y1 = bounds(sketch)
    return max(x1 - x0, y1 - y0)


def stroke_pbias(sketch: np.ndarray, scale_factor: float, rng: np.random.Generator,
                 canvas: float = PBIAS_CANVAS) -> tuple[float, float]:
    """The original's random global translation (x_bias, y_bias) in normalised units
    (`DataLoader.stroke_pbias`).

    The origin-inclusive bounds are taken to "pixels" of a `canvas`-px image centred on the
    origin (times the scale factor, plus canvas/2) and the shift is drawn from
    U(-0.8 min_px, 0.8 (canvas - max_px)) per axis. That interval is what the authors meant for
    sketches that fit the 48-px canvas; for raw coordinates in 0..255 px (QuickDraw, the built-in
    doodles, `sketchlab data import`) `low > high`, and numpy's uniform(low, high) = low +
    (high - low) U then draws from [high, low): every training sketch is shifted left/up by
    roughly 19 to 185 px, while validation and test sketches are not. Reproduced as such
    (`low + (high - low) * U`, numpy's formula, whatever the order of the bounds)."""
    if len(sketch) == 0:
        return 0.0, 0.0
    x0, x1, y0, y1 = bounds(sketch)
    lo = np.array([x0, y0]) * scale_factor + canvas / 2
    hi = np.array([x1, y1]) * scale_factor + canvas / 2
    low, high = -0.8 * lo, 0.8 * (canvas - hi)
    u = rng.random(2)
    bias = low + (high - low) * u
    return float(bias[0] / scale_factor), float(bias[1] / scale_factor)


def faithful_roundtrip(sketch: np.ndarray) -> np.ndarray:
    """The original's two loops that turn stroke starts into absolute positions and back
    (in `_get_batch_from_indices`, where a stroke shuffle, `flush_strokes`, is commented out
    between them). They are the identity except in two edge cases, reproduced here:

    * a single-point FIRST stroke (p_0 = 1, n >= 3): row 1 keeps its absolute position
      D_0 + D_1 (the second loop never restores it), so the second stroke moves by D_0, and the
      next restored stroke start subtracts D_0 again (later strokes stay in place);
    * a stroke start in the LAST row (a single-point last stroke): it was never made absolute
      but is "restored" anyway, becoming D_{n-1} - A_{n-2} (minus the error above, if any).
    """
    s = np.asarray(sketch, dtype=np.float32)
    n = len(s)
    out = s.copy()
    if n < 3:
        return out
    pen = s[:, 2]
    absolute = np.cumsum(s[:, :2].astype(np.float64), 0)
    err = np.zeros(2)
    if pen[0] == 1:
        out[1, :2] = absolute[1]
        err = absolute[0].copy()
    # Loop 2 visits i in [1, n-2] with p_i = 1 and sets row i+1 to D_{i+1} - err (err zeroed
    # after the first visit), or to D_{i+1} - A_i - err in the last row. Subtracting a zero err
    # changes nothing, so only the first visit and a visit of i = n-2 can change a row.
    visits = np.flatnonzero(pen[1:n - 1] == 1) + 1
    if len(visits):
        if visits[0] + 1 <= n - 2:
            out[visits[0] + 1, :2] = s[visits[0] + 1, :2] - err
        if visits[-1] == n - 2:
            last_err = err if len(visits) == 1 else np.zeros(2)
            out[n - 1, :2] = s[n - 1, :2] - absolute[n - 2] - last_err
    return out


def reorganise(absolute: np.ndarray, pen: np.ndarray, scale: float,
               rng: np.random.Generator) -> np.ndarray:
    """Ã: every stroke but the first translated rigidly by its own `scale * N(0, I)` vector.

    The original adds the noise to each stroke start (a row whose predecessor is a pen-up) and
    accumulates the stroke's later offsets from there (`_get_batch_from_indices`' `data_abs`
    loop, `np.random.randn(1) * bound * PROB` per axis); `scale` = PROB * bound.
    """
    out = np.asarray(absolute, dtype=np.float32).copy()
    if scale == 0 or len(out) < 2:
        return out
    ids = stroke_ids(pen)
    n_moved = int(ids[-1])
    if n_moved == 0:
        return out
    shift = np.zeros((n_moved + 1, 2), np.float64)
    shift[1:] = rng.standard_normal((n_moved, 2)) * scale
    out[:, :2] += shift[ids].astype(np.float32)
    return out


def chunk_bounds(pen: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each chunk: a stroke is cut after its pen-up and every `max_len + 1`
    points (the original's `cnt == L` rule lets a chunk hold L+1 points). The trailing points of
    an unfinished last chunk (no closing pen-up) are dropped, as in `_get_batch_from_indices`."""
    n = len(pen)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    up = pen > 0.5
    ids = stroke_ids(pen)
    first = np.concatenate([[0], np.nonzero(np.diff(ids))[0] + 1])
    local = np.arange(n) - first[ids]
    closes = up | (local % (max_len + 1) == max_len)
    ends = np.nonzero(closes)[0]
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else np.zeros(0, np.int64)
    return starts.astype(np.int64), (ends - starts + 1).astype(np.int64)


def chunk_boxes(points: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Axis-aligned box `(x0, x1, y0, y1)` of each chunk's absolute points (`get_bounds_whole`)."""
    if len(starts) == 0:
        return np.zeros((0, 4), np.float32)
    # reduceat's last segment runs to the end of the array: cut after the last chunk, or it
    # would take in the dropped chunks (beyond S) and the unclosed tail of the sketch.
    xy = np.asarray(points, dtype=np.float32)[:int(starts[-1] + lengths[-1]), :2]
    lo = np.minimum.reduceat(xy, starts, 0)
    hi = np.maximum.reduceat(xy, starts, 0)
    return np.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], 1)


def chunk_batch(clean: list[np.ndarray], noisy: list[np.ndarray], max_len: int, max_num: int,
                clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`chunk_bounds` + the first `max_num` chunks + `chunk_boxes` for a whole batch at once:
    `(chunks (B, S, L, 2), chunk_len (B, S), boxes (B, S, 4), boxes_clean (B, S, 4))` exactly as
    the per-sketch loop of `SketchGloc.make_batch` built them (the chunks are cut on the clean
    sketch's pen bits; points and `boxes` come from `noisy`, `boxes_clean` from `clean`).
    A chunk may hold L+1 points (`chunk_bounds`): its first L go into `chunks`; `chunk_len` is
    clamped to L when `clamp` or when the sketch fills all S slots (the original's rule), else
    it may be L+1."""
    B, L, Sn = len(clean), int(max_len), int(max_num)
    chunks = np.zeros((B, Sn, L, 2), np.float32)
    chunk_len = np.zeros((B, Sn), np.int64)
    boxes = np.zeros((B, Sn, 4), np.float32)
    boxes_clean = np.zeros((B, Sn, 4), np.float32)
    lengths = np.array([len(a) for a in clean], np.int64)
    total = int(lengths.sum())
    if total == 0:
        return chunks, chunk_len, boxes, boxes_clean
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])               # each sketch's first row
    a_clean = np.concatenate([np.asarray(a, np.float32)[:, :3] for a in clean if len(a)], 0)
    a_noisy = np.concatenate([np.asarray(a, np.float32)[:, :2] for a in noisy if len(a)], 0)
    owner = np.repeat(np.arange(B), lengths)
    up = a_clean[:, 2] > 0.5
    # stroke_ids per sketch: a new stroke after every pen-up row, restarting at each sketch.
    new_stroke = np.zeros(total, bool)
    new_stroke[1:] = up[:-1]
    new_stroke[first[lengths > 0]] = True
    stroke_first = np.maximum.accumulate(np.where(new_stroke, np.arange(total), 0))
    local = np.arange(total) - stroke_first
    closes = up | (local % (L + 1) == L)
    ends = np.flatnonzero(closes)                                         # last row of each chunk
    b_of = owner[ends]
    prev_end = np.concatenate([[-1], ends[:-1]])
    same = np.concatenate([[False], b_of[1:] == b_of[:-1]])
    starts = np.where(same, prev_end + 1, first[b_of])
    lens = ends - starts + 1
    slot = np.arange(len(ends)) - np.searchsorted(b_of, b_of)            # chunk index in its sketch
    count = np.bincount(b_of, minlength=B)
    keep = slot < Sn
    starts, lens, b_of, slot = starts[keep], lens[keep], b_of[keep], slot[keep]
    m = np.minimum(lens, L)
    j = np.arange(L)
    rows = starts[:, None] + j[None, :]
    inside = j[None, :] < m[:, None]
    chunks[b_of, slot] = np.where(inside[..., None], a_noisy[np.where(inside, rows, 0)], 0)
    full = (count >= Sn)[b_of]
    chunk_len[b_of, slot] = np.where(clamp | full, m, lens)
    # Boxes over each chunk's whole run of rows (L+1 points included): one reduceat over
    # [start, end) pairs; a last row appended so an end at the array's end is a valid index.
    idx = np.stack([starts, starts + lens], 1).reshape(-1)
    for src, dst in ((a_noisy, boxes), (a_clean[:, :2], boxes_clean)):
        xy = np.concatenate([src, src[-1:]], 0)
        lo = np.minimum.reduceat(xy, idx, 0)[0::2]
        hi = np.maximum.reduceat(xy, idx, 0)[0::2]
        dst[b_of, slot] = np.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], 1)
    return chunks, chunk_len, boxes, boxes_clean


# --------------------------------------------------------------------------------------------
# The nine grid graphs (`DataLoader.get_box`)
# --------------------------------------------------------------------------------------------


def _grid(v: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """0 left of / below [lo, hi], 2 beyond it, 1 inside (boundaries inclusive): `get_relgrid`."""
    return (v >= lo).long() + (v > hi).long()


def grid_graphs(boxes: Tensor, valid: Tensor) -> Tensor:
    """The nine relation graphs `A[b, i, j, c]` from chunk boxes `(B, S, 4)` and a slot mask
    `(B, S)` (the original's `DataLoader.get_box`): node i receives from node j through relation
    c = 3 gx + gy for every cell (gx, gy) of the 3x3 grid around i's box that the PERIMETER of
    j's box crosses. That is the footprint rectangle [xa..xb] x [ya..yb] of j's corners, without
    the centre cell when j's box strictly encloses i's on all four sides. i = j gives the centre
    cell only (channel 4). Padded slots have all-zero rows and columns. No normalisation."""
    x0, x1, y0, y1 = boxes.unbind(-1)                          # (B, S) each; i is dim 1, j dim 2
    ci = lambda t: t.unsqueeze(2)                              # noqa: E731  centre i
    cj = lambda t: t.unsqueeze(1)                              # noqa: E731  other j
    xa, xb = _grid(cj(x0), ci(x0), ci(x1)), _grid(cj(x1), ci(x0), ci(x1))
    ya, yb = _grid(cj(y0), ci(y0), ci(y1)), _grid(cj(y1), ci(y0), ci(y1))
    g = torch.arange(3, device=boxes.device)
    in_x = (g >= xa.unsqueeze(-1)) & (g <= xb.unsqueeze(-1))   # (B, S, S, 3) over gx
    in_y = (g >= ya.unsqueeze(-1)) & (g <= yb.unsqueeze(-1))   # over gy
    cells = in_x.unsqueeze(-1) & in_y.unsqueeze(-2)            # (B, S, S, 3, 3) [gx, gy]
    encloses = (xa == 0) & (xb == 2) & (ya == 0) & (yb == 2)
    centre = torch.zeros(3, 3, dtype=torch.bool, device=boxes.device)
    centre[1, 1] = True
    cells = cells & ~(encloses[..., None, None] & centre)
    pair = valid.unsqueeze(2) & valid.unsqueeze(1)
    cells = cells & pair[..., None, None]
    return cells.flatten(-2).to(boxes.dtype)                  # c = 3 gx + gy


__all__ = ["N_RELATIONS", "PBIAS_CANVAS", "SELF_RELATION", "chunk_batch", "chunk_bounds", "chunk_boxes",
           "faithful_roundtrip", "grid_graphs", "origin_bound", "percentile_999", "reorganise",
           "stroke_lengths_and_counts", "stroke_pbias", "stroke_stats"]
