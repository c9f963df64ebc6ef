"""Data preparation for the trainer: the splits a model trains on, in its units.

`prepare_data` filters the raw splits with the model's rules, computes the scale factor on the
training split (the seeds' normaliser), normalises every split by it and lets the model fill in
data-dependent settings. `category_labels` gives each sketch's category as an index into the
run's categories (the training split's), which the trainer puts in every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sketchlab.data import strokes as S
from sketchlab.data.sketches import Sketches
from sketchlab.errors import DataError


@dataclass
class PreparedData:
    splits: dict[str, Sketches]       # normalised by scale_factor
    scale_factor: float
    categories: tuple[str, ...]
    config: object                    # the model config with data-dependent fields filled in


def prepare_data(model_cls, config, raw: dict[str, Sketches]) -> PreparedData:
    """Filter, compute the scale factor on train, normalise every split, adapt the config."""
    for split in ("train", "valid"):
        if split not in raw or len(raw[split]) == 0:
            raise DataError(f"the {split!r} split is missing or empty")
    filtered = {k: model_cls.filter_sketches(config, v) for k, v in raw.items()}
    for split, sk in filtered.items():
        if len(sk) == 0:
            raise DataError(f"no {split} sketch is left after filtering (max_seq_len="
                            f"{getattr(config, 'max_seq_len', None)}); raise max_seq_len")
        S.check_finite(sk.points, f"{split} split")
    factor = float(model_cls.compute_scale_factor(config, filtered["train"]))
    splits = {k: sk.in_units(factor) for k, sk in filtered.items()}
    config = model_cls.adapt_config(config, splits)
    return PreparedData(splits, factor, tuple(filtered["train"].category_names), config)


def category_labels(sketches: Sketches, categories: tuple[str, ...]) -> np.ndarray | None:
    """Each sketch's category as an index into `categories` (the run's, from the training split),
    matched by name; None when the sketches carry no categories."""
    if sketches.category is None:
        return None
    names = tuple(sketches.category_names)
    if not names or names == tuple(categories):
        return np.asarray(sketches.category, np.int64)
    index = {c: i for i, c in enumerate(categories)}
    used = [names[int(c)] for c in np.unique(sketches.category)]
    unknown = [c for c in used if c not in index]
    if unknown:
        raise DataError(f"categories {unknown} are not among the training split's "
                        f"({', '.join(categories)})")
    lookup = np.array([index.get(n, -1) for n in names], np.int64)
    return lookup[sketches.category]
