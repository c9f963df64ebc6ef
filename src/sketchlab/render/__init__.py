"""Drawing sketches: SVG (`render.svg`), PNG with PIL (`render.png`), the `sketchlab render` command.

`save_grid(sketches, "out.png" | "out.svg", ...)` picks the format from the file name;
`save_conditioned_grid` draws each output under the input it was conditioned on (and, for
healing, the corrupted input in between), so a picture never hides what a model was given.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from sketchlab.errors import ConfigError
from sketchlab.render import png, svg
from sketchlab.render.layout import INK, as_sketch_list

FORMATS = (".png", ".svg")
# Inputs in a muted blue and corrupted inputs in orange, so that they never pass for outputs.
INPUT_COLOUR = "#5b7fa8"
CORRUPTED_COLOUR = "#d9822b"


def save_grid(sketches, path: str | os.PathLike, cols: int | None = None, cell: int = 128,
              titles=None, colour_strokes: bool = False, line_width: float = 1.5, **kwargs) -> None:
    """Draw `sketches` as a grid into `path`, a `.png` or `.svg` file (written atomically).
    Keywords: `caption` (a line above the grid), `colours` (one per sketch), `group_rows`,
    `titles_below`, `margin`, `cell_borders` (see `png.render_grid`)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".png":
        png.save_png(png.render_grid(sketches, cols=cols, cell=cell, titles=titles,
                                     colour_strokes=colour_strokes, line_width=line_width, **kwargs), path)
    elif ext == ".svg":
        svg.save_svg(svg.svg_grid(sketches, cols=cols, cell=cell, titles=titles,
                                  colour_strokes=colour_strokes, line_width=line_width, **kwargs), path)
    else:
        raise ConfigError(f"{path}: unknown drawing format '{ext or '(none)'}'; use .png or .svg")


def conditioned_cells(outputs, inputs, corrupted=None, *, input_titles: Sequence[str] | None = None,
                      output_titles: Sequence[str] | None = None, corrupted_title: str = "corrupted",
                      cols: int | None = None):
    """The cells of a conditioned grid in drawing order: `(sketches, titles, colours, cols,
    group_rows)` for `save_grid`. Output i sits under input i (and corrupted input i): blocks
    of 2 (or 3) rows, `cols` blocks across (default: as many as a grid of the outputs alone
    has, so the picture is that grid with each cell's input drawn above it); empty cells pad
    the last block row."""
    layers = [as_sketch_list(inputs)]
    if corrupted is not None:
        layers.append(as_sketch_list(corrupted))
    layers.append(as_sketch_list(outputs))
    n = len(layers[-1])
    if any(len(layer) < n for layer in layers):
        raise ConfigError(f"{n} outputs for {min(len(layer) for layer in layers)} inputs; give "
                          f"the input of every output")
    layers = [layer[:n] for layer in layers]
    k = len(layers)
    if cols is None or cols <= 0:
        # The columns of a grid of the outputs alone: the inputs make it taller, not different.
        cols = math.ceil(math.sqrt(n))
    cols = max(1, min(cols, n))
    in_titles = list(input_titles) if input_titles is not None else ["input"] * n
    out_titles = list(output_titles) if output_titles is not None else ["output"] * n
    layer_titles = [in_titles] + ([[corrupted_title] * n] if corrupted is not None else []) + [out_titles]
    layer_colours = [INPUT_COLOUR] + ([CORRUPTED_COLOUR] if corrupted is not None else []) + [INK]
    blank = np.zeros((0, 3), np.float32)
    cells, titles, colours = [], [], []
    for start in range(0, n, cols):
        for j in range(k):
            for i in range(start, start + cols):
                cells.append(layers[j][i] if i < n else blank)
                titles.append(layer_titles[j][i] if i < n else "")
                colours.append(layer_colours[j])
    return cells, titles, colours, cols, k


def save_conditioned_grid(outputs, path: str | os.PathLike, inputs, *, corrupted=None,
                          input_titles: Sequence[str] | None = None,
                          output_titles: Sequence[str] | None = None,
                          corrupted_title: str = "corrupted", caption: str | None = None,
                          cols: int | None = None, cell: int = 128, **kwargs) -> None:
    """Draw each output under the input it was conditioned on (inputs in blue; for healing,
    the corrupted input in orange in between) into a `.png` or `.svg` file."""
    cells, titles, colours, cols, k = conditioned_cells(
        outputs, inputs, corrupted, input_titles=input_titles, output_titles=output_titles,
        corrupted_title=corrupted_title, cols=cols)
    save_grid(cells, path, cols=cols, cell=cell, titles=titles, colours=colours, caption=caption,
              group_rows=k, **kwargs)


__all__ = ["CORRUPTED_COLOUR", "FORMATS", "INPUT_COLOUR", "conditioned_cells",
           "save_conditioned_grid", "save_grid"]
