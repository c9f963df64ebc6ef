"""SVG drawings: one sketch or a grid of them, with optional titles and a colour per stroke.

Each stroke is one `<path>` ("M x y L x y ..."); pen-up moves are not drawn; a single-point
stroke (a dot) is a small circle. The output is a plain, standalone SVG 1.1 document.
"""

from __future__ import annotations

import os
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr

from sketchlab.fileio import atomic_write
from sketchlab.render.layout import (INK, as_sketch_list, check_titles, fit_polylines,
                                     grid_layout, grid_shape, stroke_colours)

BACKGROUND = "white"
GRID_LINE = "#dddddd"
TEXT = "#333333"


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _cell_elements(sketch, x0: float, y0: float, size: float, margin: float,
                   colour_strokes: bool, colour: str, line_width: float) -> list[str]:
    lines = fit_polylines(sketch, x0, y0, size, size, margin)
    colours = stroke_colours(len(lines), colour_strokes, colour)
    out = []
    for line, fill in zip(lines, colours):
        if len(line) == 1:
            x, y = line[0]
            out.append(f'<circle cx="{_num(x)}" cy="{_num(y)}" r="{_num(line_width / 2)}" '
                       f'fill={quoteattr(fill)} stroke="none"/>')
            continue
        d = "M" + " L".join(f"{_num(x)} {_num(y)}" for x, y in line)
        out.append(f'<path d="{d}" stroke={quoteattr(fill)}/>')
    return out


def svg_grid(sketches, cols: int | None = None, cell: int = 128,
             titles: Sequence[str] | None = None, colour_strokes: bool = False,
             colour: str = INK, line_width: float = 1.5, margin: float | None = None,
             title_size: int | None = None, titles_below: bool = False,
             cell_borders: bool = True, colours: Sequence[str] | None = None,
             caption: str | None = None, group_rows: int = 1) -> str:
    """An SVG document holding a grid of sketches (the same layout as `png.render_grid`)."""
    items = as_sketch_list(sketches)
    titles = check_titles(titles, len(items))
    colours = check_titles(colours, len(items), "colours")
    rows, cols = grid_shape(len(items), cols)
    margin = cell * 0.08 if margin is None else margin
    lay = grid_layout(rows, cols, cell, bool(titles), title_size, cell_borders, caption,
                      group_rows)
    font_px, band = lay.font_px, lay.band
    width, height = lay.width, lay.height
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" '
        f'fill="{GRID_LINE if cell_borders else BACKGROUND}"/>',
    ]
    if lay.caption_lines:
        parts.append(f'<rect x="0" y="0" width="{width}" height="{lay.caption_band}" '
                     f'fill="{BACKGROUND}"/>')
        for k, line in enumerate(lay.caption_lines):
            parts.append(f'<text x="4" y="{3 + k * (lay.caption_px + 4) + lay.caption_px}" '
                         f'font-family="sans-serif" font-size="{lay.caption_px}" fill="{TEXT}">'
                         f"{escape(line)}</text>")
    for i, sketch in enumerate(items):
        x, y = lay.origin(i)
        y_cell = y + (0 if titles_below else band)
        parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell + band}" fill="{BACKGROUND}"/>')
        parts.append(f'<g fill="none" stroke-width="{_num(line_width)}" stroke-linecap="round" '
                     f'stroke-linejoin="round">')
        parts += _cell_elements(sketch, x, y_cell, cell, margin, colour_strokes,
                                colours[i] if colours else colour, line_width)
        parts.append("</g>")
        if titles:
            ty = (y + cell + font_px + 1) if titles_below else (y + font_px + 1)
            parts.append(f'<text x="{_num(x + cell / 2)}" y="{ty}" font-family="sans-serif" '
                         f'font-size="{font_px}" fill="{TEXT}" text-anchor="middle">'
                         f"{escape(titles[i])}</text>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def svg_sketch(sketch, size: int = 256, colour_strokes: bool = False, colour: str = INK,
               line_width: float = 2.0, margin: float | None = None, title: str | None = None) -> str:
    """An SVG document holding one sketch on a `size x size` canvas."""
    return svg_grid([sketch], cols=1, cell=size, titles=None if title is None else [title],
                    colour_strokes=colour_strokes, colour=colour, line_width=line_width,
                    margin=margin, cell_borders=False)


def save_svg(text: str, path: str | os.PathLike) -> None:
    """Write an SVG document atomically (temp file in the same folder, then rename)."""
    atomic_write(path, lambda fh: fh.write(text), mode="w")
