"""The per-step pointwise math of the recurrent cells' fast paths, and its optional fusion.

One forward and one backward function per cell type (LSTM, LayerNorm-LSTM, the HyperLSTM main
cell): everything a time step does between its GEMMs. They are pure functions of tensors, so on
CUDA `torch.compile` turns each into one or two fused kernels instead of ~30 (see `Fusion`); on
CPU they run eagerly. The sequence engines in `sketchlab.nn.rnn_bptt` call them once per step.

Inputs may be in the low-precision compute dtype; all math runs in `acc` (fp32, or fp64 for
float64 tests). Forward functions recompute nothing and save nothing: the loops keep the GEMM
outputs and the cell states, and the backward functions recompute the gate activations from
them (a few flops per element, cheaper than storing and re-reading them).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

LN_EPS = 1e-3  # magenta's layer_norm / layer_norm_all default


def _sum3(x1: Tensor, x2: Tensor | None, x3: Tensor | None, acc: torch.dtype) -> Tensor:
    """Pre-activations as the sum of up to three GEMM outputs, in the math dtype."""
    a = x1.to(acc)
    if x2 is not None:
        a = a + x2.to(acc)
    return a if x3 is None else a + x3.to(acc)


def _ln_fwd(x: Tensor, gamma: Tensor, beta: Tensor, eps: float):
    """LayerNorm over the last axis returning (y, normalised x, 1/std)."""
    mean = x.mean(-1, keepdim=True)
    xc = x - mean
    rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)
    n = xc * rstd
    return n * gamma + beta, n, rstd


def _ln_bwd(dy: Tensor, n: Tensor, rstd: Tensor, gamma: Tensor) -> Tensor:
    """d loss / d x of `_ln_fwd` given d loss / d y (the standard LayerNorm backward)."""
    dn = dy * gamma
    return rstd * (dn - dn.mean(-1, keepdim=True) - n * (dn * n).mean(-1, keepdim=True))


def _lstm_fwd(x1, x2, x3, c, mask, fb: float, dt: torch.dtype, acc: torch.dtype):
    """Plain LSTM step from its pre-activations `a = x1 + x2 (+ x3)` (bias already in x1)."""
    a = _sum3(x1, x2, x3, acc)
    i, j, f, o = a.chunk(4, -1)
    g = torch.tanh(j)
    if mask is not None:
        g = g * mask
    c_new = c * torch.sigmoid(f + fb) + torch.sigmoid(i) * g
    h_new = torch.tanh(c_new) * torch.sigmoid(o)
    return h_new, c_new, h_new.to(dt)


def _lstm_bwd(x1, x2, x3, c, mask, fb: float, dh1, dh2, dc_new, dt: torch.dtype, acc: torch.dtype):
    """Backward of `_lstm_fwd`: returns (d a in dt, d c_prev)."""
    a = _sum3(x1, x2, x3, acc)
    i, j, f, o = a.chunk(4, -1)
    si, sf, so = torch.sigmoid(i), torch.sigmoid(f + fb), torch.sigmoid(o)
    tj = torch.tanh(j)
    g = tj if mask is None else tj * mask
    c_new = c * sf + si * g
    tc = torch.tanh(c_new)
    dh = dh1.to(acc) if dh2 is None else dh1.to(acc) + dh2.to(acc)
    dc = dc_new + dh * so * (1 - tc * tc)
    do = dh * tc * so * (1 - so)
    di = dc * g * si * (1 - si)
    dj = dc * si * (1 - tj * tj)
    if mask is not None:
        dj = dj * mask
    df = dc * c * sf * (1 - sf)
    da = torch.cat([di, dj, df, do], -1)
    return da.to(dt), dc * sf


def _ln_lstm_fwd(x1, x2, x3, c, mask, g4, b4, gc, bc, fb: float, eps: float, dt, acc):
    """LayerNorm-LSTM step (magenta LayerNormLSTMCell / the HyperLSTM main cell after its
    modulation) from pre-activations `a = x1 + x2 (+ x3)`."""
    B, H = c.shape
    a = _sum3(x1, x2, x3, acc).view(B, 4, H)
    y, _, _ = _ln_fwd(a, g4.view(4, H).to(acc), b4.view(4, H).to(acc), eps)
    i, j, f, o = y.unbind(1)
    g = torch.tanh(j)
    if mask is not None:
        g = g * mask
    c_new = c * torch.sigmoid(f + fb) + torch.sigmoid(i) * g
    yc, _, _ = _ln_fwd(c_new, gc.to(acc), bc.to(acc), eps)
    h_new = torch.tanh(yc) * torch.sigmoid(o)
    return h_new, c_new, h_new.to(dt)


def _ln_lstm_bwd(x1, x2, x3, c, mask, g4, b4, gc, bc, fb: float, eps: float, dh1, dh2, dc_new, dt, acc):
    """Backward of `_ln_lstm_fwd`: returns (d a in dt, d c_prev, and this step's batch sums for
    d gamma_4, d beta_4, d gamma_c, d beta_c)."""
    B, H = c.shape
    a = _sum3(x1, x2, x3, acc).view(B, 4, H)
    g4, b4, gc, bc = g4.view(4, H).to(acc), b4.view(4, H).to(acc), gc.to(acc), bc.to(acc)
    y, n, rstd = _ln_fwd(a, g4, b4, eps)
    i, j, f, o = y.unbind(1)
    si, sf, so = torch.sigmoid(i), torch.sigmoid(f + fb), torch.sigmoid(o)
    tj = torch.tanh(j)
    g = tj if mask is None else tj * mask
    c_new = c * sf + si * g
    yc, nc, rstdc = _ln_fwd(c_new, gc, bc, eps)
    tyc = torch.tanh(yc)
    dh = dh1.to(acc) if dh2 is None else dh1.to(acc) + dh2.to(acc)
    do = dh * tyc * so * (1 - so)
    dyc = dh * so * (1 - tyc * tyc)
    dc = dc_new + _ln_bwd(dyc, nc, rstdc, gc)
    di = dc * g * si * (1 - si)
    dj = dc * si * (1 - tj * tj)
    if mask is not None:
        dj = dj * mask
    df = dc * c * sf * (1 - sf)
    dy = torch.stack([di, dj, df, do], 1)
    da = _ln_bwd(dy, n, rstd, g4).reshape(B, 4 * H)
    return (
        da.to(dt),
        dc * sf,
        (dy * n).sum(0).reshape(-1),
        dy.sum(0).reshape(-1),
        (dyc * nc).sum(0),
        dyc.sum(0),
    )


def _hyper_pre(xh, hh, ab, bias, acc):
    """HyperLSTM gate pre-activations: alpha_x * xW + alpha_h * hW + beta + b, shape (B, 4, H).
    `ab` is (12, B, H): alphas of ix..ox, alphas of ih..oh, betas of ih..oh."""
    _, B, H = ab.shape
    ab = ab.to(acc)
    xh = xh.to(acc).view(B, 4, H)
    hh = hh.to(acc).view(B, 4, H)
    return ab[0:4].transpose(0, 1) * xh + ab[4:8].transpose(0, 1) * hh + ab[8:12].transpose(0, 1) + bias.view(4, H).to(acc)


def _hyper_main_fwd(xh, hh, ab, bias, c, mask, g4, b4, gc, bc, fb: float, eps: float, dt, acc):
    B, H = c.shape
    pre = _hyper_pre(xh, hh, ab, bias, acc).reshape(B, 4 * H)
    return _ln_lstm_fwd(pre, None, None, c, mask, g4, b4, gc, bc, fb, eps, dt, acc)


def _hyper_main_bwd(xh, hh, ab, bias, c, mask, g4, b4, gc, bc, fb: float, eps: float, dh1, dh2, dc_new, dt, acc):
    """Backward of `_hyper_main_fwd`: returns (d ab (12,B,H), d xW (B,4H), d hW (B,4H), d c_prev,
    LN partial sums). d bias is the batch-and-time sum of d beta, formed after the loop."""
    B, H = c.shape
    pre = _hyper_pre(xh, hh, ab, bias, acc).reshape(B, 4 * H)
    dpre, dc, dg4, db4, dgc, dbc = _ln_lstm_bwd(
        pre, None, None, c, mask, g4, b4, gc, bc, fb, eps, dh1, dh2, dc_new, acc, acc
    )
    dpre = dpre.view(B, 4, H).transpose(0, 1)  # (4, B, H)
    ab = ab.to(acc)
    xh4 = xh.to(acc).view(B, 4, H).transpose(0, 1)
    hh4 = hh.to(acc).view(B, 4, H).transpose(0, 1)
    dab = torch.cat([dpre * xh4, dpre * hh4, dpre], 0)
    dxh = (dpre * ab[0:4]).transpose(0, 1).reshape(B, 4 * H)
    dhh = (dpre * ab[4:8]).transpose(0, 1).reshape(B, 4 * H)
    return dab.to(dt), dxh.to(dt), dhh.to(dt), dc, dg4, db4, dgc, dbc


_POINTWISE: dict[str, Callable] = {
    "lstm_fwd": _lstm_fwd,
    "lstm_bwd": _lstm_bwd,
    "ln_lstm_fwd": _ln_lstm_fwd,
    "ln_lstm_bwd": _ln_lstm_bwd,
    "hyper_main_fwd": _hyper_main_fwd,
    "hyper_main_bwd": _hyper_main_bwd,
}


# Each function is compiled once per input signature (shapes, dtypes, mask or not, ...), e.g. the
# LayerNorm-LSTM step serves both the LayerNorm cell and the hyper cell at several sizes; dynamo's
# default limit of 8 compilations per function would silently send the rest to eager.
RECOMPILE_LIMIT = 64


@dataclass
class Fusion:
    """Whether and how a cell fuses its per-step pointwise functions with `torch.compile`.

    `enabled`: compile at all (False: always eager). `backend`: the torch.compile backend
    ("inductor"; the tests trace with "aot_eager", which needs no compiler). `devices`: the device
    types to compile on: CUDA only by default, where one fused kernel replaces ~30 launches; on CPU
    the eager functions are as fast. A compile failure turns this policy off, keeps the reason in
    `error` and warns; the cell goes on eagerly (inside a CUDA-graph capture it raises instead:
    a failing capture is the caller's to report). Nothing here changes process-wide settings: the
    higher recompile limit is a thread-local `torch._dynamo.config.patch` around compilations.

    On a CPU, `Fusion(devices=("cuda", "cpu"))` compiles too (inductor writes vectorised C++):
    `benchmarks/cpu.py --compile` measures it against the eager functions. It is not the default
    there: the first step of a process pays the compilation (15-75 s on 2 cores, less once
    inductor's on-disk cache holds the kernels), while the eager step on one thread already costs
    about what torch's native LSTM kernel does (README, CPU column).
    """

    enabled: bool = True
    backend: str = "inductor"
    devices: tuple[str, ...] = ("cuda",)
    error: str | None = None

    def __post_init__(self):
        self.devices = tuple(self.devices)
        self._compiled_for: dict[str, set] = {}  # per function: the signatures compiled already

    def pointwise(self, name: str, device_type: str) -> Callable:
        """The function `name` of this module for a sequence on `device_type`: fused or eager."""
        if not self.enabled or device_type not in self.devices:
            return _POINTWISE[name]
        return functools.partial(self._call, name)

    def _call(self, name: str, *args):
        if not self.enabled:  # an earlier failure turned fusion off
            return _POINTWISE[name](*args)
        try:
            compiled = _compiled(name, self.backend)
            seen = self._compiled_for.setdefault(name, set())
            key = _signature(args)
            if key in seen:
                return compiled(*args)
            with _recompile_limit():  # a new signature: this call compiles
                out = compiled(*args)
            seen.add(key)
            return out
        except Exception as e:  # torch.compile unavailable (e.g. no triton), or a compile error
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise
            self.enabled = False
            self.error = f"{type(e).__name__}: {e}"[:500]
            warnings.warn(f"sketchlab.nn.rnn_pointwise: torch.compile fusion disabled, running eager: {self.error}")
            return _POINTWISE[name](*args)


def as_fusion(fusion: bool | Fusion) -> Fusion:
    """A cell's `fusion` argument as a `Fusion` (True: the default policy, False: always eager)."""
    return fusion if isinstance(fusion, Fusion) else Fusion(enabled=bool(fusion))


@functools.cache
def _compiled(name: str, backend: str) -> Callable:
    """`torch.compile` of one pointwise function, built once per (function, backend) and shared by
    every cell and `Fusion`: dynamo keeps compiled code per function and recompiles for another
    wrapper's backend, so a wrapper per cell would compile everything once per cell."""
    return torch.compile(_POINTWISE[name], backend=backend, dynamic=False, fullgraph=True)


def _signature(args) -> tuple:
    """What dynamo's guards see of a call with static shapes: each tensor's shape, strides, dtype,
    device and requires_grad, the value of every other argument, and the grad mode."""
    return (torch.is_grad_enabled(),) + tuple(
        (a.shape, a.stride(), a.dtype, a.device, a.requires_grad) if isinstance(a, Tensor) else a for a in args
    )


def _recompile_limit():
    """A thread-local raise of dynamo's per-function recompile limit to `RECOMPILE_LIMIT`."""
    # torch._dynamo is heavy to import and only needed once a compiled function runs (on CUDA),
    # by which time torch.compile has imported it.
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    return cfg.patch(name, max(getattr(cfg, name), RECOMPILE_LIMIT))
