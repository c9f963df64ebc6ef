"""A tiny PIL stand-in for `sketchlab.data.raster`, for tests (and the evaluation benchmark) only.

`install()` registers it as `sketchlab.data.raster` when the real module is absent, so the same
tests run on the real rasterizer as soon as it exists. It follows the fixed interface (origin
inside the bounding box, fit into size - 2 * margin, shorter axis centred, the first offset is a
pen-up move, paper 255 and ink 0) but does not anti-alias.
"""

import sys
import types

import numpy as np
from PIL import Image, ImageDraw


def rasterize(sketches, size=48, margin=1.5, line_width=1.0):
    out = np.full((len(sketches), size, size), 255, np.uint8)
    for k, s in enumerate(sketches):
        s = np.asarray(s, np.float64).reshape(-1, 3)
        if len(s) == 0:
            continue
        xy = np.cumsum(s[:, :2], 0)
        lo = np.minimum(xy.min(0), 0.0)
        hi = np.maximum(xy.max(0), 0.0)
        extent = hi - lo
        norm = max(extent.max(), 1e-5)
        scale = (size - 2 * margin) / norm
        border = (norm - extent) / 2
        pts = (xy - lo + border) * scale + margin
        img = Image.new("L", (size, size), 255)
        draw = ImageDraw.Draw(img)
        for i in range(1, len(s)):
            if s[i - 1, 2] < 0.5:
                draw.line([tuple(pts[i - 1]), tuple(pts[i])], fill=0,
                          width=max(1, int(round(line_width))))
        out[k] = np.asarray(img)
    return out


def rasterize_torch(strokes, lengths, size=48, margin=1.5, line_width=1.0):
    import torch

    arr = strokes.detach().cpu().numpy()
    sk = [arr[i, :int(n)] for i, n in enumerate(lengths.cpu().tolist())]
    grey = rasterize(sk, size, margin, line_width)
    return torch.from_numpy(grey).to(strokes.device, torch.float32)


def install() -> bool:
    """Make `sketchlab.data.raster` importable; True if the stand-in was installed."""
    try:
        import sketchlab.data.raster  # noqa: F401
        return False
    except ImportError:
        mod = types.ModuleType("sketchlab.data.raster")
        mod.rasterize = rasterize
        mod.rasterize_torch = rasterize_torch
        mod.__doc__ = "PIL stand-in (tests/raster_standin.py)"
        sys.modules["sketchlab.data.raster"] = mod
        import sketchlab.data

        sketchlab.data.raster = mod
        return True
