"""The pretrained zoo: small runs trained on a CPU by sketchlab itself, shipped inside the package.

Each entry is a folder `sketchlab/zoo/<name>/` holding a normal run directory (`config.json`,
`model.safetensors`, usually float16) plus `card.json`: what it was trained on, the recipe that
reproduces it (model, hyperparameters, categories, steps: data, not code), the CPU minutes it
took, its metrics on a held-out split, the sketchlab version and the sha256 of its weights.

Entries are read-only: `verify` checks the weights against the card's hash before anything
loads them, so a damaged installation is refused by name instead of drawing nonsense.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save

from sketchlab.errors import CheckpointError, ConfigError
from sketchlab.fileio import atomic_write_bytes, atomic_write_json

ZOO_DIR = Path(__file__).resolve().parent
PREFIX = "zoo:"
CARD = "card.json"
WEIGHTS = "model.safetensors"


def names() -> list[str]:
    """The entries shipped with this installation, sorted."""
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / CARD).is_file())


def closest(name: str, n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, names(), n=n, cutoff=0.4)


def unknown_name_error(name: str) -> ConfigError:
    near = closest(name)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return ConfigError(f"{name!r} is neither a run directory nor a pretrained model{hint}; "
                       f"pretrained models: {', '.join(names()) or '(none installed)'} "
                       f"(`sketchlab zoo list`)")


def entry_dir(name: str) -> Path:
    """The folder of entry `name` (with or without the `zoo:` prefix), or a ConfigError listing
    the entries that exist."""
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if name not in names():
        raise unknown_name_error(name)
    return ZOO_DIR / name


def is_inside_zoo(path: str | os.PathLike) -> bool:
    """True when `path` lies in the installed zoo (which must never be written to)."""
    try:
        Path(path).resolve().relative_to(ZOO_DIR)
        return True
    except ValueError:
        return False


def read_card(name: str) -> dict[str, Any]:
    path = entry_dir(name) / CARD
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: the card of pretrained model {name!r} is damaged ({e}); "
                              f"reinstall sketchlab") from e
    if not isinstance(card, dict) or "weights" not in card:
        raise CheckpointError(f"{path}: not a zoo card (no 'weights'); reinstall sketchlab")
    return card


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(name: str) -> Path:
    """Check entry `name`'s weights against its card (size and sha256); return its folder."""
    folder = entry_dir(name)
    card = read_card(name)
    weights = folder / card["weights"].get("file", WEIGHTS)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: pretrained model {name!r} has no weights file; "
                              f"reinstall sketchlab")
    expected = card["weights"].get("sha256")
    size = weights.stat().st_size
    if card["weights"].get("bytes") not in (None, size):
        raise CheckpointError(f"{weights}: pretrained model {name!r} is damaged ({size} bytes, its "
                              f"card says {card['weights']['bytes']}); reinstall sketchlab")
    if expected and sha256_file(weights) != expected:
        raise CheckpointError(f"{weights}: pretrained model {name!r} is damaged (sha256 does not "
                              f"match its card); reinstall sketchlab")
    return folder


SUMMARY_METRICS = ("rec@1", "ret@1", "heal10_rec@1", "heal30_rec@1", "ddpm_rec@1", "ddim30_rec@1",
                   "test_accuracy", "live_components", "nmi_component_category", "valid_loss")


def summary(card: dict[str, Any]) -> str:
    """An entry's main held-out metrics in one line, each with its bar where the card has one:
    "rec@1 0.700 (below 0.75); ret@1 0.600"."""
    metrics, bars = card.get("metrics", {}), card.get("bars", {})
    parts = []
    for key in SUMMARY_METRICS:
        value = metrics.get(key)
        if value is None:
            continue
        text = f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
        if key in bars:
            text += f" ({'meets' if bars[key]['met'] else 'below'} {bars[key]['bar']:g})"
        parts.append(text)
    return "; ".join(parts) or "-"


def markdown_table(entries: Sequence[str] | None = None) -> str:
    """The zoo as a Markdown table (the README's and `sketchlab demo`'s zoo.md): steps trained
    (and the step whose weights ship, when earlier), training minutes, weights, `summary`."""
    lines = ["| entry | model | steps | train min* | weights | held-out metrics (bar) |",
             "|---|---|---:|---:|---:|---|"]
    for name in (entries if entries is not None else names()):
        c = read_card(name)
        steps = str(c.get("steps", "-"))
        if c.get("step") and c.get("steps") and c["step"] != c["steps"]:
            steps += f" (best: {c['step']})"
        lines.append(f"| `{name}` | {c['model']} | {steps} | {c.get('train_minutes', '-')} "
                     f"| {c['weights']['bytes'] / 1e6:.1f} MB {c['weights']['dtype']} "
                     f"| {summary(c)} |")
    return "\n".join(lines) + "\n"


def export_run(run_dir: str | os.PathLike, name: str, card: dict[str, Any], *,
                weights: str = "best.safetensors", dtype: str = "float16",
                zoo_dir: str | os.PathLike = ZOO_DIR,
                shipped: Callable[[dict], dict] | None = None) -> Path:
    """Copy a trained run into the zoo as entry `name`: its config (the training machine's data
    path dropped), its weights cast to `dtype` (only the part `shipped` keeps, when given: the
    model's `shipped_state`), and `card` completed with the weights' hash.
    A developer tool (`sketchlab zoo add`): the installed zoo is otherwise never written."""
    run_dir = Path(run_dir)
    src = run_dir / weights
    if not src.is_file():
        src = run_dir / WEIGHTS
    info = json.loads((run_dir / "config.json").read_text())
    # The training machine's data path means nothing elsewhere (the card says how to import the
    # data); the built-in doodles are everywhere.
    info["data_dir"] = "builtin" if info.get("data_dir") in (None, "builtin") else None
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    if shipped is not None:
        state = shipped(state)
    cast = getattr(torch, dtype)
    state = {k: (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    blob = save(state, metadata=meta)
    out = Path(zoo_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS, blob)
    atomic_write_json(out / "config.json", info)
    card = dict(card)
    card.update(name=name, model=info["model"], categories=info.get("categories", []),
                step=int(meta.get("step", 0)),
                weights={"file": WEIGHTS, "dtype": dtype, "bytes": len(blob),
                         "sha256": hashlib.sha256(blob).hexdigest()})
    atomic_write_json(out / CARD, card)
    return out


__all__ = ["export_run", "summary", "PREFIX", "ZOO_DIR", "entry_dir", "is_inside_zoo", "names", "read_card", "verify",
           "sha256_file", "unknown_name_error"]
