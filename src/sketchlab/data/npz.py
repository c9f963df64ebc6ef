"""Safe sketch-rnn `.npz` files: read them without arbitrary unpickling, write the standard layout.

sketch-rnn `.npz` files hold one object array per split (`train`, `valid`, `test`) whose elements
are int16 stroke-3 arrays. numpy can read object arrays only by unpickling them, and unpickling a
stranger's file runs whatever code it names. So this module never calls
`np.load(..., allow_pickle=True)`: it opens the zip itself, parses each `.npy` header, and unpickles
object arrays with `_RestrictedUnpickler`, which hands out only the few numpy constructors an
array of numeric arrays needs (wrapped so they check their arguments) and refuses every other
global before anything runs.

What a bad file gets (the policy every loader here follows):

* **always a DataError** naming the file, the split and, where it applies, the sketch index: not a
  zip or truncated, a zip bomb (a member declaring a size out of proportion to the file, refused
  before it is inflated: `sketchlab.data.safezip`), a malformed `.npy` header, a missing split, a
  refused pickle global, an element that is not a numeric array, rows that are not stroke-3
  `(n, 3)`;
* **per-sketch content problems** (an empty sketch, NaN/inf, a pen value other than 0/1, more than
  `max_points` rows): a DataError by default (`on_bad="raise"`), or, with `on_bad="drop"`, the
  sketch is dropped and counted in the `dropped` dict the caller passes in.

Public API: `load_npz` / `load_npz_split` / `read_npz_array` / `npz_keys` (safe reading) and
`save_sketchrnn_npz` (the standard layout, readable by the original repos). Folders of these files
are read by `sketchlab.data.sources.load_categories`; ndjson becomes them in
`sketchlab.data.ndjson`.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np

from sketchlab.data.safezip import (MAX_MEMBER_BYTES, npy_members, numeric_array, open_zip,
                                    parse_npy_header, read_member_bytes)
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.fileio import atomic_open

SPLITS = ("train", "valid", "test")
# A stored sketch longer than this is taken for corruption, not for a drawing (the official files
# stay in the hundreds). Pass a larger `max_points` to read unusual data.
DEFAULT_MAX_POINTS = 10_000


# ============================================================================================
# Reading .npy members safely
# ============================================================================================


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


def _read_member(zf: zipfile.ZipFile, member: str, where: str,
                 max_bytes: int = MAX_MEMBER_BYTES) -> np.ndarray:
    """Read one `.npy` member: numeric arrays by their header, object arrays through the
    restricted unpickler (sizes checked first: `sketchlab.data.safezip`)."""
    data = read_member_bytes(zf, member, where, max_bytes)
    dtype, shape, fortran, offset = parse_npy_header(data, where)
    if dtype.hasobject:
        if dtype != np.dtype(object):
            raise DataError(f"{where}: structured dtype with Python objects {dtype} is not "
                            f"sketch data")
        arr = _restricted_unpickle(data[offset:], where)
        if not isinstance(arr, np.ndarray) or arr.dtype != object or arr.shape != shape:
            raise DataError(f"{where}: pickled payload is not the object array its header "
                            f"announces (shape {shape})")
        return arr
    return numeric_array(data, dtype, shape, fortran, offset, where)


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
    with open_zip(path) as zf:
        return sorted(npy_members(zf))


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
    with open_zip(path) as zf:
        members = npy_members(zf)
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
    with open_zip(path) as zf:
        members = npy_members(zf)
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
