"""How every benchmark reports: JSON on stdout, and the same JSON in `$OUT/NAME.json` when OUT
is set. The file is written atomically and may be rewritten after every measurement, so a run
cut by its time limit keeps what it measured. (Imported as `from report import ...`: a script's
own folder is on sys.path.)"""

from __future__ import annotations

import json
import os
from pathlib import Path


def out_dir() -> Path | None:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else None


def save(result: dict, name: str, indent: int = 2) -> None:
    """Write `result` to $OUT/NAME.json (nothing without OUT)."""
    folder = out_dir()
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=indent, default=float) + "\n")
    tmp.replace(path)


def emit(result: dict, name: str, indent: int | None = 2) -> dict:
    """Print `result` as JSON and save it to $OUT/NAME.json; returns it."""
    print(json.dumps(result, indent=indent, default=float), flush=True)
    save(result, name, indent or 2)
    return result
