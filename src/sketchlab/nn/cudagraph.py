"""CUDA-graph capture, written once: warm up on a side stream, capture, replay with static inputs.

Work that launches thousands of small kernels (a sketch-rnn step at length 250, a 250-step
sampling rollout, a UNet denoiser step) spends most of its eager time in per-launch CPU cost;
replaying it from a CUDA graph removes that. Every graph in sketchlab is built here:

* `warm_up(fn)` runs `fn` a few times on a side stream first, so compiled kernels, cuBLAS
  workspaces and allocator blocks are built outside the capture;
* `capture(fn)` records one call of `fn` into a new graph and returns it with what `fn` returned
  (static outputs, overwritten by each replay);
* `GraphedStep(step, static_inputs)` does both and replays with new inputs copied into the
  static ones (the whole-step graphs of the benchmarks, the batched sampler).

The usual CUDA-graph rules apply to the captured function:

* static shapes: every call has the same shapes (the originals pad to a fixed max_seq_len and
  drop the last partial batch), fed by copying into the static input tensors;
* no host synchronisation inside (no `.item()`, `.cpu()`, data-dependent Python branches);
  values that change per call (learning rate, KL weight, step counter) live in device tensors
  updated in place, not Python floats baked in at capture time;
* for a training step: an optimizer built with `capturable=True` (e.g. `Adam(..., fused=True,
  capturable=True)`) and gradients that stay allocated (`zero_grad(set_to_none=False)`);
* random ops use the default CUDA generator (dropout masks are fresh on every replay).

The warm-up calls are real calls: a training step warmed up this way updates the weights like any
step (`sketchlab.train.graphed` restores them afterwards).
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def warm_up(fn: Callable[[], object], iters: int = 1, device=None) -> None:
    """Run `fn()` `iters` times on a side stream of `device` (default: the current device), then
    make the current stream wait for it."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)


def capture(fn: Callable[[], T], pool=None) -> tuple[torch.cuda.CUDAGraph, T]:
    """Record one call of `fn()` into a new CUDA graph (sharing the memory pool `pool` when given:
    graphs that never run concurrently can share their temporaries). Returns the graph and what
    `fn` returned during the capture."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


class GraphedStep:
    """`GraphedStep(step, static_inputs)` then `out = graphed(*inputs)` per step.

    `step(*static_inputs)` is warmed up `warmup` times and captured once. Each call copies its
    inputs into the static ones (a `None` input stays `None`; an input that IS the static tensor is
    not copied) and replays. `step` must return tensors (e.g. the detached loss terms); they are
    static outputs overwritten by each replay, so read or clone them before the next call.
    """

    def __init__(self, step: Callable, static_inputs: Sequence[Tensor | None], warmup: int = 3):
        self.static_inputs = tuple(static_inputs)
        warm_up(lambda: step(*self.static_inputs), warmup)
        self.graph, self.static_outputs = capture(lambda: step(*self.static_inputs))

    def __call__(self, *inputs: Tensor | None):
        for static, new in zip(self.static_inputs, inputs):
            if static is not None and static.data_ptr() != new.data_ptr():
                static.copy_(new)
        self.graph.replay()
        return self.static_outputs
