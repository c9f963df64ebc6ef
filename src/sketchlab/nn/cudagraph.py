"""Capture a whole training step (forward, loss, backward, optimizer) in one CUDA graph.

A sketch-rnn step at length 250 launches thousands of small kernels; replaying them from a CUDA
graph removes the per-launch CPU cost, which is most of an eager step's time. Requirements on
the captured function (the usual CUDA-graph rules):

* static shapes: every batch has the same B and T (the originals pad to a fixed max_seq_len and
  drop the last partial batch), fed by copying into the static input tensors;
* no host synchronisation inside (no `.item()`, `.cpu()`, data-dependent Python branches);
  values that change per step (learning rate, KL weight, step counter) live in device tensors
  updated in place, not Python floats baked in at capture time;
* an optimizer built with `capturable=True` (e.g. `Adam(..., fused=True, capturable=True)`) and
  gradients that stay allocated (`zero_grad(set_to_none=False)` inside the step);
* random ops use the default CUDA generator (dropout masks are fresh on every replay).

The capture first runs `warmup` real steps on a side stream (they update the weights like any
step; compiled kernels get built there), then records one step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


class GraphedStep:
    """`GraphedStep(step, static_inputs)` then `out = graphed(*inputs)` per step.

    `step(*static_inputs)` must return tensors (e.g. the detached loss terms); they are static
    outputs overwritten by each replay, so read or clone them before the next call.
    """

    def __init__(self, step: Callable, static_inputs: Sequence[Tensor], warmup: int = 3):
        self.static_inputs = tuple(static_inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_outputs = step(*self.static_inputs)

    def __call__(self, *inputs: Tensor):
        for static, new in zip(self.static_inputs, inputs):
            if static.data_ptr() != new.data_ptr():
                static.copy_(new)
        self.graph.replay()
        return self.static_outputs
