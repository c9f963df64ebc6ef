"""Where sketches come from: a folder of sketch-rnn npz files, the built-in doodles, or one file."""

from __future__ import annotations

import os
from pathlib import Path

from sketchlab.data.quickdraw import SPLITS, load_categories, load_npz, npz_keys
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError

BUILTIN = "builtin"


def parse_categories(text: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """`"a,b"` or `"[a,b]"` or a list -> `["a", "b"]` (blank entries dropped)."""
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = text.strip().strip("[]{}").split(",")
    return [c.strip().strip("'\"") for c in items if c.strip().strip("'\"")]


def load_splits(data_dir: str | Path | None, categories: list[str] | None = None, *,
                limit_per_category: int | None = None, seed: int = 0,
                builtin_per_category: int = 1000) -> dict[str, Sketches]:
    """Raw (un-normalised) train/valid/test splits.

    `data_dir` None or "builtin" gives the built-in procedural doodles (no files needed);
    otherwise each category is read from `<data_dir>/<category>.npz` with the safe loader.
    """
    if data_dir is None or str(data_dir) == BUILTIN:
        from sketchlab.data.synthetic import CATEGORIES, make_doodle_splits

        cats = categories or list(CATEGORIES)
        unknown = [c for c in cats if c not in CATEGORIES]
        if unknown:
            raise ConfigError(f"unknown built-in doodle categories {unknown}; "
                              f"available: {', '.join(CATEGORIES)}")
        n_train = limit_per_category or builtin_per_category
        n_eval = max(10, n_train // 10)
        return make_doodle_splits(n_train=n_train, n_valid=n_eval, n_test=n_eval,
                                  categories=cats, seed=seed)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir}: no such folder")
    if not categories:
        found = sorted(p.stem for p in data_dir.glob("*.npz"))
        raise ConfigError(f"--categories is required with --data-dir; {data_dir} holds: "
                          f"{', '.join(found) if found else 'no .npz files'}")
    return load_categories(data_dir, categories, limit_per_category=limit_per_category)


def load_sketch_file(path: str | os.PathLike, split: str | None = None) -> Sketches:
    """Sketches in raw data units from a sketchlab Sketches npz (what `sketchlab sample` writes)
    or from one split (default `test`) of a sketch-rnn npz. Nothing is unpickled blindly."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give one .npz file")
    keys = npz_keys(path)
    if "points" in keys and "offsets" in keys:
        if split is not None:
            raise ConfigError(f"{path}: a sketchlab Sketches file has no splits; drop --split")
        return Sketches.load(path).in_units(1.0)
    if not any(k in keys for k in SPLITS):
        raise DataError(f"{path}: neither a sketchlab Sketches file (points/offsets) nor a "
                        f"sketch-rnn npz (train/valid/test); it holds {keys}")
    split = split or "test"
    if split not in keys:
        raise DataError(f"{path}: no split '{split}'; the file holds {keys}")
    return load_npz(path, (split,))[split]
