"""Run directories: config.json, weights in safetensors, optimizer state, all written atomically.

A run directory holds

* `config.json`  model name, every hyperparameter, the data scale factor, categories, versions;
* `state.pt`  the latest resumable checkpoint: weights and buffers, optimizer, step, data
  position, best validation loss, RNG states, in ONE file (so one rename commits it);
* `model.safetensors`  the same weights for sampling and evaluation (written after `state.pt`);
* `best_state.pt` + `best.safetensors`  the same pair for the best validation loss;
* `log.csv` (and TensorBoard events when tensorboard is installed);
* `train.lock` while a training writes into it (`RunLock`: one writer per run directory).

Every file is written to a temporary name in the same folder and renamed over the old one
(`sketchlab.fileio`), so a killed run leaves either the old or the new file, never a torn one,
and a resume reads one consistent checkpoint: the weights inside `state.pt`, never a
`model.safetensors` of another step. (Run directories from before the weights moved into
`state.pt` resume from the pair when both carry the same step.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from sketchlab import __version__
from sketchlab.config import to_dict
from sketchlab.errors import CheckpointError
from sketchlab.fileio import atomic_write, atomic_write_text
from sketchlab.models.base import MODELS, SketchModel

if os.name == "posix":
    import fcntl
else:   # no flock: the lock falls back to an exclusive create and a pid check
    fcntl = None

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


# A run's config.json is a few kilobytes; refuse to parse something far larger.
MAX_CONFIG_BYTES = 16 << 20


def read_config_json(run_dir) -> dict[str, Any]:
    """The JSON object in `run_dir/config.json`, as written (no check of its fields)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: no config.json here; is {run_dir} a sketchlab run directory "
                              f"(made by `sketchlab train`)?")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, far more than a run's "
                                  f"config.json holds; not a sketchlab run")
        cfg = json.loads(path.read_bytes())
    except RecursionError:
        raise CheckpointError(f"{path}: unreadable (JSON nested too deeply); not a sketchlab "
                              f"run's config.json") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a sketchlab model run (expected a JSON object)")
    return cfg


def read_run_config(run_dir, expect_model: str | None = None) -> dict[str, Any]:
    """config.json with its fields checked: `model` a name, `format` one this version reads,
    `config` an object, `scale_factor` a positive number, `categories` a list of names."""
    path = Path(run_dir) / "config.json"
    cfg = read_config_json(run_dir)
    model = cfg.get("model")
    if model is not None and not isinstance(model, str):
        raise CheckpointError(f"{path}: 'model' is {_short(model)}, not a model name")
    if expect_model is not None and model is not None and model != expect_model:
        raise CheckpointError(f"{path}: this run holds a {model!r} model, not {expect_model!r}")
    if model is None or "config" not in cfg:
        raise CheckpointError(f"{path}: not a sketchlab model run (missing 'model'/'config')")
    if expect_model is None and model not in MODELS:
        raise CheckpointError(f"{path}: 'model' is {_short(model)}, which this sketchlab does "
                              f"not know (models: {', '.join(MODELS)})")
    fmt = cfg.get("format", 0)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 0:
        raise CheckpointError(f"{path}: 'format' is {_short(fmt)}, not a run format number")
    if fmt > RUN_FORMAT:
        raise CheckpointError(f"{path}: run format {fmt} is newer than this sketchlab "
                              f"({__version__}) understands; upgrade sketchlab")
    if not isinstance(cfg["config"], dict):
        raise CheckpointError(f"{path}: 'config' is {_short(cfg['config'])}, not an object of "
                              f"hyperparameters")
    if "scale_factor" in cfg:
        sf = cfg["scale_factor"]
        if (isinstance(sf, bool) or not isinstance(sf, (int, float)) or not math.isfinite(sf)
                or sf <= 0):
            raise CheckpointError(f"{path}: 'scale_factor' is {_short(sf)}, not a number > 0")
    cats = cfg.get("categories")
    if cats is not None and (not isinstance(cats, list)
                             or not all(isinstance(c, str) for c in cats)):
        raise CheckpointError(f"{path}: 'categories' is {_short(cats)}, not a list of names")
    return cfg


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------
# one writer per run directory
# ---------------------------------------------------------------------------------------------

LOCK_FILE = "train.lock"


class RunLock:
    """An exclusive lock on a run directory for one training at a time.

    `train.lock` holds the holder's pid, host, command and start time. It is taken with
    `flock` (released by the kernel when the holder dies, even by SIGKILL), so a lock file left
    by a dead training is taken over with a note; a live holder gets the newcomer refused with
    a message naming it. Where `flock` is not available the file is created exclusively and a
    lock of a dead pid on this host is taken over. Use as a context manager.
    """

    def __init__(self, run_dir, log: Callable[[str], None] = print):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.log = log
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _record(self) -> bytes:
        return (json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "command": " ".join(sys.argv)[:500],
                            "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n").encode()

    def acquire(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise CheckpointError(f"{self.run_dir}: a file, not a run directory; give --out a "
                                  f"folder") from None
        for _ in range(100):   # a holder releasing at this very moment: look again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise CheckpointError(f"{self.path}: cannot create the run's lock file "
                                      f"({e.strerror or e})") from None
            if fcntl is None:
                os.close(fd)
                return self._acquire_without_flock()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise CheckpointError(self._held_message(holder)) from None
            except OSError:    # a file system without flock
                os.close(fd)
                return self._acquire_without_flock()
            if not _same_file(fd, self.path):    # unlinked by a holder releasing it: retry
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous and previous.get("host") not in (None, socket.gethostname()):
                # flock may not reach across machines: do not take another host's lock
                os.close(fd)
                raise CheckpointError(self._held_message(previous, other_host=True))
            self._write(fd)
            self._fd = fd
            if previous:
                self.log(f"note: {self.path} was left by pid {previous.get('pid')} "
                         f"({previous.get('command', '?')}), which is no longer running "
                         f"(killed?); taking the run over")
            return
        raise CheckpointError(f"{self.path}: could not take the lock (it changes hands "
                              f"constantly)")

    def _acquire_without_flock(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                with open(self.path, "rb") as fh:
                    holder = _parse_holder(fh.read())
                same_host = holder.get("host") == socket.gethostname()
                if holder and same_host and not _pid_alive(holder.get("pid")):
                    self.log(f"note: {self.path} was left by pid {holder.get('pid')}, which is "
                             f"no longer running; taking the run over")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                raise CheckpointError(self._held_message(holder, other_host=not same_host)) \
                    from None
            self._write(fd)
            self._fd = fd
            return
        raise CheckpointError(self._held_message({}))

    def _write(self, fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, self._record())
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise CheckpointError(f"{self.path}: cannot write the run's lock file "
                                  f"({e.strerror or e})") from None

    def _held_message(self, holder: dict, other_host: bool = False) -> str:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
               f"{holder.get('started', '?')} ({holder.get('command', '?')})")
        text = (f"{self.run_dir}: another training is writing into this run directory: {who}. "
                f"Two trainings in one folder would mix their checkpoints; wait for it to "
                f"finish, stop it, or train into another --out")
        if other_host:
            text += (f". If nothing runs there any more (the lock is from another machine and "
                     f"cannot be checked from here), delete {self.path}")
        return text

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(self._fd, self.path):
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return _parse_holder(os.read(fd, 4096))
    except OSError:
        return {}


def _parse_holder(data: bytes) -> dict:
    try:
        holder = json.loads(data.decode("utf-8", "replace") or "{}")
    except (ValueError, RecursionError):
        return {"pid": "?", "command": "an unreadable lock file"} if data.strip() else {}
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True    # unknown: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# weights and state
# ---------------------------------------------------------------------------------------------


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights and buffers, detached CPU copies (what a checkpoint stores)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def non_finite(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or inf."""
    return [k for k, v in weights.items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_weights(path, model: torch.nn.Module, metadata: dict[str, str],
                 weights: dict[str, torch.Tensor] | None = None) -> None:
    state = weights if weights is not None else weights_of(model)
    blob = save(state, metadata={k: str(v) for k, v in metadata.items()})
    atomic_write(path, lambda fh: fh.write(blob))


def load_weights(path, model: torch.nn.Module, model_name: str) -> dict[str, str]:
    """Load weights and buffers into `model`; refuse files of another model or shape, and
    weights that hold NaN or inf (a diverged training's)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for torn or foreign files
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") \
            from None
    if meta.get("model") and meta["model"] != model_name:
        raise CheckpointError(f"{path}: weights of a {meta['model']!r} model cannot load into "
                              f"{model_name!r}")
    load_state_dict_checked(model, state, path, model_name)
    return meta


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], path,
                            model_name: str) -> None:
    """`model.load_state_dict(state)` after checking names, shapes and finiteness (a sketch
    model first restores what its pretrained export left out: `SketchModel.complete_state`)."""
    if isinstance(model, SketchModel):
        state = model.complete_state(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state)
                   if not isinstance(state[k], torch.Tensor)
                   or tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            detail.append("shape mismatch " + ", ".join(
                f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(own[k].shape)}"
                for k in wrong[:3]))
        raise CheckpointError(f"{path}: does not match this {model_name} configuration: "
                              + "; ".join(detail))
    bad = non_finite(state)
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} of {len(state)} tensors hold NaN or inf "
                              f"(e.g. {bad[0]!r}): the training that wrote them diverged; use "
                              f"another checkpoint (--which best) or train again with a lower "
                              f"learning_rate")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: does not load into this {model_name} model "
                              f"({_first_line(e)})") from None


def save_state(path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_state(path) -> dict[str, Any]:
    """A `state.pt` read with `weights_only=True` (tensors, numbers, strings, lists and dicts:
    nothing in it can run code), its fields checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: {_state_load_problem(e)}") from None
    check_state(state, path)
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _state_load_problem(e: BaseException) -> str:
    """What went wrong reading a state file, without torch's advice to retry with
    `weights_only=False` (which would run whatever the file's pickle names)."""
    text = str(e)
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        detail = ""
        for line in text.splitlines():   # torch's wording varies between versions
            low = line.lower()
            if "global" in low and ("unsupported" in low or "blocked" in low
                                    or "unpickler error" in low):
                detail = line.split("error:", 1)[-1].strip()
                break
        return (f"refused: it names Python objects a checkpoint never holds"
                f"{f' ({detail[:200]})' if detail else ''}; a sketchlab state file holds only "
                f"tensors and numbers, so this file is damaged or hostile: do not load it with "
                f"other tools either")
    return f"unreadable or not a sketchlab state file ({_first_line(e)})"


# The counters of a state file: name -> (type check, what it must be).
_INT_FIELDS = ("step", "epoch", "batch_in_epoch", "bad_evals", "rewinds", "last_eval_step",
               "nan_restores")
_FLOAT_FIELDS = ("best_valid", "elapsed", "lr_scale")


def check_state(state, path) -> None:
    """Refuse a state file whose fields are not what the trainer writes, naming the field."""
    def fail(what: str):
        raise CheckpointError(f"{path}: {what}; the file is damaged or not a sketchlab state "
                              f"file")

    if not isinstance(state, dict):
        fail(f"holds a {type(state).__name__}, not a dict of training state")
    for key in ("model", "step", "epoch", "batch_in_epoch", "best_valid", "bad_evals",
                "optimizer", "torch_rng"):
        if key not in state:
            fail(f"no {key!r} field")
    if not isinstance(state["model"], str):
        fail(f"'model' is {_short(state['model'])}, not a model name")
    for key in _INT_FIELDS:
        if key in state:
            v = state[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < (-1 if key ==
                                                                     "last_eval_step" else 0):
                fail(f"{key!r} is {_short(v)}, not a whole number >= 0")
    for key in _FLOAT_FIELDS:
        if key in state:
            v = state[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                fail(f"{key!r} is {_short(v)}, not a number")
    if "lr_scale" in state and not 0 < state["lr_scale"] <= 1:
        fail(f"'lr_scale' is {state['lr_scale']}, not in (0, 1]")
    opt = state["optimizer"]
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) \
            or not isinstance(opt.get("param_groups"), list):
        fail("'optimizer' is not an optimizer state (state and param_groups)")
    for key in ("torch_rng", "cuda_rng"):
        v = state.get(key)
        if key == "cuda_rng" and v is None:
            continue
        if not isinstance(v, torch.Tensor) or v.dtype != torch.uint8 or v.dim() != 1:
            fail(f"{key!r} is not a random generator state (a uint8 tensor)")
    if state.get("log_rows") is not None and (isinstance(state["log_rows"], bool) or not
                                              isinstance(state["log_rows"], int)
                                              or state["log_rows"] < 0):
        fail(f"'log_rows' is {_short(state['log_rows'])}, not a whole number >= 0")
    for key, kind in (("term_sums", (int, float)), ("term_counts", int)):
        v = state.get(key)
        if v is not None and (not isinstance(v, dict) or not all(
                isinstance(k, str) and isinstance(x, kind) and not isinstance(x, bool)
                for k, x in v.items())):
            fail(f"{key!r} is not a dict of numbers by loss term")
    weights = state.get("weights")
    if weights is not None and (not isinstance(weights, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items())):
        fail("'weights' is not a dict of named tensors")


# ---------------------------------------------------------------------------------------------
# checkpoints: state + weights as one unit
# ---------------------------------------------------------------------------------------------

class InconsistentCheckpoint(CheckpointError):
    """A state file and a weights file of different steps (a run directory written before the
    weights moved into the state file, killed between its two renames)."""


# which -> (state file, weights file)
CHECKPOINT_FILES = {"latest": ("state.pt", "model.safetensors"),
                    "best": ("best_state.pt", "best.safetensors")}


def save_checkpoint(run_dir, which: str, model: torch.nn.Module, state: dict[str, Any],
                    metadata: dict[str, str]) -> None:
    """Write a checkpoint: the state file WITH the weights (the rename that commits it), then the
    weights alone as safetensors for sampling. Refuses weights that hold NaN or inf, so a
    diverged model never replaces a good checkpoint."""
    state_name, weights_name = CHECKPOINT_FILES[which]
    weights = weights_of(model)
    bad = non_finite(weights)
    if bad:
        raise CheckpointError(f"{Path(run_dir) / weights_name}: not written: {len(bad)} tensors "
                              f"hold NaN or inf (e.g. {bad[0]!r}); the previous checkpoint is "
                              f"kept")
    save_state(Path(run_dir) / state_name, {**state, "weights": weights})
    save_weights(Path(run_dir) / weights_name, model, metadata, weights)


def has_checkpoint(run_dir, which: str = "latest") -> bool:
    return (Path(run_dir) / CHECKPOINT_FILES[which][0]).is_file()


def load_checkpoint(run_dir, which: str, model: torch.nn.Module,
                    model_name: str) -> dict[str, Any]:
    """Load checkpoint `which` ("latest" or "best") into `model` and return its state.

    The weights come from the state file itself. A state file written before they moved there
    is paired with its safetensors file only when both carry the same step; otherwise a
    CheckpointError says the pair is inconsistent (a kill between the two renames)."""
    state_name, weights_name = CHECKPOINT_FILES[which]
    state_path, weights_path = Path(run_dir) / state_name, Path(run_dir) / weights_name
    state = load_state(state_path)
    if state["model"] != model_name:
        raise CheckpointError(f"{state_path}: state of a {state['model']!r} run, not "
                              f"{model_name!r}")
    weights = state.pop("weights", None)
    if weights is not None:
        load_state_dict_checked(model, weights, state_path, model_name)
        return state
    meta = _weights_metadata(weights_path)
    if str(meta.get("step")) != str(state["step"]):
        raise InconsistentCheckpoint(f"{run_dir}: {weights_name} is at step {meta.get('step')} but "
                              f"{state_name} at step {state['step']} (a training killed between "
                              f"the two writes); this pair cannot be resumed")
    load_weights(weights_path, model, model_name)
    return state


def _weights_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for torn or foreign files
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") \
            from None


__all__ = ["CHECKPOINT_FILES", "InconsistentCheckpoint", "LOCK_FILE", "RUN_FORMAT", "RunLock", "check_state",
           "has_checkpoint", "load_checkpoint", "load_state", "load_state_dict_checked",
           "load_weights", "non_finite", "read_config_json", "read_run_config",
           "save_checkpoint", "save_state", "save_weights", "weights_of", "write_run_config"]
