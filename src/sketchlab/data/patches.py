"""SP-gra2seq's graph nodes: SketchHealer's rasteriser and patch cropper (CMACH508/SP-gra2seq
`utils.py` `make_graph_`) and the node mask its `train.py` builds.

One sketch becomes `graph_number = 21` grey images: node 0 is the whole (possibly corrupted)
drawing resized to `S x S` (S = `picture_size`, 256 in the paper), nodes 1..n are `S x S` crops
centred on every 4th pen position, nodes n+1..20 are blank. The original (`make_graph_`) does it
with numpy and OpenCV one sketch at a time; here the work is split in two:

* `plan_sketch` (numpy, CPU, O(points)): everything that depends on the sketch's geometry and on
  the masking draws. Scale to the render size with the int16 truncation (`scale_sketch`), the
  canvas geometry (`canvas_size_google`), the drawn segments (`make_graph_`'s `cv2.line` loop:
  row 0 inked, and a single-point stroke joined to the next stroke's start), the patch centres
  (its `tmp_count % 4` loops: stride 4, at most 20, "broken" crops counted), and which
  candidates are masked (one uniform per candidate in drawing order, from an explicit
  generator where the original uses numpy's global RNG or `random_seed.npy`).
* `render_nodes` (torch, batched, on the input's device): the pixels. Every drawn segment is
  stamped as a thick line on the canvas padded by `boundary_size`, masked squares are zeroed on
  the canvas *before* anything is cropped (as `make_graph_`'s masking loop runs before its
  cropping loop), then the crops are gathered from the zero-padded canvas and node 0 is the
  bilinear resize of the unpadded canvas (`canvas_first`); pixels go to [-1, 1]
  (`/ 255 * 2 - 1`).

`make_graph(sketch, ...)` does both for one sketch and returns `(nodes [21, S, S], n, mask_id)`;
`plan_batch` + `render_nodes` is the batched path the model uses.

Constants scale with S (`PatchGeometry`): render size 640 = 2.5 S, line thickness
`int(render * 0.025)` (16), canvas margin `thickness + 1` (17) per side, padding `int(1.5 S)`
(384), crop half-side S / 2 (128). S = 256 gives the original's numbers exactly; a smaller S (CPU
tests and the demo) is the same drawing at a proportionally smaller scale.

Line drawing. The original calls `cv2.line(..., thickness=16)` (LINE_8): OpenCV fills the
rectangle of half-width 8 around the segment (corners rounded to its fixed-point grid) and a
filled circle of radius 8 on each end. We ink every integer pixel whose centre lies within
`thickness / 2 + 1/2` (8.5 px) of the segment (the Minkowski sum of the segment and a disc).
The two differ only in single pixels along the outline, where OpenCV's fixed-point polygon and
midpoint-circle edges round one way or the other. Measured on 30 aaron_sheep sketches at S = 256
(every crop pixel, cv2 as the reference): 1.2 % of the ink pixels differ with the 8.5 reach,
against 3.8 % with a plain `<= 8` test (which only ever misses pixels: cv2's edges include
pixel centres up to about half a pixel beyond the half-width); tests/test_sp_gra2seq.py checks
this against cv2 when it is installed. The global image is `cv2.resize` INTER_LINEAR
(half-pixel centres, no anti-aliasing) computed in float and rounded to whole grey levels,
where OpenCV uses 11-bit fixed-point weights: at most one grey level apart.

Deviations, all where the original crashes or reads garbage:
* an integer-truncated extent of 0 (a sketch less than one normalised unit across) divides by
  zero in the original; here the untruncated extent is used instead. A sketch whose points all
  coincide (true extent 0) raises `DataError` (or, with `degenerate="blank"`, gives blank nodes);
* a crop whose start lies before the padded canvas is "broken" (blank slot, still counted). NumPy
  would wrap a negative start around, which can only matter when a centre lies more than
  1.5 S + S / 2 pixels outside the canvas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch

from sketchlab.errors import ConfigError, DataError

__all__ = ["PatchGeometry", "SketchPlan", "BatchPlan", "plan_sketch", "plan_batch",
           "render_nodes", "make_graph", "node_mask", "SeedStream"]


@dataclass(frozen=True)
class PatchGeometry:
    """The cropper's constants for a picture size S (256 in the paper)."""

    picture_size: int = 256
    n_patches: int = 20          # graph_number - 1
    stride: int = 4              # a patch centre every 4th point of a stroke

    def __post_init__(self):
        s = self.picture_size
        if isinstance(s, bool) or int(s) != s or s < 8 or s % 2:
            raise ConfigError(f"graph_picture_size={s!r}: use an even size >= 8 (the paper uses 256)")
        if self.n_patches < 1:
            raise ConfigError(f"graph_number must be at least 2 (1 global image + patches), "
                              f"got {self.n_patches + 1}")

    @property
    def render_size(self) -> float:
        return 640.0 * self.picture_size / 256.0       # 640 at S = 256

    @property
    def thickness(self) -> int:
        return int(self.render_size * 0.025)            # cv2 thickness: 16 at S = 256

    @property
    def radius(self) -> float:
        return self.thickness / 2.0                     # half the line width

    @property
    def reach(self) -> float:
        # A pixel is inked when its centre lies within half the line width plus half a pixel of
        # the segment: the closest match to cv2's thick LINE_8 lines (see the module docstring).
        return self.radius + 0.5

    @property
    def margin(self) -> int:
        return self.thickness + 1                       # canvas border per side: 17

    @property
    def pad(self) -> int:
        return int(1.5 * self.picture_size)             # zero padding before cropping: 384

    @property
    def half(self) -> int:
        return self.picture_size // 2                   # crop half-side: 128


class _Uniform(Protocol):
    def random(self) -> float: ...


class SeedStream:
    """A fixed array of uniforms consumed in order, like `sample.py`'s `random_seed.npy` with its
    running `seed_id` (one value per candidate centre, across sketches)."""

    def __init__(self, values: Sequence[float], start: int = 0):
        self.values = np.asarray(values, dtype=np.float64).reshape(-1)
        self.pos = int(start)

    def random(self) -> float:
        if self.pos >= len(self.values):
            raise DataError(f"SeedStream: all {len(self.values)} seeds are used up")
        u = float(self.values[self.pos])
        self.pos += 1
        return u


@dataclass
class SketchPlan:
    """One sketch's geometry (integer pixel coordinates of the UNPADDED canvas)."""

    segments: np.ndarray      # (k, 4) int64 x0, y0, x1, y1 of every drawn segment
    side: int                 # canvas side M + 2 (thickness + 1)
    centres: np.ndarray       # (n_patches, 2) int64 x, y of each candidate centre (0 beyond n)
    ok: np.ndarray            # (n_patches,) bool: slot holds a full crop (not broken, < n)
    masked: np.ndarray        # (n_patches,) bool: slot masked (its square zeroed)
    n: int                    # number of patch nodes (broken crops included)
    mask_id: list[int]        # indices of the masked slots


def _trunc_int16(v: np.ndarray) -> np.ndarray:
    """numpy's `astype(np.int16)` of float32 values: truncation toward zero, wrapping on overflow
    (made explicit: a float -> int16 cast out of range is undefined in C)."""
    return np.trunc(v).astype(np.int64).astype(np.int16).astype(np.int64)


def _extent(q: np.ndarray) -> tuple[float, float]:
    if len(q) == 0:
        return 0.0, 0.0
    return float(q[:, 1].max() - q[:, 1].min()), float(q[:, 0].max() - q[:, 0].min())


def plan_sketch(sketch: np.ndarray, geom: PatchGeometry = PatchGeometry(), mask_prob: float = 0.0,
                rng: _Uniform | None = None, degenerate: str = "raise", where: str = "sketch") -> SketchPlan:
    """Steps 1-6 of `make_graph_` for one normalised stroke-3 sketch (see the module docstring).

    `rng.random()` is drawn once per candidate centre (after the 20-patch cut, before the
    broken-crop check), as the original draws `np.random.uniform` / `seeds[seed_id]`; pass a
    `numpy.random.Generator` or a `SeedStream`. With `mask_prob == 0` nothing is drawn.
    """
    s = np.asarray(sketch, dtype=np.float32)
    P = geom.n_patches
    blank = SketchPlan(np.zeros((0, 4), np.int64), 2 * geom.margin, np.zeros((P, 2), np.int64),
                       np.zeros(P, bool), np.zeros(P, bool), 0, [])
    if s.ndim != 2 or s.shape[1] != 3:
        raise DataError(f"{where}: expected a stroke-3 array (n, 3), got shape {s.shape}")
    if len(s) == 0:
        if degenerate == "blank":  # e.g. a generated sketch that ended at once: nothing drawn
            return blank
        raise DataError(f"{where}: an empty sketch (no points), nothing to render")
    if not np.isfinite(s).all():
        raise DataError(f"{where}: holds NaN or inf")
    if mask_prob > 0 and rng is None:
        raise ConfigError("plan_sketch: mask_prob > 0 needs a random generator (rng)")
    # Step 1: scale the longest side to the render size. The extent excludes row 0 and is
    # truncated to an integer (in normalised units), so the drawing may come out larger.
    q = np.cumsum(s[1:, :2], axis=0, dtype=np.float32)
    h_f, w_f = _extent(q)
    h, w = int(h_f), int(w_f)
    ext = float(h if h >= w else w)
    if ext == 0:
        ext = max(h_f, w_f)     # the original divides by zero here (see the module docstring)
    if ext == 0:
        if degenerate == "blank":
            return blank
        raise DataError(f"{where}: all its points coincide (zero extent), nothing to render; "
                        "drop it from the data")
    f = geom.render_size / ext
    d = _trunc_int16(s[:, :2] * np.float32(f))          # (N, 2) int offsets
    pen = s[:, 2]
    # Step 2: canvas geometry from the scaled offsets (row 0 again excluded from the extent).
    qq = np.cumsum(d[1:], axis=0)
    if len(qq):
        mn, mx = qq.min(0), qq.max(0)
    else:
        mn = mx = np.zeros(2, np.int64)
    side = int(max(mx[1] - mn[1], mx[0] - mn[0])) + 2 * geom.margin
    start = -mn - d[0] + geom.margin                    # P_{-1}
    pos = start + np.cumsum(d, axis=0)                  # P_k
    prev = np.concatenate([start[None], pos[:-1]], 0)   # P_{k-1}
    # Steps 3 and 5: one traversal. A row right after a pen-up is a "move" (not drawn, its own
    # pen bit ignored: the dot quirk); a centre every `stride` drawn rows of a stroke, at the pen
    # position before the row.
    drawn = np.zeros(len(s), bool)
    cand: list[int] = []
    first_zero, tmp = False, 0
    for k in range(len(s)):
        if first_zero:
            first_zero = False
            continue
        drawn[k] = True
        if tmp % geom.stride == 0 and len(cand) < P + 1:
            cand.append(k)
        tmp += 1
        if pen[k] != 0:
            tmp, first_zero = 0, True
    segments = np.concatenate([prev[drawn], pos[drawn]], 1)
    centres = np.zeros((P, 2), np.int64)
    ok = np.zeros(P, bool)
    masked = np.zeros(P, bool)
    mask_id: list[int] = []
    n = 0
    lo, hi = geom.half - geom.pad, side + geom.pad - geom.half   # crop fits in the padded canvas
    for k in cand:
        if n + 1 > P:
            break
        c = prev[k]
        u = rng.random() if mask_prob > 0 else 1.0
        full = bool(lo <= c[0] <= hi and lo <= c[1] <= hi)
        centres[n] = c
        if full:
            ok[n] = True
            if u < mask_prob:
                masked[n] = True
                mask_id.append(n)
        n += 1
    return SketchPlan(segments.astype(np.int64), side, centres, ok, masked, n, mask_id)


def masked_points(sketch: np.ndarray, plan: SketchPlan, geom: PatchGeometry = PatchGeometry()
                  ) -> np.ndarray:
    """(n,) bool: the rows of `sketch` whose canvas position lies in a square that `plan`
    masks (the S x S square around each masked centre), for drawing what masking hides."""
    s = np.asarray(sketch, dtype=np.float32)
    if len(s) == 0 or not plan.masked.any():
        return np.zeros(len(s), bool)
    q = np.cumsum(s[1:, :2], axis=0, dtype=np.float32)
    h_f, w_f = _extent(q)
    ext = float(max(int(h_f), int(w_f))) or max(h_f, w_f)
    if ext == 0:
        return np.zeros(len(s), bool)
    d = _trunc_int16(s[:, :2] * np.float32(geom.render_size / ext))
    qq = np.cumsum(d[1:], axis=0)
    mn = qq.min(0) if len(qq) else np.zeros(2, np.int64)
    pos = -mn - d[0] + geom.margin + np.cumsum(d, axis=0)   # as plan_sketch places the points
    centres = plan.centres[plan.masked]
    inside = (np.abs(pos[:, None, :] - centres[None, :, :]) < geom.half).all(-1)
    return inside.any(1)


def node_mask(n: int, mask_id: Sequence[int], n_patches: int = 20,
              faithful: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(Mk (P, P), v (P,)): the edge mask `temp_adj` of SP-gra2seq's `train.py` (also in
    `sample.py`, `retrieval.py`) and the node validity `slide_mask` of `model.py` `gcn_encoder`.

    faithful: `Mk[0:n+1, 0:n+1] = 1` unless n == P (off by one: one blank padding slot counts as
    a node) and `v_i = Mk[i, 0]` (column 0: masking patch 0 invalidates the whole sketch). Clean:
    `Mk[0:n, 0:n]` and `v_i = Mk[i, i]`. Masked slots lose their rows and columns in both.
    """
    P = n_patches
    mk = np.zeros((P, P), np.float32)
    if faithful:
        m = P if n >= P else n + 1
    else:
        m = min(n, P)
    mk[:m, :m] = 1.0
    for i in mask_id:
        mk[i, :] = 0.0
        mk[:, i] = 0.0
    v = mk[:, 0].copy() if faithful else np.diag(mk).copy()
    return mk, v


@dataclass
class BatchPlan:
    """`plan_sketch` of a batch as tensors (what `render_nodes` needs)."""

    segments: torch.Tensor    # (K, 4) int64, all sketches' segments concatenated
    seg_sketch: torch.Tensor  # (K,) int64 owner of each segment
    side: torch.Tensor        # (B,) int64
    centres: torch.Tensor     # (B, P, 2) int64
    ok: torch.Tensor          # (B, P) bool
    masked: torch.Tensor      # (B, P) bool
    n: torch.Tensor           # (B,) int64
    mask_id: list[list[int]]

    def tensors(self, prefix: str = "graph_") -> dict[str, torch.Tensor]:
        return {prefix + k: getattr(self, k) for k in
                ("segments", "seg_sketch", "side", "centres", "ok", "masked", "n")}

    @classmethod
    def from_tensors(cls, d: dict[str, torch.Tensor], prefix: str = "graph_") -> "BatchPlan":
        return cls(*(d[prefix + k] for k in ("segments", "seg_sketch", "side", "centres", "ok",
                                             "masked", "n")), mask_id=[])


def _uniforms(rng: _Uniform, k: int) -> np.ndarray:
    """k successive `rng.random()` values, in one call where that gives the same numbers: a
    `numpy.random.Generator`'s `random(k)` is k draws of its stream, a `SeedStream` a slice."""
    if k == 0:
        return np.zeros(0)
    if isinstance(rng, np.random.Generator):
        return rng.random(k)
    if isinstance(rng, SeedStream):
        if rng.pos + k > len(rng.values):
            raise DataError(f"SeedStream: all {len(rng.values)} seeds are used up")
        out = rng.values[rng.pos:rng.pos + k].copy()
        rng.pos += k
        return out
    return np.array([rng.random() for _ in range(k)], dtype=np.float64)


def _check_sketch(sk, degenerate: str, where: str) -> np.ndarray | None:
    """`plan_sketch`'s shape checks: the float32 sketch, or None for a blank plan."""
    s = np.asarray(sk, dtype=np.float32)
    if s.ndim != 2 or s.shape[1] != 3:
        raise DataError(f"{where}: expected a stroke-3 array (n, 3), got shape {s.shape}")
    if len(s) == 0:
        if degenerate == "blank":
            return None
        raise DataError(f"{where}: an empty sketch (no points), nothing to render")
    return s  # NaN / inf: checked on the whole padded batch


def plan_batch(sketches: Sequence[np.ndarray], geom: PatchGeometry = PatchGeometry(),
               mask_prob: float = 0.0, rng: _Uniform | None = None,
               degenerate: str = "raise") -> BatchPlan:
    """`plan_sketch` of every sketch, in order (the uniforms are consumed sketch after sketch),
    computed for the whole batch at once: the same integers and the same draws as the per-sketch
    loop (tests/test_sp_gra2seq.py compares them), ~10x faster, so building an SP-gra2seq batch
    (B = 128) stays far below a training step.

    How `plan_sketch`'s traversal becomes array operations: a row right after a drawn pen-up row
    is skipped, so inside a run of pen-up rows (and the row after it) rows alternate drawn /
    skipped from the run's first row; the patch counter restarts after every drawn pen-up row.
    The float32 cumulative sums run along padded rows (numpy accumulates sequentially, so each
    sketch's sums are bit for bit its own)."""
    if len(sketches) == 0:
        raise DataError("plan_batch: empty batch (no sketch to render)")
    if mask_prob > 0 and rng is None:
        raise ConfigError("plan_sketch: mask_prob > 0 needs a random generator (rng)")
    P = geom.n_patches
    B = len(sketches)
    arrays = [_check_sketch(sk, degenerate, f"sketch {i} of the batch") for i, sk in enumerate(sketches)]
    lengths = np.array([0 if a is None else len(a) for a in arrays], np.int64)
    N = max(int(lengths.max()), 1)
    x = np.zeros((B, N, 3), np.float32)
    for i, a in enumerate(arrays):
        if a is not None:
            x[i, :len(a)] = a
    bad = ~np.isfinite(x).all(axis=(1, 2))
    if bad.any():
        raise DataError(f"sketch {int(np.argmax(bad))} of the batch: holds NaN or inf")
    # Coordinate-major (2, B, N): numpy's reductions along a contiguous last axis are ~30x
    # faster than along the middle axis of (B, N, 2).
    xy = np.ascontiguousarray(x[:, :, :2].transpose(2, 0, 1))
    pen = x[:, :, 2]
    col = np.arange(N)
    valid = col[None, :] < lengths[:, None]                               # (B, N)
    # Step 1: the extent (row 0 excluded, truncated to an integer) and the render scale.
    q = np.cumsum(xy[:, :, 1:], axis=2, dtype=np.float32)                # (2, B, N-1)
    inner = valid[:, 1:]
    with np.errstate(invalid="ignore"):
        span = np.where(inner, q, -np.inf).max(2) - np.where(inner, q, np.inf).min(2) if N > 1 \
            else np.zeros((2, B), np.float32)
    span = np.where(lengths > 1, span, np.float32(0)).astype(np.float64)  # (2, B) x, y
    w_f, h_f = span[0], span[1]
    h, w = np.floor(h_f), np.floor(w_f)
    ext = np.where(h >= w, h, w)
    ext = np.where(ext == 0, np.maximum(h_f, w_f), ext)
    blank = (lengths == 0) | (ext == 0)
    for i in np.flatnonzero(ext == 0):
        if lengths[i] > 0 and degenerate != "blank":
            raise DataError(f"sketch {i} of the batch: all its points coincide (zero extent), "
                            "nothing to render; drop it from the data")
    valid &= ~blank[:, None]
    f = (geom.render_size / np.where(blank, 1.0, ext)).astype(np.float32)
    d = _trunc_int16(xy * f[None, :, None])                               # (2, B, N) int64
    d[:, ~valid] = 0
    # Step 2: canvas geometry.
    if N > 1:
        qq = np.cumsum(d[:, :, 1:], axis=2)
        inner = valid[:, 1:]
        big = np.iinfo(np.int64).max
        mn, mx = np.where(inner, qq, big).min(2), np.where(inner, qq, -big).max(2)  # (2, B)
        one = lengths <= 1
        mn[:, one], mx[:, one] = 0, 0
    else:
        mn = mx = np.zeros((2, B), np.int64)
    side = np.maximum(mx[1] - mn[1], mx[0] - mn[0]) + 2 * geom.margin
    side[blank] = 2 * geom.margin
    start = -mn - d[:, :, 0] + geom.margin                                # P_{-1}, (2, B)
    pos = start[:, :, None] + np.cumsum(d, axis=2)                        # P_k, (2, B, N)
    prev = np.concatenate([start[:, :, None], pos[:, :, :-1]], 2)         # P_{k-1}
    # Steps 3 and 5: which rows are drawn, and the patch-centre candidates.
    up = (pen != 0) & valid
    up_before = np.zeros_like(up)
    up_before[:, 1:] = up[:, :-1]
    run_start = up & ~up_before
    run_first = np.maximum.accumulate(np.where(run_start, col, -1), axis=1)
    in_run = up | up_before
    drawn = valid & (~in_run | ((col - run_first) % 2 == 0))
    restart = drawn & up                                     # the counter restarts after this row
    seen = np.cumsum(drawn, axis=1)                          # drawn rows up to and including k
    at_restart = np.maximum.accumulate(np.where(restart, seen, 0), axis=1)
    before = np.zeros_like(at_restart)
    before[:, 1:] = at_restart[:, :-1]                       # drawn rows up to the last restart
    counter = seen - drawn - before                          # plan_sketch's `tmp` at row k
    cand = drawn & (counter % geom.stride == 0)
    cand &= np.cumsum(cand, axis=1) <= P                     # the first P candidates count
    n = cand.sum(1)
    # Step 6: one uniform per candidate, sketch after sketch, row by row.
    bi, ki = np.nonzero(cand)
    slot = np.cumsum(cand, axis=1)[bi, ki] - 1
    c = prev[:, bi, ki].T                                                 # (C, 2) x, y
    lo = geom.half - geom.pad
    hi = side[bi] + geom.pad - geom.half
    full = (c[:, 0] >= lo) & (c[:, 0] <= hi) & (c[:, 1] >= lo) & (c[:, 1] <= hi)
    u = _uniforms(rng, len(bi)) if mask_prob > 0 else np.ones(len(bi))
    centres = np.zeros((B, P, 2), np.int64)
    ok = np.zeros((B, P), bool)
    masked = np.zeros((B, P), bool)
    centres[bi, slot] = c
    ok[bi, slot] = full
    masked[bi, slot] = full & (u < mask_prob)
    mask_id: list[list[int]] = [[] for _ in range(B)]
    for b, k in zip(*np.nonzero(masked)):                     # row-major: slots in order
        mask_id[b].append(int(k))
    sb, sk_ = np.nonzero(drawn)
    seg = np.concatenate([prev[:, sb, sk_].T, pos[:, sb, sk_].T], 1).astype(np.int64)
    t = torch.from_numpy
    return BatchPlan(t(seg.reshape(-1, 4)), t(sb.astype(np.int64)), t(side.astype(np.int64)),
                     t(centres), t(ok), t(masked), t(n.astype(np.int64)), mask_id)


# --------------------------------------------------------------------------------------------
# Pixels (torch, any device)
# --------------------------------------------------------------------------------------------

# Elements per vectorised block (bounds the temporary memory of the stamping and the gathers).
_BLOCK = {"cpu": 1 << 22, "cuda": 1 << 27}


def _stamp_lines(canvas: torch.Tensor, plan: BatchPlan, geom: PatchGeometry, wp: int) -> None:
    """Ink (value 1) every pixel within `radius` of a segment, on the padded flat canvas
    `(B * wp * wp + 1)` (the last element absorbs writes that fall off a sketch's canvas)."""
    seg = plan.segments
    if seg.shape[0] == 0:
        return
    device = canvas.device
    reach = geom.reach
    seg = seg.to(device=device, dtype=torch.float32)
    owner = plan.seg_sketch.to(device)
    side = plan.side.to(device)[owner]
    a, b = seg[:, :2], seg[:, 2:]
    d = b - a
    length = torch.linalg.vector_norm(d, dim=1)
    # Cut each segment into pieces of length <= piece so a piece's pixels fit a k x k window.
    piece = max(2.0, 2.0 * reach)
    k = int(math.ceil(piece + 2.0 * reach)) + 2
    counts = torch.clamp(torch.ceil(length / piece), min=1).long()
    idx = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
    j = torch.arange(len(idx), device=device) - (torch.cumsum(counts, 0) - counts)[idx]
    n = counts[idx].float()
    pa = a[idx] + d[idx] * (j.float() / n)[:, None]
    pb = a[idx] + d[idx] * ((j.float() + 1) / n)[:, None]
    origin = torch.floor(torch.minimum(pa, pb) - reach)                       # (Q, 2) x, y
    grid = torch.arange(k, device=device, dtype=torch.float32)
    block = max(1, _BLOCK["cuda" if canvas.is_cuda else "cpu"] // (k * k))
    len2 = (length * length).clamp_min(1e-12)
    for lo in range(0, len(idx), block):
        sl = slice(lo, lo + block)
        s_i = idx[sl]
        px = origin[sl, 0, None, None] + grid[None, None, :]              # (q, 1, k)
        py = origin[sl, 1, None, None] + grid[None, :, None]              # (q, k, 1)
        ax, ay = a[s_i, 0, None, None], a[s_i, 1, None, None]
        dx, dy = d[s_i, 0, None, None], d[s_i, 1, None, None]
        t = (((px - ax) * dx + (py - ay) * dy) / len2[s_i, None, None]).clamp(0.0, 1.0)
        ex, ey = px - (ax + t * dx), py - (ay + t * dy)
        ink = ex * ex + ey * ey <= reach * reach
        sd = side[s_i, None, None]
        inside = (px >= 0) & (py >= 0) & (px < sd) & (py < sd)
        flat = ((owner[s_i, None, None] * wp + (py.long() + geom.pad)) * wp
                + (px.long() + geom.pad))
        flat = torch.where(ink & inside, flat, canvas.numel() - 1)
        canvas[flat.reshape(-1)] = 1


def _zero_masked(canvas: torch.Tensor, plan: BatchPlan, geom: PatchGeometry, B: int, wp: int) -> None:
    """Zero the S x S square of every masked centre (before anything is cropped, as `make_graph_`).

    One slice assignment per masked patch (about 2 per sketch at the training rate 0.1): cheaper
    than any dense cover map of the padded canvases, on a CPU and on a GPU."""
    masked = plan.masked.cpu()
    if not bool(masked.any()):
        return
    b, slot = torch.nonzero(masked, as_tuple=True)
    c = plan.centres.cpu()[b, slot] + geom.pad                            # padded coordinates
    view = canvas[:-1].view(B, wp, wp)
    h = geom.half
    for bi, (x, y) in zip(b.tolist(), c.tolist()):
        view[bi, max(y - h, 0):max(y + h, 0), max(x - h, 0):max(x + h, 0)] = 0


def _crops(canvas: torch.Tensor, plan: BatchPlan, geom: PatchGeometry, B: int, wp: int) -> torch.Tensor:
    """(B, P, S, S) uint8 crops of the padded canvas; broken and unused slots are blank."""
    device = canvas.device
    S, P = geom.picture_size, geom.n_patches
    ok = plan.ok.to(device)
    c = plan.centres.to(device) + geom.pad - geom.half                   # crop's top-left
    c = torch.where(ok[..., None], c, torch.zeros_like(c)).clamp(0, wp - S)
    ar = torch.arange(S, device=device)
    out = torch.empty((B, P, S, S), dtype=torch.uint8, device=device)
    per = max(1, _BLOCK["cuda" if canvas.is_cuda else "cpu"] // (P * S * S))
    flat = canvas[:-1]
    for lo in range(0, B, per):
        hi = min(B, lo + per)
        bb = torch.arange(lo, hi, device=device)[:, None, None, None]
        rows = c[lo:hi, :, 1, None, None] + ar[None, None, :, None]
        cols = c[lo:hi, :, 0, None, None] + ar[None, None, None, :]
        out[lo:hi] = flat[(bb * wp + rows) * wp + cols]
    return out * ok[..., None, None].to(torch.uint8)


def _resize_global(canvas: torch.Tensor, plan: BatchPlan, geom: PatchGeometry, B: int, wp: int) -> torch.Tensor:
    """(B, S, S) float grey levels: cv2.resize INTER_LINEAR of the unpadded canvas (side x side)."""
    device = canvas.device
    S = geom.picture_size
    side = plan.side.to(device).float()
    scale = side / S                                                    # (B,)
    dst = torch.arange(S, device=device, dtype=torch.float32)
    src = (dst[None] + 0.5) * scale[:, None] - 0.5                      # (B, S)
    i0 = torch.floor(src)
    frac = src - i0
    last = (side - 1)[:, None]
    low, high = i0 < 0, i0 >= last
    frac = torch.where(low | high, torch.zeros_like(frac), frac)
    i0 = torch.where(low, torch.zeros_like(i0), torch.where(high, last, i0))
    i1 = torch.minimum(i0 + 1, last)
    i0, i1 = i0.long() + geom.pad, i1.long() + geom.pad
    img = canvas[:-1].view(B, wp, wp)
    bidx = torch.arange(B, device=device)[:, None, None]

    def at(r, c):
        return img[bidx, r[:, :, None], c[:, None, :]].float()

    fy, fx = frac[:, :, None], frac[:, None, :]
    top = at(i0, i0) * (1 - fx) + at(i0, i1) * fx
    bot = at(i1, i0) * (1 - fx) + at(i1, i1) * fx
    return torch.floor((top * (1 - fy) + bot * fy) * 255.0 + 0.5)


@torch.no_grad()
def render_nodes(plan: BatchPlan, geom: PatchGeometry = PatchGeometry(),
                 device: torch.device | str | None = None) -> torch.Tensor:
    """(B, 1 + P, S, S) float32 node images in [-1, 1] (ink +1, background -1) on `device`
    (default: the plan's device)."""
    device = torch.device(device) if device is not None else plan.side.device
    B = int(plan.side.shape[0])
    if B == 0:
        raise DataError("render_nodes: empty batch")
    wmax = int(plan.side.max())                                          # one host sync
    wp = wmax + 2 * geom.pad
    canvas = torch.zeros(B * wp * wp + 1, dtype=torch.uint8, device=device)
    _stamp_lines(canvas, plan, geom, wp)
    canvas[-1] = 0
    _zero_masked(canvas, plan, geom, B, wp)
    crops = _crops(canvas, plan, geom, B, wp).float() * 255.0
    glob = _resize_global(canvas, plan, geom, B, wp)
    nodes = torch.cat([glob[:, None], crops], 1)
    return nodes * (2.0 / 255.0) - 1.0


def make_graph(sketch: np.ndarray, mask_prob: float = 0.0, rng: _Uniform | None = None,
               picture_size: int = 256, n_patches: int = 20,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, int, list[int]]:
    """SP-gra2seq's `make_graph_` for one normalised stroke-3 sketch: `(nodes [1 + P, S, S] in
    [-1, 1], n, mask_id)`."""
    geom = PatchGeometry(picture_size, n_patches)
    plan = plan_batch([sketch], geom, mask_prob, rng)
    nodes = render_nodes(plan, geom, device)
    return nodes[0], int(plan.n[0]), list(plan.mask_id[0])
