"""Whole training steps replayed from CUDA graphs (forward, loss, backward, clipping, Adam, buffers).

A sketch decoder step at length 250 launches thousands of small kernels; replaying them from one
CUDA graph removes the CPU launch cost, which is most of an eager step's time (HyperLSTM-2048 on
an H100: 361 ms eager bf16, 46 ms graphed). What the model must allow (`model.graph_key(step)`):

* static shapes: every training batch has the same tensor shapes (the seeds pad to a fixed
  max_seq_len and drop the last partial batch);
* no host synchronisation and no data-dependent Python branches inside `loss` / `on_step_end`;
* values that change with the step (KL weight, ...) computed from `batch["step"]`, a device
  tensor the trainer refreshes before each replay; Python control flow that depends on the step
  (RPCL vs EM steps, image-branch phases) is named by `graph_key(step)`: one graph per key.

Capture runs a few warm-up steps (building compiled kernels and the optimizer's state) and then
restores the weights, buffers, optimizer state and CUDA random state it started from, so
capturing changes nothing.
Each replay first copies the live state into a backup; if the step's loss or gradients are not
finite the backup is copied back, which is the eager path's "skip the update".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable

import torch
from torch import Tensor

from sketchlab.nn.cudagraph import capture, warm_up


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    finite: Tensor
    shapes: dict[str, tuple]


class GraphedTrainer:
    """Owns the captured graphs of one model/optimizer pair, one per `graph_key`."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, params: list[Tensor],
                 step_fn: Callable[[dict, int], dict[str, Tensor]], warmup: int = 3):
        self.model = model
        self.optimizer = optimizer
        self.params = params
        self.step_fn = step_fn            # forward + backward + clip + optimizer + on_step_end
        self.warmup = warmup
        self.graphs: dict[Hashable, _Graph] = {}
        self._backup: list[Tensor] | None = None
        self._pool = None

    # ---- the state a step mutates ----------------------------------------------------------------
    def _live(self) -> list[Tensor]:
        state = [t for p in self.params for t in self.optimizer.state.get(p, {}).values()
                 if isinstance(t, Tensor)]
        return list(self.params) + state + [b for b in self.model.buffers()]

    def _snapshot(self) -> tuple[list[Tensor], list[Tensor], dict]:
        live = self._live()
        opt_keys = {p: dict(self.optimizer.state.get(p, {})) for p in self.params}
        return live, [t.detach().clone() for t in live], opt_keys

    def _restore(self, snap) -> None:
        live, saved, opt_before = snap
        with torch.no_grad():
            for dst, src in zip(live, saved):
                dst.copy_(src)
            # Optimizer state created during warm-up did not exist before: start it from zero.
            for p in self.params:
                before = opt_before.get(p, {})
                for k, t in self.optimizer.state.get(p, {}).items():
                    if k not in before and isinstance(t, Tensor):
                        t.zero_()

    # ---- capture and replay ----------------------------------------------------------------------
    def _capture(self, key: Hashable, batch: dict[str, Tensor], step: int) -> _Graph:
        inputs = {k: v.clone() for k, v in batch.items()}
        snap = self._snapshot()
        rng = torch.cuda.get_rng_state()
        warm_up(lambda: self.step_fn(inputs, step), self.warmup)
        self._restore(snap)
        torch.cuda.set_rng_state(rng)     # warm-up draws leave the random stream untouched
        live = self._live()
        # What the graphs read and write: a later load must fill these very tensors (tests check).
        self.captured_ids = [id(t) for t in live] + [id(g["lr"]) for g in self.optimizer.param_groups]
        if self._backup is None:          # one backup shared by every graph (they run in turn)
            self._backup = [t.detach().clone() for t in live]

        def record():
            torch._foreach_copy_(self._backup, live)
            out = self.step_fn(inputs, step)
            finite = out.pop("_finite")
            return out, finite

        # One memory pool for all of this trainer's graphs: each step's temporaries die inside its
        # graph and the graphs never run concurrently, so a model with four schedule branches
        # does not hold four copies of a step's activations.
        graph, (out, finite) = capture(record, pool=self._pool)
        if self._pool is None:
            self._pool = graph.pool()
        shapes = {k: tuple(v.shape) for k, v in inputs.items()}
        return _Graph(graph, inputs, out, finite, shapes)

    def held_ids(self) -> list[int]:
        """ids of the tensors the optimizer and model hold now (compare with `captured_ids`)."""
        return [id(t) for t in self._live()] + [id(g["lr"]) for g in self.optimizer.param_groups]

    def fits(self, key: Hashable, batch: dict[str, Tensor]) -> bool:
        """Whether `batch` has the shapes the graph of `key` was captured with (or none yet)."""
        g = self.graphs.get(key)
        return g is None or {k: tuple(v.shape) for k, v in batch.items()} == g.shapes

    def __call__(self, key: Hashable, batch: dict[str, Tensor], step: int) -> dict[str, float] | None:
        """Run one training step from the graph of `key`; None if it was not finite (undone)."""
        g = self.graphs.get(key)
        if g is None:
            g = self.graphs[key] = self._capture(key, batch, step)
        for k, v in batch.items():
            g.inputs[k].copy_(v, non_blocking=True)
        g.graph.replay()
        if not bool(g.finite):
            with torch.no_grad():
                torch._foreach_copy_(self._live(), self._backup)
            return None
        return {k: float(v) for k, v in g.outputs.items()}


def load_optimizer_state_in_place(optimizer: torch.optim.Optimizer, state_dict: dict,
                                  after_load: Callable[[], None] | None = None) -> None:
    """`optimizer.load_state_dict`, but the values land in the tensors the optimizer already
    holds (moments, step counters, tensor learning rates), so CUDA graphs captured on them stay
    valid: a mid-run rewind to a checkpoint must not leave the graphs updating orphaned copies.
    `after_load` runs between the load and the copy-back (the trainer's dtype/device fix-ups)."""
    old_state = {p: dict(s) for p, s in optimizer.state.items()}
    old_lr = [g["lr"] for g in optimizer.param_groups]
    optimizer.load_state_dict(state_dict)
    if after_load is not None:
        after_load()
    with torch.no_grad():
        for p, state in optimizer.state.items():
            before = old_state.get(p, {})
            for k, v in state.items():
                old = before.get(k)
                if isinstance(v, Tensor) and isinstance(old, Tensor) and old.shape == v.shape:
                    old.copy_(v)
                    state[k] = old
        for group, lr in zip(optimizer.param_groups, old_lr):
            if isinstance(lr, Tensor):
                lr.fill_(float(group["lr"]))
                group["lr"] = lr

