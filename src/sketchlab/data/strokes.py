"""Stroke formats and operations on single sketches: conversions, RDP, normalisation and the
seeds' augmentations (the batch type `Sketches` lives in `sketchlab.data.sketches`).

Formats used throughout sketchlab (all float32 unless said otherwise):

* **stroke-3** `(n, 3)`: rows `(dx, dy, p)`; `(dx, dy)` is the offset from the previous point (the
  first row's from the origin) and `p = 1` means the pen is lifted *after* this point.
* **stroke-5** `(n, 5)`: rows `(dx, dy, p1, p2, p3)` with one-hot pen state: p1 = pen down after
  this point, p2 = pen lifted, p3 = end of sketch (padding).
* **absolute**: stroke-3 with the offsets accumulated, `(x, y, p)`.
* **polylines**: a list of `(k, 2)` arrays of absolute points, one per stroke.
* **QuickDraw drawing**: the `drawing` field of QuickDraw's ndjson, `[[xs, ys], ...]` per stroke in
  absolute coordinates (raw ndjson adds a third list of timestamps, SPG one of part ids).
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np

from sketchlab.errors import DataError

# The seeds clip raw offsets to this magnitude before anything else (sketch-rnn's
# `DataLoader(limit=1000)`, applied in `DataLoader.preprocess`).
RAW_OFFSET_LIMIT = 1000.0


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def check_finite(points: np.ndarray, where: str) -> None:
    if points.size and not np.all(np.isfinite(points)):
        bad = int(np.argwhere(~np.isfinite(points))[0][0])
        raise DataError(f"{where}: row {bad} holds NaN or inf; remove or fix that sketch")


def validate_stroke3(sketch, where: str, max_len: int | None = None) -> np.ndarray:
    """Return `sketch` as float32 `(n, 3)` or raise a DataError naming `where` and the problem."""
    try:
        arr = np.asarray(sketch, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: not a numeric array ({e})") from e
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise DataError(f"{where}: expected a stroke-3 array of shape (n, 3), got {arr.shape}")
    if len(arr) == 0:
        raise DataError(f"{where}: empty sketch (0 points)")
    check_finite(arr, where)
    if max_len is not None and len(arr) > max_len:
        raise DataError(f"{where}: {len(arr)} points is longer than the limit {max_len}")
    pen = arr[:, 2]
    if np.any((pen != 0) & (pen != 1)):
        raise DataError(f"{where}: pen column must hold 0 or 1, found {np.unique(pen)[:5]}")
    return arr


# --------------------------------------------------------------------------------------------
# Format conversions
# --------------------------------------------------------------------------------------------


def to_absolute(sketch: np.ndarray) -> np.ndarray:
    """stroke-3 offsets -> absolute `(x, y, p)` positions (the origin is the pen's start)."""
    s = np.asarray(sketch, dtype=np.float32)
    out = s.copy()
    out[:, :2] = np.cumsum(s[:, :2], axis=0)
    return out


def to_offsets(absolute: np.ndarray) -> np.ndarray:
    """Absolute `(x, y, p)` -> stroke-3; the first row keeps its position as an offset from 0."""
    a = np.asarray(absolute, dtype=np.float32)
    out = a.copy()
    out[1:, :2] = a[1:, :2] - a[:-1, :2]
    return out


def to_polylines(sketch: np.ndarray) -> list[np.ndarray]:
    """stroke-3 -> list of absolute `(k, 2)` polylines, split after every pen lift."""
    a = to_absolute(sketch)
    if len(a) == 0:
        return []
    cuts = np.nonzero(a[:, 2] > 0.5)[0] + 1
    parts = np.split(a[:, :2], cuts)
    return [p for p in parts if len(p)]


def from_polylines(polylines: Sequence[np.ndarray]) -> np.ndarray:
    """List of absolute polylines -> stroke-3 (first offset measured from the origin)."""
    rows = []
    for line in polylines:
        line = np.asarray(line, dtype=np.float32).reshape(-1, 2)
        if len(line) == 0:
            continue
        pen = np.zeros((len(line), 1), np.float32)
        pen[-1] = 1.0
        rows.append(np.concatenate([line, pen], 1))
    if not rows:
        return np.zeros((0, 3), np.float32)
    return to_offsets(np.concatenate(rows, 0))


class BadDrawing(DataError):
    """A QuickDraw drawing that cannot become a sketch. `reason` is a short fixed phrase (what
    `sketchlab data import` counts its dropped lines by); the message adds where it went wrong."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason


_SEQUENCE = (list, tuple, np.ndarray)
_DECODER = json.JSONDecoder()


def json_values(line: str | bytes) -> tuple[list, str | None]:
    """The JSON values on one ndjson line, and what could not be read (None when all could).

    A line normally holds one object. Raw QuickDraw exports also hold lines where two objects
    are glued together (`...]]}{"word": ...`): each is recovered (json.JSONDecoder.raw_decode
    walks them). Whatever follows the last readable value (a torn object, garbage) is reported,
    not raised; a line with no readable value gives `([], problem)`. Never raises for bad input
    (nesting too deep for the parser included)."""
    try:
        text = line.decode("utf-8") if isinstance(line, (bytes, bytearray)) else str(line)
    except UnicodeDecodeError as e:
        return [], f"invalid JSON (not UTF-8 text: {e.reason} at byte {e.start})"
    try:
        return [json.loads(text)], None
    except RecursionError:
        return [], "invalid JSON (nested too deeply)"
    except ValueError as e:
        first_error = e
    values, i, n = [], 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            break
        try:
            value, i = _DECODER.raw_decode(text, i)
        except RecursionError:
            return values, "invalid JSON (nested too deeply)"
        except ValueError as e:
            if not values:
                return [], f"invalid JSON ({first_error})"
            return values, f"invalid JSON after {len(values)} object(s) ({e})"
        values.append(value)
    return values, None


def parse_drawing(drawing, *, extra_lists: bool = False) -> list[np.ndarray]:
    """A QuickDraw `drawing` (`[[xs, ys], ...]`, absolute) -> float64 `(k, 2)` polylines.

    Empty strokes draw nothing and are skipped. `extra_lists=True` accepts (and ignores) further
    lists per stroke: raw ndjson's timestamps, SPG's part ids. Raises `BadDrawing` for an empty
    drawing, a stroke that is not `[xs, ys]`, xs and ys of different lengths, non-numeric or
    NaN/inf coordinates. The one reader of drawings: `sketchlab data import` and
    `Sketches.from_strokes` accept the same ones.
    """
    if not isinstance(drawing, _SEQUENCE) or len(drawing) == 0:
        raise BadDrawing("empty drawing", "no strokes" if isinstance(drawing, _SEQUENCE)
                         else f"a {type(drawing).__name__}, not a list of strokes")
    lines = []
    for j, stroke in enumerate(drawing):
        if (not isinstance(stroke, _SEQUENCE) or len(stroke) < 2
                or (len(stroke) > 2 and not extra_lists)):
            got = f"{len(stroke)} lists" if isinstance(stroke, _SEQUENCE) else type(stroke).__name__
            raise BadDrawing("malformed stroke", f"stroke {j}: expected [xs, ys], got {got}")
        xs, ys = stroke[0], stroke[1]
        if not isinstance(xs, _SEQUENCE) or not isinstance(ys, _SEQUENCE):
            raise BadDrawing("malformed stroke", f"stroke {j}: xs and ys must be lists of numbers")
        if len(xs) != len(ys):
            raise BadDrawing("xs/ys lengths differ", f"stroke {j}: {len(xs)} xs, {len(ys)} ys")
        if len(xs) == 0:
            continue  # an empty stroke draws nothing
        try:
            line = np.array((xs, ys), dtype=np.float64).T
        except (TypeError, ValueError, OverflowError):   # OverflowError: an int beyond float64
            raise BadDrawing("non-numeric coordinates", f"stroke {j}") from None
        if line.ndim != 2:  # nested lists: not one number per coordinate
            raise BadDrawing("non-numeric coordinates", f"stroke {j}: nested lists")
        lines.append(line)
    if not lines:
        raise BadDrawing("empty drawing", "every stroke is empty")
    if not np.isfinite(np.concatenate(lines)).all():
        bad = next(j for j, stroke in enumerate(drawing)
                   if len(stroke[0]) and not np.isfinite(np.asarray(stroke[:2], np.float64)).all())
        raise BadDrawing("NaN or inf coordinates", f"stroke {bad}")
    return lines


def to_stroke5(sketch: np.ndarray, max_len: int) -> np.ndarray:
    """stroke-3 `(n, 3)` -> stroke-5 `(max_len, 5)`, padded with end rows `(0, 0, 0, 0, 1)`.

    The last real point keeps its own pen bit (the seeds' `to_big_strokes`).
    """
    s = np.asarray(sketch, dtype=np.float32)
    n = len(s)
    if n > max_len:
        raise DataError(f"sketch of {n} points is longer than max_len={max_len}")
    out = np.zeros((max_len, 5), np.float32)
    out[:n, :2] = s[:, :2]
    out[:n, 3] = s[:, 2]
    out[:n, 2] = 1.0 - s[:, 2]
    out[n:, 4] = 1.0
    return out


def pad_batch(sketches: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """The seeds' `pad_seq_batch`: `(B, max_len + 1, 5)` with row 0 = S0 = (0, 0, 1, 0, 0).

    Decoder input is `[:, :max_len]`, target `[:, 1:]`.
    """
    out = np.zeros((len(sketches), max_len + 1, 5), np.float32)
    for i, s in enumerate(sketches):
        out[i, 1:] = to_stroke5(s, max_len)
    out[:, 0, 2] = 1.0
    return out


def stroke5_to_stroke3(seq: np.ndarray) -> np.ndarray:
    """stroke-5 -> stroke-3, truncated before the first end-of-sketch row (exclusive).

    The pen bit is p2 (`seq_5d_to_3d` in the seeds). The end row is the one whose p3 is set.
    """
    s = np.asarray(seq, dtype=np.float32)
    ends = np.nonzero(s[:, 4] > 0.5)[0]
    n = int(ends[0]) if len(ends) else len(s)
    out = np.zeros((n, 3), np.float32)
    out[:, :2] = s[:n, :2]
    out[:, 2] = s[:n, 3]
    return out


def stroke_ids(pen: np.ndarray) -> np.ndarray:
    """Stroke index of every row: a stroke ends at a pen-up row."""
    ids = np.zeros(len(pen), np.int64)
    if len(pen) > 1:
        ids[1:] = np.cumsum(pen[:-1] > 0.5)
    return ids


def bounds(sketch: np.ndarray) -> tuple[float, float, float, float]:
    """`(min_x, max_x, min_y, max_y)` of the absolute positions, origin included (seeds' get_bounds)."""
    a = to_absolute(sketch)
    xs = np.concatenate([[0.0], a[:, 0]])
    ys = np.concatenate([[0.0], a[:, 1]])
    return float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())


# --------------------------------------------------------------------------------------------
# Simplification
# --------------------------------------------------------------------------------------------


def rdp(points: np.ndarray, epsilon: float) -> np.ndarray:
    """Ramer-Douglas-Peucker simplification of one polyline `(k, 2)`; keeps both endpoints.

    Iterative (no recursion limit on long strokes). Distance is to the segment's infinite line,
    or to the start point when the segment is degenerate, as in the `rdp` package Google used.
    """
    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    if n < 3:
        return pts.astype(np.float32)
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = pts[i], pts[j]
        seg = pts[i + 1:j]
        d = b - a
        norm = np.hypot(d[0], d[1])
        if norm == 0.0:
            dist = np.hypot(seg[:, 0] - a[0], seg[:, 1] - a[1])
        else:
            dist = np.abs(d[0] * (a[1] - seg[:, 1]) - d[1] * (a[0] - seg[:, 0])) / norm
        k = int(np.argmax(dist))
        if dist[k] > epsilon:
            m = i + 1 + k
            keep[m] = True
            stack.append((i, m))
            stack.append((m, j))
    return pts[keep].astype(np.float32)


def rdp_mask(points: np.ndarray, offsets: np.ndarray, epsilon: float) -> np.ndarray:
    """Which points `rdp` keeps, for many polylines at once (the fast path of `rdp`).

    `points` `(N, 2)` holds the polylines back to back, polyline i being
    `points[offsets[i]:offsets[i + 1]]`. Returns a bool mask over `points`. RDP's result does not
    depend on the order in which segments are examined, so each round here examines every
    unsettled segment of every polyline together (one numpy pass instead of one Python iteration
    per segment) and splits it at its farthest point, the first one on ties, with the same
    float64 distance formula: the choices are identical to `rdp`'s.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    xs, ys = pts[:, 0].copy(), pts[:, 1].copy()
    keep = np.zeros(len(pts), dtype=bool)
    starts, ends = offsets[:-1], offsets[1:] - 1
    nonempty = ends >= starts
    keep[starts[nonempty]] = True
    keep[ends[nonempty]] = True
    unsettled = ~keep  # interior points whose segment has not been decided yet
    while True:
        cand = np.flatnonzero(unsettled)
        if cand.size == 0:
            return keep
        # each candidate's segment runs from the kept point before it to the kept point after it
        kept = np.flatnonzero(keep)
        after = np.searchsorted(kept, cand)
        first, last = kept[after - 1], kept[after]
        ax, ay, px, py = xs[first], ys[first], xs[cand], ys[cand]
        d0 = xs[last] - ax
        d1 = ys[last] - ay
        norm = np.hypot(d0, d1)
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.abs(d0 * (ay - py) - d1 * (ax - px)) / norm
        degenerate = norm == 0.0
        if degenerate.any():
            dist[degenerate] = np.hypot(px[degenerate] - ax[degenerate], py[degenerate] - ay[degenerate])
        # candidates of one segment are contiguous: runs of equal `first`
        new_run = np.r_[True, first[1:] != first[:-1]]
        run_start = np.flatnonzero(new_run)
        run_of = np.cumsum(new_run) - 1
        run_max = np.maximum.reduceat(dist, run_start)
        pos = np.arange(cand.size)
        run_argmax = np.minimum.reduceat(np.where(dist == run_max[run_of], pos, cand.size), run_start)
        split = run_max > epsilon
        chosen = cand[run_argmax[split]]
        keep[chosen] = True
        unsettled[chosen] = False
        unsettled[cand[~split[run_of]]] = False


def rdp_many(polylines: Sequence[np.ndarray], epsilon: float) -> list[np.ndarray]:
    """`[rdp(p, epsilon) for p in polylines]`, computed in one batched pass (`rdp_mask`)."""
    arrays = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polylines]
    if not arrays:
        return []
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])])
    pts = np.concatenate(arrays, 0)
    keep = rdp_mask(pts, offsets, epsilon)
    return [pts[i:j][keep[i:j]].astype(np.float32) for i, j in zip(offsets[:-1], offsets[1:])]


def simplify(sketch: np.ndarray, epsilon: float = 2.0) -> np.ndarray:
    """RDP-simplify every stroke of a stroke-3 sketch."""
    return from_polylines([rdp(p, epsilon) for p in to_polylines(sketch)])


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def clip_offsets(sketch: np.ndarray, limit: float = RAW_OFFSET_LIMIT) -> np.ndarray:
    """Clip raw offsets to +-limit (the seeds clip all three columns; the pen bit is unaffected)."""
    s = np.asarray(sketch, dtype=np.float32).copy()
    s[:, :2] = np.clip(s[:, :2], -limit, limit)
    return s


def scale_factor(sketches: Iterable[np.ndarray]) -> float:
    """Population std of all dx and dy values pooled (the seeds' `calculate_normalizing_scale_factor`).

    Computed on the training split after clipping; every split is divided by this one number.
    """
    total = 0.0
    total_sq = 0.0
    count = 0
    for s in sketches:
        xy = np.asarray(s, dtype=np.float64)[:, :2]
        total += xy.sum()
        total_sq += np.square(xy).sum()
        count += xy.size
    if count == 0:
        raise DataError("cannot compute a scale factor from an empty training set")
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    std = float(np.sqrt(var))
    if not np.isfinite(std) or std <= 0:
        raise DataError(f"scale factor is {std}: every offset in the training set is identical")
    return std


def normalize(sketch: np.ndarray, factor: float) -> np.ndarray:
    s = np.asarray(sketch, dtype=np.float32).copy()
    s[:, :2] /= factor
    return s


def denormalize(sketch: np.ndarray, factor: float) -> np.ndarray:
    s = np.asarray(sketch, dtype=np.float32).copy()
    s[:, :2] *= factor
    return s


# --------------------------------------------------------------------------------------------
# The seeds' augmentations (training split only)
# --------------------------------------------------------------------------------------------


def random_scale(sketch: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Stretch dx and dy by independent factors drawn from U(1 - factor, 1 + factor)."""
    s = np.asarray(sketch, dtype=np.float32).copy()
    sx, sy = rng.uniform(1.0 - factor, 1.0 + factor, size=2)
    s[:, 0] *= sx
    s[:, 1] *= sy
    return s


def augment_strokes(sketch: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """sketch-rnn's point dropping (`utils.augment_strokes`, run on every training batch),
    vectorised.

    A pen-down point whose predecessor (last kept point) is pen-down, deep inside a stroke
    (`count > 2` consecutive pen-down candidates), is dropped with probability `prob`; its offset is
    added to the last kept point so every later absolute position is unchanged. Stroke ends are
    never dropped.

    Why a loop is not needed: a dropped point is pen-down and so is the kept point it merges
    into, so "the last kept point's pen" always equals the previous ORIGINAL point's pen. Which
    points are candidates (and so draw a uniform) then depends on the pens alone: the draws are
    taken at once, in the same order, and give the same result as `augment_strokes_reference`
    (the seeds' loop) from the same generator state.
    """
    s = np.asarray(sketch, dtype=np.float32)
    if prob <= 0 or len(s) < 3:
        return s.copy()
    up = s[:, 2] == 1
    # count_i: consecutive pen-down (cand, prev) pairs up to i, reset where either pen is up.
    reset = np.ones(len(s), bool)
    reset[1:] = up[1:] | up[:-1]
    idx = np.arange(len(s))
    last_reset = np.maximum.accumulate(np.where(reset, idx, 0))
    count = idx - last_reset
    candidate = ~reset & (count > 2)
    drop = np.zeros(len(s), bool)
    drop[candidate] = rng.random(int(candidate.sum())) < prob
    if not drop.any():
        return s.copy()
    group = np.cumsum(~drop) - 1                   # each point's kept point (itself or before)
    out = s[~drop].copy()
    for j in (0, 1):                               # merged offsets, summed in point order
        out[:, j] = np.bincount(group, weights=s[:, j].astype(np.float64))
    return out


def augment_strokes_reference(sketch: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """The seeds' per-point loop (`utils.augment_strokes`), kept to test the vectorised one."""
    s = np.asarray(sketch, dtype=np.float32)
    if prob <= 0 or len(s) < 3:
        return s.copy()
    result = [s[0].copy()]
    prev = s[0]
    count = 0
    for i in range(1, len(s)):
        cand = s[i]
        if cand[2] == 1 or prev[2] == 1:
            count = 0
        else:
            count += 1
        if cand[2] == 0 and prev[2] == 0 and count > 2 and rng.random() < prob:
            result[-1][0] += cand[0]
            result[-1][1] += cand[1]
        else:
            result.append(cand.copy())
            prev = cand
    return np.stack(result).astype(np.float32)
