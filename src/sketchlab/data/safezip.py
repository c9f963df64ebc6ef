"""Reading `.npz` files from strangers: bounded memory, parsed headers, readable errors.

An `.npz` is a zip of `.npy` members. Three things in it can cost unbounded memory before any
content check runs, and each is refused here before it is read:

* a member whose declared (uncompressed) size is out of proportion to the file: a zip bomb
  (deflate inflates ~1000x, bzip2 far more), refused from the zip's directory before inflating;
* an `.npy` header announcing more elements than the member holds (numpy would allocate the
  announced array first);
* a header that is not the plain dict literal numpy writes.

`sketchlab.data.npz` (sketch-rnn files, whose object arrays it unpickles through a restricted
unpickler) and `Sketches.load` (pickle-free files) both read through this module. Every problem
is a `DataError` naming the file (and member).
"""

from __future__ import annotations

import ast
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sketchlab.errors import DataError

# Refuse a member that would inflate beyond this (no sketch file comes near it).
MAX_MEMBER_BYTES = 4 << 30
# ...or beyond this many times the whole file's size, once past RATIO_FLOOR bytes. Sketch data
# compresses about 3x (the official sketch-rnn files: 2.7-3.1x); a bomb, 1000x or more.
MAX_RATIO = 100
RATIO_FLOOR = 64 << 20


def open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    """Open an `.npz` for reading; a DataError naming the file when it is missing or no zip."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an .npz file")
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError) as e:
        raise DataError(f"{path}: not a readable .npz (zip) file, perhaps truncated ({e}); "
                        f"download or export it again") from None


def npy_members(zf: zipfile.ZipFile) -> dict[str, str]:
    """Array name -> member name (np.savez stores array `train` as `train.npy`)."""
    return {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}


def check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str,
                 max_bytes: int = MAX_MEMBER_BYTES) -> None:
    """Refuse a member whose declared size is beyond `max_bytes` or out of proportion to the
    file (a zip bomb), from the zip's directory alone, before anything is inflated."""
    if info.file_size > max_bytes:
        raise DataError(f"{where}: member declares {info.file_size} bytes uncompressed, over the "
                        f"{max_bytes}-byte limit; not sketch data")
    archive = _archive_size(zf)
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(archive, 1):
        raise DataError(f"{where}: member declares {info.file_size} bytes uncompressed from a "
                        f"{archive}-byte file (over {MAX_RATIO}x; sketch data compresses about "
                        f"3x): a zip bomb or a damaged file, refused before inflating it")


def _archive_size(zf: zipfile.ZipFile) -> int:
    try:
        if zf.filename is not None:
            return os.path.getsize(zf.filename)
        fp = zf.fp
        pos = fp.tell()
        end = fp.seek(0, os.SEEK_END)
        fp.seek(pos)
        return end
    except (OSError, AttributeError, ValueError):
        return 0


def read_member_bytes(zf: zipfile.ZipFile, member: str, where: str,
                      max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """The inflated bytes of one member, after `check_member`."""
    info = zf.getinfo(member)
    check_member(zf, info, where, max_bytes)
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
            RuntimeError, ValueError) as e:   # RuntimeError: an encrypted member
        raise DataError(f"{where}: corrupt or truncated zip member ({e})") from None


def parse_npy_header(data: bytes, where: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
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
    try:
        text = data[start:start + hlen].decode("utf8" if major == 3 else "latin1")
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as e:
        raise DataError(f"{where}: unreadable .npy header ({type(e).__name__})") from None
    if (not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}
            or not isinstance(header["shape"], tuple)
            or not all(type(d) is int and d >= 0 for d in header["shape"])
            or len(header["shape"]) > 32
            or not isinstance(header["fortran_order"], bool)):
        raise DataError(f"{where}: malformed .npy header {text.strip()[:200]!r}")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError, KeyError, IndexError, RecursionError) as e:
        raise DataError(f"{where}: .npy header names an invalid dtype "
                        f"{str(header['descr'])[:100]!r} ({type(e).__name__})") from None
    return dtype, header["shape"], header["fortran_order"], start + hlen


def numeric_array(data: bytes, dtype: np.dtype, shape: tuple[int, ...], fortran: bool,
                  offset: int, where: str) -> np.ndarray:
    """The array a parsed header announces, viewed from `data` (never larger than it)."""
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize > len(data) - offset:
        raise DataError(f"{where}: truncated array data ({len(data) - offset} bytes for "
                        f"{count} x {dtype})")
    try:
        return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(
            shape, order="F" if fortran else "C")
    except ValueError as e:   # e.g. a zero-sized dtype
        raise DataError(f"{where}: unreadable array of {dtype} ({e})") from None


def read_plain_array(zf: zipfile.ZipFile, member: str, where: str) -> np.ndarray:
    """One member holding a plain (no Python objects) array: numbers, booleans or strings."""
    data = read_member_bytes(zf, member, where)
    dtype, shape, fortran, offset = parse_npy_header(data, where)
    if dtype.hasobject:
        raise DataError(f"{where}: holds pickled Python objects; a sketchlab file never does "
                        f"(this file may be hostile: do not load it with allow_pickle=True)")
    return numeric_array(data, dtype, shape, fortran, offset, where)


__all__ = ["MAX_MEMBER_BYTES", "MAX_RATIO", "RATIO_FLOOR", "check_member", "npy_members",
           "numeric_array", "open_zip", "parse_npy_header", "read_member_bytes",
           "read_plain_array"]
