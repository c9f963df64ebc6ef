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
from sketchlab.data.strokes import from_polylines, to_polylines

Drawing = list  # [[xs, ys], ...]


def origin_of(drawing: Drawing) -> np.ndarray:
    """The first point of a drawing (where its pen starts)."""
    return np.array([drawing[0][0][0], drawing[0][1][0]], np.float64)


def to_stroke3(drawing: Drawing, origin: np.ndarray) -> np.ndarray:
    """A drawing -> one stroke-3 sketch (raw units) with `origin` moved to (0, 0)."""
    lines = [np.stack([np.asarray(xs, np.float64), np.asarray(ys, np.float64)], 1) - origin
             for xs, ys in drawing if len(xs)]
    return from_polylines(lines)


def to_sketches(drawings: list[Drawing], origins: list[np.ndarray]) -> Sketches:
    return Sketches.from_list([to_stroke3(d, o) for d, o in zip(drawings, origins)])


def to_drawing(sketch: np.ndarray, origin: np.ndarray | None = None, digits: int = 2) -> Drawing:
    """One stroke-3 sketch (raw units) -> `[[xs, ys], ...]`, moved by `origin`, rounded to
    `digits` decimals (a hundredth of a raw unit is far below what anyone can see)."""
    shift = np.zeros(2) if origin is None else origin
    out = []
    for line in to_polylines(np.asarray(sketch, np.float32)):
        pts = np.round(line.astype(np.float64) + shift, digits)
        out.append([pts[:, 0].tolist(), pts[:, 1].tolist()])
    return out


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
