"""PNG drawings with PIL: one sketch, grids with titles, interpolation strips, loss curves.

Lines are anti-aliased by drawing each cell at `SUPERSAMPLE` times the size and averaging down
(`Image.reduce`, a box filter), one cell at a time so a large grid never needs a huge canvas.
Colours are any PIL colour string ("#1f77b4", "black").
"""

from __future__ import annotations

import csv
import functools
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sketchlab.fileio import atomic_write
from sketchlab.errors import ConfigError, DataError
from sketchlab.render.layout import (INK, PALETTE, as_sketch_list, check_titles,
                                     fit_polylines, grid_layout, grid_shape, stroke_colours)

SUPERSAMPLE = 4
BACKGROUND = "white"
GRID_LINE = "#dddddd"
TEXT = "#333333"


# --------------------------------------------------------------------------------------------
# Sketches
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def text_font(size: int) -> ImageFont.ImageFont:
    """PIL's bundled scalable font (Pillow >= 10.1); the old bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> float:
    return draw.textlength(text, font=font)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "…", font) > width:
        text = text[:-1]
    return text + "…"


def _draw_cell(sketch: np.ndarray, size: int, colours: Sequence[str] | None, colour: str,
               colour_strokes: bool, line_width: float, margin: float,
               background: str, upto: int | None = None) -> Image.Image:
    """One anti-aliased `size x size` cell holding the sketch fitted inside `margin` (its first
    `upto` points only, at their places in the whole sketch, when given)."""
    ss = SUPERSAMPLE
    img = Image.new("RGB", (size * ss, size * ss), background)
    draw = ImageDraw.Draw(img)
    lines = fit_polylines(sketch, 0, 0, size * ss, size * ss, margin * ss, upto)
    cols = list(colours) if colours is not None else stroke_colours(len(lines), colour_strokes, colour)
    width = max(1, int(round(line_width * ss)))
    radius = width / 2
    for i, line in enumerate(lines):
        fill = cols[i % len(cols)]
        pts = [tuple(p) for p in line.tolist()]
        if len(pts) > 1:
            draw.line(pts, fill=fill, width=width, joint="curve")
        # round caps (PIL's are square), and single-point strokes show as dots
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
    return img.reduce(ss)


# The largest picture drawn (RGB, ~200 MB in memory): a mistyped --size must not take the machine.
MAX_PIXELS = 64_000_000


def check_image_size(width: int, height: int, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise ConfigError(f"{what} would be {width} x {height} pixels, over the limit of "
                          f"{MAX_PIXELS // 1_000_000} megapixels; draw fewer sketches or use a "
                          f"smaller --size")


def render_grid(sketches, cols: int | None = None, cell: int = 128,
                titles: Sequence[str] | None = None, colour_strokes: bool = False,
                colour: str = INK, line_width: float = 1.5, margin: float | None = None,
                title_size: int | None = None, titles_below: bool = False,
                background: str = BACKGROUND, cell_borders: bool = True,
                colours: Sequence[str] | None = None, caption: str | None = None,
                group_rows: int = 1, upto: Sequence[int] | None = None) -> Image.Image:
    """A grid of sketches, each fitted to a `cell x cell` box with `margin` pixels around it.

    `titles` (one per sketch) are written above each cell (below with `titles_below`);
    `colour_strokes` colours strokes in drawing order with the qualitative `PALETTE`,
    otherwise every stroke is `colours[i]` (one per sketch) or `colour`. `line_width` is in
    output pixels. `caption` is a line of text above the grid; `group_rows` > 1 leaves a wider
    gap after every that many rows (an input above its output stays one block). `upto` (one
    count per sketch) draws only each sketch's first points, at their final scale (animation
    frames).
    """
    items = as_sketch_list(sketches)
    titles = check_titles(titles, len(items))
    colours = check_titles(colours, len(items), "colours")
    rows, cols = grid_shape(len(items), cols)
    if not items:
        return Image.new("RGB", (cell, cell), background)
    margin = cell * 0.08 if margin is None else margin
    lay = grid_layout(rows, cols, cell, bool(titles), title_size, cell_borders, caption,
                      group_rows)
    font = text_font(lay.font_px)
    check_image_size(lay.width, lay.height, f"{len(items)} sketch{'es' if len(items) != 1 else ''} "
                                            f"at {cell} px per cell")
    canvas = Image.new("RGB", (lay.width, lay.height), GRID_LINE if cell_borders else background)
    draw = ImageDraw.Draw(canvas)
    if lay.caption_lines:
        draw.rectangle((0, 0, lay.width - 1, lay.caption_band - 1), fill=background)
        cap_font = text_font(lay.caption_px)
        for k, line in enumerate(lay.caption_lines):
            text = _fit_text(draw, line, cap_font, lay.width - 8)
            draw.text((4, 3 + k * (lay.caption_px + 4)), text, fill=TEXT, font=cap_font)
    for i, sketch in enumerate(items):
        x, y = lay.origin(i)
        band = lay.band
        y_cell = y + (0 if titles_below else band)
        draw.rectangle((x, y, x + cell - 1, y + cell + band - 1), fill=background)
        canvas.paste(_draw_cell(sketch, cell, None, colours[i] if colours else colour,
                                colour_strokes, line_width, margin, background,
                                None if upto is None else upto[i]), (x, y_cell))
        if titles:
            text = _fit_text(draw, titles[i], font, cell - 4)
            tw = _text_width(draw, text, font)
            ty = (y + cell + 2) if titles_below else (y + 2)
            draw.text((x + (cell - tw) / 2, ty), text, fill=TEXT, font=font)
    return canvas


def render_sketch(sketch, size: int = 256, colour_strokes: bool = False, colour: str = INK,
                  line_width: float = 2.0, margin: float | None = None,
                  title: str | None = None) -> Image.Image:
    """One sketch on a `size x size` canvas (plus a title band when `title` is given)."""
    return render_grid([sketch], cols=1, cell=size, titles=None if title is None else [title],
                       colour_strokes=colour_strokes, colour=colour, line_width=line_width,
                       margin=margin, cell_borders=False)


def render_strip(sketches, captions: Sequence[str] | None = None, cell: int = 128,
                 **kwargs) -> Image.Image:
    """A single row of sketches (an interpolation, a denoising trajectory) with optional
    captions under each cell."""
    items = as_sketch_list(sketches)
    return render_grid(items, cols=max(len(items), 1), cell=cell, titles=captions,
                       titles_below=True, **kwargs)


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Write `image` as PNG atomically (temp file in the same folder, then rename)."""
    atomic_write(path, lambda fh: image.save(fh, format="PNG"))


# --------------------------------------------------------------------------------------------
# Loss curves
# --------------------------------------------------------------------------------------------


def read_curves(csv_path: str | os.PathLike, x: str = "step",
                series: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read a log CSV: column `x` against every other numeric column (or those in `series`).

    Returns `(xs, ys)` dicts keyed by series name, holding only the rows where that series has a
    finite number (validation losses are logged less often than training losses).
    """
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise DataError(f"{csv_path}: cannot read the log ({e.strerror or e})") from e
    except (UnicodeDecodeError, csv.Error) as e:   # a binary file, NUL bytes, a huge field
        raise DataError(f"{csv_path}: not a CSV text file ({type(e).__name__}: "
                        f"{str(e)[:120]}); give a training log such as RUN/log.csv") from None
    if not rows:
        raise DataError(f"{csv_path}: no rows to plot")
    columns = list(rows[0].keys())
    if x not in columns:
        raise DataError(f"{csv_path}: no '{x}' column to plot against (columns: {columns})")
    wanted = list(series) if series else [c for c in columns if c != x]
    missing = [s for s in wanted if s not in columns]
    if missing:
        raise DataError(f"{csv_path}: no column(s) {missing} (columns: {columns})")

    def number(v):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return math.nan
        return f

    xs_all = np.array([number(r[x]) for r in rows])
    xs, ys = {}, {}
    for name in wanted:
        y = np.array([number(r[name]) for r in rows])
        ok = np.isfinite(y) & np.isfinite(xs_all)
        if ok.any():
            xs[name], ys[name] = xs_all[ok], y[ok]
    if not ys:
        raise DataError(f"{csv_path}: none of the columns {wanted} holds numbers")
    return xs, ys


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(0.0 if abs(t) < 1e-12 * step else t)
        t += step
    return ticks


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.6g}"


def plot_curves(csv_path: str | os.PathLike, out_path: str | os.PathLike | None = None,
                series: Sequence[str] | None = None, x: str = "step", title: str | None = None,
                logy: bool = False, size: tuple[int, int] = (800, 480)) -> Image.Image:
    """A line plot of a log CSV's columns against `x`, drawn with PIL (no matplotlib needed).

    Axes with round ticks, a light grid, one palette colour per series and a legend. `logy`
    plots log10 of the values (the series must be positive). Saved to `out_path` when given.
    """
    xs, ys = read_curves(csv_path, x, series)
    if logy:
        bad = [n for n, y in ys.items() if np.any(y <= 0)]
        if bad:
            raise DataError(f"{csv_path}: cannot use a log scale, series {bad} hold values <= 0")
        ys = {n: np.log10(y) for n, y in ys.items()}
    w, h = size
    ss = 2  # lines drawn at 2x, then averaged down
    img = Image.new("RGB", (w * ss, h * ss), BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = text_font(13 * ss)
    small = text_font(11 * ss)
    left, right, top, bottom = 70 * ss, 20 * ss, (36 if title else 16) * ss, 48 * ss
    x_lo = min(v.min() for v in xs.values())
    x_hi = max(v.max() for v in xs.values())
    y_lo = min(v.min() for v in ys.values())
    y_hi = max(v.max() for v in ys.values())
    if x_hi <= x_lo:
        x_hi = x_lo + 1
    if y_hi <= y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = 0.05 * (y_hi - y_lo)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_ticks = [t for t in _nice_ticks(x_lo, x_hi, 6) if x_lo <= t <= x_hi]
    y_ticks = [t for t in _nice_ticks(y_lo, y_hi, 7) if y_lo <= t <= y_hi]
    pw, ph = w * ss - left - right, h * ss - top - bottom

    def px(v):
        return left + (v - x_lo) / (x_hi - x_lo) * pw

    def py(v):
        return top + (1 - (v - y_lo) / (y_hi - y_lo)) * ph

    for t in y_ticks:
        draw.line([(left, py(t)), (left + pw, py(t))], fill="#eeeeee", width=ss)
        label = _tick_label(10 ** t) if logy else _tick_label(t)
        tw = draw.textlength(label, font=small)
        draw.text((left - tw - 6 * ss, py(t) - 7 * ss), label, fill=TEXT, font=small)
    for t in x_ticks:
        draw.line([(px(t), top), (px(t), top + ph)], fill="#eeeeee", width=ss)
        label = _tick_label(t)
        tw = draw.textlength(label, font=small)
        draw.text((px(t) - tw / 2, top + ph + 6 * ss), label, fill=TEXT, font=small)
    draw.rectangle((left, top, left + pw, top + ph), outline="#888888", width=ss)
    for i, name in enumerate(ys):
        pts = list(zip(px(xs[name]).tolist(), py(ys[name]).tolist()))
        fill = PALETTE[i % len(PALETTE)]
        if len(pts) > 1:
            draw.line(pts, fill=fill, width=2 * ss, joint="curve")
        if len(pts) <= 30:  # sparse series (validation) get markers
            for cx, cy in pts:
                draw.ellipse((cx - 3 * ss, cy - 3 * ss, cx + 3 * ss, cy + 3 * ss), fill=fill)
    # legend, top right inside the plot
    names = list(ys)
    lw = max(draw.textlength(n, font=small) for n in names) + 34 * ss
    lx, ly = left + pw - lw - 8 * ss, top + 8 * ss
    draw.rectangle((lx, ly, lx + lw, ly + len(names) * 18 * ss + 6 * ss), fill=BACKGROUND,
                   outline="#cccccc", width=ss)
    for i, name in enumerate(names):
        yy = ly + 6 * ss + i * 18 * ss + 7 * ss
        draw.line([(lx + 6 * ss, yy), (lx + 24 * ss, yy)], fill=PALETTE[i % len(PALETTE)], width=3 * ss)
        draw.text((lx + 28 * ss, yy - 7 * ss), name, fill=TEXT, font=small)
    x_label = x
    draw.text((left + pw / 2 - draw.textlength(x_label, font=font) / 2, top + ph + 24 * ss),
              x_label, fill=TEXT, font=font)
    y_label = "value (log scale)" if logy else "value"
    label_img = Image.new("RGB", (int(draw.textlength(y_label, font=font)) + 4, 18 * ss), BACKGROUND)
    ImageDraw.Draw(label_img).text((2, 0), y_label, fill=TEXT, font=font)
    label_img = label_img.rotate(90, expand=True)
    img.paste(label_img, (4 * ss, int(top + ph / 2 - label_img.height / 2)))
    if title:
        draw.text((left + pw / 2 - draw.textlength(title, font=font) / 2, 10 * ss), title,
                  fill=TEXT, font=font)
    out = img.reduce(ss)
    if out_path is not None:
        save_png(out, out_path)
    return out
