"""The model-agnostic training loop (minGPT style): one trainer for every sketchlab model.

It owns what the seeds scattered over their scripts: the data splits and the scale factor, the
shuffled epochs, Adam and the learning-rate decay, both gradient-clipping modes, validation with
early stopping (optionally rewinding to the best checkpoint, as the RPCL seeds do), atomic
checkpoints that a killed run resumes from, NaN protection, AMP, CSV/TensorBoard logs, a progress
bar, and multi-GPU data parallelism under `torchrun` (the entry point first calls
`init_distributed`, which starts the process group; the trainer only reads whether one exists).

Faults: one training at a time holds the run directory (`checkpoint.RunLock`); a checkpoint is one
file committed by one rename, so a run killed at any moment (SIGKILL included) resumes from the
last complete one, with `log.csv` cut back to its step, and ends with the same weights, bit for
bit, as a run never killed. Non-finite steps are skipped; when they persist (or the weights or
the validation loss turn NaN) the trainer goes back to the last checkpoint with new batches and
half the learning rate, at most `MAX_NAN_RESTORES` times, then stops with a message saying what
to change. Weights that hold NaN or inf are never written.

Batches are the model's `make_batch` of the sketches; when the data carries categories, each batch
also holds `category`, the sketches' int64 indices into the run's categories (a classifier's
targets; the other models ignore it).

Reproducibility: the order of epoch `e` is `default_rng([seed, e]).permutation(N)` and the
augmentation RNG of step `s` is `default_rng([seed, 1, s])`, so a resumed run sees exactly the
batches an uninterrupted one would. After the r-th rewind to the best checkpoint both seeds gain
a word r, so retried epochs see a new order, as the seeds' do (after the k-th NaN restore, words
r and k). Validation runs under its own fixed torch seed, so validating the same weights twice
gives the same number and does not move the training's random stream.
"""

from __future__ import annotations

import copy
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from sketchlab.errors import CheckpointError, ConfigError, DataError, OutputError
from sketchlab.fileio import remove_stale_temporaries
from sketchlab.nn.device import pick_device
from sketchlab.progress import Progress
from sketchlab.train import checkpoint as ckpt
from sketchlab import zoo
from sketchlab.train.data import PreparedData, category_labels, prepare_data
from sketchlab.train.graphed import GraphedTrainer, load_optimizer_state_in_place
from sketchlab.train.runlog import RunLog

# Consecutive non-finite steps after which the trainer goes back to the last checkpoint.
MAX_BAD_STEPS = 5
# Returns to the last checkpoint after divergence before the trainer gives up, and the factor
# on the learning rate each one applies (it stays for the rest of the run, resumes included).
MAX_NAN_RESTORES = 3
NAN_LR_BACKOFF = 0.5


def _check_limit(name: str, value, integer: bool) -> None:
    if value is None:
        return
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and (isinstance(value, int) or not integer) and math.isfinite(value) and value >= 0)
    if not ok:
        raise ConfigError(f"{name}={value!r}: must be {'a whole' if integer else 'a'} number >= 0")


def learning_rate(cfg, step: int) -> float:
    """The seeds' decay: (lr0 - lr_min) * decay ** (step / lr_decay_every) + lr_min."""
    return ((cfg.learning_rate - cfg.min_learning_rate)
            * cfg.decay_rate ** (step / cfg.lr_decay_every) + cfg.min_learning_rate)


def clip_gradients(params: list[torch.nn.Parameter], mode: str, clip: float) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or mode == "none" or clip <= 0:
        return
    if mode == "value":          # tf.clip_by_value on every element (magenta, RPCL seeds)
        for g in grads:
            g.clamp_(-clip, clip)
    elif mode == "norm":         # tf.clip_by_norm per variable (SP-gra2seq, SketchGloc)
        for g in grads:
            n = torch.linalg.vector_norm(g.float())
            g.mul_(torch.clamp(clip / (n + 1e-12), max=1.0).to(g.dtype))
    elif mode == "global_norm":
        torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        raise ConfigError(f"clip_mode={mode!r}: choose value, norm, global_norm or none")


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------------------------------------
# Multi-process data parallelism
# ---------------------------------------------------------------------------------------------


def init_distributed(device: torch.device | None = None) -> bool:
    """Join the process group that `torchrun` describes in the environment (WORLD_SIZE > 1);
    nothing otherwise. Returns whether this process is now one of several.

    A process-wide side effect, so the entry point (`sketchlab train`, a user's script) calls it
    once, before building the `Trainer`. The backend is NCCL when the processes train on CUDA
    (`device`, default the best available) and gloo otherwise; on CUDA each process also makes
    its own GPU (LOCAL_RANK) the current one, as NCCL needs.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = (device if device is not None else pick_device()).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return _group_size() > 1


def _group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _local_device(device: torch.device, distributed: bool) -> torch.device:
    """Under a process group, a CUDA device without an index means this process's GPU."""
    if distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    """Train `model` on prepared splits into `run_dir`, resuming from it when it holds a checkpoint.

    `max_steps` caps the global step counter; `max_epochs` the epochs; `max_seconds` the wall
    time of this `train()` call (checked between steps; the run then validates and checkpoints as
    a run cut by max_steps does, and resumes like any other); otherwise the model's early
    stopping (`patience`) decides. `log` receives human-readable progress lines.
    """

    def __init__(self, model, data: PreparedData, run_dir, *, device: torch.device | None = None,
                 max_steps: int | None = None, max_epochs: int | None = None,
                 progress: bool = True, log: Callable[[str], None] = print,
                 model_name: str | None = None, run_info: dict | None = None,
                 max_seconds: float | None = None):
        self.cfg = model.config
        self.data = data
        self.run_dir = Path(run_dir)
        _check_limit("max_steps", max_steps, integer=True)
        _check_limit("max_epochs", max_epochs, integer=True)
        _check_limit("max_seconds", max_seconds, integer=False)
        if zoo.is_inside_zoo(self.run_dir) or str(run_dir).startswith(zoo.PREFIX):
            raise ConfigError(f"--out {run_dir}: the pretrained zoo is read-only; train into a "
                              f"folder of your own (`sketchlab zoo train NAME --out DIR` "
                              f"reproduces an entry)")
        self.max_steps = max_steps if max_steps is not None else (model.config.max_steps or None)
        self.max_epochs = max_epochs
        self.max_seconds = max_seconds
        self._deadline: float | None = None
        self.progress = progress
        self.log_fn = log
        self.model_name = model_name or model.name
        self.run_info = dict(run_info or {})   # extra config.json fields (e.g. the data source)

        # Multi-GPU under torchrun: one process per device, gradients all-reduced by DDP. The
        # process group is the entry point's to start (`init_distributed`); the trainer only
        # reads whether there is one.
        self.world = _group_size()
        self.distributed = self.world > 1
        self.rank = dist.get_rank() if self.distributed else 0
        if not self.distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} (torchrun?) but this process "
                              f"joined no process group: call "
                              f"sketchlab.train.trainer.init_distributed() before the Trainer")
        device = _local_device(device if device is not None else pick_device(), self.distributed)
        self.device = device
        self.is_main = self.rank == 0

        self.model = model.to(device)
        self.model.setup_from_data(data)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # Whole-step CUDA graphs when the model allows them (see sketchlab.train.graphed).
        self.graph_mode = (device.type == "cuda" and getattr(self.cfg, "cuda_graph", False)
                           and self.world == 1 and model.graph_key(0) is not None)
        self.optimizer = self._make_optimizer()
        if getattr(self.cfg, "reload_best", False) and not self.cfg.patience:
            # every validation that does not improve would rewind, with nothing to end it: the
            # step counter could circle below max_steps forever
            raise ConfigError("reload_best=True with patience=0 rewinds after every validation "
                              "that does not improve and never stops, so the run may never "
                              "reach max_steps: set patience (the RPCL seeds use 5) or "
                              "reload_best=False")
        if self.cfg.clip_mode not in ("value", "norm", "global_norm", "none"):
            raise ConfigError(f"clip_mode={self.cfg.clip_mode!r}: choose value, norm, global_norm "
                              f"or none")
        self.graphed = None
        if self.graph_mode:
            self.graphed = GraphedTrainer(self.model, self.optimizer, self.params, self._graph_step_fn)
        self.ddp = None
        if self.distributed:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=getattr(self.cfg, "ddp_find_unused", False))

        self._labels = {split: category_labels(sk, data.categories)
                        for split, sk in data.splits.items()}
        n_train = len(data.splits["train"])
        per_rank = n_train // self.world
        self.batches_per_epoch = per_rank // self.cfg.batch_size
        if self.batches_per_epoch == 0:
            raise DataError(f"the training split has {n_train} sketches, fewer than one batch of "
                            f"{self.cfg.batch_size} per process; lower batch_size (--hparams "
                            f"batch_size=N, or `sketchlab classifier train --batch-size N`)")

        # Counters (restored on resume).
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_valid = math.inf
        self.bad_evals = 0
        self.rewinds = 0                 # rewinds to the best checkpoint so far (seeds retried epochs)
        self.nan_restores = 0            # returns to the last checkpoint after divergence
        self.lr_scale = 1.0              # NAN_LR_BACKOFF ** nan_restores
        self.elapsed = 0.0
        self.stopped_early = False
        self.last_eval_step = -1
        self._moved = False              # set when a checkpoint is loaded mid-epoch (rewind, restore)
        self._log_rows: int | None = None  # log.csv rows when the loaded checkpoint was written
        self._runlog: RunLog | None = None
        # Per-term sums and counts since the last log row: a model may report a term only on
        # some steps (RPCL-pix2seqH computes L_R only on its sequence steps), so each term is
        # averaged over its own steps. Checkpointed, so a resumed run logs the same averages.
        self._term_sums: dict[str, float] = {}
        self._term_counts: dict[str, int] = {}

    # ---- set-up --------------------------------------------------------------------------------
    def _make_optimizer(self):
        cfg = self.cfg
        kind = getattr(cfg, "optimizer", "adam").lower()
        kw = dict(betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                  weight_decay=cfg.weight_decay, lr=cfg.learning_rate)
        if self.graph_mode:
            # A graph replays the optimizer too: its lr must be a device tensor updated in place.
            kw.update(lr=torch.tensor(cfg.learning_rate, device=self.device), fused=True,
                      capturable=True)
        if kind == "adam":
            return torch.optim.Adam(self.params, **kw)
        if kind == "adamw":
            return torch.optim.AdamW(self.params, **kw)
        raise ConfigError(f"optimizer={kind!r}: choose adam or adamw")

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def _load_optimizer(self, state_dict: dict) -> None:
        if self.graphed is not None and self.graphed.graphs:   # keep the captured tensors
            load_optimizer_state_in_place(self.optimizer, state_dict, self._fix_loaded_optimizer)
        else:
            self.optimizer.load_state_dict(state_dict)
            self._fix_loaded_optimizer()

    def _fix_loaded_optimizer(self) -> None:
        """A state saved by an eager run, loaded for graph replay: tensor lr, device step counters."""
        if not self.graph_mode:
            return
        for group in self.optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            group["capturable"], group["fused"] = True, True
        for state in self.optimizer.state.values():
            if "step" in state:
                state["step"] = state["step"].to(self.device, torch.float32)

    def _autocast(self):
        if self.device.type == "cuda" and getattr(self.cfg, "amp", False):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def say(self, msg: str) -> None:
        if self.is_main:
            self.log_fn(msg)

    # ---- checkpoints ---------------------------------------------------------------------------
    def _state(self) -> dict:
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {
            "model": self.model_name,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_valid": self.best_valid,
            "bad_evals": self.bad_evals,
            "rewinds": self.rewinds,
            "nan_restores": self.nan_restores,
            "lr_scale": self.lr_scale,
            "last_eval_step": self.last_eval_step,
            "elapsed": self.elapsed,
            "log_rows": self._runlog.rows if self._runlog is not None else None,
            "term_sums": dict(self._term_sums),
            "term_counts": dict(self._term_counts),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng,
        }

    def save(self, best: bool = False) -> None:
        """Write the latest checkpoint (and the best one first when `best`). Each is one file
        committed by one rename; a failed write (disk full) leaves the previous one intact."""
        if not self.is_main:
            return
        try:
            if not (self.run_dir / "config.json").is_file():
                ckpt.write_run_config(self.run_dir, self.model_name, self.cfg,
                                      self.data.scale_factor, self.data.categories,
                                      extra={"train_size": len(self.data.splits["train"]),
                                             **self.run_info})
            meta = {"model": self.model_name, "step": self.step}
            state = self._state()
            # best first: a kill between the two leaves the latest checkpoint older than the
            # best one, and the resumed run re-validates that step and finds the same best.
            if best:
                ckpt.save_checkpoint(self.run_dir, "best", self.model, state, meta)
            ckpt.save_checkpoint(self.run_dir, "latest", self.model, state, meta)
        except OutputError as e:
            raise CheckpointError(f"{e}: the checkpoint of step {self.step} was not written; the "
                                  f"previous one is intact. Free disk space (or fix the folder) "
                                  f"and run the same command again to resume from it") from None

    def _load(self, which: str) -> None:
        """Load checkpoint `which` ("latest" or "best"): weights, optimizer, counters, RNGs."""
        state = ckpt.load_checkpoint(self.run_dir, which, self.model, self.model_name)
        state_path = self.run_dir / ckpt.CHECKPOINT_FILES[which][0]
        try:
            self._load_optimizer(state["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{state_path}: its optimizer state does not fit this model "
                                  f"({str(e)[:200]})") from None
        if state["batch_in_epoch"] > self.batches_per_epoch:
            raise CheckpointError(f"{state_path}: batch {state['batch_in_epoch']} of an epoch of "
                                  f"{self.batches_per_epoch} batches: not this data; resume with "
                                  f"the same data, or choose a new --out")
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best_valid = float(state["best_valid"])
        self.bad_evals = int(state["bad_evals"])
        self.rewinds = int(state.get("rewinds", 0))
        self.nan_restores = int(state.get("nan_restores", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.last_eval_step = int(state.get("last_eval_step", -1))
        self.elapsed = float(state.get("elapsed", 0.0))
        if which == "latest":
            self._log_rows = state.get("log_rows")
            self._term_sums = dict(state.get("term_sums") or {})
            self._term_counts = dict(state.get("term_counts") or {})
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self._moved = True

    def maybe_resume(self) -> bool:
        """Resume from `run_dir` if it holds a checkpoint of this model. Returns True if resumed."""
        if not ckpt.has_checkpoint(self.run_dir, "latest"):
            return False
        info = ckpt.read_run_config(self.run_dir, expect_model=self.model_name)
        saved_scale = float(info.get("scale_factor", 0))
        if abs(saved_scale - self.data.scale_factor) > 1e-6 * self.data.scale_factor:
            raise CheckpointError(f"{self.run_dir}: its data scale factor {info.get('scale_factor')} "
                                  f"differs from this data's {self.data.scale_factor}; resume with "
                                  f"the same data and categories, or choose a new --out")
        saved_cats = info.get("categories")
        if saved_cats and list(saved_cats) != list(self.data.categories):
            raise CheckpointError(f"{self.run_dir}: this run was trained on categories "
                                  f"{', '.join(saved_cats)}, not {', '.join(self.data.categories)}; "
                                  f"resume with the run's categories, or choose a new --out")
        try:
            self._load("latest")
        except ckpt.InconsistentCheckpoint as e:
            # an older run directory killed between its two renames: its best pair may be whole
            if not ckpt.has_checkpoint(self.run_dir, "best"):
                raise
            self._load("best")
            self.say(f"note: {e}; resuming from the best checkpoint instead")
        self.say(f"resumed {self.run_dir} at step {self.step} (epoch {self.epoch}, "
                 f"batch {self.batch_in_epoch}/{self.batches_per_epoch})")
        return True

    def _rewind_to_best(self, reason: str) -> None:
        if self.distributed:
            dist.barrier()
        if ckpt.has_checkpoint(self.run_dir, "best"):
            # The seeds rewind weights, buffers and the step counter, but the retried epochs
            # see new data: their numpy RNG runs on. Here the data order and the batch RNG are
            # seeded by (epoch, step, rewinds) and the torch RNG is not rewound, so a retry is
            # not a replay of the epoch that just failed (it would fail again, identically).
            keep = (self.best_valid, self.bad_evals, self.rewinds + 1, self.nan_restores,
                    self.lr_scale)
            rng = torch.get_rng_state()
            cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
            moments = None if self.cfg.rewind_optimizer else copy.deepcopy(self.optimizer.state_dict())
            self._load("best")
            self.best_valid, self.bad_evals, self.rewinds, self.nan_restores, self.lr_scale = keep
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
            if moments is not None:
                self._load_optimizer(moments)
            self.say(f"{reason}: rewound to the best checkpoint (step {self.step})")

    # ---- batches -------------------------------------------------------------------------------
    def _retry(self) -> list[int]:
        """Extra seed words after a rewind or a NaN restore (none before: runs without either
        keep their data)."""
        if self.nan_restores:
            return [self.rewinds, self.nan_restores]
        return [self.rewinds] if self.rewinds else []

    def _epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.cfg.seed, epoch, *self._retry()]).permutation(
            len(self.data.splits["train"]))
        return perm[self.rank::self.world]

    def _make_batch(self, split: str, idx, train: bool, rng: np.random.Generator):
        """The model's batch of the sketches at `idx`, with their categories when the data has
        them (`category`: int64 indices into the run's categories; a classifier's targets)."""
        sk = self.data.splits[split]
        batch = self.model.make_batch([sk[int(i)] for i in idx], train, rng)
        labels = self._labels.get(split)
        if labels is not None:
            batch["category"] = torch.from_numpy(labels[np.asarray(idx, dtype=np.int64)])
        return batch

    def _train_batch(self, order: np.ndarray, b: int, step: int):
        bs = self.cfg.batch_size
        idx = order[b * bs:(b + 1) * bs]
        rng = np.random.default_rng([self.cfg.seed, 1, step, self.rank, *self._retry()])
        return self._make_batch("train", idx, True, rng)

    def valid_batches(self, split: str = "valid"):
        sk = self.data.splits[split]
        bs = self.cfg.batch_size
        n = max(1, len(sk) // bs) if len(sk) >= bs else 1
        if self.cfg.max_valid_batches:
            n = min(n, self.cfg.max_valid_batches)
        rng = np.random.default_rng([self.cfg.seed, 2])
        for b in range(n):
            yield self._make_batch(split, range(b * bs, min((b + 1) * bs, len(sk))), False, rng)

    # ---- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str = "valid") -> dict[str, float]:
        """The mean of each loss term over the split's batches, in eval mode, under a fixed torch
        seed (a VAE's sampled codes, ...): the same weights always score the same, and the
        training's random stream is left where it was."""
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        mps_rng = torch.mps.get_rng_state() if self.device.type == "mps" else None
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(int(np.random.SeedSequence([self.cfg.seed, 2]).generate_state(1)[0]))
            self.model.eval()
            sums: dict[str, float] = {}
            count = 0
            try:
                for batch in self.valid_batches(split):
                    batch = to_device(batch, self.device)
                    with self._autocast():
                        out = self.model.loss(batch, self.step)
                    for k, v in out.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
            finally:
                self.model.train()
        if mps_rng is not None:
            torch.mps.set_rng_state(mps_rng)
        return {k: v / max(count, 1) for k, v in sums.items()}

    # ---- the loop ------------------------------------------------------------------------------
    def _should_stop(self) -> bool:
        if self.max_steps is not None and self.step >= self.max_steps:
            return True
        if self.max_epochs is not None and self.epoch >= self.max_epochs:
            return True
        if self._deadline is not None and time.time() >= self._deadline:
            return True
        return self.stopped_early

    def train(self) -> dict:
        """Run until max_steps / max_epochs / the time limit / early stopping. Returns a summary."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise CheckpointError(f"{self.run_dir}: a file, not a run directory; give --out a "
                                  f"folder")
        lock = ckpt.RunLock(self.run_dir, self.say) if self.is_main else nullcontext()
        with lock:
            if self.is_main:
                removed = remove_stale_temporaries(self.run_dir)
                if removed:
                    self.say(f"note: removed {len(removed)} unfinished temporary file(s) of a "
                             f"killed write ({', '.join(p.name for p in removed[:3])}"
                             f"{', ...' if len(removed) > 3 else ''})")
            if (self.run_dir / "config.json").is_file():   # never write into another model's run
                ckpt.read_run_config(self.run_dir, expect_model=self.model_name)
            self.maybe_resume()
            self._moved = False
            if self.max_seconds is not None:
                self._deadline = time.time() + self.max_seconds
            self.model.train()
            self._open_session()
            try:
                while not self._should_stop():
                    self._train_epoch()
                self._finish()
            except KeyboardInterrupt:
                try:
                    self.save()
                    self.say(f"interrupted: checkpoint written at step {self.step}; run the same "
                             f"command to resume")
                except CheckpointError as e:
                    self.say(f"interrupted: no checkpoint written ({e})")
                raise
            finally:
                self._close_session()
        return {"step": self.step, "epoch": self.epoch, "best_valid": self.best_valid,
                "stopped_early": self.stopped_early, "elapsed": self.elapsed}

    def _open_session(self) -> None:
        """What one `train()` call holds: the log, the progress bar, the prefetch thread, and the
        running sums of the loss terms between two log rows."""
        # Rows beyond the checkpoint were written by a run killed after them: drop them (a
        # fresh run drops a log left by a run killed before its first checkpoint).
        self._runlog = RunLog(self.run_dir, self.is_main, keep_rows=self._log_rows,
                              fresh=not ckpt.has_checkpoint(self.run_dir), first_step=self.step)
        self._bar = None
        if self.progress and self.is_main:
            total = self.max_steps
            self._bar = Progress(total, self.model_name, "steps",
                                 initial=min(self.step, total or self.step))
        self._pool = ThreadPoolExecutor(max_workers=1)   # prepares the next batch during a step
        self._bad_steps = 0
        self._t_last = time.time()

    def _close_session(self) -> None:
        self._pool.shutdown(wait=True)
        if self._bar is not None:
            self._bar.close()
        self._runlog.close()

    def _train_epoch(self) -> None:
        """Train on the rest of the current epoch (from `batch_in_epoch`), then close the epoch.

        Returns early when a stop condition holds, or when a checkpoint was loaded mid-epoch (a
        rewind to the best one, a restore after divergence): the caller's loop then carries on
        from the loaded position, with that position's batch order."""
        order = self._epoch_order(self.epoch)
        pending = None
        while self.batch_in_epoch < self.batches_per_epoch and not self._should_stop():
            step = self.step
            batch, pending = self._next_batch(order, pending)
            lr = learning_rate(self.cfg, step) * self.lr_scale
            terms = self._train_step(self._step_input(batch, step), step, lr, self._forward)
            if terms is None:
                self._skip_step(step)
            else:
                self._bad_steps = 0
                self.step += 1
                self.batch_in_epoch += 1
                self._log_step(terms, lr)
                self._validate_or_checkpoint()
            if self._moved:
                self._moved = False
                return
        if self.batch_in_epoch >= self.batches_per_epoch:
            self._end_epoch()
            self._moved = False

    @property
    def _forward(self):
        """What computes the loss: the DDP wrapper (it all-reduces the gradients) or the model."""
        return self.ddp if self.ddp is not None else self.model

    def _next_batch(self, order: np.ndarray, pending):
        """This position's batch (prefetched by the previous call when it guessed this
        position) and the next batch of the epoch, started on the prefetch thread."""
        b, step = self.batch_in_epoch, self.step
        if pending is not None and pending[0] == (b, step):
            batch = pending[1].result()
        else:   # first call, or a skipped step moved the position differently than guessed
            batch = self._train_batch(order, b, step)
        pending = (((b + 1, step + 1), self._pool.submit(self._train_batch, order, b + 1, step + 1))
                   if b + 1 < self.batches_per_epoch else None)
        return batch, pending

    def _step_input(self, batch, step: int):
        """The batch on the device, with the step for schedules computed in the loss, after the
        model's eager preparation (e.g. rasterising)."""
        batch["step"] = torch.tensor(float(step), dtype=torch.float64)
        batch = to_device(batch, self.device)
        with torch.no_grad():
            return self.model.prepare_step(batch)

    def _skip_step(self, step: int) -> None:
        """A non-finite step left the parameters as they were. After MAX_BAD_STEPS in a row, or
        when the forward pass left NaN in the buffers (batch-norm statistics), go back to the
        last checkpoint; otherwise move on to the next batch."""
        self._bad_steps += 1
        self.say(f"step {step}: non-finite loss or gradient; update skipped "
                 f"({self._bad_steps} in a row)")
        if self._bad_steps >= MAX_BAD_STEPS:
            self._restore_after_divergence(f"{self._bad_steps} non-finite steps in a row")
        elif not self._weights_finite():
            self._restore_after_divergence("the forward pass left NaN or inf in the model's "
                                           "buffers")
        else:
            self.batch_in_epoch += 1

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.model.state_dict().values()
                   if t.is_floating_point())

    def _log_step(self, terms: dict[str, float], lr: float) -> None:
        """Count the step's time and terms; a log.csv row of the averages every few steps."""
        for k, v in terms.items():
            self._term_sums[k] = self._term_sums.get(k, 0.0) + v
            self._term_counts[k] = self._term_counts.get(k, 0) + 1
        now = time.time()
        self.elapsed += now - self._t_last
        self._t_last = now
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{terms['loss']:.3f}", epoch=self.epoch)
        log_every = max(1, min(20, self.batches_per_epoch))
        if self.step % log_every == 0:
            row = {"step": self.step, "epoch": self.epoch, "lr": lr,
                   "elapsed": round(self.elapsed, 2)}
            row.update({k: v / self._term_counts[k] for k, v in self._term_sums.items()})
            self._runlog.write(row)
            self._term_sums, self._term_counts = {}, {}

    def _validate_or_checkpoint(self) -> None:
        if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
            self._validate()
        elif self.step % max(1, self.cfg.checkpoint_every) == 0:
            self._checkpoint()

    def _checkpoint(self, best: bool = False) -> None:
        """`save`, unless the weights turned NaN or inf: then back to the last checkpoint."""
        if self._weights_finite():
            self.save(best)
        else:
            self._restore_after_divergence("the weights hold NaN or inf")

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        if not self.cfg.eval_every:
            self._validate()

    def _finish(self) -> None:
        """A run cut by max_steps or the time limit still validates and gets its best checkpoint
        (a cut is not a plateau: that validation neither counts against patience nor rewinds)."""
        if self._deadline is not None and time.time() >= self._deadline:
            self.say(f"time limit of {self.max_seconds:.0f}s reached at step {self.step}")
        if self.last_eval_step != self.step and not self.stopped_early:
            self._validate(cut=True)
            if self._moved:   # diverged at the very end: the restored checkpoint stands
                self._moved = False
        else:
            self._checkpoint()

    def _train_step(self, batch, step: int, lr: float, forward) -> dict[str, float] | None:
        """One optimisation step; the loss terms as floats, or None if it was not finite."""
        self._set_lr(lr)
        if self.graphed is not None:
            key = self.model.graph_key(step)
            if key is not None and self.graphed.fits(key, batch):
                try:
                    return self.graphed(key, batch, step)
                except Exception as e:  # e.g. an op that cannot be captured: carry on eagerly
                    if key not in self.graphed.graphs:
                        self.say(f"note: CUDA-graph capture failed ({type(e).__name__}: "
                                 f"{str(e)[:300]}); training eagerly from here")
                        self.graphed = None
                    else:
                        raise
        # Zeroed (not None) gradients: Adam then moves every parameter each step, as TF's Adam
        # does, even a branch the loss skipped this step.
        self.optimizer.zero_grad(set_to_none=False)
        with self._autocast():
            out = forward(batch, step)
        loss = out["loss"]
        if not bool(torch.isfinite(loss)):
            return None
        loss.backward()
        clip_gradients(self.params, self.cfg.clip_mode, self.cfg.grad_clip)
        if not bool(torch.stack([torch.isfinite(p.grad).all() for p in self.params
                                 if p.grad is not None]).all()):
            return None
        self.optimizer.step()
        self.model.on_step_end(step)
        return {k: float(v.detach()) for k, v in out.items()}

    def _graph_step_fn(self, batch, step: int) -> dict[str, torch.Tensor]:
        """The captured step: no host syncs; finiteness is returned as a tensor."""
        self.optimizer.zero_grad(set_to_none=False)
        with self._autocast():
            out = self.model(batch, step)
        out["loss"].backward()
        clip_gradients(self.params, self.cfg.clip_mode, self.cfg.grad_clip)
        finite = torch.isfinite(out["loss"]) & torch.stack(
            [torch.isfinite(p.grad).all() for p in self.params if p.grad is not None]).all()
        self.optimizer.step()
        self.model.on_step_end(step)
        terms = {k: v.detach().float() for k, v in out.items()}
        terms["_finite"] = finite
        return terms

    def _validate(self, cut: bool = False) -> None:
        """Validate; keep the best checkpoint; count patience, stop early or rewind (not when
        `cut`: the final validation of a run stopped by a step or time limit)."""
        self.last_eval_step = self.step
        metrics = self.evaluate("valid")
        key = self.cfg.valid_metric
        if key not in metrics:
            raise ConfigError(f"valid_metric={key!r} is not a loss term of {self.model_name} "
                              f"(terms: {sorted(metrics)})")
        value = metrics[key]
        if not math.isfinite(value) or not self._weights_finite():
            self._restore_after_divergence(
                f"step {self.step}: validation {key} is {value}" if not math.isfinite(value)
                else f"step {self.step}: the weights hold NaN or inf")
            return
        row = {"step": self.step, "epoch": self.epoch,
               "lr": learning_rate(self.cfg, self.step) * self.lr_scale,
               "elapsed": round(self.elapsed, 2)}
        row.update({f"valid_{k}": v for k, v in metrics.items()})
        self._runlog.write(row)
        improved = value < self.best_valid
        self.say(f"step {self.step} epoch {self.epoch}: valid {key} {value:.4f}"
                 + (" (best)" if improved else f" (best {self.best_valid:.4f})"))
        if improved:
            self.best_valid = value
            self.bad_evals = 0
            self.save(best=True)
            return
        if cut or self.step < getattr(self.cfg, "patience_start", 0):
            self.save()      # a cut, or a warm-up phase: not held against the model
            return
        self.bad_evals += 1
        if self.cfg.patience and self.bad_evals >= self.cfg.patience:
            self.stopped_early = True
            self.say(f"early stop: {self.bad_evals} evaluations without improvement")
            self.save()
            return
        if self.cfg.reload_best:
            self._rewind_to_best(f"no improvement ({self.bad_evals}/{self.cfg.patience})")
        self.save()

    def _restore_after_divergence(self, reason: str) -> None:
        """The loss, the gradients or the weights went non-finite: go back to the last checkpoint
        on disk and retry with new batches and a lower learning rate; after MAX_NAN_RESTORES such
        returns, stop with what to change."""
        cfg = self.cfg
        clip = (f"grad_clip (now {cfg.grad_clip:g})" if cfg.clip_mode != "none"
                else "clip the gradients (clip_mode=global_norm,grad_clip=1)")
        advice = (f"lower learning_rate (now {cfg.learning_rate:g}; --hparams "
                  f"learning_rate=..., or --lr for `sketchlab classifier train`) or {clip}, or "
                  f"check the data for NaN or huge offsets")
        if not ckpt.has_checkpoint(self.run_dir, "latest"):
            raise DataError(f"training diverged at step {self.step} ({reason}) before the first "
                            f"checkpoint, so there is none to go back to: {advice}")
        if self.nan_restores >= MAX_NAN_RESTORES:
            raise ConfigError(f"training diverged ({reason}) again after {self.nan_restores} "
                              f"returns to the last checkpoint with new batches and the learning "
                              f"rate cut to x{self.lr_scale:g}: {advice}. The last good "
                              f"checkpoint (step {self._checkpoint_step()}) is kept in "
                              f"{self.run_dir}")
        keep = (self.rewinds, self.nan_restores + 1, self.lr_scale * NAN_LR_BACKOFF)
        self._load("latest")
        self.rewinds, self.nan_restores, self.lr_scale = keep
        self._bad_steps = 0
        if self.is_main:
            self._runlog.truncate(self._log_rows)
        self.say(f"{reason}: restored the checkpoint of step {self.step}; retrying with new "
                 f"batches and the learning rate x{self.lr_scale:g} (return "
                 f"{self.nan_restores} of at most {MAX_NAN_RESTORES}); if it happens again, "
                 f"lower learning_rate or grad_clip")

    def _checkpoint_step(self) -> int | str:
        try:
            return ckpt.load_state(self.run_dir / "state.pt")["step"]
        except CheckpointError:
            return "?"


# prepare_data and PreparedData are re-exported: callers build the trainer's input with them.
__all__ = ["MAX_BAD_STEPS", "MAX_NAN_RESTORES", "NAN_LR_BACKOFF", "PreparedData", "Trainer", "clip_gradients", "init_distributed",
           "learning_rate", "prepare_data", "to_device"]
