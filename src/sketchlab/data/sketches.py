"""`Sketches`: a batch of variable-length stroke-3 sketches, stored pickle-free.

The one container every layer passes around: the data readers return it, the models take and
return it (in their normalised units), `sketchlab sample` writes it (in raw units) and the
renderers draw it.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from sketchlab.data.strokes import check_finite
from sketchlab.errors import DataError
from sketchlab.fileio import atomic_savez


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
        """Write a pickle-free `.npz` atomically (temp file, then rename)."""
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
        """Read a file written by `save` (never unpickles anything)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                if "points" not in f or "offsets" not in f:
                    raise DataError(f"{path}: not a sketchlab Sketches file (no 'points'/'offsets' "
                                    f"arrays; keys are {sorted(f.files)}). For sketch-rnn npz files "
                                    f"use sketchlab.data.npz.load_npz.")
                kw = dict(points=f["points"], offsets=f["offsets"])
                for key in ("category", "z", "component"):
                    if key in f:
                        kw[key] = f[key]
                if "category_names" in f:
                    kw["category_names"] = tuple(f["category_names"].tolist())
                if "scale_factor" in f:
                    kw["scale_factor"] = float(f["scale_factor"])
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"{path}: cannot read as a sketchlab Sketches npz ({e})") from e
        out = cls(**kw)
        check_finite(out.points, str(path))
        return out


__all__ = ["Sketches"]
