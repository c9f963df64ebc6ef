"""The built-in doodle set: procedural house, sun, fish, cup and star sketches that look hand-drawn.

It is the embedded default of `sketchlab demo` and of the fast tests, so a fresh machine with no
data can still train and draw something. Each category has two or three *styles* that differ
visibly (a fish facing left or right, a house with a door and windows or a chimney, a sun with
rays, a face or a zigzag ring, ...), so a model with a mixture prior (RPCL-pix2seq) has
structure to find. `STYLES[category][k]` names style k; `make_doodles_with_styles` returns the
style of every sketch.

How one doodle is made:

1. A category function draws the shape in a unit box (y down), as a human would: dense
   polylines in drawing order, with random proportions, optional details, several ways to cut
   the shape into strokes, a random start point and direction on closed loops, which overshoot
   or stop short of closing, and details in random order.
2. `_humanise` then bends every stroke with smooth low-frequency wobble (a sum of sinusoids
   along the stroke, normal to it), warps the whole sketch a little, and applies a small random
   rotation, aspect change and shear.
3. QuickDraw's processing turns it into sketch-rnn data: align to the top-left corner, scale
   the longest side to 255, round to integers, RDP with epsilon 2, stroke-3 offsets. Steps 2-3
   run vectorised over the whole batch, so 5 x 2000 doodles take a couple of seconds.

The result has the format of real data: float32 stroke-3 rows of integer values, tens of points
(always under 200), the first row the offset of the first point from the origin, the last row
lifting the pen. `write_npz_dataset` writes it in the sketch-rnn npz layout so it goes through
the same loading path as QuickDraw files.

Every split of every category has its own random stream derived from `(seed, category, split)`,
so the splits are disjoint, a category draws the same doodles whichever other categories are
asked for, and the first k doodles do not change when more are asked for.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sketchlab.data.npz import save_sketchrnn_npz
from sketchlab.data.strokes import from_polylines, rdp_mask
from sketchlab.data.sketches import Sketches
from sketchlab.fileio import atomic_write_text
from sketchlab.errors import ConfigError

CATEGORIES: tuple[str, ...] = ("house", "sun", "fish", "cup", "star")
STYLES: dict[str, tuple[str, ...]] = {
    "house": ("plain", "door_window", "chimney"),
    "sun": ("rays", "face", "zigzag"),
    "fish": ("left", "right"),
    "cup": ("mug", "glass", "teacup"),
    "star": ("five", "outline", "six"),
}
SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Dense sampling step of the drawn polylines in unit-box coordinates (about 5 px at 255).
SPACING = 0.02
# QuickDraw's processing: the longest side is scaled to this, and RDP uses this epsilon.
BOX = 255.0
RDP_EPSILON = 2.0
# sketch-rnn data sets drop longer sketches; ours stay far below.
MAX_POINTS = 200

Stroke = np.ndarray  # (k, 2) float64, unit box, y down


# --------------------------------------------------------------------------------------------
# Drawing primitives (unit box, y down). Each returns a dense (k, 2) polyline.
# --------------------------------------------------------------------------------------------


def _arc_length(v: np.ndarray) -> np.ndarray:
    """Cumulative length along the polyline `v`, starting at 0."""
    d = v[1:] - v[:-1]
    cum = np.zeros(len(v))
    np.cumsum(np.sqrt(d[:, 0] ** 2 + d[:, 1] ** 2), out=cum[1:])
    return cum


def _at(v: np.ndarray, cum: np.ndarray, s: np.ndarray) -> Stroke:
    """Points at arc lengths `s` along the polyline `v` (with cumulative lengths `cum`)."""
    # one interpolation of x + iy instead of two (this runs for every stroke of every doodle)
    z = np.interp(s, cum, v[:, 0] + 1j * v[:, 1])
    return z.view(np.float64).reshape(-1, 2)


def _steps(length: float, n_min: int = 2) -> np.ndarray:
    """Arc lengths 0..length, about SPACING apart."""
    n = max(n_min, int(np.ceil(length / SPACING)) + 1)
    return np.arange(n) * (length / (n - 1))


def _resample(vertices, closed: bool = False) -> Stroke:
    """A polyline through `vertices`, resampled every SPACING along its length."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    if closed:
        v = np.vstack([v, v[:1]])
    cum = _arc_length(v)
    if cum[-1] < 1e-9:
        return v[:1].copy()
    return _at(v, cum, _steps(cum[-1]))


def _line(*points) -> Stroke:
    if len(points) != 2:
        return _resample(points)
    p0, p1 = np.asarray(points[0], np.float64), np.asarray(points[1], np.float64)
    t = _steps(float(np.hypot(*(p1 - p0))))
    t /= max(t[-1], 1e-12)
    return p0 + t[:, None] * (p1 - p0)


def _ellipse(cx, cy, rx, ry, a0: float = 0.0, a1: float = 2 * np.pi, n: int | None = None) -> np.ndarray:
    """Points on an ellipse from angle a0 to a1 (y down: positive angles turn clockwise)."""
    if n is None:
        n = max(8, int(abs(a1 - a0) * max(rx, ry) / SPACING))
    t = a0 + np.arange(n) * ((a1 - a0) / (n - 1))
    out = np.empty((n, 2))
    out[:, 0] = cx + rx * np.cos(t)
    out[:, 1] = cy + ry * np.sin(t)
    return out


def _loop(vertices, rng: np.random.Generator, start: float | None = None,
          close: tuple[float, float] = (-0.04, 0.08), jitter: float = 0.0) -> Stroke:
    """A closed shape drawn in one stroke, the way people do: from a start point (fraction of
    the way round; random when None), in a random direction, stopping a little short of the
    start or overshooting it (`close`: range of the extra length, as a fraction of the
    perimeter). `jitter` moves each vertex by N(0, jitter) first."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    if len(v) > 1 and np.abs(v[0] - v[-1]).max() < 1e-9:
        v = v[:-1]
    if jitter:
        v = v + rng.normal(0.0, jitter, v.shape)
    if rng.random() < 0.5:  # the other way round, from the same first vertex
        v = np.vstack([v[:1], v[:0:-1]])
    closed = np.vstack([v, v[:1]])
    cum = _arc_length(closed)
    perimeter = cum[-1]
    s0 = (rng.random() if start is None else start) * perimeter
    total = perimeter * (1.0 + rng.uniform(*close))
    return _at(closed, cum, np.mod(s0 + _steps(total, 3), perimeter))


def _dot(x, y, rng: np.random.Generator) -> Stroke:
    """An eye or a door knob: a tiny scribbled circle (a few points after RDP, like real dots)."""
    r = rng.uniform(0.008, 0.02)
    return _ellipse(x, y, r, r, 0.0, 2 * np.pi * rng.uniform(0.8, 1.3), n=10)


def _maybe_reverse(stroke: Stroke, rng: np.random.Generator, p: float = 0.3) -> Stroke:
    return stroke[::-1].copy() if rng.random() < p else stroke


def _wavy(x0, y0, x1, y1, waves: float, amplitude: float) -> Stroke:
    """A wavy line from (x0, y0) to (x1, y1): steam, smoke, water."""
    base = _line((x0, y0), (x1, y1))
    t = np.arange(len(base)) / (len(base) - 1)
    d = np.array([x1 - x0, y1 - y0]) / max(np.hypot(x1 - x0, y1 - y0), 1e-9)
    normal = np.array([-d[1], d[0]])
    return base + np.outer(amplitude * np.sin(2 * np.pi * waves * t), normal)


# --------------------------------------------------------------------------------------------
# The categories: (style, rng) -> strokes in drawing order
# --------------------------------------------------------------------------------------------


def _house(style: int, rng: np.random.Generator) -> list[Stroke]:
    width = rng.uniform(0.55, 0.9)
    height = rng.uniform(0.4, 0.62)
    x0, x1 = 0.5 - width / 2, 0.5 + width / 2
    bottom, top = 1.0, 1.0 - height
    apex = (0.5 + rng.normal(0, 0.04) * width, top - rng.uniform(0.22, 0.45))
    eave = rng.uniform(0.0, 0.08) if rng.random() < 0.6 else 0.0
    drop = eave * rng.uniform(0.0, 0.8)
    roof_l, roof_r = (x0 - eave, top + drop), (x1 + eave, top + drop)
    j = lambda: rng.normal(0, 0.012)  # noqa: E731  (corner placement jitter)

    tl, tr, bl, br = (x0 + j(), top + j()), (x1 + j(), top + j()), (x0 + j(), bottom), (x1 + j(), bottom)
    mode = rng.choice(4, p=[0.45, 0.25, 0.15, 0.15])
    if mode == 0:    # rectangle in one stroke, then a "^" roof
        body = [_loop([tl, bl, br, tr], rng, start=0.0, close=(-0.02, 0.05))]
        roof = [_maybe_reverse(_line(roof_l, apex, roof_r), rng)]
    elif mode == 1:  # a "U" for the walls, the roof as a closed triangle on top
        body = [_maybe_reverse(_line(tl, bl, br, tr), rng, 0.25)]
        roof = [_loop([roof_l, apex, roof_r], rng, start=0.0, close=(-0.03, 0.05))]
    elif mode == 2:  # walls and roof in one outline, then the ceiling line
        body = [_loop([bl, (x0, top + drop), apex, (x1, top + drop), br], rng, start=0.0,
                      close=(-0.02, 0.05))]
        roof = [_maybe_reverse(_line(tl, tr), rng)] if rng.random() < 0.7 else []
    else:            # line by line
        body = [_maybe_reverse(s, rng, 0.4) for s in
                (_line(tl, bl), _line(bl, br), _line(br, tr), _line(tr, tl))]
        roof = [_maybe_reverse(_line(roof_l, apex), rng), _maybe_reverse(_line(apex, roof_r), rng)]
    outline = body + roof if rng.random() < 0.75 else roof + body

    details: list[list[Stroke]] = []
    if style == 1:  # door and window(s)
        door_w = width * rng.uniform(0.16, 0.24)
        door_h = height * rng.uniform(0.4, 0.65)
        where = rng.choice(3)  # door left, centre or right
        door_x = {0: x0 + width * 0.25, 1: 0.5, 2: x1 - width * 0.25}[where] + rng.normal(0, 0.02)
        dl, dr, dt = door_x - door_w / 2, door_x + door_w / 2, bottom - door_h
        door = [_maybe_reverse(_line((dl, bottom), (dl, dt), (dr, dt), (dr, bottom)), rng, 0.3)]
        if rng.random() < 0.4:
            door.append(_dot(dr - door_w * 0.25, bottom - door_h * 0.45, rng))
        details.append(door)
        side = width * rng.uniform(0.15, 0.22)
        wy = top + height * rng.uniform(0.18, 0.3)
        spots = [x0 + width * 0.25, x1 - width * 0.25] if where == 1 else \
                [x1 - width * 0.25] if where == 0 else [x0 + width * 0.25]
        if where != 1 and rng.random() < 0.3:
            spots = spots + [0.5 + (0.12 if where == 2 else -0.12) * width]
        for wx in spots:
            wx = wx + rng.normal(0, 0.015)
            window = [_loop([(wx - side / 2, wy), (wx - side / 2, wy + side), (wx + side / 2, wy + side),
                             (wx + side / 2, wy)], rng, start=0.0, close=(-0.03, 0.06))]
            if rng.random() < 0.7:  # the cross
                cross = [_line((wx, wy), (wx, wy + side)), _line((wx - side / 2, wy + side / 2),
                                                                (wx + side / 2, wy + side / 2))]
                window += [_maybe_reverse(c, rng) for c in cross]
            details.append(window)
    elif style == 2:  # chimney (on the roof's right or left slope), maybe smoke
        right = rng.random() < 0.7
        along = rng.uniform(0.45, 0.7)  # from the apex towards the eave
        cw = width * rng.uniform(0.09, 0.14)
        end = roof_r if right else roof_l
        cx = apex[0] + along * (end[0] - apex[0])

        def roof_y(x):
            return apex[1] + (x - apex[0]) / (end[0] - apex[0]) * (end[1] - apex[1])

        xa, xb = cx - cw / 2, cx + cw / 2
        ctop = min(roof_y(xa), roof_y(xb)) - rng.uniform(0.1, 0.2)
        chimney = [_maybe_reverse(_line((xa, roof_y(xa)), (xa, ctop), (xb, ctop), (xb, roof_y(xb))), rng)]
        if rng.random() < 0.65:  # smoke: a wavy line or a few loops rising from the chimney
            sx, sy = cx + rng.normal(0, 0.01), ctop - 0.03
            if rng.random() < 0.5:
                chimney.append(_wavy(sx, sy, sx + rng.uniform(0.05, 0.25), sy - rng.uniform(0.2, 0.35),
                                     rng.uniform(1.5, 2.5), rng.uniform(0.02, 0.04)))
            else:
                t = np.linspace(0, 2 * np.pi * rng.uniform(2.2, 3.5), 90)
                r = 0.035
                xs = sx + 0.07 * t / (2 * np.pi) + r * np.sin(t)
                ys = sy - 0.07 * t / (2 * np.pi) - r * (1 - np.cos(t))
                chimney.append(_resample(np.stack([xs, ys], 1)))
        details.append(chimney)
    order = rng.permutation(len(details))
    return outline + [s for k in order for s in details[k]]


def _sun(style: int, rng: np.random.Generator) -> list[Stroke]:
    r = rng.uniform(0.2, 0.28) if style != 1 else rng.uniform(0.35, 0.45)
    c = np.array([0.5, 0.5])
    circle = _loop(_ellipse(c[0], c[1], r, r * rng.uniform(0.85, 1.15), n=48), rng,
                   start=rng.choice([0.75, rng.random()]), close=(-0.06, 0.1))
    strokes = [circle]
    if style == 0:  # separate rays, drawn in order around the circle
        n = int(rng.integers(7, 15))
        base = rng.uniform(0, 2 * np.pi)
        angles = base + 2 * np.pi * np.arange(n) / n + rng.normal(0, 0.12 * 2 * np.pi / n, n)
        if rng.random() < 0.5:
            angles = angles[::-1]
        inner = r * rng.uniform(1.1, 1.4)
        outward = rng.random() < 0.8
        length = r * rng.uniform(0.4, 0.9)
        for a in np.roll(angles, int(rng.integers(n))):
            r0 = inner * rng.uniform(0.9, 1.1)
            r1 = r0 + length * rng.uniform(0.6, 1.4)
            tilt = a + rng.normal(0, 0.15)  # rays are not quite radial
            p0 = c + r0 * np.array([np.cos(a), np.sin(a)])
            ray = _line(p0, p0 + (r1 - r0) * np.array([np.cos(tilt), np.sin(tilt)]))
            strokes.append(ray if outward else ray[::-1].copy())
        if rng.random() < 0.1:  # some draw the rays first
            strokes = strokes[1:] + strokes[:1]
    elif style == 1:  # a face, no rays
        ey = c[1] - r * rng.uniform(0.2, 0.35)
        ex = r * rng.uniform(0.3, 0.45)
        eyes = []
        for x in (c[0] - ex, c[0] + ex):
            if rng.random() < 0.6:
                eyes.append(_dot(x, ey, rng))
            else:
                eyes.append(_line((x, ey - r * 0.12), (x, ey + r * 0.08)))
        span = rng.uniform(0.5, 0.9)
        mouth_r = r * rng.uniform(0.45, 0.65)
        mouth = _ellipse(c[0], c[1] + r * rng.uniform(-0.05, 0.1), mouth_r, mouth_r * rng.uniform(0.6, 1.0),
                         np.pi / 2 - span * np.pi / 2, np.pi / 2 + span * np.pi / 2)
        parts = [eyes, [_maybe_reverse(_resample(mouth), rng, 0.4)]]
        if rng.random() < 0.3:
            parts = parts[::-1]
        strokes += [s for p in parts for s in p]
    else:  # one continuous zigzag (or scalloped) ring around the circle
        n = int(rng.integers(9, 17))
        r_in, r_out = r * rng.uniform(1.1, 1.25), r * rng.uniform(1.55, 1.85)
        if rng.random() < 0.7:  # zigzag: alternate inner and outer corners
            t = 2 * np.pi * np.arange(2 * n) / (2 * n)
            radius = np.where(np.arange(2 * n) % 2 == 0, r_in, r_out)
            jitter = 0.01
        else:  # scallops: a bump between two touches of the inner radius
            t = 2 * np.pi * np.arange(8 * n) / (8 * n)
            radius = r_in + (r_out - r_in) * 0.7 * np.abs(np.sin(n * t / 2))
            jitter = 0.0
        ring = np.stack([c[0] + radius * np.cos(t), c[1] + radius * np.sin(t)], 1)
        strokes.append(_loop(ring, rng, close=(-0.03, 0.04), jitter=jitter))
    return strokes


def _fish(style: int, rng: np.random.Generator) -> list[Stroke]:
    """Drawn facing right, mirrored for style 0 (left)."""
    x_tail, x_nose = rng.uniform(0.25, 0.35), rng.uniform(0.95, 1.05)
    h_up, h_low = rng.uniform(0.15, 0.28), rng.uniform(0.13, 0.26)
    u = np.linspace(0.0, 1.0, 60)
    hump_up, hump_low = rng.uniform(1.1, 1.8), rng.uniform(1.1, 1.8)  # > 1: the hump sits nearer the head
    fat = rng.uniform(0.6, 0.95)
    xs = x_tail + u * (x_nose - x_tail)
    upper = np.stack([xs, 0.5 - h_up * np.sin(np.pi * u ** hump_up) ** fat], 1)
    lower = np.stack([xs, 0.5 + h_low * np.sin(np.pi * u ** hump_low) ** fat], 1)
    tail_len = rng.uniform(0.15, 0.3)
    spread = rng.uniform(0.1, 0.22)
    joint = np.array([x_tail, 0.5])
    tip_up = np.array([x_tail - tail_len, 0.5 - spread + rng.normal(0, 0.03)])
    tip_low = np.array([x_tail - tail_len + rng.normal(0, 0.03), 0.5 + spread])

    mode = rng.choice(3, p=[0.45, 0.35, 0.2])
    if mode == 0:    # closed body, then a closed tail triangle
        body = _loop(np.vstack([upper, lower[::-1][1:-1]]), rng, start=0.0, close=(-0.03, 0.06))
        tail = _loop([joint, tip_up, tip_low], rng, start=0.0, close=(-0.05, 0.05))
        outline = [body, tail] if rng.random() < 0.85 else [tail, body]
    elif mode == 1:  # the crossing "ichthys" stroke, maybe closing the tail after
        path = np.vstack([tip_low, joint + [0.02, 0.0], upper[1:], lower[::-1][1:-1],
                          joint + [0.02, 0.0], tip_up])
        outline = [_maybe_reverse(_resample(path), rng, 0.3)]
        if rng.random() < 0.6:
            outline.append(_maybe_reverse(_line(tip_up, tip_low), rng))
    else:            # closed body, then an open "<" tail and maybe its back edge
        body = _loop(np.vstack([upper, lower[::-1][1:-1]]), rng, start=rng.uniform(0, 0.2),
                     close=(-0.03, 0.06))
        outline = [body, _maybe_reverse(_line(tip_up, joint, tip_low), rng)]
        if rng.random() < 0.5:
            outline.append(_maybe_reverse(_line(tip_up, tip_low), rng))

    details: list[list[Stroke]] = []
    ex = x_tail + rng.uniform(0.72, 0.82) * (x_nose - x_tail)
    ey = 0.5 - h_up * rng.uniform(0.3, 0.45)
    if rng.random() < 0.6:
        eye = [_dot(ex, ey, rng)]
    else:
        er = rng.uniform(0.025, 0.04)
        eye = [_loop(_ellipse(ex, ey, er, er, n=16), rng)]
        if rng.random() < 0.4:
            eye.append(_dot(ex, ey, rng))
    details.append(eye)
    if rng.random() < 0.4:  # gill
        gx = x_tail + rng.uniform(0.55, 0.65) * (x_nose - x_tail)
        gh = min(h_up, h_low) * rng.uniform(0.5, 0.75)
        gill = _ellipse(gx + gh * 0.6, 0.5, gh * 0.8, gh, np.pi * 0.65, np.pi * 1.35)
        details.append([_maybe_reverse(_resample(gill), rng, 0.5)])
    if rng.random() < 0.45:  # dorsal fin on the back
        i0, i1 = int(rng.integers(14, 22)), int(rng.integers(30, 38))
        tip = np.array([(xs[i0] + xs[i1]) / 2 - rng.uniform(0.0, 0.06),
                        min(upper[i0, 1], upper[i1, 1]) - rng.uniform(0.08, 0.15)])
        details.append([_maybe_reverse(_line(upper[i0], tip, upper[i1]), rng)])
    if rng.random() < 0.25:  # bubbles in front of the mouth
        details.append([_dot(x_nose + rng.uniform(0.05, 0.1), 0.45 - 0.1 * k, rng)
                        for k in range(int(rng.integers(1, 4)))])
    order = rng.permutation(len(details))
    strokes = outline + [s for k in order for s in details[k]]
    if style == 0:
        strokes = [np.stack([1.2 - s[:, 0], s[:, 1]], 1) for s in strokes]
    return strokes


def _cup(style: int, rng: np.random.Generator) -> list[Stroke]:
    strokes: list[Stroke] = []
    if style in (0, 1):  # mug (handle) or glass (no handle, tapered)
        w_top = rng.uniform(0.45, 0.6)
        w_bot = w_top * (rng.uniform(0.85, 1.0) if style == 0 else rng.uniform(0.55, 0.8))
        height = rng.uniform(0.6, 0.85) if style == 0 else rng.uniform(0.75, 1.0)
        cx = 0.45 if style == 0 else 0.5
        top, bottom = 0.5 - height / 2, 0.5 + height / 2
        corner = rng.uniform(0.0, 0.06)
        tl, tr = (cx - w_top / 2, top), (cx + w_top / 2, top)
        walls = np.array([tl, (cx - w_bot / 2, bottom - corner), (cx - w_bot / 2 + corner, bottom),
                          (cx + w_bot / 2 - corner, bottom), (cx + w_bot / 2, bottom - corner), tr])
        walls = walls + rng.normal(0, 0.01, walls.shape)
        rim_h = rng.uniform(0.03, 0.08)
        if rng.random() < 0.55:  # an elliptic rim and a U body
            strokes += [_loop(_ellipse(cx, top, w_top / 2, rim_h, n=40), rng, close=(-0.05, 0.08)),
                        _maybe_reverse(_resample(walls), rng, 0.3)]
            if rng.random() < 0.3:
                strokes = strokes[::-1]
        elif rng.random() < 0.5:  # the whole outline in one closed stroke
            strokes.append(_loop(walls, rng, start=0.0, close=(-0.03, 0.05)))
        else:  # U body, then a straight top
            strokes += [_maybe_reverse(_resample(walls), rng, 0.3), _maybe_reverse(_line(tl, tr), rng)]
        if style == 0:
            y0 = top + height * rng.uniform(0.12, 0.25)
            y1 = top + height * rng.uniform(0.6, 0.8)
            reach = rng.uniform(0.12, 0.2)
            xr = cx + w_top / 2 - (w_top - w_bot) / 2 * 0.3
            handle = _ellipse(xr, (y0 + y1) / 2, reach, (y1 - y0) / 2, -np.pi / 2, np.pi / 2)
            strokes.append(_maybe_reverse(_resample(handle), rng, 0.3))
            if rng.random() < 0.3:  # a thick handle: an inner arc
                inner = _ellipse(xr, (y0 + y1) / 2, reach * 0.55, (y1 - y0) / 2 * 0.6, -np.pi / 2, np.pi / 2)
                strokes.append(_maybe_reverse(_resample(inner), rng, 0.3))
            if rng.random() < 0.3:  # steam
                for k in range(int(rng.integers(1, 4))):
                    sx = cx + (k - 1) * w_top * 0.25 + rng.normal(0, 0.02)
                    end_x, end_y = sx + rng.normal(0, 0.03), top - rng.uniform(0.25, 0.35)
                    strokes.append(_wavy(sx, top - 0.08, end_x, end_y, rng.uniform(1.0, 2.0), 0.025))
        else:
            if rng.random() < 0.5:  # liquid level
                ly = top + height * rng.uniform(0.2, 0.4)
                frac = (ly - top) / height
                half = (w_top + (w_bot - w_top) * frac) / 2 * 0.92
                strokes.append(_maybe_reverse(_wavy(cx - half, ly, cx + half, ly, rng.uniform(0.5, 2.0),
                                                    rng.uniform(0.0, 0.015)), rng))
            if rng.random() < 0.35:  # a straw
                base = (cx + rng.uniform(-0.1, 0.1) * w_top, top + height * rng.uniform(0.4, 0.7))
                up = (base[0] + rng.uniform(0.05, 0.2), top - rng.uniform(0.15, 0.3))
                strokes.append(_line(base, up))
    else:  # teacup: a wide shallow bowl, a small loop handle and a saucer
        w = rng.uniform(0.6, 0.8)
        depth = rng.uniform(0.28, 0.4)
        top = 0.4
        rim_h = rng.uniform(0.04, 0.08)
        bowl = _ellipse(0.5, top, w / 2, depth, 0.0, np.pi)
        if rng.random() < 0.6:
            strokes.append(_loop(_ellipse(0.5, top, w / 2, rim_h, n=40), rng, close=(-0.05, 0.08)))
        else:
            strokes.append(_maybe_reverse(_line((0.5 - w / 2, top), (0.5 + w / 2, top)), rng))
        strokes.append(_maybe_reverse(_resample(bowl[::-1]), rng, 0.3))
        hx = 0.5 + w / 2 * 0.9
        hy = top + depth * 0.35
        hr = rng.uniform(0.06, 0.1)
        if rng.random() < 0.6:
            strokes.append(_loop(_ellipse(hx + hr * 0.6, hy, hr, hr * 0.9, n=20), rng, close=(-0.1, 0.1)))
        else:
            strokes.append(_resample(_ellipse(hx, hy, hr * 1.3, hr, -np.pi / 2, np.pi / 2)))
        sy = top + depth + rng.uniform(0.0, 0.03)
        sw = w / 2 * rng.uniform(1.1, 1.45)  # the saucer's half width
        if rng.random() < 0.6:
            saucer = _ellipse(0.5, sy, sw, rng.uniform(0.04, 0.08), n=40)
            strokes.append(_loop(saucer, rng, close=(-0.05, 0.08)))
        else:
            lip = rng.uniform(0.02, 0.05)
            saucer = _line((0.5 - sw, sy - lip), (0.5 - sw * 0.8, sy), (0.5 + sw * 0.8, sy), (0.5 + sw, sy - lip))
            strokes.append(_maybe_reverse(saucer, rng))
        if rng.random() < 0.3:
            strokes = [strokes[1], strokes[0]] + strokes[2:]
    return strokes


def _star(style: int, rng: np.random.Generator) -> list[Stroke]:
    R = 0.5
    turn = rng.normal(0, 0.06)
    jitter = rng.uniform(0.015, 0.05)  # how carefully the corners are placed
    c = np.array([0.5, 0.5])

    def corners(n, radius, phase):
        a = -np.pi / 2 + turn + phase + 2 * np.pi * np.arange(n) / n
        return c + radius * np.stack([np.cos(a), np.sin(a)], 1)

    if style == 0:  # five points, one crossing stroke (a pentagram)
        pts = corners(5, R, 0.0)[[0, 2, 4, 1, 3]]
        strokes = [_loop(pts, rng, start=float(rng.integers(5)) / 5 if rng.random() < 0.5 else 0.6,
                         close=(-0.01, 0.04), jitter=jitter)]
    elif style == 1:  # five points, outline only
        inner = R * rng.uniform(0.36, 0.52)
        pts = np.empty((10, 2))
        pts[0::2] = corners(5, R, 0.0)
        pts[1::2] = corners(5, inner, np.pi / 5)
        outline = _loop(pts, rng, start=float(rng.integers(10)) / 10 if rng.random() < 0.5 else 0.0,
                        close=(-0.01, 0.03), jitter=jitter)
        if rng.random() < 0.15:  # drawn in two halves
            k = len(outline) // 2 + int(rng.integers(-5, 6))
            strokes = [outline[:k + 1], outline[k:]]
        else:
            strokes = [outline]
    else:  # six points: two triangles
        up = _loop(corners(3, R, 0.0), rng, start=0.0, close=(-0.02, 0.05), jitter=jitter)
        down = _loop(corners(3, R, np.pi / 3), rng, start=float(rng.integers(3)) / 3,
                     close=(-0.02, 0.05), jitter=jitter)
        strokes = [up, down] if rng.random() < 0.8 else [down, up]
    return strokes


DRAW: dict[str, Callable[[int, np.random.Generator], list[Stroke]]] = {
    "house": _house, "sun": _sun, "fish": _fish, "cup": _cup, "star": _star,
}


# --------------------------------------------------------------------------------------------
# Humanising and QuickDraw processing, vectorised over a batch of drawings
# --------------------------------------------------------------------------------------------

# Per-stroke wobble: three sinusoids along the stroke with these wavelength ranges (unit box)
# and relative amplitudes; long bends dominate, as in a moving hand.
_WAVELENGTHS = ((0.5, 1.4), (0.2, 0.45), (0.08, 0.16))
_WAVE_WEIGHTS = (1.0, 0.3, 0.1)


def _draw_params(n_strokes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random numbers for one sketch's humanising, drawn right after its strokes so that each
    doodle depends only on the random stream up to it."""
    return rng.random(8), rng.random((n_strokes, 7))


def _humanise(drawings: list[list[Stroke]], sketch_params: np.ndarray,
              stroke_params: np.ndarray) -> Sketches:
    """Wobble, warp and tilt every drawing, then apply QuickDraw's processing. -> stroke-3 batch."""
    stroke_lens = np.array([len(s) for d in drawings for s in d], dtype=np.int64)
    strokes_per = np.array([len(d) for d in drawings], dtype=np.int64)
    pts = np.concatenate([s for d in drawings for s in d], 0)
    n_strokes = len(stroke_lens)
    stroke_start = np.concatenate([[0], np.cumsum(stroke_lens)[:-1]])
    stroke_end = stroke_start + stroke_lens - 1
    stroke_of = np.repeat(np.arange(n_strokes), stroke_lens)
    sketch_of_stroke = np.repeat(np.arange(len(drawings)), strokes_per)
    sketch_of = sketch_of_stroke[stroke_of]
    sp, st = sketch_params, stroke_params  # (B, 8) and (S, 7), uniform in [0, 1)

    # arc length along each stroke, and the unit normal (central differences inside a stroke)
    d = pts[1:] - pts[:-1]
    seg = np.sqrt(d[:, 0] ** 2 + d[:, 1] ** 2)
    seg[stroke_end[:-1]] = 0.0  # no length across a pen lift
    cum = np.zeros(len(pts))
    np.cumsum(seg, out=cum[1:])
    arc = cum - cum[stroke_start][stroke_of]
    idx = np.arange(len(pts))
    prev = np.maximum(idx - 1, stroke_start[stroke_of])
    nxt = np.minimum(idx + 1, stroke_end[stroke_of])
    tx = pts[nxt, 0] - pts[prev, 0]
    ty = pts[nxt, 1] - pts[prev, 1]
    tlen = np.sqrt(tx * tx + ty * ty)
    tlen[tlen == 0] = 1.0

    # wobble: amplitude per sketch (log-uniform 0.003..0.012 of the drawing's size), per stroke
    # (x0.6..1.4), smaller on tiny strokes so dots stay dots
    stroke_len = cum[stroke_end] - cum[stroke_start]
    amp = 0.003 * 4.0 ** sp[sketch_of_stroke, 0] * (0.6 + 0.8 * st[:, 0]) * np.minimum(1.0, stroke_len / 0.3)
    offset = np.zeros(len(pts))
    for k, ((lo, hi), weight) in enumerate(zip(_WAVELENGTHS, _WAVE_WEIGHTS)):
        omega = 2 * np.pi / (lo + (hi - lo) * st[:, 1 + 2 * k])
        phase = 2 * np.pi * st[:, 2 + 2 * k]
        offset += weight * np.sin(omega[stroke_of] * arc + phase[stroke_of])
    offset *= amp[stroke_of] / tlen
    x = pts[:, 0] - ty * offset
    y = pts[:, 1] + tx * offset

    # a gentle warp of the whole drawing (the hand drifts): up to 0.025, 0.4-1 cycles per unit
    warp = (0.025 * sp[:, 1])[sketch_of]
    freq = (2 * np.pi * (0.4 + 0.6 * sp[:, 2]))[sketch_of]
    phase = (2 * np.pi * sp[:, 3])[sketch_of]
    x, y = x + warp * np.sin(freq * y + phase), y + warp * np.sin(freq * x + 2 * phase)

    # small rotation (about +-7 degrees), aspect change (+-12 %) and shear, as one linear map
    angle = 0.24 * (sp[:, 4] - 0.5)
    sx = np.exp(0.24 * (sp[:, 5] - 0.5))
    shear = 0.16 * (sp[:, 6] - 0.5)
    cos, sin = np.cos(angle), np.sin(angle)
    # [x', y'] = diag(sx, 1/sx) . R(angle) . [[1, shear], [0, 1]] . [x, y]
    m00, m01 = sx * cos, sx * (cos * shear - sin)
    m10, m11 = sin / sx, (sin * shear + cos) / sx
    x, y = (m00[sketch_of] * x + m01[sketch_of] * y, m10[sketch_of] * x + m11[sketch_of] * y)

    # QuickDraw processing: top-left aligned, longest side 255, integers, RDP epsilon 2
    sketch_start = np.concatenate([[0], np.cumsum(np.bincount(sketch_of, minlength=len(drawings)))[:-1]])
    x_min, x_max = np.minimum.reduceat(x, sketch_start), np.maximum.reduceat(x, sketch_start)
    y_min, y_max = np.minimum.reduceat(y, sketch_start), np.maximum.reduceat(y, sketch_start)
    side = np.maximum(x_max - x_min, y_max - y_min)
    x = np.round((x - x_min[sketch_of]) / side[sketch_of] * BOX)
    y = np.round((y - y_min[sketch_of]) / side[sketch_of] * BOX)
    offsets = np.concatenate([[0], np.cumsum(stroke_lens)])
    keep = rdp_mask(np.stack([x, y], 1), offsets, RDP_EPSILON)

    pen = np.zeros(len(pts), np.float32)
    pen[stroke_end] = 1.0
    absolute = np.stack([x, y, pen], 1)[keep].astype(np.float32)
    counts = np.bincount(sketch_of[keep], minlength=len(drawings))
    sketch_offsets = np.concatenate([[0], np.cumsum(counts)])
    deltas = absolute.copy()
    deltas[1:, :2] -= absolute[:-1, :2]
    # the first row of each sketch is its first point's offset from the origin
    deltas[sketch_offsets[:-1], :2] = absolute[sketch_offsets[:-1], :2]
    return Sketches(deltas, sketch_offsets)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_categories(categories: Sequence[str] | None) -> tuple[str, ...]:
    if categories is None:
        return CATEGORIES
    if isinstance(categories, str):  # text a user typed is parsed in one place, not here
        raise ConfigError(f"categories must be a list of names, not the string {categories!r}; "
                          f"sketchlab.data.sources.parse_categories reads 'a,b'")
    unknown = [c for c in categories if c not in DRAW]
    if unknown or not categories:
        raise ConfigError(f"unknown doodle categories {unknown or '(none given)'}; "
                          f"the built-in doodles are {', '.join(CATEGORIES)}")
    return tuple(categories)


def _stream(seed: int, category: str, split: str) -> np.random.Generator:
    """The random stream of one split of one category (independent of the others)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    return np.random.default_rng([int(seed), zlib.crc32(category.encode()), SPLITS.index(split)])


def _make_category(category: str, n: int, seed: int, split: str) -> tuple[Sketches, np.ndarray]:
    rng = _stream(seed, category, split)
    draw = DRAW[category]
    n_styles = len(STYLES[category])
    drawings, styles, sketch_params, stroke_params = [], [], [], []
    for _ in range(n):
        style = int(rng.integers(n_styles))
        strokes = draw(style, rng)
        a, b = _draw_params(len(strokes), rng)
        drawings.append(strokes)
        styles.append(style)
        sketch_params.append(a)
        stroke_params.append(b)
    sketches = _humanise(drawings, np.stack(sketch_params), np.concatenate(stroke_params, 0))
    if sketches.lengths.max() >= MAX_POINTS:  # a bug in a category function, not bad luck
        raise AssertionError(f"doodle '{category}' of {sketches.lengths.max()} points")
    return sketches, np.array(styles, dtype=np.int64)


def make_doodles_with_styles(n_per_category: int = 100, categories: Sequence[str] | None = None,
                             seed: int = 0, split: str = "train") -> tuple[Sketches, np.ndarray]:
    """`n_per_category` doodles of each category (grouped by category, in the order given), and
    the style of each: an int64 array, `STYLES[category][style]` naming it."""
    if n_per_category < 1:
        raise ConfigError(f"n_per_category must be at least 1, got {n_per_category}")
    names = _check_categories(categories)
    parts, styles = [], []
    for i, name in enumerate(names):
        sketches, style = _make_category(name, int(n_per_category), seed, split)
        sketches.category = np.full(len(sketches), i, dtype=np.int64)
        sketches.category_names = names
        parts.append(sketches)
        styles.append(style)
    return Sketches.concat(parts), np.concatenate(styles)


def make_doodles(n_per_category: int = 100, categories: Sequence[str] | None = None,
                 seed: int = 0, split: str = "train") -> Sketches:
    """`n_per_category` doodles of each category (default: all of `CATEGORIES`) from `split`.

    Raw QuickDraw-like offsets (`scale_factor` 1.0); `category` indexes `category_names`.
    Deterministic in `(seed, category, split)`; the splits never share a doodle.
    """
    return make_doodles_with_styles(n_per_category, categories, seed, split)[0]


def make_doodle_splits(n_train: int = 1000, n_valid: int = 100, n_test: int = 100,
                       categories: Sequence[str] | None = None,
                       seed: int = 0) -> dict[str, Sketches]:
    """`{"train": ..., "valid": ..., "test": ...}`, each with that many doodles per category."""
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    return {split: make_doodles(n, categories, seed, split) for split, n in sizes.items()}


def style_names(sketches: Sketches, style: np.ndarray) -> list[str]:
    """`"category/style"` for each sketch, e.g. `"fish/left"` (for titles and confusion tables)."""
    return [f"{sketches.category_name(i)}/{STYLES[sketches.category_name(i)][int(s)]}"
            for i, s in enumerate(style)]


PARTIAL_SHEEP = ("body", "+ head", "+ 2 legs")


def partial_sheep(max_points: int = 125) -> Sketches:
    """Three partial sheep (`PARTIAL_SHEEP`) for sketch-rnn-sheep to complete, as its web demos ask
    a visitor to start one: a woolly body (a scalloped ellipse), then a head, then two legs.
    In aaron_sheep's units (a sheep about 150 wide, y down), points about 4 apart, or further
    apart where that keeps every drawing within `max_points` (a model's length leaves room to
    finish it)."""
    t = np.linspace(0.0, 2 * np.pi, 721)

    def wool(cx, cy, rx, ry, bumps):
        r = 1 + 0.13 * np.abs(np.sin(bumps * t / 2))      # `bumps` arcs bulging outward
        return np.stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t)], 1)

    legs = [np.array([[x, 72.0], [x, 84.0], [x, 96.0]]) for x in (60.0, 75.0)]
    loops = [wool(90, 45, 60, 32, 14), wool(20, 30, 14, 17, 6)]
    lengths = [_arc_length(v) for v in loops]
    # each loop takes ceil(length / spacing) points: leave one spare per loop
    loop_points = max(8, max_points - sum(len(leg) for leg in legs) - len(loops))
    spacing = max(4.0, sum(cum[-1] for cum in lengths) / loop_points)
    body, head = (_at(v, cum, np.arange(0.0, cum[-1], spacing)) for v, cum in zip(loops, lengths))
    drawings = ([body], [body, head], [body, head, *legs])
    return Sketches.from_list([from_polylines(d) for d in drawings])


def write_npz_dataset(out_dir: str | os.PathLike, n_per_category: int = 1000, seed: int = 0,
                      categories: Sequence[str] | None = None, n_valid: int | None = None,
                      n_test: int | None = None) -> list[Path]:
    """Write `<category>.npz` files in the sketch-rnn layout, for the real loading path.

    Each file holds `train`, `valid` and `test`: object arrays of int16 `(n, 3)` stroke-3
    arrays, written with plain `np.savez` as the official files are (reading them needs
    `sketchlab.data.npz.load_npz`). `n_per_category` is the training count; valid and test
    default to a tenth of it (at least 1). The styles go to `styles.json` beside them:
    `{category: {"styles": [names], "train": [ids], "valid": [...], "test": [...]}}`.
    Returns the paths of the npz files.
    """
    names = _check_categories(categories)
    small = max(1, int(n_per_category) // 10)
    sizes = {"train": int(n_per_category), "valid": small if n_valid is None else int(n_valid),
             "test": small if n_test is None else int(n_test)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    styles: dict[str, dict] = {}
    for name in names:
        arrays = {}
        styles[name] = {"styles": list(STYLES[name])}
        for split, n in sizes.items():
            sketches, style = _make_category(name, n, seed, split)
            arrays[split] = list(sketches)
            styles[name][split] = style.tolist()
        path = out / f"{name}.npz"
        save_sketchrnn_npz(path, arrays)
        paths.append(path)
    atomic_write_text(out / "styles.json", json.dumps(styles))
    return paths
