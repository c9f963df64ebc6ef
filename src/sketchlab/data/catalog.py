"""What a data file holds (`sketchlab data info`): counts, length percentiles, strokes per
sketch and the train split's scale factor."""

from __future__ import annotations

import json
import os

import numpy as np

from sketchlab.data.npz import DEFAULT_MAX_POINTS, SPLITS, load_npz, npz_keys, read_npz_array
from sketchlab.data.sketches import Sketches
from sketchlab.data.strokes import clip_offsets, scale_factor
from sketchlab.errors import DataError


def sketch_stats(sketches: Sketches) -> dict:
    """Counts, length percentiles and strokes per sketch of one split."""
    n = len(sketches)
    out: dict = {"count": n}
    if n == 0:
        return out
    lengths = sketches.lengths
    owner = np.repeat(np.arange(n), lengths)
    lifts = np.bincount(owner[sketches.points[:, 2] > 0.5], minlength=n)
    last = sketches.points[sketches.offsets[1:] - 1, 2] if len(sketches.points) else np.ones(n)
    strokes = lifts + (last < 0.5)  # a final stroke without a pen lift still counts
    pct = lambda v, q: round(float(np.percentile(v, q)), 1)  # noqa: E731
    out["length"] = {"mean": round(float(lengths.mean()), 1), "p50": pct(lengths, 50),
                     "p90": pct(lengths, 90), "p99": pct(lengths, 99), "max": int(lengths.max())}
    out["strokes"] = {"mean": round(float(strokes.mean()), 2), "p50": pct(strokes, 50),
                      "max": int(strokes.max())}
    return out


def describe_npz(path: str | os.PathLike, *, max_points: int = DEFAULT_MAX_POINTS,
                 on_bad: str = "raise") -> dict:
    """What `sketchlab data info` shows for one file: per-split stats and the train scale factor.

    The scale factor is the seeds' one: std of the pooled dx, dy of the train split after clipping
    to +-1000. A sketchlab `Sketches` file (points/offsets, e.g. samples) is shown as one split.
    """
    keys = npz_keys(path)
    if "points" in keys and "offsets" in keys:
        data, kind = {"all": Sketches.load(path)}, "sketchlab Sketches"
    else:
        splits = [s for s in SPLITS if s in keys]
        if not splits:
            raise DataError(f"{path}: neither a sketch-rnn npz (train/valid/test) nor a sketchlab "
                            f"Sketches file (points/offsets); it holds {keys}")
        dropped: dict = {}
        data = load_npz(path, splits, max_points=max_points, on_bad=on_bad, dropped=dropped)
        kind = "sketch-rnn"
    info: dict = {"path": os.fspath(path), "format": kind,
                  "splits": {s: sketch_stats(sk) for s, sk in data.items()}}
    if kind == "sketch-rnn" and dropped:
        info["dropped"] = dropped
    ref = data.get("train", data.get("all"))
    if ref is not None and len(ref):
        try:
            info["scale_factor"] = round(scale_factor([clip_offsets(ref.points)]), 4)
        except DataError:
            info["scale_factor"] = None
    if "sketchlab_import" in keys:
        info["provenance"] = _provenance(path)
    return info


def _provenance(path) -> dict:
    """The `sketchlab_import` JSON string an imported file carries."""
    arr = read_npz_array(path, "sketchlab_import")
    if arr.dtype.kind != "U" or arr.shape != ():
        raise DataError(f"{path} [sketchlab_import]: a {arr.dtype} array of shape {arr.shape}, "
                        f"not the import's JSON description")
    try:
        prov = json.loads(str(arr))
    except RecursionError:
        raise DataError(f"{path} [sketchlab_import]: JSON nested too deeply") from None
    except ValueError as e:
        raise DataError(f"{path} [sketchlab_import]: not JSON ({e})") from None
    if not isinstance(prov, dict):
        raise DataError(f"{path} [sketchlab_import]: not a JSON object")
    return prov
