"""`Sketches`: a batch of variable-length stroke-3 sketches, stored pickle-free.

The one container every layer passes around: the data readers return it, the models take and
return it (in their normalised units), `sketchlab sample` writes it (in raw units) and the
renderers draw it. A notebook builds one from strokes (`from_strokes`) or QuickDraw ndjson
(`from_ndjson`) and gets them back with `to_strokes` / `to_ndjson`.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from sketchlab.data.safezip import npy_members, open_zip, read_plain_array
from sketchlab.data.strokes import (BadDrawing, check_finite, from_polylines, json_values,
                                    parse_drawing, to_polylines)
from sketchlab.errors import DataError
from sketchlab.fileio import atomic_open, atomic_savez


@dataclass
class Sketches:
    """A batch of variable-length stroke-3 sketches, stored pickle-free.

    `points` holds every sketch's rows back to back; sketch i is `points[offsets[i]:offsets[i+1]]`.
    Optional per-sketch fields: `category` (index into `category_names`), `z` (latent code),
    `component` (latent mixture component). It round-trips through `.npz` without pickle.
    """

    points: np.ndarray
    offsets: np.ndarray
    category: np.ndarray | None = None
    category_names: tuple[str, ...] = ()
    z: np.ndarray | None = None
    component: np.ndarray | None = None
    # Offsets are in units of 1/scale_factor of the raw data when normalised; 1.0 means raw.
    scale_factor: float = 1.0

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float32).reshape(-1, 3)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64).reshape(-1)
        if self.offsets.size == 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.points):
            raise DataError("Sketches: offsets must start at 0 and end at len(points)")
        if np.any(np.diff(self.offsets) < 0):
            raise DataError("Sketches: offsets must be non-decreasing")
        n = len(self.offsets) - 1
        if self.category is not None:
            self.category = np.asarray(self.category, dtype=np.int64).reshape(n)
        if self.component is not None:
            self.component = np.asarray(self.component, dtype=np.int64).reshape(n)
        if self.z is not None:
            z = np.asarray(self.z, dtype=np.float32)
            # (n, width); the width is kept explicitly so an empty batch keeps its code size
            width = z.shape[-1] if z.ndim > 1 else (z.size // n if n else 0)
            self.z = z.reshape(n, width)
        self.category_names = tuple(str(c) for c in self.category_names)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_list(cls, sketches: Iterable[np.ndarray], category=None, **kw) -> "Sketches":
        arrays = [np.asarray(s, dtype=np.float32).reshape(-1, 3) for s in sketches]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        points = np.concatenate(arrays, 0) if arrays else np.zeros((0, 3), np.float32)
        if category is not None and np.isscalar(category):
            category = np.full(len(arrays), int(category), dtype=np.int64)
        return cls(points, offsets, category=category, **kw)

    @classmethod
    def concat(cls, parts: Sequence["Sketches"]) -> "Sketches":
        """Concatenate batches; category indices are remapped onto the union of names."""
        if not parts:
            return cls.from_list([])
        names: list[str] = []
        for p in parts:
            for c in p.category_names:
                if c not in names:
                    names.append(c)
        points = np.concatenate([p.points for p in parts], 0)
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += len(p.points)
        have = lambda attr: all(getattr(p, attr) is not None for p in parts)  # noqa: E731
        category = None
        if have("category"):
            category = np.concatenate(
                [np.array([names.index(p.category_names[c]) if p.category_names else c
                           for c in p.category], dtype=np.int64) for p in parts])
        z = np.concatenate([p.z for p in parts], 0) if have("z") else None
        comp = np.concatenate([p.component for p in parts]) if have("component") else None
        scales = {p.scale_factor for p in parts}
        if len(scales) > 1:
            raise DataError(f"Sketches.concat: batches have different scale factors {sorted(scales)}")
        return cls(points, np.concatenate(offsets), category=category, category_names=tuple(names),
                   z=z, component=comp, scale_factor=scales.pop())

    # ---- strokes and QuickDraw ndjson -------------------------------------------------------
    @classmethod
    def from_strokes(cls, strokes, category: str | Sequence[str] | None = None) -> "Sketches":
        """Sketches from absolute-coordinate strokes, as QuickDraw's simplified ndjson stores a
        drawing: `[[xs, ys], [xs, ys], ...]` per sketch, given as a list of such sketches or as
        one sketch's list of strokes. xs and ys may be lists, tuples or arrays.

        `category`: one name for every sketch, or one name per sketch. The result is in raw
        units (`scale_factor` 1); each sketch's first offset is its first point's position, so
        `to_strokes` gives the same coordinates back (exactly for whole numbers below 2**24,
        otherwise to float32 precision). Raises a DataError naming the sketch (and stroke) for
        an empty sketch, xs and ys of different lengths, non-numeric or NaN/inf coordinates, or
        a stroke that is not `[xs, ys]` (a stroke as points `[[x, y], ...]` must be transposed
        first).
        """
        depth = _number_depth(strokes)
        if depth == 3:
            drawings = [strokes]
        elif depth == 4:
            drawings = list(strokes)
        elif depth is None:
            raise DataError("Sketches.from_strokes: no points given (expected [[xs, ys], ...] "
                            "per sketch)")
        else:
            raise DataError(f"Sketches.from_strokes: numbers nested {depth} deep; expected "
                            f"[[xs, ys], ...] for one sketch (3 deep) or a list of them (4 deep)"
                            + (" (one stroke [xs, ys]? wrap it in a list)" if depth == 2 else ""))
        return cls._from_drawings(drawings, category, lambda i: f"sketch {i}")

    @classmethod
    def _from_drawings(cls, drawings: list, category, where, malformed_hint: str = ""
                       ) -> "Sketches":
        arrays = []
        for i, drawing in enumerate(drawings):
            if isinstance(drawing, (list, tuple)) and len(drawing) == 0:
                # a sketch without points (a model may stop at once): what `to_strokes` writes
                arrays.append(np.zeros((0, 3), np.float32))
                continue
            try:
                lines = parse_drawing(drawing)
            except BadDrawing as e:
                hint = malformed_hint if e.reason == "malformed stroke" else ""
                raise DataError(f"{where(i)}: {e}{hint}") from None
            # half float32's range: the offsets between two points stay finite too
            limit = float(np.finfo(np.float32).max) / 2
            if max(float(np.abs(line).max()) for line in lines) > limit:
                raise DataError(f"{where(i)}: coordinates beyond float32's range")
            arrays.append(from_polylines(lines))
        out = cls.from_list(arrays)
        if category is not None:
            names = [category] * len(arrays) if isinstance(category, str) else list(category)
            if len(names) != len(arrays) or not all(isinstance(n, str) for n in names):
                raise DataError(f"category: expected one name or {len(arrays)} names (one per "
                                f"sketch), got {category!r}")
            out.category_names = tuple(dict.fromkeys(names))  # in order of first appearance
            index = {n: k for k, n in enumerate(out.category_names)}
            out.category = np.array([index[n] for n in names], dtype=np.int64)
        return out

    def to_strokes(self) -> list[list[list[list]]]:
        """Every sketch as absolute-coordinate strokes `[[xs, ys], ...]` in raw data units (the
        inverse of `from_strokes`; QuickDraw's `drawing` field). Lists of Python numbers: ints
        where a sketch's coordinates are all whole numbers, else floats (float32's shortest
        spelling). A sketch without points gives `[]`."""
        check_finite(self.points, "Sketches.to_strokes")
        out = []
        for sketch in (self if self.scale_factor == 1.0 else self.in_units(1.0)):
            lines = to_polylines(sketch)
            if all(np.array_equal(line, np.rint(line)) for line in lines):
                out.append([line.T.astype(np.int64).tolist() for line in lines])
            else:
                out.append([line.T.astype(str).astype(np.float64).tolist() for line in lines])
        return out

    @classmethod
    def from_ndjson(cls, source: str | os.PathLike | Iterable[str | bytes]) -> "Sketches":
        """Sketches from QuickDraw's simplified ndjson: one JSON object per line with a `drawing`
        (`[[xs, ys], ...]`, absolute coordinates) and, when every line has one, a `word` that
        becomes the category. Other fields (key_id, countrycode, ...) are ignored.

        `source`: a path (`.ndjson`, or `.ndjson.gz`) or the lines themselves (str or bytes, e.g.
        an open file). Blank lines are skipped. Errors name the line and the sketch index. Raw and
        SPG ndjson (`[xs, ys, t]` per stroke) are not simplified data: `sketchlab data import`
        aligns, scales and simplifies those into sketch-rnn npz files.
        """
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            opener = gzip.open if path.name.endswith(".gz") else open
            try:
                with opener(path, "rb") as fh:
                    return cls._from_ndjson_lines(fh, str(path))
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path}: cannot read ({e})") from None
        return cls._from_ndjson_lines(source, "ndjson line")

    @classmethod
    def _from_ndjson_lines(cls, lines: Iterable[str | bytes], where: str) -> "Sketches":
        drawings, words, linenos = [], [], []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            # several objects glued on one line (raw QuickDraw exports) are each read
            objs, problem = json_values(line)
            if problem is not None:
                raise DataError(f"{where}:{lineno}: {problem}")
            for obj in objs:
                if not isinstance(obj, dict) or "drawing" not in obj:
                    raise DataError(f"{where}:{lineno}: no \"drawing\" field; expected QuickDraw "
                                    f"ndjson, {{\"word\": ..., \"drawing\": [[xs, ys], ...]}} "
                                    f"a line")
                word = obj.get("word")
                if word is not None and not isinstance(word, str):
                    raise DataError(f"{where}:{lineno}: \"word\" must be a string, got "
                                    f"{str(word)[:60]!r}")
                drawings.append(obj["drawing"])
                words.append(word)
                linenos.append(lineno)
        if not drawings:
            raise DataError(f"{where}: no drawings")
        missing = [n for n, w in zip(linenos, words) if w is None]
        if missing and len(missing) < len(words):
            raise DataError(f"{where}:{missing[0]}: no \"word\" while other lines have one; "
                            f"give every line its category or none")
        return cls._from_drawings(drawings, None if missing else words,
                                  lambda i: f"{where}:{linenos[i]} (sketch {i})",
                                  malformed_hint="; raw or SPG ndjson ([xs, ys, t] per stroke) "
                                                 "goes through `sketchlab data import`")

    def to_ndjson(self, path: str | os.PathLike) -> None:
        """Write QuickDraw simplified ndjson: `{"word": category, "drawing": [[xs, ys], ...]}` a
        line, in raw units (`to_strokes`); "word" only when the sketches carry category names.
        A path ending in `.gz` is gzip-compressed. Written atomically."""
        lines = []
        for i, strokes in enumerate(self.to_strokes()):
            obj = {}
            name = self.category_name(i)
            if name is not None:
                obj["word"] = name
            obj["drawing"] = strokes
            lines.append(json.dumps(obj, separators=(",", ":")) + "\n")
        data = "".join(lines).encode("utf-8")
        with atomic_open(path, "wb") as fh:
            if os.fspath(path).endswith(".gz"):
                # mtime=0: the same sketches always give the same bytes
                with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
                    gz.write(data)
            else:
                fh.write(data)

    def __repr__(self) -> str:
        n = len(self)
        parts = [f"{n} sketch{'' if n == 1 else 'es'}", f"{len(self.points)} points"]
        if self.category is not None and self.category_names:
            counts = np.bincount(self.category, minlength=len(self.category_names))
            named = [f"{name} {c}" for name, c in zip(self.category_names, counts) if c]
            more = f", ... ({len(named)} categories)" if len(named) > 6 else ""
            parts.append("categories: " + ", ".join(named[:6]) + more)
        elif self.category is not None:
            parts.append(f"{len(np.unique(self.category))} unnamed categories")
        parts.append("units: raw" if self.scale_factor == 1.0
                     else f"units: raw / {self.scale_factor:.6g} (normalised)")
        if self.z is not None:
            parts.append(f"z {self.z.shape[1]}-d")
        if self.component is not None:
            parts.append("components")
        return f"Sketches({'; '.join(parts)})"

    # ---- access ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if i < 0:
                i += len(self)
            if not 0 <= i < len(self):
                raise IndexError(index)
            return self.points[self.offsets[i]:self.offsets[i + 1]]
        idx = np.arange(len(self))[index]
        return self.select(idx)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.points[self.offsets[i]:self.offsets[i + 1]]

    def to_list(self) -> list[np.ndarray]:
        return [s.copy() for s in self]

    def select(self, idx) -> "Sketches":
        """A new batch holding the sketches at integer positions `idx` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = Sketches.from_list([self[int(i)] for i in idx], category_names=self.category_names,
                                 scale_factor=self.scale_factor)
        if self.category is not None:
            out.category = self.category[idx]
        if self.z is not None:
            out.z = self.z[idx]
        if self.component is not None:
            out.component = self.component[idx]
        return out

    def in_units(self, scale_factor: float) -> "Sketches":
        """The same sketches with offsets in units of 1/`scale_factor` of the raw data (1.0: raw
        units; a model's scale factor: its normalised units). Labels and codes are kept."""
        pts = self.points.copy()
        pts[:, :2] *= self.scale_factor / float(scale_factor)
        return Sketches(pts, self.offsets, category=self.category,
                        category_names=self.category_names, z=self.z, component=self.component,
                        scale_factor=float(scale_factor))

    def with_categories_of(self, references: "Sketches | None") -> "Sketches":
        """Give sketch i the category of reference i (samples conditioned on references)."""
        if references is not None and references.category is not None:
            self.category = references.category[:len(self)]
            self.category_names = references.category_names
        return self

    def category_name(self, i: int) -> str | None:
        if self.category is None or not self.category_names:
            return None
        return self.category_names[int(self.category[i])]

    # ---- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a pickle-free `.npz` atomically (temp file, then rename).

        Refuses (DataError, nothing written) what `load` would refuse: NaN or inf in the points
        or codes (what a NaN temperature or NaN weights produce), pen values other than 0/1."""
        bad = ~np.isfinite(self.points).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"{path}: not written: sketch {_owner(self.offsets, row)} holds NaN "
                            f"or inf (a NaN or huge temperature, or weights that are NaN, give "
                            f"such sketches); {int(bad.sum())} of {len(self.points)} points "
                            f"are not finite")
        if self.z is not None and not np.isfinite(self.z).all():
            raise DataError(f"{path}: not written: the latent codes z hold NaN or inf (weights "
                            f"that are NaN?)")
        pens = self.points[:, 2]
        bad = (pens != 0) & (pens != 1)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"{path}: not written: sketch {_owner(self.offsets, row)} has pen "
                            f"value {pens[row]:g}; stroke-3 pens are 0 (down) or 1 (lifted)")
        if not (math.isfinite(self.scale_factor) and self.scale_factor > 0):
            raise DataError(f"{path}: not written: scale_factor {self.scale_factor} is not a "
                            f"finite number > 0")
        arrays = {
            "points": self.points,
            "offsets": self.offsets,
            "scale_factor": np.array(self.scale_factor, dtype=np.float64),
            "format": np.array("sketchlab.Sketches/1"),
        }
        if self.category is not None:
            arrays["category"] = self.category
        if self.category_names:
            arrays["category_names"] = np.array(self.category_names, dtype=np.str_)
        if self.z is not None:
            arrays["z"] = self.z
        if self.component is not None:
            arrays["component"] = self.component
        atomic_savez(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Sketches":
        """Read a file written by `save` (never unpickles anything).

        Every array is checked against what `save` writes before a `Sketches` is built: a
        DataError names the file, the array and the problem (an index out of range, lengths that
        disagree, strings where numbers belong, NaN, a pen value other than 0/1, ...)."""
        path = Path(path)
        with open_zip(path) as zf:
            members = npy_members(zf)
            if "points" not in members or "offsets" not in members:
                raise DataError(f"{path}: not a sketchlab Sketches file (no 'points'/'offsets' "
                                f"arrays; keys are {sorted(members)}). For sketch-rnn npz files "
                                f"use sketchlab.data.npz.load_npz.")
            arrays = {key: read_plain_array(zf, members[key], f"{path} [{key}]")
                      for key in _SAVED_KEYS if key in members}
        return cls(**_checked_fields(arrays, path))


# What `Sketches.save` writes; `load` reads these and ignores other arrays.
_SAVED_KEYS = ("points", "offsets", "scale_factor", "format", "category", "category_names", "z",
               "component")
_FORMAT = "sketchlab.Sketches"
_FORMAT_VERSION = 1


def _checked_fields(arrays: dict[str, np.ndarray], path: Path) -> dict:
    """The keyword arguments of `Sketches(...)` from a file's arrays, each checked."""
    def fail(key: str, problem: str):
        raise DataError(f"{path}: '{key}' {problem}; the file is damaged or was not written by "
                        f"sketchlab (Sketches.save)")

    def kind_of(key: str, kinds: str, what: str) -> np.ndarray:
        arr = arrays[key]
        if arr.dtype.kind not in kinds:
            fail(key, f"holds {arr.dtype} values, not {what}")
        return arr

    fmt = arrays.get("format")
    if fmt is not None:
        if fmt.dtype.kind != "U" or fmt.shape != ():
            fail("format", f"is a {fmt.dtype} array of shape {fmt.shape}, not a format name")
        name, _, version = str(fmt).partition("/")
        if name != _FORMAT or not version.isdigit():
            fail("format", f"is {str(fmt)[:80]!r}, not {_FORMAT}/{_FORMAT_VERSION}")
        if int(version) > _FORMAT_VERSION:
            raise DataError(f"{path}: written in {_FORMAT} format {version}, newer than this "
                            f"sketchlab reads ({_FORMAT_VERSION}); upgrade sketchlab")

    points = kind_of("points", "iuf", "numbers")
    if points.ndim != 2 or points.shape[1] != 3:
        fail("points", f"has shape {points.shape}, not (n, 3) rows of (dx, dy, pen_lifted)")
    points = points.astype(np.float32)
    offsets = kind_of("offsets", "iu", "integers")
    if offsets.ndim != 1 or len(offsets) == 0:
        fail("offsets", f"has shape {offsets.shape}, not (n_sketches + 1,)")
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != len(points):
        fail("offsets", f"runs from {offsets[0]} to {offsets[-1]}, not from 0 to the "
                        f"{len(points)} points")
    if np.any(np.diff(offsets) < 0):
        fail("offsets", f"decreases at sketch {int(np.argmax(np.diff(offsets) < 0))}")
    n = len(offsets) - 1
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        fail("points", f"row {row} (sketch {_owner(offsets, row)}) holds NaN or inf")
    bad = (points[:, 2] != 0) & (points[:, 2] != 1)
    if bad.any():
        row = int(np.argmax(bad))
        fail("points", f"row {row} (sketch {_owner(offsets, row)}) has pen value "
                       f"{points[row, 2]:g}; stroke-3 pens are 0 (down) or 1 (lifted)")
    out: dict = {"points": points, "offsets": offsets}

    if "scale_factor" in arrays:
        sf = kind_of("scale_factor", "iuf", "a number")
        if sf.shape != ():
            fail("scale_factor", f"has shape {sf.shape}, not a single number")
        value = float(sf)
        if not (math.isfinite(value) and value > 0):
            fail("scale_factor", f"is {value}, not a finite number > 0")
        out["scale_factor"] = value

    names: tuple[str, ...] = ()
    if "category_names" in arrays:
        arr = kind_of("category_names", "U", "strings")
        if arr.ndim != 1:
            fail("category_names", f"has shape {arr.shape}, not a list of names")
        names = tuple(str(c) for c in arr.tolist())
        if len(set(names)) != len(names):
            fail("category_names", "names a category twice")
        out["category_names"] = names
    for key in ("category", "component"):
        if key not in arrays:
            continue
        arr = kind_of(key, "iu", "integer indices")
        if arr.shape != (n,):
            fail(key, f"has shape {arr.shape}, not one index for each of the {n} sketches")
        arr = arr.astype(np.int64)
        if n and arr.min() < 0:
            fail(key, f"holds the negative index {int(arr.min())}")
        if key == "category" and names and n and arr.max() >= len(names):
            fail(key, f"holds index {int(arr.max())} but 'category_names' has only "
                      f"{len(names)} names")
        out[key] = arr
    if "z" in arrays:
        z = kind_of("z", "iuf", "numbers")
        if z.ndim != 2 or z.shape[0] != n:
            fail("z", f"has shape {z.shape}, not one code for each of the {n} sketches "
                      f"(n, z_size)")
        if not np.isfinite(z).all():
            fail("z", "holds NaN or inf")
        out["z"] = z.astype(np.float32)
    return out


def _owner(offsets: np.ndarray, row: int) -> int:
    """The sketch that point `row` belongs to."""
    return int(np.searchsorted(offsets, row, side="right") - 1)


def _number_depth(obj, depth: int = 0) -> int | None:
    """How deep the first number sits in nested lists/tuples/arrays (None: no number at all).

    One sketch's strokes `[[xs, ys], ...]` hold numbers 3 deep; a list of sketches 4 deep.
    """
    if depth > 5:
        return depth
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return depth + obj.ndim if obj.size else None
    if isinstance(obj, (list, tuple, np.ndarray)):
        for item in obj:
            found = _number_depth(item, depth + 1)
            if found is not None:
                return found
        return None
    return depth


__all__ = ["Sketches"]
