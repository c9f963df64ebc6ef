"""Drawings as the studio's JSON carries them (`[[xs, ys], ...]`, absolute raw units) to and
from the public API's sketches, and the masks a person paints before healing.

The models learned sketches whose pen starts at the origin (sketch-rnn's data keeps offsets
only), so a drawing is moved to start at (0, 0) before a model sees it and every result is moved
back by the same amount: a completion continues the strokes where they were drawn, and a redrawn
or healed sketch starts where its input started.
"""

from __future__ import annotations

import numpy as np

from sketchlab.data.sketches import Sketches

Drawing = list  # [[xs, ys], ...]


def origin_of(drawing: Drawing) -> np.ndarray:
    """The first point of a drawing (where its pen starts)."""
    return np.array([drawing[0][0][0], drawing[0][1][0]], np.float64)


def shifted(drawing: Drawing, by: np.ndarray) -> Drawing:
    """The drawing moved by `-by` (its pen then starts at the origin when `by` is its start)."""
    bx, by_ = float(by[0]), float(by[1])
    return [[[x - bx for x in xs], [y - by_ for y in ys]] for xs, ys in drawing if len(xs)]


def to_sketches(drawings: list[Drawing], origins: list[np.ndarray]) -> Sketches:
    """Drawings -> `Sketches` in raw units, each moved so that `origins[i]` is at (0, 0)."""
    return Sketches.from_strokes([shifted(d, o) for d, o in zip(drawings, origins)])


def to_drawings(sketches: Sketches, origin: np.ndarray | None = None,
                digits: int = 2) -> list[Drawing]:
    """Every sketch (any units) as `[[xs, ys], ...]` in raw units, moved by `origin`, rounded to
    `digits` decimals (a hundredth of a raw unit is far below what anyone can see)."""
    ox, oy = (0.0, 0.0) if origin is None else (float(origin[0]), float(origin[1]))
    return [[[[round(x + ox, digits) for x in xs], [round(y + oy, digits) for y in ys]]
             for xs, ys in drawing] for drawing in sketches.to_strokes()]


def apply_masks(drawing: Drawing, masks) -> Drawing:
    """The drawing without the points inside any mask rectangle: a stroke that crosses a mask
    is cut in two there (as `sketchlab.data.corrupt.remove_points` lifts the pen over a gap)."""
    if not masks:
        return drawing
    rects = [(min(m.x0, m.x1), min(m.y0, m.y1), max(m.x0, m.x1), max(m.y0, m.y1)) for m in masks]
    out = []
    for xs, ys in drawing:
        run_x, run_y = [], []
        for x, y in zip(xs, ys):
            if any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in rects):
                if run_x:
                    out.append([run_x, run_y])
                run_x, run_y = [], []
            else:
                run_x.append(x)
                run_y.append(y)
        if run_x:
            out.append([run_x, run_y])
    return out


def count_points(drawing: Drawing) -> int:
    return sum(len(xs) for xs, _ in drawing)
