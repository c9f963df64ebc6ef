"""What the SVG and PNG renderers share: input coercion, fitting a sketch into a cell, the grid
shape and the stroke colours.

A stroke-3 sketch's first row is a pen-up move from the origin to the first point, and a row
with `p = 1` lifts the pen after its point, so drawing a sketch means drawing its polylines
(`strokes.to_polylines`) and nothing in between. The origin is not part of the drawing, so the
fit uses the bounding box of the drawn points only.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sketchlab.data.strokes import to_polylines
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError

# A qualitative palette (Tableau 10, slightly darkened for thin lines on white).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
INK = "#1a1a1a"


def as_sketch_list(sketches) -> list[np.ndarray]:
    """A `Sketches`, one stroke-3 array, or a sequence of them -> list of float32 `(n, 3)` arrays."""
    if isinstance(sketches, Sketches):
        return list(sketches)
    if isinstance(sketches, np.ndarray) and sketches.ndim == 2:
        sketches = [sketches]
    out = []
    for i, s in enumerate(sketches):
        arr = np.asarray(s, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise DataError(f"sketch {i}: expected a stroke-3 array of shape (n, 3), got {arr.shape}")
        out.append(arr)
    return out


def stroke_colours(n_strokes: int, colour_strokes: bool, colour: str = INK) -> list[str]:
    """One colour per stroke: the palette in drawing order, or `colour` for all."""
    if colour_strokes:
        return [PALETTE[i % len(PALETTE)] for i in range(n_strokes)]
    return [colour] * n_strokes


def fit_polylines(sketch: np.ndarray, x0: float, y0: float, width: float, height: float,
                  margin: float, upto: int | None = None) -> list[np.ndarray]:
    """The sketch's polylines scaled uniformly to fit the box `(x0, y0, width, height)` less
    `margin` on every side, centred. Returns absolute `(k, 2)` float64 arrays in box pixels.
    `upto`: only the first `upto` points, placed where they are in the whole sketch (the
    frames of an animation keep one scale).

    A sketch whose points are all equal becomes a dot in the middle of the box.
    """
    lines = [p.astype(np.float64) for p in to_polylines(sketch)]
    if not lines:
        return []
    shown = lines if upto is None else [p.astype(np.float64) for p in
                                        to_polylines(np.asarray(sketch)[:max(int(upto), 0)])]
    allpts = np.concatenate(lines, 0)
    if not np.all(np.isfinite(allpts)):
        raise DataError("cannot draw a sketch holding NaN or inf offsets")
    lo, hi = allpts.min(0), allpts.max(0)
    extent = hi - lo
    inner_w, inner_h = max(width - 2 * margin, 1.0), max(height - 2 * margin, 1.0)
    scale = min(inner_w / max(extent[0], 1e-9), inner_h / max(extent[1], 1e-9))
    if not np.isfinite(scale) or extent.max() <= 1e-9:
        scale = 1.0
    centre_src = (lo + hi) / 2
    centre_dst = np.array([x0 + width / 2, y0 + height / 2])
    return [(p - centre_src) * scale + centre_dst for p in shown]


def grid_shape(n: int, cols: int | None) -> tuple[int, int]:
    """`(rows, cols)` for `n` cells; `cols=None` picks a near-square grid."""
    if n <= 0:
        return 0, 0
    if cols is None or cols <= 0:
        cols = math.ceil(math.sqrt(n))
    cols = min(cols, n)
    return math.ceil(n / cols), cols


@dataclass
class GridLayout:
    """Where each cell of a grid goes (what the PNG and SVG renderers share)."""

    rows: int
    cols: int
    cell: int
    band: int           # title band above (or below) each cell
    gap: int            # between cells
    group_rows: int     # a wider gap after every group_rows rows
    group_gap: int
    caption_band: int   # the caption lines above the grid
    caption_lines: list[str]
    font_px: int
    caption_px: int
    width: int
    height: int

    def origin(self, i: int) -> tuple[int, int]:
        """Top-left corner of cell i's box (title band included)."""
        r, c = divmod(i, self.cols)
        x = self.gap + c * (self.cell + self.gap)
        y = (self.caption_band + self.gap + r * (self.cell + self.band + self.gap)
             + (r // self.group_rows) * self.group_gap)
        return x, y


def grid_layout(rows: int, cols: int, cell: int, titles: bool, title_size: int | None,
                cell_borders: bool, caption: str | None, group_rows: int = 1) -> GridLayout:
    font_px = title_size or int(min(16, max(10, cell // 9)))
    band = font_px + 6 if titles else 0
    gap = 1 if cell_borders else 0
    group_rows = max(1, int(group_rows))
    group_gap = max(6, cell // 16) if group_rows > 1 else 0
    caption_px = max(12, min(16, font_px + 2))
    rows, cols = max(rows, 1), max(cols, 1)
    width = cols * cell + (cols + 1) * gap
    # Wrapped to the picture's width at a generous average glyph width (0.55 em), so that the
    # PNG and SVG renderings break the same lines.
    caption_lines = textwrap.wrap(caption, max(10, int((width - 8) / (0.55 * caption_px)))) \
        if caption else []
    caption_band = len(caption_lines) * (caption_px + 4) + 6 if caption_lines else 0
    height = (caption_band + rows * (cell + band) + (rows + 1) * gap
              + ((rows - 1) // group_rows) * group_gap)
    return GridLayout(rows, cols, cell, band, gap, group_rows, group_gap, caption_band,
                      caption_lines, font_px, caption_px, width, height)


def check_titles(titles: Sequence[str] | None, n: int, what: str = "titles") -> list[str] | None:
    if titles is None:
        return None
    titles = [str(t) for t in titles]
    if len(titles) != n:
        raise ConfigError(f"{len(titles)} {what} for {n} sketches; give one per sketch")
    return titles
