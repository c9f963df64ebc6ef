"""Sketches being drawn, point by point, as an animated GIF (PIL): every sketch of a grid is
drawn at the same pace (a sketch's share of its points per frame), each at its final scale, and
the finished grid holds for a moment before the loop restarts."""

from __future__ import annotations

import io
import math
import os
from typing import Sequence

import numpy as np

from sketchlab.errors import ConfigError
from sketchlab.fileio import atomic_write_bytes
from sketchlab.render.layout import as_sketch_list, grid_shape
from sketchlab.render.png import check_image_size, render_grid

MAX_FRAMES = 120


def drawing_frames(sketches, frames: int = 30, **grid_kwargs) -> list:
    """`frames` PIL images of the grid: frame k shows each sketch's first ceil(k/frames * n)
    points (the last frame is the whole grid). Keywords go to `render_grid`."""
    if not 2 <= frames <= MAX_FRAMES:
        raise ConfigError(f"frames={frames}: choose 2..{MAX_FRAMES}")
    items = as_sketch_list(sketches)
    lengths = np.array([len(s) for s in items])
    rows, cols = grid_shape(len(items), grid_kwargs.get("cols"))
    cell = grid_kwargs.get("cell", 128)
    check_image_size(cols * cell * frames, rows * cell,
                     f"an animation of {frames} frames of {len(items)} sketches")
    out = []
    for k in range(1, frames + 1):
        upto = [int(math.ceil(k / frames * n)) for n in lengths]
        out.append(render_grid(items, upto=upto, **grid_kwargs))
    return out


def save_drawing_gif(sketches, path: str | os.PathLike, frames: int = 30, fps: float = 15.0,
                     hold_seconds: float = 1.5, **grid_kwargs) -> None:
    """Write the drawing animation of `sketches` (a grid; `render_grid` keywords) as a looping
    GIF, atomically."""
    if not 1 <= fps <= 50:
        raise ConfigError(f"fps={fps}: choose 1..50")
    images = drawing_frames(sketches, frames, **grid_kwargs)
    step_ms = int(round(1000 / fps))
    durations = [step_ms] * (len(images) - 1) + [int(1000 * hold_seconds)]
    palette = [im.convert("P", palette=1, colors=64) for im in images]   # ADAPTIVE
    buf = io.BytesIO()
    palette[0].save(buf, format="GIF", save_all=True, append_images=palette[1:],
                    duration=durations, loop=0, optimize=True, disposal=1)
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["drawing_frames", "save_drawing_gif"]
