"""Run directories: config.json, weights in safetensors, optimizer state, all written atomically.

A run directory holds

* `config.json`  model name, every hyperparameter, the data scale factor, categories, versions;
* `model.safetensors` + `state.pt`  the latest resumable checkpoint (weights and buffers; optimizer,
  step, data position, best validation loss, RNG states);
* `best.safetensors` + `best_state.pt`  the checkpoint with the best validation loss;
* `log.csv` (and TensorBoard events when tensorboard is installed).

Every file is written to a temporary name in the same folder and renamed over the old one, so a
killed run leaves either the old or the new file, never a torn one. The step is stored in both the
weights' metadata and the state, so a kill between the two renames is detected on resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from sketchlab import __version__
from sketchlab.config import to_dict
from sketchlab.errors import CheckpointError
from sketchlab.fileio import atomic_write, atomic_write_text

RUN_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------


def write_run_config(run_dir, model_name: str, config, scale_factor: float,
                     categories: list[str] | tuple[str, ...], extra: dict | None = None) -> None:
    payload = {
        "format": RUN_FORMAT,
        "kind": "model",
        "model": model_name,
        "sketchlab_version": __version__,
        "torch_version": torch.__version__,
        "scale_factor": float(scale_factor),
        "categories": list(categories),
        "config": to_dict(config),
    }
    if extra:
        payload.update(extra)
    atomic_write_text(Path(run_dir) / "config.json", json.dumps(payload, indent=2, default=str) + "\n")


def read_config_json(run_dir) -> dict[str, Any]:
    """The JSON object in `run_dir/config.json`, as written (no check of its fields)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: no config.json here; is {run_dir} a sketchlab run directory "
                              f"(made by `sketchlab train`)?")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a sketchlab model run (expected a JSON object)")
    return cfg


def read_run_config(run_dir, expect_model: str | None = None) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    cfg = read_config_json(run_dir)
    if expect_model is not None and "model" in cfg and cfg["model"] != expect_model:
        raise CheckpointError(f"{path}: this run holds a {cfg['model']!r} model, not {expect_model!r}")
    if "model" not in cfg or "config" not in cfg:
        raise CheckpointError(f"{path}: not a sketchlab model run (missing 'model'/'config')")
    if cfg.get("format", 0) > RUN_FORMAT:
        raise CheckpointError(f"{path}: run format {cfg['format']} is newer than this sketchlab "
                              f"({__version__}) understands; upgrade sketchlab")
    return cfg


# ---------------------------------------------------------------------------------------------
# weights and state
# ---------------------------------------------------------------------------------------------


def save_weights(path, model: torch.nn.Module, metadata: dict[str, str]) -> None:
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    blob = save(state, metadata={k: str(v) for k, v in metadata.items()})
    atomic_write(path, lambda fh: fh.write(blob))


def load_weights(path, model: torch.nn.Module, model_name: str) -> dict[str, str]:
    """Load weights and buffers into `model`; refuse files of another model or shape."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for torn or foreign files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("model") and meta["model"] != model_name:
        raise CheckpointError(f"{path}: weights of a {meta['model']!r} model cannot load into "
                              f"{model_name!r}")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            detail.append("shape mismatch " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3]))
        raise CheckpointError(f"{path}: does not match this {model_name} configuration: "
                              + "; ".join(detail))
    model.load_state_dict(state)
    return meta


def save_state(path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_state(path) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing") from e
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable or not a sketchlab state file ({e})") from e
