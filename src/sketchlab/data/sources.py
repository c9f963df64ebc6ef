"""Where sketches come from: a folder of sketch-rnn npz files (one per category), the built-in
doodles, or one file; and the one parser of the category lists users type."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from sketchlab.data.npz import DEFAULT_MAX_POINTS, SPLITS, load_npz, npz_keys
from sketchlab.data.sketches import Sketches
from sketchlab.data.synthetic import make_doodle_splits
from sketchlab.errors import ConfigError, DataError

BUILTIN = "builtin"


def parse_categories(value: str | Sequence[str] | None, flag: str = "--categories") -> list[str]:
    """Category names from what a user typed: `"a,b"`, `"[a,b]"` or `"{'a','b'}"` (the original
    repos' hparams spelling), or a list of names.

    Quotes and blanks around names are stripped and blank entries dropped. `None` (not given)
    gives `[]`; a value that names no category, or names one twice, is a ConfigError naming
    `flag` (the option or argument it came from).
    """
    if value is None:
        return []
    if isinstance(value, str):
        items = value.strip().strip("[]{}").split(",")
    else:
        items = list(value)
    cats = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{flag}: category names must be strings, got {item!r}")
        name = item.strip().strip("'\"").strip()
        if name:
            cats.append(name)
    if not cats:
        raise ConfigError(f"{flag} {value!r} names no category")
    dupes = sorted({c for c in cats if cats.count(c) > 1})
    if dupes:
        raise ConfigError(f"{flag}: categor{'y' if len(dupes) == 1 else 'ies'} listed twice: "
                          f"{', '.join(dupes)}")
    return cats


def category_filename(category: str) -> str:
    """The file a category's sketches are stored in (`cat.npz`; a path separator becomes `_`)."""
    return category.replace(os.sep, "_").replace("/", "_") + ".npz"


def expand_paths(sources: Sequence[str | os.PathLike], suffixes: tuple[str, ...],
                 what: str) -> list[Path]:
    """Files given directly, or the `suffixes` files of folders (sorted); clear errors otherwise."""
    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.name.endswith(suffixes) and q.is_file())
            if not found:
                raise DataError(f"{p}: folder holds no {what} files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return files


def available_categories(data_dir: str | os.PathLike) -> list[str]:
    """The categories a folder holds: the stems of its `.npz` files."""
    return sorted(p.name[:-4] for p in Path(data_dir).glob("*.npz"))


# Up to this many categories are listed in full in a message; beyond, the closest names.
LIST_IN_FULL = 12


def describe_categories(have: Sequence[str], wanted: Sequence[str] = ()) -> str:
    """The categories of a folder for a message: all of them when few, else how many and the
    names closest to the `wanted` ones (a folder of 344 QuickDraw categories is no message)."""
    have = list(have)
    if not have:
        return "no categories (no .npz files)"
    if len(have) <= LIST_IN_FULL:
        return f"{len(have)} categor{'y' if len(have) == 1 else 'ies'}: {', '.join(have)}"
    lowered = {h.lower(): h for h in have}
    close: list[str] = []
    for w in wanted:
        for m in difflib.get_close_matches(w.lower(), list(lowered), n=4, cutoff=0.6):
            if lowered[m] not in close:
                close.append(lowered[m])
        close += [h for h in have if w.lower() in h.lower() and h not in close][:3]
    hint = (f"; closest to {', '.join(repr(w) for w in wanted)}: {', '.join(close[:8])}"
            if close else f"; none close to {', '.join(repr(w) for w in wanted)}" if wanted else
            f", e.g. {', '.join(have[:LIST_IN_FULL])}")
    return f"{len(have)} categories{hint} (`sketchlab data info DIR` lists them all)"


def load_categories(data_dir: str | os.PathLike, categories: str | Sequence[str],
                    splits: Sequence[str] = SPLITS, limit_per_category: int | None = None, *,
                    max_points: int = DEFAULT_MAX_POINTS, on_bad: str = "raise",
                    dropped: dict | None = None) -> dict[str, Sketches]:
    """Load `<data_dir>/<cat>.npz` for every category and concatenate each split in category order.

    As the seeds' `load_data`: each split of each category is sliced to its first
    `limit_per_category` sketches (`num_per_category`), then categories are stacked. The result's
    `category` holds each sketch's index into `categories` (`category_names`). `dropped`, when
    given, receives `{category: {split: {reason: count}}}` (with `on_bad="drop"`).
    """
    data_dir = Path(data_dir)
    cats = parse_categories(categories, flag="categories")
    if not cats:
        raise ConfigError("no categories given")
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder does not exist")
    missing = [c for c in cats if not (data_dir / f"{c}.npz").is_file()]
    if missing:
        have = available_categories(data_dir)
        names = ", ".join(c + ".npz" for c in missing)
        raise DataError(f"{data_dir}: no {names}; the folder holds "
                        f"{describe_categories(have, missing)}. Import or download them with "
                        f"`sketchlab data import|download`.")
    if limit_per_category is not None and limit_per_category < 1:
        raise ConfigError(f"limit_per_category must be >= 1, got {limit_per_category}")
    parts: dict[str, list[Sketches]] = {s: [] for s in splits}
    names = tuple(cats)
    for index, cat in enumerate(cats):
        counts: dict = {}
        loaded = load_npz(data_dir / f"{cat}.npz", splits, max_points=max_points, on_bad=on_bad,
                          dropped=counts)
        if dropped is not None and counts:
            dropped[cat] = counts
        for split, sk in loaded.items():
            if limit_per_category is not None and len(sk) > limit_per_category:
                end = sk.offsets[limit_per_category]
                sk = Sketches(sk.points[:end], sk.offsets[:limit_per_category + 1])
            sk.category = np.full(len(sk), index, dtype=np.int64)
            sk.category_names = names
            parts[split].append(sk)
    return {split: Sketches.concat(p) for split, p in parts.items()}


def load_splits(data_dir: str | Path | None, categories: list[str] | None = None, *,
                limit_per_category: int | None = None, seed: int = 0,
                builtin_per_category: int = 1000) -> dict[str, Sketches]:
    """Raw (un-normalised) train/valid/test splits.

    `data_dir` None or "builtin" gives the built-in procedural doodles (no files needed; all five
    categories when `categories` is empty); otherwise each category is read from
    `<data_dir>/<category>.npz` with the safe loader.
    """
    if data_dir is None or str(data_dir) == BUILTIN:
        n_train = limit_per_category or builtin_per_category
        n_eval = max(10, n_train // 10)
        # make_doodle_splits refuses unknown names and lists the built-in ones
        return make_doodle_splits(n_train=n_train, n_valid=n_eval, n_test=n_eval,
                                  categories=categories or None, seed=seed)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir}: no such folder")
    if not categories:
        found = available_categories(data_dir)
        raise ConfigError(f"--categories is required with --data-dir; {data_dir} holds "
                          f"{describe_categories(found)}")
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
