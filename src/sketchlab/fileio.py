"""Atomic file writes: write to a temporary file in the same folder, fsync, rename over the target.

A killed process leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Yield a temp file beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
