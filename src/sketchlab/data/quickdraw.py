"""QuickDraw data I/O: safe sketch-rnn `.npz` files, ndjson import, download, dataset loading.

sketch-rnn `.npz` files hold one object array per split (`train`, `valid`, `test`) whose elements
are int16 stroke-3 arrays. numpy can read object arrays only by unpickling them, and unpickling a
stranger's file runs whatever code it names. So this module never calls
`np.load(..., allow_pickle=True)`: it opens the zip itself, parses each `.npy` header, and unpickles
object arrays with `_RestrictedUnpickler`, which hands out only the few numpy constructors an
array of numeric arrays needs (wrapped so they check their arguments) and refuses every other
global before anything runs.

What a bad file gets (the policy every loader here follows):

* **always a DataError** naming the file, the split and, where it applies, the sketch index: not a
  zip or truncated, a missing split, a refused pickle global, an element that is not a numeric
  array, rows that are not stroke-3 `(n, 3)`;
* **per-sketch content problems** (an empty sketch, NaN/inf, a pen value other than 0/1, more than
  `max_points` rows): a DataError by default (`on_bad="raise"`), or, with `on_bad="drop"`, the
  sketch is dropped and counted in the `dropped` dict the caller passes in.

`sketchlab data import` drops and counts bad ndjson lines instead (see `import_ndjson`): one bad
drawing among a million must not stop a conversion.

Public API: `load_npz` / `load_npz_split` / `read_npz_array` (safe reading), `save_sketchrnn_npz`
(the standard layout, readable by the original repos), `load_categories` (what the trainer
calls), `describe_npz` (`data info`), `import_ndjson` + `drawing_to_stroke3` (`data import`),
`download_category` (`data download`). The command-line wrappers live in `commands.py`.
"""

from __future__ import annotations

import ast
import difflib
import gzip
import hashlib
import io
import json
import os
import pickle
import pickletools
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from sketchlab.data.quickdraw_categories import QUICKDRAW_CATEGORIES
from sketchlab.data import strokes as S
from sketchlab.data.strokes import clip_offsets, from_polylines, scale_factor
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.fileio import atomic_open

SPLITS = ("train", "valid", "test")
# A stored sketch longer than this is taken for corruption, not for a drawing (the official files
# stay in the hundreds). Pass a larger `max_points` to read unusual data.
DEFAULT_MAX_POINTS = 10_000
# Refuse a zip member that would inflate beyond this (a zip bomb, or not sketch data).
MAX_MEMBER_BYTES = 4 << 30
# Import: drawings longer than this after simplification are dropped (sketch-rnn data is < 300).
DEFAULT_IMPORT_MAX_POINTS = 1000
DEFAULT_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset/sketchrnn"


def _progress(iterable=None, progress: bool = True, **kw):
    # disable=None lets tqdm switch itself off when stderr is not a terminal (logs, tests).
    return tqdm(iterable, disable=None if progress else True, **kw)


# ============================================================================================
# Reading .npy members safely
# ============================================================================================


def _parse_npy_header(data: bytes, where: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """Parse a `.npy` header: `(dtype, shape, fortran_order, offset of the data)`.

    The header is a Python dict literal; `ast.literal_eval` reads it without running anything.
    """
    magic = b"\x93NUMPY"
    if len(data) < 10 or data[:6] != magic:
        raise DataError(f"{where}: not a .npy array (bad magic bytes)")
    major = data[6]
    if major == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise DataError(f"{where}: unsupported .npy format version {major}.{data[7]}")
    if hlen > 100_000 or start + hlen > len(data):
        raise DataError(f"{where}: .npy header is truncated or absurdly long ({hlen} bytes)")
    text = data[start:start + hlen].decode("utf8" if major == 3 else "latin1")
    try:
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise DataError(f"{where}: unreadable .npy header ({e})") from e
    if (not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}
            or not isinstance(header["shape"], tuple)
            or not all(isinstance(d, int) and d >= 0 for d in header["shape"])
            or not isinstance(header["fortran_order"], bool)):
        raise DataError(f"{where}: malformed .npy header {text.strip()[:200]!r}")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: .npy header names an invalid dtype {header['descr']!r}") from e
    return dtype, header["shape"], header["fortran_order"], start + hlen


class _Refused(Exception):
    """Raised inside the unpickler; turned into a DataError naming the file and member."""


# The real numpy helpers, taken from numpy's own pickling so they work on numpy 1.x and 2.x alike.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]


class _Allowed:
    """What `find_class` hands out: a checked wrapper that a pickle can call but not modify.

    BUILD on it is refused (`__setstate__`), it has no `__dict__` to update, and it is not a type,
    so NEWOBJ cannot instantiate it. `numpy.ndarray` itself is never given out: a token stands in
    for it that only `_reconstruct` accepts, so a pickle cannot call `ndarray(shape)` directly.
    """

    __slots__ = ("name", "fn")

    def __init__(self, name, fn=None):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args):
        if self.fn is None:
            raise _Refused(f"a call of {self.name}")
        return self.fn(*args)

    def __setattr__(self, key, value):
        raise _Refused(f"setting {key!r} on {self.name}")

    def __setstate__(self, state):
        raise _Refused(f"a BUILD on {self.name}")


_NDARRAY = _Allowed("numpy.ndarray")


def _reconstruct(subtype, shape, typecode):
    # numpy pickles every array as `_reconstruct(ndarray, (0,), b'b')` followed by __setstate__,
    # whose data must then match the shape, so memory stays bounded by the file's size.
    if subtype is not _NDARRAY:
        raise _Refused("numpy _reconstruct of a type other than numpy.ndarray")
    if (not isinstance(shape, tuple) or not all(isinstance(d, int) and 0 <= d <= 1 for d in shape)
            or not isinstance(typecode, (str, bytes)) or len(typecode) > 8):
        raise _Refused(f"numpy _reconstruct with unexpected arguments {shape!r}, {typecode!r}")
    return _RECONSTRUCT(np.ndarray, shape, typecode)


def _dtype(spec, align=False, copy=False):
    if not isinstance(spec, (str, bytes)) or len(spec) > 16:
        raise _Refused(f"numpy.dtype({spec!r})")
    return np.dtype(spec, bool(align), bool(copy))


def _scalar(dtype, data=None):
    if isinstance(data, str):  # Python 2 pickle read with encoding='latin1'
        data = data.encode("latin1")
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise _Refused(f"numpy scalar of dtype {dtype!r}")
    return _SCALAR(dtype, data)


def _latin1_bytes(text, encoding="latin1"):
    # Python 3 pickles of protocol < 3 store bytes as `_codecs.encode(text, 'latin1')`.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with arguments of type {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Allowed("numpy.dtype", _dtype),
    ("_codecs", "encode"): _Allowed("_codecs.encode", _latin1_bytes),
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x names
    _ALLOWED_GLOBALS[(_module, "_reconstruct")] = _Allowed("numpy _reconstruct", _reconstruct)
    _ALLOWED_GLOBALS[(_module, "scalar")] = _Allowed("numpy scalar", _scalar)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays of numeric arrays and nothing else.

    `find_class` is the only door through which a pickle reaches code (GLOBAL, STACK_GLOBAL, INST
    and the copyreg extension codes all go through it); it hands out the checked wrappers above
    and refuses everything else before the stream can call it.
    """

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused(f"persistent id {pid!r}")


def _restricted_unpickle(payload: bytes, where: str):
    try:
        # Python 2 pickles (the official files) store raw bytes as str: latin1 keeps them intact.
        return _RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except _Refused as e:
        raise DataError(f"{where}: refused to unpickle {e} (a sketch-rnn file holds only numpy "
                        f"arrays of numbers; this file may be hostile, do not load it with "
                        f"allow_pickle=True)") from None
    except Exception as e:  # malformed stream: anything the pickle machinery raises
        raise DataError(f"{where}: corrupt pickled object array "
                        f"({type(e).__name__}: {e})") from None


def _open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz (zip) file, perhaps truncated ({e}); "
                        f"download or export it again") from None


def _npz_members(zf: zipfile.ZipFile) -> dict[str, str]:
    """Array name -> member name (np.savez stores array `train` as `train.npy`)."""
    return {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}


def _read_member(zf: zipfile.ZipFile, member: str, where: str,
                 max_bytes: int = MAX_MEMBER_BYTES) -> np.ndarray:
    """Read one `.npy` member: numeric arrays by their header, object arrays through the
    restricted unpickler."""
    info = zf.getinfo(member)
    if info.file_size > max_bytes:
        raise DataError(f"{where}: member is {info.file_size} bytes uncompressed, over the "
                        f"{max_bytes}-byte limit")
    try:
        data = zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
        raise DataError(f"{where}: corrupt or truncated zip member ({e})") from None
    dtype, shape, fortran, offset = _parse_npy_header(data, where)
    if dtype.hasobject:
        if dtype != np.dtype(object):
            raise DataError(f"{where}: structured dtype with Python objects {dtype} is not "
                            f"sketch data")
        arr = _restricted_unpickle(data[offset:], where)
        if not isinstance(arr, np.ndarray) or arr.dtype != object or arr.shape != shape:
            raise DataError(f"{where}: pickled payload is not the object array its header "
                            f"announces (shape {shape})")
        return arr
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset < count * dtype.itemsize:
        raise DataError(f"{where}: truncated array data ({len(data) - offset} bytes for "
                        f"{count} x {dtype})")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(
        shape, order="F" if fortran else "C")


# ============================================================================================
# sketch-rnn npz: arrays -> Sketches
# ============================================================================================


def _sketches_from_array(arr: np.ndarray, where: str, max_points: int, on_bad: str,
                         dropped: Counter) -> Sketches:
    """Validate a split's array and pack it into a `Sketches` (float32, pickle-free)."""
    if arr.dtype == object and arr.ndim == 1:
        elems = list(arr)
    elif arr.ndim == 3 and arr.shape[2] == 3:
        # np.array(list_of_equal_length_sketches) makes one block instead of an object array.
        if arr.dtype == object:
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as e:
                raise DataError(f"{where}: object block is not numeric ({e})") from None
        elems = list(arr)
    else:
        raise DataError(f"{where}: expected a 1-D object array of stroke-3 arrays (the sketch-rnn "
                        f"layout), got a {arr.dtype} array of shape {arr.shape}")
    for i, e in enumerate(elems):
        if type(e) is not np.ndarray or e.dtype.kind not in "iuf":
            kind = f"{e.dtype} array" if isinstance(e, np.ndarray) else type(e).__name__
            raise DataError(f"{where} sketch {i}: a {kind}, not a numeric stroke-3 array")
        if e.ndim != 2 or e.shape[1] != 3:
            raise DataError(f"{where} sketch {i}: shape {e.shape}, expected (n, 3) rows of "
                            f"(dx, dy, pen_lifted)")
    lengths = np.fromiter((len(e) for e in elems), dtype=np.int64, count=len(elems))
    points = (np.concatenate(elems).astype(np.float32) if elems else np.zeros((0, 3), np.float32))

    # Per-sketch content checks, vectorised over the pooled rows.
    owner = np.repeat(np.arange(len(elems)), lengths)
    bad_rows = {
        "not finite (NaN or inf)": ~np.isfinite(points).all(axis=1),
        "pen value other than 0/1": (points[:, 2] != 0) & (points[:, 2] != 1),
    }
    problems = {
        "empty (0 points)": lengths == 0,
        f"longer than max_points={max_points}": lengths > max_points,
    }
    for reason, rows in bad_rows.items():
        problems[reason] = np.bincount(owner[rows], minlength=len(elems)) > 0
    bad = np.zeros(len(elems), dtype=bool)
    for reason, mask in problems.items():
        if not mask.any():
            continue
        if on_bad == "raise":
            i = int(np.argmax(mask))
            raise DataError(f"{where} sketch {i}: {reason} ({lengths[i]} points); fix the file "
                            f"or load it with on_bad='drop' to skip such sketches")
        dropped[reason] += int((mask & ~bad).sum())
        bad |= mask
    if bad.any():
        points = points[~np.repeat(bad, lengths)]
        lengths = lengths[~bad]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Sketches(points, offsets)


def _check_on_bad(on_bad: str) -> None:
    if on_bad not in ("raise", "drop"):
        raise ConfigError(f"on_bad must be 'raise' or 'drop', not {on_bad!r}")


def npz_keys(path: str | os.PathLike) -> list[str]:
    """The array names stored in an `.npz` file (without reading any of them)."""
    with _open_zip(path) as zf:
        return sorted(_npz_members(zf))


def load_npz(path: str | os.PathLike, splits: Sequence[str] = SPLITS, *,
             max_points: int = DEFAULT_MAX_POINTS, on_bad: str = "raise",
             dropped: dict | None = None) -> dict[str, Sketches]:
    """Read splits of a sketch-rnn `.npz` safely (no arbitrary unpickling) into `Sketches`.

    Offsets stay in raw units (`scale_factor = 1`). `on_bad="drop"` skips sketches that are empty,
    hold NaN/inf or a pen value other than 0/1, or exceed `max_points`; when `dropped` is given it
    receives `{split: {reason: count}}`. Structural problems always raise (see the module doc).
    """
    _check_on_bad(on_bad)
    out: dict[str, Sketches] = {}
    with _open_zip(path) as zf:
        members = _npz_members(zf)
        for split in splits:
            if split not in members:
                raise DataError(f"{path}: no split {split!r}; the file holds {sorted(members)}")
            where = f"{path} [{split}]"
            counts: Counter = Counter()
            out[split] = _sketches_from_array(_read_member(zf, members[split], where),
                                              where, max_points, on_bad, counts)
            if dropped is not None and counts:
                dropped[split] = dict(counts)
    return out


def load_npz_split(path: str | os.PathLike, split: str = "train", **kw) -> Sketches:
    """One split of a sketch-rnn `.npz` (see `load_npz` for the keywords)."""
    return load_npz(path, (split,), **kw)[split]


def read_npz_array(path: str | os.PathLike, key: str) -> np.ndarray:
    """Any one array of an `.npz` (e.g. `train_key_ids`), object arrays through the safe reader."""
    with _open_zip(path) as zf:
        members = _npz_members(zf)
        if key not in members:
            raise DataError(f"{path}: no array {key!r}; the file holds {sorted(members)}")
        return _read_member(zf, members[key], f"{path} [{key}]")


# ============================================================================================
# Writing sketch-rnn npz files
# ============================================================================================


def _portable_pickle(obj) -> bytes:
    """Pickle (protocol 3, as np.save does) naming `numpy.core.multiarray` instead of numpy 2's
    `numpy._core.multiarray`, so numpy 1.x readers (the original TF repos) can load our files.

    Only GLOBAL opcodes are rewritten; protocol 3 has no frames and memo indices count opcodes,
    not bytes, so the stream stays valid. The opcode walk stops once no `cnumpy._core.` bytes lie
    ahead (the pickler memoises globals, so they all sit near the start).
    """
    data = pickle.dumps(obj, protocol=3)
    needle = b"cnumpy._core."
    ahead = data.find(needle)
    out, last = bytearray(), 0
    for op, arg, pos in pickletools.genops(data):
        if ahead < 0:
            break
        if pos > ahead:  # that occurrence lay inside an argument (array bytes), not an opcode
            ahead = data.find(needle, pos)
            continue
        if op.name == "GLOBAL" and pos == ahead:
            module, name = arg.split(" ", 1)
            out += data[last:pos]
            out += b"c" + ("numpy.core." + module[len("numpy._core."):]).encode() + b"\n"
            out += name.encode() + b"\n"
            last = pos + 1 + len(module) + 1 + len(name) + 1
            ahead = data.find(needle, last)
    out += data[last:]
    return bytes(out)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if arr.dtype == object:
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
        buf.write(_portable_pickle(arr))
    else:
        np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _object_array_of_sketches(sketches, where: str, dtype) -> np.ndarray:
    arrays = [np.asarray(s) for s in sketches]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[1] != 3 or len(a) == 0 or a.dtype.kind not in "iuf":
            raise DataError(f"{where} sketch {i}: expected a non-empty numeric (n, 3) stroke-3 "
                            f"array, got {a.dtype} {a.shape}")
    out = np.empty(len(arrays), dtype=object)  # filled one by one: never a 3-D block
    if not arrays:
        return out
    pooled = np.concatenate(arrays).astype(np.float64)
    if not np.isfinite(pooled).all():
        raise DataError(f"{where}: NaN or inf in the sketches")
    if np.any((pooled[:, 2] != 0) & (pooled[:, 2] != 1)):
        raise DataError(f"{where}: pen column must hold 0 or 1")
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        if not np.array_equal(pooled, np.rint(pooled)):
            raise DataError(f"{where}: offsets are not integers; sketch-rnn files store int16 "
                            f"offsets (save normalised data with dtype=np.float32)")
        info = np.iinfo(dtype)
        if pooled.min() < info.min or pooled.max() > info.max:
            raise DataError(f"{where}: offsets exceed the {dtype} range")
    for i, a in enumerate(arrays):
        out[i] = a.astype(dtype)
    return out


def save_sketchrnn_npz(path: str | os.PathLike, splits: Mapping[str, Iterable[np.ndarray]], *,
                       dtype=np.int16, extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Write the standard sketch-rnn layout: one object array of `dtype` stroke-3 arrays per split.

    Readable by the original tools (`np.load(path, encoding='latin1', allow_pickle=True)`), which is
    why it pickles; `load_npz` reads it back without unpickling anything but numpy arrays. `extra`
    arrays (key ids, provenance) must be plain numeric or string arrays and are stored unpickled.
    Written atomically.
    """
    members: dict[str, bytes] = {}
    for split, sketches in splits.items():
        if isinstance(sketches, Sketches):
            sketches = list(sketches)
        members[split] = _npy_bytes(_object_array_of_sketches(sketches, f"{path} [{split}]", dtype))
    for key, arr in (extra or {}).items():
        arr = np.asarray(arr)
        if arr.dtype.hasobject:
            raise DataError(f"{path}: extra array {key!r} must not hold Python objects")
        members[key] = _npy_bytes(arr)
    with atomic_open(path) as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, data in members.items():
                # A fixed timestamp: the same sketches always give the same bytes (and sha256).
                zf.writestr(zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), data)


# ============================================================================================
# The trainer's loader
# ============================================================================================


def _parse_categories(categories: str | Sequence[str]) -> list[str]:
    if isinstance(categories, str):
        categories = categories.split(",")
    cats = [c.strip() for c in categories if c and c.strip()]
    if not cats:
        raise ConfigError("no categories given")
    dupes = sorted({c for c in cats if cats.count(c) > 1})
    if dupes:
        raise ConfigError(f"categories listed twice: {dupes}")
    return cats


def available_categories(data_dir: str | os.PathLike) -> list[str]:
    """The categories a folder holds: the stems of its `.npz` files."""
    return sorted(p.name[:-4] for p in Path(data_dir).glob("*.npz"))


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
    cats = _parse_categories(categories)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder does not exist")
    missing = [c for c in cats if not (data_dir / f"{c}.npz").is_file()]
    if missing:
        have = available_categories(data_dir)
        names = ", ".join(c + ".npz" for c in missing)
        raise DataError(f"{data_dir}: no {names}; the folder holds {len(have)} categories: "
                        f"{', '.join(have) or '(none)'}. Import or download them with "
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


# ============================================================================================
# Statistics (`sketchlab data info`)
# ============================================================================================


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
        info["provenance"] = json.loads(str(read_npz_array(path, "sketchlab_import")))
    return info


# ============================================================================================
# ndjson -> stroke-3 (`sketchlab data import`)
# ============================================================================================

IMPORT_FORMATS = ("auto", "simplified", "raw", "spg")


class _BadDrawing(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def detect_format(obj: dict) -> str:
    """Which ndjson flavour a parsed line is.

    SPG lines carry `"i"` and no `"word"` (strokes `[xs, ys, part_ids]`, a few with the part ids
    twice). Otherwise 3+ lists per stroke is Google's *raw* format (`[xs, ys, ts]`) and 2 lists its
    *simplified* one (`[xs, ys]`).
    """
    if "i" in obj and "word" not in obj:
        return "spg"
    drawing = obj.get("drawing")
    stroke = next((s for s in drawing if s), None) if isinstance(drawing, list) else None
    return "raw" if isinstance(stroke, list) and len(stroke) >= 3 else "simplified"


def drawing_to_stroke3(drawing, fmt: str, *, epsilon: float = 2.0,
                       max_points: int = DEFAULT_IMPORT_MAX_POINTS) -> np.ndarray:
    """One ndjson `drawing` -> int16 stroke-3 in sketch-rnn's conventions.

    * simplified: already aligned, scaled to 0..255 and RDP'd; only made relative.
    * raw: align to the top-left (min 0), scale uniformly so the longest side is 255, RDP with
      `epsilon` per stroke, round to integers, then deltas. The third list (timestamps) is not
      used: the arrays' order is the drawing order, so non-monotone timestamps change nothing.
    * spg: integer points already in 0..255 but dense: RDP with `epsilon`, then deltas; the third
      list (part ids) is not used.

    Raises `_BadDrawing(reason)` for what import drops and counts. (The import runs the same
    three steps, with the RDP batched over many drawings.)
    """
    lines = _parse_drawing(drawing, fmt, max_points)
    if fmt in ("raw", "spg"):
        lines = S.rdp_many(lines, epsilon)
    return _finish_drawing(lines, max_points)


def _parse_drawing(drawing, fmt: str, max_points: int) -> list[np.ndarray]:
    """Validate a drawing and return its strokes as float64 `(k, 2)` (raw: aligned and scaled)."""
    if not isinstance(drawing, list) or not drawing:
        raise _BadDrawing("empty drawing")
    lines = []
    for stroke in drawing:
        if not isinstance(stroke, (list, tuple)) or len(stroke) < 2:
            raise _BadDrawing("malformed stroke")
        xs, ys = stroke[0], stroke[1]
        if not isinstance(xs, list) or not isinstance(ys, list):
            raise _BadDrawing("malformed stroke")
        if len(xs) != len(ys):
            raise _BadDrawing("xs/ys lengths differ")
        if not xs:
            continue  # an empty stroke draws nothing
        try:
            lines.append(np.array((xs, ys), dtype=np.float64).T)
        except (TypeError, ValueError):
            raise _BadDrawing("non-numeric coordinates") from None
    if not lines:
        raise _BadDrawing("empty drawing")
    pooled = np.concatenate(lines)
    if not np.isfinite(pooled).all():
        raise _BadDrawing("NaN or inf coordinates")
    if len(pooled) > 100 * max_points:  # hopeless even after RDP; do not spend time on it
        raise _BadDrawing("too many points")
    if fmt == "raw":
        low = pooled.min(axis=0)
        extent = float((pooled.max(axis=0) - low).max())
        if extent <= 0:
            raise _BadDrawing("single point")
        lines = [(line - low) * (255.0 / extent) for line in lines]
    return lines


def _finish_drawing(lines: list[np.ndarray], max_points: int) -> np.ndarray:
    # Integer absolute coordinates first, then deltas: rounding never accumulates.
    lines = [np.rint(line) for line in lines]
    total = sum(len(line) for line in lines)
    if total < 2:
        raise _BadDrawing("single point")
    if total > max_points:
        raise _BadDrawing("too many points")
    s3 = from_polylines(lines)
    if np.abs(s3[:, :2]).max() > np.iinfo(np.int16).max:
        raise _BadDrawing("offsets beyond int16")
    return s3.astype(np.int16)


def _category_key(name: str) -> str:
    """Names compare without case and with `_` == ` ` ("alarm_clock" matches "alarm clock")."""
    return name.strip().lower().replace("_", " ")


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


def _ndjson_files(sources: Sequence[str | os.PathLike]) -> list[Path]:
    return expand_paths(sources, (".ndjson", ".ndjson.gz"), ".ndjson")


def _file_category(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".ndjson"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def read_splits_file(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """`{category: {split: [key_id, ...]}}` (SPG's splits.json) -> `{category: {key_id: split}}`."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the splits file ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected {{category: {{split: [key_id, ...]}}}}")
    out: dict[str, dict[str, str]] = {}
    for cat, splits in raw.items():
        if not isinstance(splits, dict):
            raise DataError(f"{path}: category {cat!r} must map split names to key_id lists")
        table: dict[str, str] = {}
        for split, ids in splits.items():
            if split not in SPLITS or not isinstance(ids, list):
                raise DataError(f"{path}: category {cat!r}: split {split!r} is not one of {SPLITS} "
                                f"with a list of key_ids")
            for key in ids:
                table[str(key)] = split
        out[_category_key(cat)] = table
    return out


class _Category:
    """Sketches collected for one category while importing."""

    def __init__(self, name: str):
        self.name = name
        self.sketches: list[np.ndarray] = []
        self.key_ids: list[str] = []
        self.given: list[str | None] = []  # split named by a splits file, if any
        self.seen_keys: set[str] = set()
        self.dropped: Counter = Counter()
        self.sources: set[str] = set()
        self.splits_file: str | None = None


def _assign_splits(cat: _Category, fractions: tuple[float, float, float], seed: int) -> dict:
    """Indices per split. Given splits are kept; the rest is split by `fractions` with a seeded
    permutation; when a splits file gives no test split (SPG withholds it), a test split as large
    as the valid split (or `fractions[2]` of the total without one) is carved out of train."""
    rng = np.random.default_rng([seed, zlib.crc32(cat.name.encode("utf-8"))])
    idx = {s: [i for i, g in enumerate(cat.given) if g == s] for s in SPLITS}
    free = np.array([i for i, g in enumerate(cat.given) if g is None], dtype=np.int64)
    if len(free):
        perm = free[rng.permutation(len(free))]
        n = len(free)
        sizes = [int(round(n * f)) if f > 0 else 0 for f in fractions]
        for k in (1, 2):  # a small set still gets one valid and one test sketch
            if fractions[k] > 0 and n >= 3:
                sizes[k] = max(sizes[k], 1)
        n_valid, n_test = sizes[1], sizes[2]
        idx["valid"] += perm[:n_valid].tolist()
        idx["test"] += perm[n_valid:n_valid + n_test].tolist()
        idx["train"] += perm[n_valid + n_test:].tolist()
    carved = 0
    if cat.splits_file and not idx["test"] and len(idx["train"]) > 1 and fractions[2] > 0:
        total = len(cat.given)
        carved = len(idx["valid"]) or max(1, int(round(total * fractions[2])))
        carved = min(carved, len(idx["train"]) - 1)
        pick = set(rng.choice(np.array(idx["train"]), size=carved, replace=False).tolist())
        idx["test"] = [i for i in idx["train"] if i in pick]
        idx["train"] = [i for i in idx["train"] if i not in pick]
    return {"indices": {s: sorted(v) for s, v in idx.items()}, "test_carved_from_train": carved}


def _output_name(category: str) -> str:
    return category.replace(os.sep, "_").replace("/", "_") + ".npz"


def _write_category(cat: _Category, out_dir: Path, fractions: tuple[float, float, float],
                    seed: int, epsilon: float, max_points: int) -> dict:
    """Split one imported category, write `<name>.npz` atomically, return its report entry."""
    if not cat.sketches:
        return {"file": None, "dropped": dict(cat.dropped),
                "note": "no usable drawing; nothing written"}
    plan = _assign_splits(cat, fractions, seed)
    lengths = np.array([len(s) for s in cat.sketches])
    entry = {
        "file": _output_name(cat.name),
        **{s: len(plan["indices"][s]) for s in SPLITS},
        "mean_length": round(float(lengths.mean()), 1),
        "max_length": int(lengths.max()),
        "split_source": cat.splits_file or (f"seeded {'/'.join(f'{f:.4g}' for f in fractions)} "
                                            f"(seed {seed})"),
        "test_carved_from_train": plan["test_carved_from_train"],
        "dropped": dict(cat.dropped),
        "sources": sorted(cat.sources),
    }
    provenance = {"category": cat.name, "epsilon": epsilon, "max_points": max_points,
                  "seed": seed, **{k: entry[k] for k in (
                      "split_source", "test_carved_from_train", "sources")}}
    extra = {f"{s}_key_ids": np.array([cat.key_ids[i] for i in plan["indices"][s]],
                                      dtype=np.str_) for s in SPLITS}
    extra["sketchlab_import"] = np.array(json.dumps(provenance))
    save_sketchrnn_npz(out_dir / entry["file"],
                       {s: [cat.sketches[i] for i in plan["indices"][s]] for s in SPLITS},
                       extra=extra)
    return entry


def import_ndjson(sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  fmt: str = "auto", categories: Sequence[str] | None = None,
                  split: tuple[float, float, float] = (0.9, 0.05, 0.05), seed: int = 0,
                  max_points: int = DEFAULT_IMPORT_MAX_POINTS, epsilon: float = 2.0,
                  splits_file: str | os.PathLike | None = "auto", progress: bool = True) -> dict:
    """Convert QuickDraw ndjson (simplified, raw or SPG) into one sketch-rnn npz per category.

    `sources`: files or folders of `.ndjson`/`.ndjson.gz`. The category of a line is its `word`,
    else its file's name. Lines are deduplicated by `key_id` within a category. Splits come from a
    splits file (`splits_file="auto"` uses a `splits.json` beside the ndjson, `None` uses none),
    otherwise from a seeded split by `split` fractions. Bad lines are dropped and counted.
    Each npz is written atomically, also holds `<split>_key_ids` and a `sketchlab_import` JSON
    string, and `import_report.json` in `out_dir` sums everything up. Returns that report.
    """
    t0 = time.perf_counter()
    if fmt not in IMPORT_FORMATS:
        raise ConfigError(f"format must be one of {IMPORT_FORMATS}, not {fmt!r}")
    if len(split) != 3 or any(f < 0 for f in split) or sum(split) <= 0 or split[0] <= 0:
        raise ConfigError(f"split fractions must be 3 non-negative numbers with train > 0, "
                          f"got {split}")
    fractions = tuple(float(f) / sum(split) for f in split)
    if max_points < 2:
        raise ConfigError(f"max_points must be >= 2, got {max_points}")
    files = _ndjson_files(sources)
    wanted = ({_category_key(c): c for c in _parse_categories(categories)} if categories
              else None)

    split_tables: dict[Path, tuple[str, dict] | None] = {}

    def splits_for(file: Path):
        if splits_file is None:
            return None
        where = Path(splits_file) if splits_file != "auto" else file.parent / "splits.json"
        if where not in split_tables:
            split_tables[where] = ((os.fspath(where), read_splits_file(where))
                                   if where.is_file() or splits_file != "auto" else None)
        return split_tables[where]

    cats: dict[str, _Category] = {}
    seen_names: dict[str, str] = {}  # key -> name, every category met (also filtered-out ones)
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    formats: Counter = Counter()
    lines_read = 0

    def drop(cat: _Category | None, reason: str, where: str):
        dropped[reason] += 1
        if cat is not None:
            cat.dropped[reason] += 1
        if len(examples.setdefault(reason, [])) < 3:
            examples[reason].append(where)

    # Drawings wait here until `batch_size` of them can be simplified in one vectorised RDP pass.
    pending: list[tuple] = []
    batch_size = 2000

    def finish_pending():
        dense = [item for item in pending if item[4] in ("raw", "spg")]
        simplified = iter(S.rdp_many([ln for item in dense for ln in item[5]], epsilon))
        for cat, key_id, given, where, line_fmt, lines in pending:
            if line_fmt in ("raw", "spg"):
                lines = [next(simplified) for _ in lines]
            if key_id is not None and key_id in cat.seen_keys:  # a twin earlier in this batch
                drop(cat, "duplicate key_id", where)
                continue
            try:
                s3 = _finish_drawing(lines, max_points)
            except _BadDrawing as e:
                drop(cat, e.reason, where)
                continue
            formats[line_fmt] += 1
            if key_id is not None:
                cat.seen_keys.add(key_id)
            cat.sketches.append(s3)
            cat.key_ids.append(key_id or "")
            cat.given.append(given)
        pending.clear()

    total_bytes = sum(f.stat().st_size for f in files)
    bar = _progress(progress=progress, total=total_bytes, unit="B", unit_scale=True,
                    desc="import")
    for file in files:
        stem_category = _file_category(file)
        table = splits_for(file)
        opener = gzip.open if file.name.endswith(".gz") else open
        try:
            with opener(file, "rb") as fh:
                for lineno, raw_line in enumerate(fh, 1):
                    if opener is open:
                        bar.update(len(raw_line))
                    if not raw_line.strip():
                        continue
                    lines_read += 1
                    where = f"{file}:{lineno}"
                    try:
                        obj = json.loads(raw_line)
                    except ValueError:
                        drop(None, "invalid JSON", where)
                        continue
                    if not isinstance(obj, dict) or "drawing" not in obj:
                        drop(None, "no drawing field", where)
                        continue
                    name = obj.get("word") if isinstance(obj.get("word"), str) else stem_category
                    key = _category_key(name)
                    seen_names.setdefault(key, name)
                    if wanted is not None and key not in wanted:
                        continue
                    cat = cats.get(key)
                    if cat is None:
                        cat = cats[key] = _Category(seen_names[key])
                    cat.sources.add(os.fspath(file))
                    key_id = obj.get("key_id")
                    key_id = None if key_id is None else str(key_id)
                    if key_id is not None and key_id in cat.seen_keys:
                        drop(cat, "duplicate key_id", where)
                        continue
                    line_fmt = detect_format(obj) if fmt == "auto" else fmt
                    try:
                        lines = _parse_drawing(obj["drawing"], line_fmt, max_points)
                    except _BadDrawing as e:
                        drop(cat, e.reason, where)
                        continue
                    given = None
                    if table is not None and key in table[1]:
                        cat.splits_file = table[0]
                        given = table[1][key].get(key_id)
                    pending.append((cat, key_id, given, where, line_fmt, lines))
                    if len(pending) >= batch_size:
                        finish_pending()
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{file}: cannot read ({e})") from None
        if opener is not open:  # compressed: count the file once it is read
            bar.update(file.stat().st_size)
    finish_pending()
    bar.close()

    if wanted is not None:
        unknown = [name for key, name in wanted.items() if key not in seen_names]
        if unknown:
            raise DataError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                            f"{', '.join(unknown)}; the sources hold: "
                            f"{', '.join(sorted(seen_names.values())) or '(none)'}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_cats = {cats[key].name: _write_category(cats[key], out_dir, fractions, seed, epsilon,
                                                   max_points) for key in sorted(cats)}
    report = {
        "sources": [os.fspath(f) for f in files],
        "out": os.fspath(out_dir),
        "formats": dict(formats),
        "lines_read": lines_read,
        "imported": int(sum(len(c.sketches) for c in cats.values())),
        "dropped": dict(dropped),
        "dropped_examples": examples,
        "seed": seed, "split_fractions": list(fractions), "epsilon": epsilon,
        "max_points": max_points,
        "categories": report_cats,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    with atomic_open(out_dir / "import_report.json", "w") as fh:
        json.dump(report, fh, indent=1)
    return report


# ============================================================================================
# Download of the official sketch-rnn npz files
# ============================================================================================


def category_url(category: str, base_url: str = DEFAULT_BASE_URL) -> str:
    return base_url.rstrip("/") + "/" + urllib.parse.quote(category) + ".npz"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_checksums(path: str | os.PathLike) -> dict[str, str]:
    """`sha256sum` output (`HEX  name` per line) or a JSON `{name: hex}` -> `{name: hex}`.

    Names are file names (`cat.npz`); a bare category name is accepted too.
    """
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DataError(f"{path}: cannot read checksums ({e})") from None
    table: dict[str, str] = {}
    if text.lstrip().startswith("{"):
        try:
            items = json.loads(text).items()
        except ValueError as e:
            raise DataError(f"{path}: invalid JSON ({e})") from None
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.strip().split(None, 1)
            if len(parts) != 2:
                raise DataError(f"{path}:{n}: expected 'SHA256  NAME', got {line!r}")
            items.append((parts[1].lstrip("*"), parts[0]))
    for name, digest in items:
        digest = str(digest).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(f"{path}: {name!r} has no valid sha256 ({digest!r})")
        name = os.path.basename(str(name))
        table[name if name.endswith(".npz") else name + ".npz"] = digest
    return table


def _unknown_category_message(category: str, why: str) -> str:
    close = difflib.get_close_matches(category.replace("_", " "), QUICKDRAW_CATEGORIES, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown category {category!r} ({why}){hint}"


def check_official_category(category: str) -> None:
    """DataError (with the closest names) unless `category` is one of the 345 QuickDraw names."""
    if category not in QUICKDRAW_CATEGORIES:
        raise DataError(_unknown_category_message(
            category, "not one of the 345 Quick, Draw! categories"))


def _is_sketchrnn_npz(path: Path) -> bool:
    try:
        load_npz(path, SPLITS, on_bad="drop")
        return True
    except DataError:
        return False


def _write_sidecar(sidecar: Path, digest: str, name: str) -> None:
    with atomic_open(sidecar, "w") as fh:
        fh.write(f"{digest}  {name}\n")


def _check_base_url(base_url: str) -> str:
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--base-url must be an http:// or https:// URL, got {base_url!r}")
    return parts.netloc


def download_category(category: str, out_dir: str | os.PathLike, *,
                      base_url: str = DEFAULT_BASE_URL, expected_sha256: str | None = None,
                      force: bool = False, timeout: float = 60.0, progress: bool = True,
                      chunk_size: int = 1 << 20) -> dict:
    """Fetch `<base_url>/<category>.npz` into `out_dir`, resuming a previous partial download.

    Bytes go to `<cat>.npz.part` (an HTTP Range request continues it); once complete the file must
    match Content-Length, `expected_sha256` if given, and open as a sketch-rnn npz through the
    safe loader; then it is renamed into place and its sha256 written to `<cat>.npz.sha256`
    (`sha256sum -c` format). An existing file that matches its recorded checksum is kept.
    Returns `{"category", "path", "sha256", "bytes", "resumed_from", "status"}`.
    """
    host = _check_base_url(base_url)
    if base_url == DEFAULT_BASE_URL:  # no request for a name Google does not have
        check_official_category(category)
    url = category_url(category, base_url)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / _output_name(category)
    part = final.with_name(final.name + ".part")
    sidecar = final.with_name(final.name + ".sha256")

    if final.is_file() and not force:
        # Keep a file that matches the expected or recorded checksum (or, with neither, that opens).
        digest = sha256_file(final)
        recorded = sidecar.read_text().split()[0] if sidecar.is_file() else None
        wanted = (expected_sha256 or "").lower() or recorded
        keep = digest == wanted if wanted else _is_sketchrnn_npz(final)
        if keep:
            if not recorded:
                _write_sidecar(sidecar, digest, final.name)
            return {"category": category, "path": os.fspath(final), "sha256": digest,
                    "bytes": final.stat().st_size, "resumed_from": 0, "status": "present"}

    start = part.stat().st_size if part.is_file() else 0
    for attempt in range(2):  # a second try only after a stale .part was thrown away (HTTP 416)
        request = urllib.request.Request(url, headers={"User-Agent": "sketchlab"})
        if start:
            request.add_header("Range", f"bytes={start}-")
        try:
            # A fresh opener per call: proxy settings are read from the environment now.
            response = urllib.request.build_opener().open(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                why = f"{url} returned 404 Not Found"
                raise DataError(_unknown_category_message(category, why)) from None
            if e.code == 416 and start and attempt == 0:
                part.unlink()
                start = 0
                continue
            raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise DataError(f"could not reach {host} to download {category!r} ({e.reason}); "
                            f"check the network connection or --base-url") from None
        except (socket.timeout, TimeoutError, ConnectionError) as e:
            raise DataError(f"could not reach {host} to download {category!r} ({e}); "
                            f"check the network connection or --base-url") from None
        break

    with response:
        if start and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                raise DataError(f"{url}: server answered the range request for bytes {start}- "
                                f"with Content-Range {content_range!r}; delete {part} and retry")
            size_text = content_range.rsplit("/", 1)[1]
            total = None if size_text == "*" else int(size_text)
        else:
            start = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        resumed_from = start
        bar = _progress(progress=progress, total=total, initial=start, unit="B", unit_scale=True,
                        desc=category)
        try:
            with open(part, "ab" if start else "wb") as fh:
                while block := response.read(chunk_size):
                    fh.write(block)
                    bar.update(len(block))
                fh.flush()
                os.fsync(fh.fileno())
        except (OSError, socket.timeout, ConnectionError) as e:
            raise DataError(f"download of {category!r} from {host} was interrupted after "
                            f"{part.stat().st_size} bytes ({e}); run the command again to "
                            f"resume") from None
        except Exception as e:  # http.client.IncompleteRead and friends
            raise DataError(f"download of {category!r} from {host} was interrupted after "
                            f"{part.stat().st_size} bytes ({type(e).__name__}); run the command "
                            f"again to resume") from None
        finally:
            bar.close()

    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise DataError(f"download of {category!r} is incomplete: {size} of {total} bytes "
                        f"arrived; run the command again to resume")
    digest = sha256_file(part)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        part.unlink()
        raise DataError(f"{url}: sha256 {digest} does not match the expected {expected_sha256}; "
                        f"the download was discarded")
    try:
        load_npz(part, SPLITS, on_bad="drop")  # structure only: odd sketches are the loader's job
    except DataError as e:
        part.unlink()
        raise DataError(f"{url} did not deliver a valid sketch-rnn npz ({e}); discarded") from None
    os.replace(part, final)
    _write_sidecar(sidecar, digest, final.name)
    return {"category": category, "path": os.fspath(final), "sha256": digest, "bytes": size,
            "resumed_from": resumed_from, "status": "resumed" if resumed_from else "downloaded"}
