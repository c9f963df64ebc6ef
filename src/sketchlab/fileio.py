"""Atomic file writes: write to a temporary file in the same folder, fsync, rename over the target.

A killed process leaves either the old file or the new one, never a torn one (and at most a
`.NAME.XXXX.tmp` file beside it, which `remove_stale_temporaries` clears). A write that cannot
happen (a folder where the file should go, a file where a folder should be, the disk full, no
permission) raises an `OutputError` naming the path; the file that was there stays as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from sketchlab.errors import OutputError


TEMP_SUFFIX = ".tmp"


def _temp_prefix(name: str) -> str:
    return f".{name}."


def _cannot_write(path: Path, e: OSError) -> OutputError:
    reason = e.strerror or str(e)
    return OutputError(f"{path}: cannot write ({reason}); any file that was there is unchanged")


def _make_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()),
                       parent)
        raise OutputError(f"{path}: cannot create its folder: {blocker} is a file, not a "
                          f"folder") from None
    except OSError as e:
        raise OutputError(f"{path}: cannot create its folder {parent} "
                          f"({e.strerror or e})") from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Yield a temp file beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give the name of a file to write")
    _make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=TEMP_SUFFIX,
                                   dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise _cannot_write(path, e) from e
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that killed atomic writes left in `folder` (`.NAME.XXXX.tmp`).

    Only safe while no other process writes there (a run directory under its lock). Returns
    what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def atomic_write(path: str | os.PathLike, write, mode: str = "wb") -> None:
    """Call `write(fileobj)` on a temp file beside `path`, then rename it over `path`."""
    with atomic_open(path, mode) as fh:
        write(fh)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_savez(path: str | os.PathLike, **arrays) -> None:
    """`np.savez` written atomically: never a torn file."""
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
