"""Drawing sketches: SVG (`render.svg`), PNG with PIL (`render.png`), the `sketchlab render` command.

`save_grid(sketches, "out.png" | "out.svg", ...)` picks the format from the file name.
"""

from __future__ import annotations

import os

from sketchlab.errors import ConfigError
from sketchlab.render import png, svg

FORMATS = (".png", ".svg")


def save_grid(sketches, path: str | os.PathLike, cols: int | None = None, cell: int = 128,
              titles=None, colour_strokes: bool = False, line_width: float = 1.5, **kwargs) -> None:
    """Draw `sketches` as a grid into `path`, a `.png` or `.svg` file (written atomically)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".png":
        png.save_png(png.render_grid(sketches, cols=cols, cell=cell, titles=titles,
                                     colour_strokes=colour_strokes, line_width=line_width, **kwargs), path)
    elif ext == ".svg":
        svg.save_svg(svg.svg_grid(sketches, cols=cols, cell=cell, titles=titles,
                                  colour_strokes=colour_strokes, line_width=line_width, **kwargs), path)
    else:
        raise ConfigError(f"{path}: unknown drawing format '{ext or '(none)'}'; use .png or .svg")
