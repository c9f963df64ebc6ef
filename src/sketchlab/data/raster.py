"""Batched anti-aliased rasterizer: the seeds' `seq2png` images without SVG files or Cairo.

RPCL-pix2seq, RPCL-pix2seqH and SP-gra2seq render every stroke-3 sketch to a PNG with
`draw_strokes` (an SVG path written by svgwrite) and `cairosvg.svg2png`, one file at a time
(30-60 minutes per 75,000-sketch category). This module draws the same picture for a whole batch
at once (CMACH508/RPCL-pix2seq `seq2png.py` `draw_strokes` and `get_bounds`):

* Bounding box of the absolute positions, **initialised at the origin** (the pen's start is always
  inside it). `norm` = the longer extent, floored at 1e-5; `scale = (size - 2 margin) / norm`;
  the shorter axis is centred.
* The path starts with a move to the start point and the **first offset is a move** from the
  origin; segment i (point i-1 -> point i) is drawn iff point i-1 has the pen down (`p < 0.5`).
* A black line of `line_width` px (1 in the seeds) with butt caps, on white.

Cairo computes the exact area of the stroke (the union of all segments, with miter joins) inside
each pixel. We approximate it per segment and combine segments by their maximum:

* a segment covers a pixel by `overlap(normal) * overlap(along)`: the overlap of the line's
  cross-section `[d - w/2, d + w/2]` with the pixel's `[-1/2, 1/2]`, times, at a butt cap, the
  overlap of the pixel with the segment's extent along its direction. This is exact for
  axis-aligned lines (a 1-px line on a half-integer row gives two rows of grey 127, as Cairo);
* where two segments of one stroke meet, both ends are rounded (distance to the end point), so a
  polyline has no gaps; Cairo's miter joins differ only at the outer corner;
* overlapping segments combine by the **maximum** coverage, so joins do not darken twice. Cairo's
  union is darker where two separate passes each cover part of one pixel (dense scribbles): that
  is the main remaining difference;
* grey = 255 - round(255 * coverage) (Cairo's 8-bit alpha over white, halves rounded up).

Against CairoSVG with the seeds' exact SVG (dev check, `tests/test_raster.py`, skipped without
cairosvg), mean absolute difference in grey levels: 1.9 at 48x48 and 0.3 at 225x225 on 200
sheep (dense scribbles); 1.0 and 0.2 on 200 QuickDraw sketches. Axis-aligned lines and right
angles are pixel-exact.

Speed: every drawn segment is cut into pieces short enough that the pixels a piece can ink fit a
K x K window (K = 4 for 1-px lines); each piece gets the smallest window that holds them, and
pieces are grouped by window shape. The coverage of every window pixel of every piece of every
sketch in a group is one vectorised expression, scattered into the canvas with a maximum.
`rasterize` runs it in numpy over flat points, on threads over chunks of sketches;
`rasterize_torch` runs the same arithmetic in torch over the padded batch on its device. The two
kernels are twins, tested against each other and against a plain per-pixel reference.

Edge cases: an empty sketch, a single point, an all-pen-up sketch and zero-length segments draw
nothing (a blank white image; butt caps draw nothing for a dot, as in Cairo). NaN or inf raise
`DataError`. Huge coordinates are fine: positions are accumulated in float64 and normalised
before drawing.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError

# Segments shorter than this (pixels) are dropped: with butt caps a zero-length segment draws
# nothing, and at a join it changes nothing.
_MIN_SEGMENT_PX = 1e-4
_BIG = 1e9
# CPU: sketches per chunk, and pieces per vectorised block (K*K*4096 floats stay in cache).
_CPU_SKETCHES = 384
_CPU_PIECES = 4096
# Torch: sketches per canvas and pieces per block (bounds memory; about 2 GB on a GPU).
_TORCH_SKETCHES = {"cpu": 1024, "cuda": 1 << 16}
_TORCH_PIECES = {"cpu": 1 << 14, "cuda": 1 << 22}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def rasterize(sketches: Sketches | Sequence[np.ndarray], size: int = 48, margin: float = 1.5,
              line_width: float = 1.0) -> np.ndarray:
    """Render stroke-3 sketches to anti-aliased grey images, like the seeds' `seq2png`.

    `sketches` is a `Sketches` batch or a list of `(n, 3)` stroke-3 arrays (offsets in any unit:
    every sketch is fitted into `size - 2 * margin` pixels). Returns uint8 `(B, size, size)`,
    background 255, ink 0. `size=48` is the RPCL/SP model input; `size=225` with the default
    margin and line width is SP-gra2seq's image for the Rec classifier; a classifier that wants
    bolder strokes at a large size can pass e.g. `line_width=size / 48`. A `Sketches` batch is
    faster than a list (no per-sketch conversion). One core: the work is many mid-sized numpy
    operations that take the GIL often, and a thread pool measured no faster on 2 idle cores
    (17-22k sketches/s either way at 48x48); parallelise across processes (DataLoader workers).
    """
    size = _check_params(size, margin, line_width)
    if not isinstance(sketches, Sketches):
        arrays = []
        for i, s in enumerate(sketches):
            arr = np.asarray(s, dtype=np.float32)
            if arr.size == 0:
                arr = arr.reshape(0, 3)  # an empty sketch may arrive as shape (0,)
            if arr.ndim != 2 or arr.shape[1] != 3:
                raise DataError(f"rasterize: sketch {i} must be a stroke-3 array of shape (n, 3), "
                                f"got {arr.shape}")
            arrays.append(arr)
        sketches = Sketches.from_list(arrays)
    points, offsets = sketches.points, sketches.offsets
    if not np.isfinite(points).all():
        row = int(np.argmax(~np.isfinite(points).all(1)))
        i = int(np.searchsorted(offsets, row, side="right") - 1)
        raise DataError(f"rasterize: sketch {i} row {row - offsets[i]} holds NaN or inf")
    out = np.empty((len(sketches), size, size), np.uint8)

    for lo in range(0, len(sketches), _CPU_SKETCHES):
        hi = min(lo + _CPU_SKETCHES, len(sketches))
        chunk = points[offsets[lo]:offsets[hi]]
        out[lo:hi] = _render_numpy(chunk, offsets[lo:hi + 1] - offsets[lo], size, margin, line_width)
    return out


@torch.no_grad()
def rasterize_torch(strokes: torch.Tensor, lengths: torch.Tensor, size: int = 48,
                    margin: float = 1.5, line_width: float = 1.0) -> torch.Tensor:
    """Torch twin of `rasterize` for padded batches, on the input's device (CUDA or CPU).

    `strokes`: float `(B, T, 3)` stroke-3 rows; `lengths`: `(B,)` number of valid rows per sketch
    (rows past it are ignored). Returns float32 `(B, size, size)` grey levels in [0, 255]: whole
    numbers, equal to `rasterize`'s uint8 output. Model inputs are `x / 255 * 2 - 1`.
    """
    size = _check_params(size, margin, line_width)
    if strokes.ndim != 3 or strokes.shape[-1] != 3:
        raise DataError("rasterize_torch: strokes must have shape (B, T, 3), got "
                        f"{tuple(strokes.shape)}")
    if not strokes.is_floating_point():
        strokes = strokes.float()
    B, T, _ = strokes.shape
    lengths = torch.as_tensor(lengths, device=strokes.device).reshape(-1).long()
    if lengths.shape[0] != B:
        raise DataError(f"rasterize_torch: {lengths.shape[0]} lengths for {B} sketches")
    # All input checks with one host sync.
    valid = torch.arange(T, device=strokes.device) < lengths[:, None]
    bad_len = (lengths < 0) | (lengths > T)
    bad_val = (~torch.isfinite(strokes).all(-1)) & valid
    len_flag, val_flag = torch.stack([bad_len.any(), bad_val.any()]).tolist()
    if len_flag:
        raise DataError(f"rasterize_torch: lengths must lie in [0, {T}], got "
                        f"{lengths[bad_len][:5].tolist()}")
    if val_flag:
        b, t = torch.nonzero(bad_val)[0].tolist()
        raise DataError(f"rasterize_torch: sketch {b} row {t} holds NaN or inf")
    out = torch.empty((B, size, size), dtype=torch.float32, device=strokes.device)
    step = _TORCH_SKETCHES["cuda" if strokes.is_cuda else "cpu"]
    for lo in range(0, B, step):
        out[lo:lo + step] = _render_torch(strokes[lo:lo + step], lengths[lo:lo + step], size,
                                          margin, line_width)
    return out


def pad_strokes(sketches: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stroke-3 sketches as the padded batch the torch rasterizer takes: float32 `(B, T, 3)` (T at
    least 1, rows past a sketch's length zero) and int64 lengths `(B,)`."""
    arrays = [np.asarray(s, np.float32).reshape(-1, 3) for s in sketches]
    lengths = torch.tensor([len(a) for a in arrays], dtype=torch.int64)
    strokes = torch.zeros(len(arrays), max([1, *lengths.tolist()]), 3)
    for i, a in enumerate(arrays):
        strokes[i, :len(a)] = torch.from_numpy(a)
    return strokes, lengths


def rasterize_batch(strokes: torch.Tensor, lengths: torch.Tensor, size: int = 48,
                    margin: float = 1.5, line_width: float = 1.0) -> torch.Tensor:
    """Float32 grey levels `(B, size, size)` of a padded batch, on the batch's device, drawn by the
    faster rasterizer there: `rasterize_torch` on CUDA, the numpy `rasterize` elsewhere (several
    times faster than the torch kernel on a CPU). The two agree within one grey level."""
    if strokes.is_cuda:
        return rasterize_torch(strokes, lengths, size=size, margin=margin, line_width=line_width)
    rows = strokes.detach().cpu().float().numpy()
    arrays = [rows[i, :n] for i, n in enumerate(lengths.tolist())]
    grey = rasterize(arrays, size=size, margin=margin, line_width=line_width)
    return torch.from_numpy(grey).to(device=strokes.device, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Shared geometry
# --------------------------------------------------------------------------------------------


def _check_params(size, margin, line_width) -> int:
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ConfigError(f"raster size must be a positive integer, got {size!r}")
    if not 0 <= margin < size / 2:
        raise ConfigError(f"raster margin must lie in [0, size/2) = [0, {size / 2}), got {margin!r}")
    if not 0 < line_width <= size:
        raise ConfigError(f"raster line_width must lie in (0, size], got {line_width!r}")
    return int(size)


def _window(line_width: float) -> tuple[float, int]:
    """(reach, K): how far (per axis) from a segment a pixel centre can get ink; the window side.

    A pixel gets ink when its centre lies within `w/2 + 1/2` of the line, or up to 1/2 beyond a
    butt cap; per axis that is at most `reach = sqrt(1/4 + (w/2 + 1/2)^2)`. A piece of length l
    then needs `l * max(|ux|, |uy|) + 2 reach < K` window pixels per axis. K near 4 * reach
    minimises window pixels per unit of line length (K = 4 for 1-px lines).
    """
    reach = math.sqrt(0.25 + (0.5 * line_width + 0.5) ** 2)
    k = max(math.ceil(2 * reach + 0.25), round(4 * reach))
    return reach, k


# --------------------------------------------------------------------------------------------
# numpy kernel (CPU)
# --------------------------------------------------------------------------------------------


def _render_numpy(points: np.ndarray, offsets: np.ndarray, size: int, margin: float,
                  line_width: float) -> np.ndarray:
    """uint8 `(B, size, size)` images of the sketches `points[offsets[i]:offsets[i + 1]]`.

    Points are processed flat (no padding): per-sketch quantities are gathered by `sketch_of`.
    """
    f32 = np.float32
    B, N = len(offsets) - 1, len(points)
    reach, k = _window(line_width)
    pad = k + 1  # every window lies inside the padded canvas: no bounds checks, crop at the end
    side = size + 2 * pad
    # Ink levels 0..255 (255 * coverage, rounded); the maximum commutes with the rounding.
    canvas = np.zeros(B * side * side, np.uint8)
    if N >= 2:
        first = offsets[:-1]
        filled = first < offsets[1:]  # sketches with at least one point
        # The sketch of every point: the number of sketches starting at or before it, minus 1
        # (an empty sketch starts where the next one does).
        sketch_of = np.cumsum(np.bincount(first[first < N], minlength=N)) - 1
        # Pixel positions (`draw_strokes`' placement): absolute positions from one running sum
        # per chunk, minus the sum before each sketch; the box starts at the origin.
        sum_x = np.concatenate([[0.0], np.cumsum(points[:, 0], dtype=np.float64)])
        sum_y = np.concatenate([[0.0], np.cumsum(points[:, 1], dtype=np.float64)])
        before_x, before_y = sum_x[first], sum_y[first]
        lo_x, hi_x, lo_y, hi_y = (np.zeros(B) for _ in range(4))
        ends = first[filled]
        lo_x[filled] = np.minimum.reduceat(sum_x[1:], ends) - before_x[filled]
        hi_x[filled] = np.maximum.reduceat(sum_x[1:], ends) - before_x[filled]
        lo_y[filled] = np.minimum.reduceat(sum_y[1:], ends) - before_y[filled]
        hi_y[filled] = np.maximum.reduceat(sum_y[1:], ends) - before_y[filled]
        lo_x, hi_x = np.minimum(lo_x, 0.0), np.maximum(hi_x, 0.0)
        lo_y, hi_y = np.minimum(lo_y, 0.0), np.maximum(hi_y, 0.0)
        norm = np.maximum(hi_x - lo_x, hi_y - lo_y)
        scale = (size - 2 * margin) / np.maximum(norm, 1e-5)
        # The origin lands at `start`; the border centres the shorter axis (0 on the longer one).
        start_x = ((norm - (hi_x - lo_x)) * 0.5 - lo_x) * scale + margin
        start_y = ((norm - (hi_y - lo_y)) * 0.5 - lo_y) * scale + margin
        px = ((sum_x[1:] - before_x[sketch_of]) * scale[sketch_of] + start_x[sketch_of]).astype(f32)
        py = ((sum_y[1:] - before_y[sketch_of]) * scale[sketch_of] + start_y[sketch_of]).astype(f32)
        # Point t starts a stroke when it is its sketch's first point (the first offset is a
        # move) or point t-1 lifted the pen; segment (t-1 -> t) is drawn iff t does not start one.
        starts = np.empty(N, bool)
        starts[1:] = points[:-1, 2] > 0.5
        starts[first[filled]] = True
        stroke_id = np.cumsum(starts)
        dx, dy = px[1:] - px[:-1], py[1:] - py[:-1]
        length = np.sqrt(dx * dx + dy * dy)
        keep = ~starts[1:] & (length > _MIN_SEGMENT_PX)  # in drawing order
        seg_len = length[keep]
        if len(seg_len):
            # Consecutive kept segments of one stroke meet (only dropped zero-length segments
            # can lie between them): their common end is a join, the other ends butt caps.
            sid = stroke_id[1:][keep]
            joined = sid[1:] == sid[:-1]
            round_start = np.concatenate([[False], joined])
            round_end = np.concatenate([joined, [False]])
            segments = (px[:-1][keep], py[:-1][keep], dx[keep] / seg_len, dy[keep] / seg_len,
                        seg_len, sketch_of[1:][keep].astype(f32), round_start, round_end)
            pieces, base, groups = _pieces_numpy(segments, reach, k, side, pad, line_width)
            for (rows, cols, butt), lo, hi in groups:
                window = (np.arange(rows)[:, None] * side + np.arange(cols)[None, :])[:, :, None]
                for p0 in range(lo, hi, _CPU_PIECES):
                    part = slice(p0, min(p0 + _CPU_PIECES, hi))
                    level = _levels_numpy(*(p[part] for p in pieces), rows, cols, line_width, butt)
                    np.maximum.at(canvas, (base[part] + window).reshape(-1), level.reshape(-1))
    # Cairo's 8-bit alpha over white: grey = 255 - level.
    canvas = canvas.reshape(B, side, side)[:, pad:pad + size, pad:pad + size]
    return np.subtract(255, canvas, dtype=np.uint8)


def _pieces_numpy(segments: tuple, reach: float, k: int, side: int, pad: int, line_width: float):
    """Cut segments into pieces with small windows and group the pieces by window shape.

    `segments`: per-segment arrays start x, start y, unit direction x, y, length, sketch index,
    round_start, round_end. Returns per-piece arrays (window top-left pixel centre minus segment
    start x, y; direction x, y; segment length; round_start; round_end), the flat canvas index of
    each window's top-left pixel, and `[((rows, cols, butt), first, stop)]`: the pieces
    `first:stop` share a window shape.

    A segment is cut into n pieces short enough that the pixels they can ink fit a K x K window
    (`_window`). Each piece then gets the smallest window that holds every pixel whose nearest
    segment point lies on the piece (`_piece_extent`): short and axis-aligned pieces need fewer
    pixels. Pieces of segments with a butt cap form their own groups (`butt`): only they need
    the along-the-segment factor.
    """
    f32 = np.float32
    seg_ux, seg_uy, seg_len = segments[2], segments[3], segments[4]
    piece_max = f32(k - 2 * reach - 1e-3) / np.maximum(np.abs(seg_ux), np.abs(seg_uy))
    counts = np.maximum(np.ceil(seg_len / piece_max), 1)
    seg = np.repeat(np.arange(len(counts)), counts.astype(np.int64))
    ax, ay, ux, uy, length, sketch, rs, re, n = (v[seg] for v in segments + (counts,))
    j = np.arange(len(seg), dtype=f32) - (np.cumsum(counts) - counts)[seg]  # piece in segment
    piece_len = length / n
    mid = (j + f32(0.5)) * piece_len
    at_start, at_end = j == 0, j == n - 1
    round_in = (at_start & rs) | (at_end & re)
    butt_in = (at_start & ~rs) | (at_end & ~re)
    abs_ux, abs_uy = np.abs(ux), np.abs(uy)
    ext_x = _piece_extent(f32(0.5) * piece_len, abs_ux, abs_uy, round_in, butt_in, line_width)
    ext_y = _piece_extent(f32(0.5) * piece_len, abs_uy, abs_ux, round_in, butt_in, line_width)
    # The window starts at the first pixel centre strictly inside (mid - ext, mid + ext) and
    # holds ceil(2 ext) <= K centres.
    col0 = np.floor(ax + mid * ux - ext_x - f32(0.5)) + f32(1.0)
    row0 = np.floor(ay + mid * uy - ext_y - f32(0.5)) + f32(1.0)
    cols = np.clip(np.ceil(f32(2.0) * ext_x), 1, k).astype(np.int16)
    rows = np.clip(np.ceil(f32(2.0) * ext_y), 1, k).astype(np.int16)
    butt = ~(rs & re)
    key = (rows - 1) * k + (cols - 1) + butt * np.int16(k * k)
    order = np.argsort(key, kind="stable")  # a radix sort for int16 keys
    bounds = np.searchsorted(key[order], np.arange(2 * k * k + 1)).tolist()
    base = ((sketch.astype(np.int64) * side + row0.astype(np.int64) + pad) * side
            + col0.astype(np.int64) + pad)
    pieces = tuple(v[order] for v in (col0 + f32(0.5) - ax, row0 + f32(0.5) - ay, ux, uy, length,
                                      rs, re))
    return pieces, base[order], _groups(bounds, k)


def _groups(bounds: list[int], k: int) -> list[tuple[tuple[int, int, bool], int, int]]:
    """Non-empty groups from the sorted group keys `(rows - 1) * K + cols - 1 + butt * K * K`."""
    out = []
    for g in range(2 * k * k):
        if bounds[g + 1] > bounds[g]:
            r, c = divmod(g % (k * k), k)
            out.append(((r + 1, c + 1, g >= k * k), bounds[g], bounds[g + 1]))
    return out


def _piece_extent(half, u_along, u_across, round_in, butt_in, line_width: float):
    """Per-axis half-width (numpy or torch) of the region a piece inks, around its midpoint.

    A pixel whose nearest segment point lies inside the segment is less than `w/2 + 1/2` across
    from it; one beyond a rounded end is within `w/2 + 1/2` of the end point; one beyond a butt
    cap at most 1/2 along and `w/2 + 1/2` across. Projected on one axis (`u_*` are absolute
    direction components), plus the piece's own half length.
    """
    across = 0.5 * line_width + 0.5
    reach = across * u_across + (0.5 * u_along) * butt_in
    reach = reach + (across - reach).clip(min=0) * round_in  # max(reach, across) at round ends
    return half * u_along + reach


def _levels_numpy(dx0, dy0, ux, uy, seg_len, round_start, round_end, rows: int, cols: int,
                  line_width: float, butt: bool) -> np.ndarray:
    """Ink levels (uint8, round(255 * coverage)) of each piece's window, shape `(rows, cols, P)`.

    `(dx0, dy0)`: the window's top-left pixel centre relative to the segment start; `(ux, uy)`:
    the unit direction. A pixel centre at `s` along the segment and `n` across it gets
    * distance `d = hypot(n, s - clip(s, lo, hi))`, with `[lo, hi] = [0, L]` at joined ends
      (rounded) and unbounded at butt caps;
    * `normal = clip(w/2 + 1/2 - d, 0, min(w, 1))`, the box overlap of line and pixel;
    * only when `butt` (the segment has a butt cap):
      `along = clip(min(s + 1/2, L + 1/2 - s), 0, min(L, 1))` at caps, 1 past joined ends;
    * coverage `normal * along`.
    Lengths are in units of 1/255 pixel, so the result needs no final scaling; pieces are the
    last axis so every numpy loop runs over a long contiguous array.
    """
    f32 = np.float32
    r = np.arange(rows, dtype=f32)[:, None]
    c = np.arange(cols, dtype=f32)[:, None]
    ux, uy, seg_len = ux * f32(255.0), uy * f32(255.0), seg_len * f32(255.0)
    s0 = dx0 * ux + dy0 * uy
    n0 = dy0 * ux - dx0 * uy
    s = (s0 + c * ux)[None] + (r * uy)[:, None]  # s[r, c] = s0 + c ux + r uy
    n = (n0 - c * uy)[None] + (r * ux)[:, None]  # n[r, c] = n0 + r ux - c uy
    e = np.maximum(s, np.where(round_start, f32(0.0), f32(-_BIG)))
    np.minimum(e, np.where(round_end, seg_len, f32(_BIG)), out=e)
    np.subtract(s, e, out=e)  # e: how far past a rounded end
    np.multiply(e, e, out=e)
    np.multiply(n, n, out=n)
    np.add(n, e, out=n)
    np.sqrt(n, out=n)  # n: distance to the (rounded) segment
    full, top = f32(255.0 * (0.5 * line_width + 0.5)), f32(255.0 * min(line_width, 1.0))
    if not butt:  # the normal overlap alone, + 1/2 to round when truncating below
        np.subtract(full + f32(0.5), n, out=n)
        np.maximum(n, f32(0.5), out=n)
        np.minimum(n, top + f32(0.5), out=n)
        return n.astype(np.uint8)
    np.subtract(full, n, out=n)
    np.maximum(n, f32(0.0), out=n)
    np.minimum(n, top, out=n)  # n: normal overlap
    np.subtract(s, np.where(round_start, f32(-_BIG), f32(-127.5)), out=e)
    np.subtract(np.where(round_end, f32(_BIG), seg_len + f32(127.5)), s, out=s)
    np.minimum(s, e, out=s)
    np.minimum(s, np.where(round_start | round_end, f32(255.0), np.minimum(seg_len, f32(255.0))),
               out=s)
    np.maximum(s, f32(0.0), out=s)  # s: overlap along the segment at butt caps
    np.multiply(n, s, out=n)
    np.multiply(n, f32(1.0 / 255.0), out=n)
    np.add(n, f32(0.5), out=n)
    return n.astype(np.uint8)  # truncating a non-negative number: round half up


# --------------------------------------------------------------------------------------------
# torch kernel (any device): the twin of the numpy kernel above. Positions come from the padded
# batch instead of flat points; pieces, windows and coverage are the same operations.
# --------------------------------------------------------------------------------------------


def _render_torch(strokes: torch.Tensor, lengths: torch.Tensor, size: int, margin: float,
                  line_width: float) -> torch.Tensor:
    """float32 `(B, size, size)` grey levels of a padded chunk (inputs already checked)."""
    device = strokes.device
    B, T, _ = strokes.shape
    reach, k = _window(line_width)
    pad = k + 1
    side = size + 2 * pad
    canvas = torch.zeros(B * side * side, dtype=torch.int32, device=device)
    if T >= 2:
        valid = torch.arange(T, device=device) < lengths[:, None]
        pos_x = torch.cumsum(torch.where(valid, strokes[..., 0], 0.0).double(), 1)
        pos_y = torch.cumsum(torch.where(valid, strokes[..., 1], 0.0).double(), 1)
        zero = pos_x.new_zeros(())
        lo_x, hi_x = torch.minimum(pos_x.amin(1), zero), torch.maximum(pos_x.amax(1), zero)
        lo_y, hi_y = torch.minimum(pos_y.amin(1), zero), torch.maximum(pos_y.amax(1), zero)
        norm = torch.maximum(hi_x - lo_x, hi_y - lo_y)
        scale = (size - 2 * margin) / torch.clamp(norm, min=1e-5)
        start_x = ((norm - (hi_x - lo_x)) * 0.5 - lo_x) * scale + margin
        start_y = ((norm - (hi_y - lo_y)) * 0.5 - lo_y) * scale + margin
        px = (pos_x * scale[:, None] + start_x[:, None]).float()
        py = (pos_y * scale[:, None] + start_y[:, None]).float()
        starts = torch.ones((B, T), dtype=torch.bool, device=device)
        starts[:, 1:] = strokes[:, :-1, 2] > 0.5
        stroke_id = torch.cumsum(starts.reshape(-1), 0).reshape(B, T)
        dx, dy = px[:, 1:] - px[:, :-1], py[:, 1:] - py[:, :-1]
        length = torch.sqrt(dx * dx + dy * dy)
        keep = ~starts[:, 1:] & valid[:, 1:] & (length > _MIN_SEGMENT_PX)
        b, t = torch.nonzero(keep, as_tuple=True)  # one host sync
        if len(b):
            sid = stroke_id[b, t + 1]
            joined = sid[1:] == sid[:-1]
            no = joined.new_zeros(1)
            round_start = torch.cat([no, joined])
            round_end = torch.cat([joined, no])
            seg_len = length[b, t]
            segments = (px[b, t], py[b, t], dx[b, t] / seg_len, dy[b, t] / seg_len, seg_len,
                        b.float(), round_start, round_end)
            pieces, base, groups = _pieces_torch(segments, reach, k, side, pad, line_width)
            block = _TORCH_PIECES["cuda" if strokes.is_cuda else "cpu"]
            for (rows, cols, butt), lo, hi in groups:
                r = torch.arange(rows, device=device)[:, None, None]
                c = torch.arange(cols, device=device)[None, :, None]
                window = r * side + c
                for p0 in range(lo, hi, block):
                    part = slice(p0, min(p0 + block, hi))
                    level = _levels_torch(*(p[part] for p in pieces), rows, cols, line_width, butt)
                    canvas.scatter_reduce_(0, (base[part] + window).reshape(-1),
                                           level.reshape(-1), "amax")
    canvas = canvas.view(B, side, side)[:, pad:pad + size, pad:pad + size]
    return 255.0 - canvas.float()


def _pieces_torch(segments: tuple, reach: float, k: int, side: int, pad: int, line_width: float):
    """Twin of `_pieces_numpy`."""
    device = segments[0].device
    seg_ux, seg_uy, seg_len = segments[2], segments[3], segments[4]
    piece_max = float(k - 2 * reach - 1e-3) / torch.maximum(seg_ux.abs(), seg_uy.abs())
    counts = torch.clamp(torch.ceil(seg_len / piece_max), min=1)
    seg = torch.repeat_interleave(torch.arange(len(counts), device=device), counts.long())
    ax, ay, ux, uy, length, sketch, rs, re, n = (v[seg] for v in segments + (counts,))
    j = torch.arange(len(seg), device=device, dtype=torch.float32)
    j = j - (torch.cumsum(counts, 0) - counts)[seg]
    piece_len = length / n
    mid = (j + 0.5) * piece_len
    at_start, at_end = j == 0, j == n - 1
    round_in = (at_start & rs) | (at_end & re)
    butt_in = (at_start & ~rs) | (at_end & ~re)
    abs_ux, abs_uy = ux.abs(), uy.abs()
    ext_x = _piece_extent(0.5 * piece_len, abs_ux, abs_uy, round_in, butt_in, line_width)
    ext_y = _piece_extent(0.5 * piece_len, abs_uy, abs_ux, round_in, butt_in, line_width)
    col0 = torch.floor(ax + mid * ux - ext_x - 0.5) + 1.0
    row0 = torch.floor(ay + mid * uy - ext_y - 0.5) + 1.0
    cols = torch.clamp(torch.ceil(2.0 * ext_x), 1, k).long()
    rows = torch.clamp(torch.ceil(2.0 * ext_y), 1, k).long()
    butt = ~(rs & re)
    key = (rows - 1) * k + (cols - 1) + butt * (k * k)
    order = torch.argsort(key, stable=True)
    bounds = torch.searchsorted(key[order], torch.arange(2 * k * k + 1, device=device)).tolist()
    base = (sketch.long() * side + row0.long() + pad) * side + col0.long() + pad
    pieces = tuple(v[order] for v in (col0 + 0.5 - ax, row0 + 0.5 - ay, ux, uy, length, rs, re))
    return pieces, base[order], _groups(bounds, k)


def _levels_torch(dx0, dy0, ux, uy, seg_len, round_start, round_end, rows: int, cols: int,
                  line_width: float, butt: bool) -> torch.Tensor:
    """Twin of `_levels_numpy` (same float32 operations in the same order); int32 levels."""
    r = torch.arange(rows, device=dx0.device, dtype=torch.float32)[:, None]
    c = torch.arange(cols, device=dx0.device, dtype=torch.float32)[:, None]
    ux, uy, seg_len = ux * 255.0, uy * 255.0, seg_len * 255.0
    s0 = dx0 * ux + dy0 * uy
    n0 = dy0 * ux - dx0 * uy
    s = (s0 + c * ux)[None] + (r * uy)[:, None]
    n = (n0 - c * uy)[None] + (r * ux)[:, None]
    big = torch.full_like(seg_len, _BIG)
    e = torch.minimum(torch.maximum(s, torch.where(round_start, 0.0, -big)),
                      torch.where(round_end, seg_len, big))
    e = s - e
    dist = torch.sqrt(n * n + e * e)
    full, top = 255.0 * (0.5 * line_width + 0.5), 255.0 * min(line_width, 1.0)
    if not butt:
        return torch.clamp((full + 0.5) - dist, 0.5, top + 0.5).int()
    normal = torch.clamp(full - dist, 0.0, top)
    along = torch.minimum(torch.where(round_end, big, seg_len + 127.5) - s,
                          s - torch.where(round_start, -big, torch.full_like(big, -127.5)))
    along = torch.minimum(along, torch.where(round_start | round_end, 255.0,
                                             torch.clamp(seg_len, max=255.0)))
    level = normal * torch.clamp(along, min=0.0) * (1.0 / 255.0) + 0.5
    return level.int()
