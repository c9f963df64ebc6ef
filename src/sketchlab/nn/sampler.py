"""Batched autoregressive sampling: a recurrent cell and a mixture head roll out whole sketches on
the device, the mixture sampling inside the loop (on CUDA, the whole rollout as one CUDA graph).

`sample_sequences` is the entry point the models use: it keeps one `BatchedSampler` per decoder,
head, length and batch shape on the cell, so repeated calls (a batch loop, an interactive
session) reuse the sampler and its captured graph. A captured graph reads the cell's and head's
parameters where they live, so in-place weight updates (an optimizer step, `load_state_dict`)
show up in the next replay; a parameter that was replaced by a new tensor (`.to(...)`, a dtype
change) gives a new cache key and a new sampler.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
from torch import Tensor, nn

from sketchlab.nn.cells import RecurrentCell
from sketchlab.nn.cudagraph import GraphedStep
from sketchlab.nn.mixture import draw_noise, sample_step
from sketchlab.nn.rnn_bptt import autocast_dtype

START_TOKEN = (0.0, 0.0, 1.0, 0.0, 0.0)  # S_0 of sketch-rnn: pen down, at the origin


class BatchedSampler:
    """Generate `n_steps` stroke-5 rows for a whole batch at once, on the device.

    Each step feeds `[prev_5, z]` (or `prev_5` when z is None) to `cell.step`, the head maps h to
    the mixture parameters, and `mixture.sample_step` draws the next row, all without leaving the
    device. `prev_5` starts as S_0 = (0, 0, 1, 0, 0), or as the caller's `first_input` rows: the
    last row of a prefix whose other rows primed `state0`, to continue a partial drawing. Like
    the originals it always runs `n_steps` steps (no early stop); cut at the first p3 afterwards.
    The noise for all steps is drawn up front with the caller's generator, so on CUDA the whole
    loop is captured once as a CUDA graph and replayed per call (`use_graph`); any capture
    failure falls back to eager and is kept in `graph_error`.
    """

    def __init__(self, cell: RecurrentCell, head: nn.Module, n_steps: int, *, greedy: bool = False, use_graph: bool | None = None):
        self.cell, self.head, self.n_steps, self.greedy = cell, head, int(n_steps), bool(greedy)
        self.use_graph = use_graph
        self.graph = None
        self.graph_error: str | None = None
        self._static = None  # (shapes key, GraphedStep)

    def _loop(self, state, z, temperature, noise, out, start):
        prev = start
        for t in range(self.n_steps):
            x = prev if z is None else torch.cat([prev, z], 1)
            h, state = self.cell.step(x, state)
            prev = sample_step(self.head(h), temperature, greedy=self.greedy, noise=noise[t])
            out[:, t].copy_(prev)
        return out

    @torch.no_grad()
    def __call__(
        self,
        state0: Tensor,
        z: Tensor | None = None,
        temperature: float | Tensor = 1.0,
        generator: torch.Generator | None = None,
        first_input: Tensor | None = None,
    ) -> Tensor:
        """Rows (B, n_steps, 5) sampled from `state0` (B, state_size), with z (B, z_size) fed at
        every step when given; `first_input` (B, 5) replaces S_0 as the first step's input."""
        device, B = state0.device, state0.shape[0]
        temp = torch.as_tensor(temperature, dtype=state0.dtype, device=device).reshape(-1, 1).expand(B, 1)
        noise = draw_noise((self.n_steps, B), device, generator, state0.dtype)
        start = _start_rows(first_input, B, state0.dtype, device)
        was_training = self.cell.training
        self.cell.eval()  # sampling never uses recurrent dropout
        try:
            want_graph = device.type == "cuda" if self.use_graph is None else self.use_graph
            if want_graph and self.graph_error is None:
                out = self._graphed(state0, z, temp, noise, start)
                if out is not None:
                    return out
            out = state0.new_empty(B, self.n_steps, 5)
            return self._loop(state0, z, temp, noise, out, start)
        finally:
            self.cell.train(was_training)

    def _graphed(self, state0, z, temp, noise, start):
        key = (tuple(state0.shape), None if z is None else tuple(z.shape), state0.dtype, state0.device, autocast_dtype(state0.device.type))
        try:
            if self._static is None or self._static[0] != key:
                out = state0.new_empty(state0.shape[0], self.n_steps, 5)
                static = (state0.clone(), None if z is None else z.clone(), temp.clone(), noise.clone(), start.clone())
                graphed = GraphedStep(lambda s, zz, t, n, st: self._loop(s, zz, t, n, out, st), static, warmup=1)
                self._static, self.graph = (key, graphed), graphed.graph
            graphed = self._static[1]
            return graphed(state0, z, temp, noise, start).clone()
        except Exception as e:  # capture unsupported here: remember why, run eager
            self.graph_error = f"{type(e).__name__}: {e}"[:500]
            self._static, self.graph = None, None
            return None


def _start_rows(first_input: Tensor | None, B: int, dtype: torch.dtype, device) -> Tensor:
    """The first step's stroke-5 input rows (B, 5): S_0 for every sketch, or `first_input`."""
    if first_input is None:
        return torch.tensor(START_TOKEN, dtype=dtype).to(device).expand(B, 5).contiguous()
    if tuple(first_input.shape) != (B, 5):
        raise ValueError(f"first_input must be ({B}, 5) stroke-5 rows, got {tuple(first_input.shape)}")
    return first_input.to(device=device, dtype=dtype).contiguous()


# --------------------------------------------------------------------------------------------
# One sampler per decoder, head, length and batch shape, kept on the cell
# --------------------------------------------------------------------------------------------

CACHE_SIZE = 4  # samplers kept per cell (e.g. a full and a last partial batch, greedy and not)


class _SamplerCache(OrderedDict):
    """Least recently used samplers of one cell. A copy of the cell (deepcopy, pickle) starts with
    an empty cache: captured graphs belong to the tensors they were captured on."""

    def __deepcopy__(self, memo):
        return type(self)()

    def __reduce__(self):
        return (type(self), ())


def cached_sampler(
    cell: RecurrentCell,
    head: nn.Module,
    n_steps: int,
    state0: Tensor,
    z: Tensor | None = None,
    *,
    greedy: bool = False,
    use_graph: bool | None = None,
) -> BatchedSampler:
    """The `BatchedSampler` of `cell` for this head, length, mode and batch, built on first use.

    The key holds the parameters' storage addresses, so a cell or head moved or cast to new
    tensors gets a new sampler, while in-place updates keep the one whose graph reads them."""
    params = tuple(p.data_ptr() for p in itertools.chain(cell.parameters(), head.parameters()))
    key = (
        id(head),  # stays unique while cached: the sampler holds the head
        int(n_steps),
        bool(greedy),
        use_graph,
        tuple(state0.shape),
        None if z is None else tuple(z.shape),
        state0.dtype,
        state0.device,
        autocast_dtype(state0.device.type),
        params,
    )
    cache = cell.__dict__.get("_sampler_cache")
    if cache is None:
        cache = cell._sampler_cache = _SamplerCache()
    sampler = cache.get(key)
    if sampler is None:
        sampler = cache[key] = BatchedSampler(cell, head, n_steps, greedy=greedy, use_graph=use_graph)
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return sampler


def sample_sequences(
    cell: RecurrentCell,
    head: nn.Module,
    state0: Tensor,
    n_steps: int,
    *,
    z: Tensor | None = None,
    temperature: float | Tensor = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    use_graph: bool | None = None,
    first_input: Tensor | None = None,
) -> Tensor:
    """Batched sampling (see `BatchedSampler`); returns stroke-5 rows (B, n_steps, 5).

    Repeated calls with the same cell, head, length, mode and shapes reuse one sampler and, on
    CUDA, its captured graph (`cached_sampler`). To continue a partial drawing, prime the state
    with the prefix (`cell.sequence` over `[S_0, p_1 .. p_{k-1}]`, z appended) and pass its last
    row p_k as `first_input`: the rollout continues after p_k."""
    sampler = cached_sampler(cell, head, n_steps, state0, z, greedy=greedy, use_graph=use_graph)
    return sampler(state0, z, temperature, generator, first_input)
