"""`sketchlab render`: draw sketches from a file to SVG or PNG (and log CSVs to a loss-curve PNG)."""

from __future__ import annotations

import argparse
import os

import numpy as np

from sketchlab.data.npz import SPLITS, npz_keys
from sketchlab.data.sources import load_sketch_file
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.render import FORMATS

EPILOG = """\
INPUT is a sketchlab Sketches .npz (what `sketchlab sample` writes), a sketch-rnn .npz
(keys train/valid/test, read safely, never unpickled blindly), or a training log .csv
(drawn as loss curves, PNG only).

examples:
  sketchlab render samples.npz --out samples.png                 # the first 16, 4 x 4
  sketchlab render samples.npz --out one.svg --index 3 --size 512
  sketchlab render data/cat.npz --split test --n 48 --cols 8 --colour-strokes --out cats.png
  sketchlab render runs/sheep/log.csv --out curves.png --series loss,valid_loss
"""


def _titles(sketches: Sketches, indices: np.ndarray) -> list[str]:
    """Each sketch's category name (its index where the file names no category)."""
    return [sketches.category_name(int(i)) or f"#{i}" for i in indices]


def _load(path: str, split: str | None) -> tuple[Sketches, str | None]:
    """The sketches of INPUT and, for a sketch-rnn data file (one category per file, named by
    the file), a caption saying which file, split and category the grid shows."""
    sketches = load_sketch_file(path, split)
    if "points" in npz_keys(path):                    # a sketchlab Sketches file
        return sketches, None
    category = os.path.splitext(os.path.basename(path))[0]
    if sketches.category is None:
        sketches.category = np.zeros(len(sketches), np.int64)
        sketches.category_names = (category,)
    return sketches, f"{os.path.basename(path)}, {split or 'test'} split: {category}"


def run_render(args: argparse.Namespace) -> int:
    out = args.out
    ext = os.path.splitext(out)[1].lower()
    if ext not in FORMATS:
        raise ConfigError(f"--out {out}: unknown drawing format '{ext or '(none)'}'; use .png or .svg")
    if args.input.lower().endswith(".csv"):
        if ext != ".png":
            raise ConfigError("loss curves are drawn to PNG only; give --out FILE.png")
        if not os.path.exists(args.input):
            raise DataError(f"{args.input}: no such file")
        from sketchlab.render.png import plot_curves

        series = [s for s in args.series.split(",") if s] if args.series else None
        plot_curves(args.input, out, series=series, title=os.path.basename(args.input), logy=args.logy)
        print(f"wrote {out}")
        return 0

    sketches, caption = _load(args.input, args.split)
    if len(sketches) == 0:
        raise DataError(f"{args.input}: holds no sketches")
    if args.index is not None:
        if not -len(sketches) <= args.index < len(sketches):
            raise ConfigError(f"--index {args.index} is out of range: {args.input} holds "
                              f"{len(sketches)} sketches (0..{len(sketches) - 1})")
        indices = np.array([args.index % len(sketches)])
        size = args.size or 256
        cols = 1
    else:
        if args.n < 1:
            raise ConfigError(f"--n must be at least 1, got {args.n}")
        indices = np.arange(min(args.n, len(sketches)))
        size = args.size or 128
        cols = args.cols
    if size < 8:
        raise ConfigError(f"--size {size} is too small to draw into (at least 8 pixels)")
    chosen = sketches.select(indices)
    titles = _titles(sketches, indices) if args.titles else None
    line_width = args.line_width or max(1.0, size / 90)
    from sketchlab.render import save_grid

    if caption is not None and len(indices) > 1:
        caption += f" (sketches {indices[0]}-{indices[-1]} of {len(sketches)})"
    save_grid(chosen, out, cols=cols, cell=size, titles=titles, colour_strokes=args.colour_strokes,
              line_width=line_width, cell_borders=len(indices) > 1,
              caption=caption if len(indices) > 1 else None)
    print(f"wrote {out} ({len(indices)} sketch{'es' if len(indices) != 1 else ''})")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "render", help="draw sketches (or a training log) to SVG or PNG",
        description="Draw one sketch or a grid of sketches from an .npz file to SVG or PNG (a "
                    "grid of a sketch-rnn data file is captioned with its file, split and "
                    "category), or a training log's columns as curves.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="Sketches .npz, sketch-rnn .npz, or log .csv")
    p.add_argument("--out", required=True, help="output file, .svg or .png")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="split of a sketch-rnn npz (default: test)")
    p.add_argument("--index", type=int, default=None, help="draw only this sketch (0-based)")
    p.add_argument("--n", type=int, default=16, help="how many sketches in the grid (default 16)")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default: near-square)")
    p.add_argument("--size", type=int, default=None,
                   help="pixels per cell (default 128; 256 for a single --index sketch)")
    p.add_argument("--colour-strokes", "--color-strokes", dest="colour_strokes",
                   action="store_true", help="one palette colour per stroke, in drawing order")
    p.add_argument("--line-width", type=float, default=None, help="stroke width in pixels")
    p.add_argument("--titles", action="store_true",
                   help="write each sketch's category above its cell (its index if it has none)")
    p.add_argument("--series", default=None, help="CSV input: comma-separated columns to plot")
    p.add_argument("--logy", action="store_true", help="CSV input: log-scale y axis")
    p.set_defaults(func=run_render)
