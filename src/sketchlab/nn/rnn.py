"""The recurrent cells of sketch-rnn and a fast engine that runs them over whole sequences.

The three cells are ports of magenta's `sketch_rnn/rnn.py`, which RPCL-pix2seq(H), SP-gra2seq and
SketchGloc copy verbatim (gate order i, j, f, o; forget bias +1 inside the sigmoid; recurrent
dropout on the candidate tanh(j) only, "without memory loss", training only):

* `LSTMCell`           state `[c, h]`; `[i,j,f,o] = x W_xh + h W_hh + b`.
* `LayerNormLSTMCell`  state `[h, c]`; no bias; per-gate LayerNorm (eps 1e-3) of the four
                       pre-activations; `h = tanh(LN(c)) * sigmoid(o)`.
* `HyperLSTMCell`      state `[h, h_hyp, c, c_hyp]`; a 256-unit LayerNorm-LSTM "hyper cell" fed
                       `[x, h]` emits a 32-d embedding per gate term that rescales (alpha) and
                       shifts (beta) the eight x- and h-contributions of the main cell.

Every cell has `step(x_t, state)`: the plain per-timestep code, written like the TF original and
used as the reference. `sequence(x, state)` runs a teacher-forced sequence and picks a fast path:

* ``"bptt"`` (all cells): the input projection `x W_xh` of all T steps is one GEMM; the time loop
  keeps only the recurrent GEMM(s) and one fused pointwise function per step; a hand-written
  backward (`torch.autograd.Function`) runs the dh/dc recurrence step by step and then forms every
  weight gradient with ONE big GEMM over all T*B rows instead of T small accumulations. The GEMMs
  run in the autocast dtype when autocast is on (bf16: state and pointwise math stay fp32). On CUDA
  the per-step pointwise functions are compiled with `torch.compile` (one or two fused kernels
  instead of ~30); everything is plain eager PyTorch on CPU. The loops do no host synchronisation
  and keep static shapes, so a whole training step that uses them can be captured in one CUDA
  graph (see `benchmarks/rnn.py`).
* ``"cudnn"`` (`LSTMCell` only, when recurrent dropout is inactive: eval, or keep = 1, and no
  low-precision autocast): `torch.lstm` (cuDNN on CUDA) with the weights mapped to PyTorch's gate
  order and the forget bias folded into `b_ih`. cuDNN has no candidate dropout, so with recurrent
  dropout on the LSTM uses "bptt".
* ``"reference"``: loops `step` under autograd (``fast=False``).

`sample_sequences` generates a batch of sketches autoregressively on the device with the mixture
sampling inside the loop (optionally captured as one CUDA graph).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sketchlab.errors import ConfigError

KINDS = ("lstm", "layer_norm", "hyper")
PATHS = ("auto", "bptt", "cudnn", "reference")
LN_EPS = 1e-3  # magenta's layer_norm / layer_norm_all default
# The hyper modulations, in the order the stacked parameters hold them: four on the W_xh gate
# terms (alpha only), four on the W_hh gate terms (alpha and beta).
HYPER_TERMS = ("ix", "jx", "fx", "ox", "ih", "jh", "fh", "oh")


# --------------------------------------------------------------------------------------------
# Initialisers (TF defaults used by magenta)
# --------------------------------------------------------------------------------------------


def glorot_uniform_(w: Tensor) -> Tensor:
    """TF's default `glorot_uniform` for a weight stored `[fan_in, fan_out]` (TF layout)."""
    fan_in, fan_out = (w.shape[0], w.shape[1]) if w.dim() == 2 else (w.shape[0], w.shape[0])
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return w.uniform_(-bound, bound)


def lstm_orthogonal_(w: Tensor) -> Tensor:
    """magenta's `lstm_ortho_initializer`: each of the four `[n, n]` blocks of an `[n, 4n]` weight
    is an independent random orthogonal matrix (scale 1).

    magenta takes the U factor of the SVD of an N(0, 1) matrix; `nn.init.orthogonal_` takes the
    sign-corrected Q of its QR. Both are Haar-distributed, so the two inits have the same law.
    """
    n = w.shape[0]
    with torch.no_grad():
        for k in range(w.shape[1] // n):
            block = torch.empty(n, n, dtype=w.dtype)
            nn.init.orthogonal_(block)
            w[:, k * n : (k + 1) * n] = block.to(w.device)
    return w


# --------------------------------------------------------------------------------------------
# Reference pieces, written like magenta's TF code
# --------------------------------------------------------------------------------------------


def layer_norm_all(h: Tensor, groups: int, gamma: Tensor, beta: Tensor, eps: float = LN_EPS) -> Tensor:
    """magenta `layer_norm_all`: LayerNorm of each of `groups` equal blocks of the last axis."""
    shape = h.shape
    h = h.reshape(*shape[:-1], groups, shape[-1] // groups)
    mean = h.mean(-1, keepdim=True)
    var = (h - mean).square().mean(-1, keepdim=True)
    h = ((h - mean) * torch.rsqrt(var + eps)).reshape(shape)
    return gamma * h + beta


def layer_norm(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = LN_EPS) -> Tensor:
    """magenta `layer_norm` over the last axis (population variance, eps inside the sqrt)."""
    mean = x.mean(-1, keepdim=True)
    shifted = x - mean
    var = shifted.square().mean(-1, keepdim=True)
    return gamma * shifted * torch.rsqrt(var + eps) + beta


# --------------------------------------------------------------------------------------------
# Fast-path pointwise functions (pure; compiled with torch.compile on CUDA)
#
# Inputs may be in the low-precision compute dtype; all math runs in `acc` (fp32, or fp64 for
# float64 tests). Forward functions recompute nothing and save nothing: the loops keep the GEMM
# outputs and the cell states, and the backward functions recompute the gate activations from
# them (a few flops per element, cheaper than storing and re-reading them).
# --------------------------------------------------------------------------------------------


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

# torch.compile of the pointwise functions: on by default on CUDA, never on CPU. Turn it off with
# SKETCHLAB_FUSE=0 or `set_fusion(False)`. A compile failure falls back to eager with a warning.
_FUSION = {"enabled": os.environ.get("SKETCHLAB_FUSE", "1") != "0", "error": None, "backend": "inductor", "devices": ("cuda",)}
_COMPILED: dict[str, Callable] = {}


def set_fusion(enabled: bool, *, backend: str | None = None, devices: tuple[str, ...] | None = None) -> None:
    """Enable or disable torch.compile fusion of the per-step pointwise functions (on CUDA by
    default; tests also trace them on CPU with backend="aot_eager")."""
    _FUSION["enabled"] = bool(enabled)
    _FUSION["error"] = None
    if backend is not None:
        _FUSION["backend"] = backend
    if devices is not None:
        _FUSION["devices"] = tuple(devices)
    _COMPILED.clear()


def fusion_status() -> dict:
    """Whether pointwise fusion is on, and the error that turned it off, if any."""
    return dict(_FUSION)


def _pointwise(name: str, device_type: str) -> Callable:
    eager = _POINTWISE[name]
    if device_type not in _FUSION["devices"] or not _FUSION["enabled"]:
        return eager
    fn = _COMPILED.get(name)
    if fn is None:
        try:
            _raise_recompile_limit()
            compiled = torch.compile(eager, backend=_FUSION["backend"], dynamic=False, fullgraph=True)
        except Exception as e:  # torch.compile unavailable (e.g. no triton)
            _disable_fusion(e)
            return eager

        def fn(*args, _compiled=compiled, _eager=eager):
            if not _FUSION["enabled"]:
                return _eager(*args)
            try:
                return _compiled(*args)
            except Exception as e:  # compile errors surface at the first call
                if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                    raise  # a failing CUDA-graph capture is the caller's to report
                _disable_fusion(e)
                return _eager(*args)

        _COMPILED[name] = fn
    return fn


def _raise_recompile_limit(limit: int = 64) -> None:
    """Each function is compiled once per (shape, dtype, mask or not) combination, e.g. the
    LayerNorm-LSTM step serves both the LayerNorm cell and the hyper cell at several sizes; the
    default limit of 8 per function would silently send the rest to eager."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                setattr(cfg, name, limit)


def _disable_fusion(e: Exception) -> None:
    _FUSION["enabled"] = False
    _FUSION["error"] = f"{type(e).__name__}: {e}"[:500]
    warnings.warn(f"sketchlab.nn.rnn: torch.compile fusion disabled, running eager: {_FUSION['error']}")


# --------------------------------------------------------------------------------------------
# Dtype policy
# --------------------------------------------------------------------------------------------


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The low-precision dtype autocast would use for GEMMs here, or None when autocast is off."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None
    except (TypeError, AttributeError):  # torch < 2.4 style API
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        return None


@dataclass(frozen=True)
class _Cfg:
    forget_bias: float
    dt: torch.dtype  # GEMM / stored-activation dtype
    acc: torch.dtype  # pointwise math and cell-state dtype
    device_type: str


def _make_cfg(x: Tensor, forget_bias: float) -> _Cfg:
    low = _autocast_dtype(x.device.type)
    base = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    dt = low if low is not None else base
    acc = torch.float64 if base == torch.float64 else torch.float32
    return _Cfg(float(forget_bias), dt, acc, x.device.type)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _no_autocast:
    """Run the engine's explicit-dtype code with autocast off (it picks its own dtypes)."""

    def __init__(self, device_type: str):
        self.ctx = torch.autocast(device_type=device_type, enabled=False)

    def __enter__(self):
        self.ctx.__enter__()

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)


# --------------------------------------------------------------------------------------------
# The LSTM / LayerNorm-LSTM engine
# --------------------------------------------------------------------------------------------


def _lstm_forward(xp, h0, c0, W_hh, ln, masks, cfg: _Cfg, save: bool):
    """Run the recurrence given the input projections `xp` (T, B, 4H). `ln` is None (plain LSTM)
    or (gamma_4, beta_4, gamma_c, beta_c). Returns h (B, T, H), c_T and the saved lists."""
    T = xp.shape[0]
    fwd = _pointwise("ln_lstm_fwd" if ln is not None else "lstm_fwd", cfg.device_type)
    W = W_hh.to(cfg.dt)
    h_lp, c = h0.to(cfg.dt), c0.to(cfg.acc)
    hs, hh_s, c_s, hlp_s = [], [], [], [h_lp]
    for t in range(T):
        hh = torch.mm(h_lp, W)
        mask = None if masks is None else masks[t]
        if ln is None:
            h, c_new, h_lp = fwd(xp[t], hh, None, c, mask, cfg.forget_bias, cfg.dt, cfg.acc)
        else:
            h, c_new, h_lp = fwd(xp[t], hh, None, c, mask, *ln, cfg.forget_bias, LN_EPS, cfg.dt, cfg.acc)
        if save:
            hh_s.append(hh)
            c_s.append(c)
            hlp_s.append(h_lp)
        hs.append(h)
        c = c_new
    return torch.stack(hs, 1), c, (hh_s, c_s, hlp_s)


class _LSTMSequence(torch.autograd.Function):
    """Hand-written BPTT for LSTMCell / LayerNormLSTMCell (see the module docstring)."""

    @staticmethod
    def forward(ctx, xp, h0, c0, W_hh, g4, b4, gc, bc, masks, cfg: _Cfg):
        ln = None if g4 is None else (g4, b4, gc, bc)
        with _no_autocast(cfg.device_type):
            hs, cT, (hh_s, c_s, hlp_s) = _lstm_forward(xp, h0, c0, W_hh, ln, masks, cfg, save=True)
        ctx.cfg = cfg
        ctx.lists = (hh_s, c_s, hlp_s)
        ctx.meta = (xp.dtype, h0.dtype, c0.dtype, W_hh.dtype)
        ctx.save_for_backward(xp, W_hh, g4, b4, gc, bc, masks)
        return hs.to(h0.dtype), cT.to(c0.dtype)

    @staticmethod
    def backward(ctx, dhs, dcT):
        xp, W_hh, g4, b4, gc, bc, masks = ctx.saved_tensors
        cfg = ctx.cfg
        hh_s, c_s, hlp_s = ctx.lists
        ln = None if g4 is None else (g4, b4, gc, bc)
        T, B, H4 = xp.shape
        H = H4 // 4
        with _no_autocast(cfg.device_type):
            bwd = _pointwise("ln_lstm_bwd" if ln is not None else "lstm_bwd", cfg.device_type)
            W_t = W_hh.to(cfg.dt).t()
            dh_rec = torch.zeros(B, H, dtype=cfg.dt, device=xp.device)
            dc = dcT.to(cfg.acc)
            das, partials = [None] * T, []
            for t in range(T - 1, -1, -1):
                mask = None if masks is None else masks[t]
                if ln is None:
                    da, dc = bwd(xp[t], hh_s[t], None, c_s[t], mask, cfg.forget_bias, dhs[:, t], dh_rec, dc, cfg.dt, cfg.acc)
                else:
                    da, dc, *p = bwd(
                        xp[t], hh_s[t], None, c_s[t], mask, *ln, cfg.forget_bias, LN_EPS, dhs[:, t], dh_rec, dc, cfg.dt, cfg.acc
                    )
                    partials.append(p)
                das[t] = da
                dh_rec = torch.mm(da, W_t)
            dA = torch.stack(das)  # (T, B, 4H)
            Hprev = torch.stack(hlp_s[:-1])  # h_{t-1}, (T, B, H)
            # One GEMM over all T*B rows for the recurrent weight (instead of T accumulations).
            dW = torch.mm(Hprev.reshape(T * B, H).t(), dA.reshape(T * B, H4))
            lngrads = [None] * 4
            if ln is not None:
                lngrads = [torch.stack(col).sum(0) for col in zip(*partials)]
        xp_dt, h_dt, c_dt, w_dt = ctx.meta
        return (
            dA.to(xp_dt),
            dh_rec.to(h_dt),
            dc.to(c_dt),
            dW.to(w_dt),
            *[None if g is None else g.to(w_dt) for g in lngrads],
            None,
            None,
        )


def _run_lstm(xp, h0, c0, W_hh, ln, masks, cfg):
    if _needs_grad(xp, h0, c0, W_hh, *(ln or ())):
        g4, b4, gc, bc = ln if ln is not None else (None,) * 4
        return _LSTMSequence.apply(xp, h0, c0, W_hh, g4, b4, gc, bc, masks, cfg)
    with _no_autocast(cfg.device_type):
        hs, cT, _ = _lstm_forward(xp, h0, c0, W_hh, ln, masks, cfg, save=False)
    return hs.to(h0.dtype), cT.to(c0.dtype)


def _input_projection(x: Tensor, W: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (B, T, I) @ W (I, N) (+ bias) as ONE GEMM, returned time-major (T, B, N). Runs under the
    caller's autocast, so under bf16 autocast the projection is bf16."""
    xt = x.transpose(0, 1).reshape(-1, x.shape[-1])
    out = torch.mm(xt, W) if bias is None else torch.addmm(bias, xt, W)
    return out.view(x.shape[1], x.shape[0], W.shape[1])


# --------------------------------------------------------------------------------------------
# The HyperLSTM engine
# --------------------------------------------------------------------------------------------


def _hyper_forward(xh, hxp, h0, hy0, c0, cy0, W_hh, W_yh, W_yy, bias, ln_m, ln_y, Wz, bz, W_ab, masks, cfg, save):
    """HyperLSTM recurrence. xh (T,B,4H) = x W_xh; hxp (T,B,4Hy) = x W_hyper_xh[:I]; W_yh
    (H, 4Hy) = the h rows of the hyper cell's W_xh; W_yy (Hy, 4Hy) its W_hh; Wz (Hy, 12E) and bz
    (12E) the stacked zw/zb linears; W_ab (12, E, H) the stacked alpha/beta weights."""
    T, B, H4 = xh.shape
    H = H4 // 4
    E12 = Wz.shape[1]
    E = E12 // 12
    dt, acc = cfg.dt, cfg.acc
    main_fwd = _pointwise("hyper_main_fwd", cfg.device_type)
    hyp_fwd = _pointwise("ln_lstm_fwd", cfg.device_type)
    # h feeds both the main W_hh and the hyper cell's input weights: one GEMM for both.
    W_cat = torch.cat([W_hh, W_yh], 1).to(dt)
    W_yy, Wz, bz, W_ab = W_yy.to(dt), Wz.to(dt), bz.to(dt), W_ab.to(dt)
    h_lp, y_lp, c, cy = h0.to(dt), hy0.to(dt), c0.to(acc), cy0.to(acc)
    hs = []
    S = {"big": [], "small": [], "c": [], "cy": [], "h": [h_lp], "y": [y_lp], "z": [], "ab": []}
    for t in range(T):
        big = torch.mm(h_lp, W_cat)  # (B, 4H + 4Hy)
        small = torch.mm(y_lp, W_yy)  # (B, 4Hy)
        # Hyper cell: LayerNorm-LSTM, forget bias 1.0 (magenta's default for it), no dropout.
        y, cy_new, y_lp = hyp_fwd(hxp[t], big[:, H4:], small, cy, None, *ln_y, 1.0, LN_EPS, dt, acc)
        z = torch.addmm(bz, y_lp, Wz)  # (B, 12E): 8 zw embeddings then 4 zb embeddings
        ab = torch.bmm(z.view(B, 12, E).transpose(0, 1), W_ab)  # (12, B, H)
        mask = None if masks is None else masks[t]
        h, c_new, h_lp = main_fwd(xh[t], big[:, :H4], ab, bias, c, mask, *ln_m, cfg.forget_bias, LN_EPS, dt, acc)
        if save:
            for k, v in (("big", big), ("small", small), ("c", c), ("cy", cy), ("h", h_lp), ("y", y_lp), ("z", z), ("ab", ab)):
                S[k].append(v)
        hs.append(h)
        c, cy = c_new, cy_new
    return torch.stack(hs, 1), y, c, cy, S


class _HyperSequence(torch.autograd.Function):
    """Hand-written BPTT for HyperLSTMCell."""

    @staticmethod
    def forward(ctx, xh, hxp, h0, hy0, c0, cy0, W_hh, W_yh, W_yy, bias, g4, b4, gc, bc, yg4, yb4, ygc, ybc, Wz, bz, W_ab, masks, cfg):
        with _no_autocast(cfg.device_type):
            hs, yT, cT, cyT, S = _hyper_forward(
                xh, hxp, h0, hy0, c0, cy0, W_hh, W_yh, W_yy, bias, (g4, b4, gc, bc), (yg4, yb4, ygc, ybc), Wz, bz, W_ab, masks, cfg, True
            )
        ctx.cfg, ctx.S = cfg, S
        ctx.dtypes = [t.dtype for t in (xh, hxp, h0, hy0, c0, cy0)]
        ctx.save_for_backward(xh, hxp, W_hh, W_yh, W_yy, bias, g4, b4, gc, bc, yg4, yb4, ygc, ybc, Wz, bz, W_ab, masks)
        odt = h0.dtype
        return hs.to(odt), yT.to(hy0.dtype), cT.to(c0.dtype), cyT.to(cy0.dtype)

    @staticmethod
    def backward(ctx, dhs, dyT, dcT, dcyT):
        (xh, hxp, W_hh, W_yh, W_yy, bias, g4, b4, gc, bc, yg4, yb4, ygc, ybc, Wz, bz, W_ab, masks) = ctx.saved_tensors
        cfg, S = ctx.cfg, ctx.S
        dt, acc = cfg.dt, cfg.acc
        T, B, H4 = xh.shape
        H, Hy4 = H4 // 4, hxp.shape[-1]
        Hy, E12 = Hy4 // 4, Wz.shape[1]
        E = E12 // 12
        ln_m, ln_y = (g4, b4, gc, bc), (yg4, yb4, ygc, ybc)
        with _no_autocast(cfg.device_type):
            main_bwd = _pointwise("hyper_main_bwd", cfg.device_type)
            hyp_bwd = _pointwise("ln_lstm_bwd", cfg.device_type)
            W_cat_t = torch.cat([W_hh, W_yh], 1).to(dt).t()
            W_yy_t, Wz_t, W_ab_t = W_yy.to(dt).t(), Wz.to(dt).t(), W_ab.to(dt).transpose(1, 2)
            dh_rec = torch.zeros(B, H, dtype=dt, device=xh.device)
            dy_rec = dyT.to(dt)
            dc, dcy = dcT.to(acc), dcyT.to(acc)
            L = {k: [None] * T for k in ("dab", "dxh", "dcat", "dz")}
            pm, py = [], []
            for t in range(T - 1, -1, -1):
                big = S["big"][t]
                mask = None if masks is None else masks[t]
                dab, dxh, dhh, dc, *p = main_bwd(
                    xh[t], big[:, :H4], S["ab"][t], bias, S["c"][t], mask, *ln_m, cfg.forget_bias, LN_EPS, dhs[:, t], dh_rec, dc, dt, acc
                )
                pm.append(p)
                dz = torch.bmm(dab, W_ab_t).transpose(0, 1).reshape(B, E12)  # d (zw, zb)
                dy = torch.addmm(dy_rec, dz, Wz_t)  # d h_hyp(t): from the modulations + recurrence
                dha, dcy, *p = hyp_bwd(hxp[t], big[:, H4:], S["small"][t], S["cy"][t], None, *ln_y, 1.0, LN_EPS, dy, None, dcy, dt, acc)
                py.append(p)
                dcat = torch.cat([dhh, dha], 1)
                dh_rec = torch.mm(dcat, W_cat_t)
                dy_rec = torch.mm(dha, W_yy_t)
                L["dab"][t], L["dxh"][t], L["dcat"][t], L["dz"][t] = dab, dxh, dcat, dz
            # Weight gradients: one GEMM each over all T*B rows.
            TB = T * B
            dAB = torch.stack(L["dab"], 1).reshape(12, TB, H)
            dCAT = torch.stack(L["dcat"]).reshape(TB, H4 + Hy4)
            dZ = torch.stack(L["dz"]).reshape(TB, E12)
            Hprev = torch.stack(S["h"][:-1]).reshape(TB, H)
            Yprev = torch.stack(S["y"][:-1]).reshape(TB, Hy)
            Ynew = torch.stack(S["y"][1:]).reshape(TB, Hy)
            Z = torch.stack(S["z"]).reshape(TB, 12, E)
            dW_cat = torch.mm(Hprev.t(), dCAT)
            dW_yy = torch.mm(Yprev.t(), dCAT[:, H4:])
            dWz = torch.mm(Ynew.t(), dZ)
            dbz = dZ.sum(0, dtype=acc)
            dW_ab = torch.bmm(Z.permute(1, 2, 0), dAB)  # (12, E, H)
            dbias = dAB[8:12].sum(1, dtype=acc).reshape(H4)
            lm = [torch.stack(col).sum(0) for col in zip(*pm)]
            ly = [torch.stack(col).sum(0) for col in zip(*py)]
            dXH = torch.stack(L["dxh"])
            dHXP = dCAT[:, H4:].reshape(T, B, Hy4)
        xh_dt, hxp_dt, h_dt, y_dt, c_dt, cy_dt = ctx.dtypes
        wd = W_hh.dtype
        return (
            dXH.to(xh_dt),
            dHXP.to(hxp_dt),
            dh_rec.to(h_dt),
            dy_rec.to(y_dt),
            dc.to(c_dt),
            dcy.to(cy_dt),
            dW_cat[:, :H4].to(wd),
            dW_cat[:, H4:].to(wd),
            dW_yy.to(wd),
            dbias.to(wd),
            *[g.to(wd) for g in lm],
            *[g.to(wd) for g in ly],
            dWz.to(wd),
            dbz.to(wd),
            dW_ab.to(wd),
            None,
            None,
        )


# --------------------------------------------------------------------------------------------
# The cells
# --------------------------------------------------------------------------------------------


class RecurrentCell(nn.Module):
    """Common interface: `state_size`, `hidden_size`, `step`, `sequence`, `output`."""

    kind = ""

    def __init__(self, input_size: int, hidden_size: int, recurrent_dropout_keep: float = 1.0, forget_bias: float = 1.0):
        super().__init__()
        if not 0.0 < recurrent_dropout_keep <= 1.0:
            raise ConfigError(f"recurrent_dropout_keep must be in (0, 1], got {recurrent_dropout_keep}")
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.recurrent_dropout_keep = float(recurrent_dropout_keep)
        self.forget_bias = float(forget_bias)
        # Which sequence path "auto" resolves to can be overridden per cell (see PATHS).
        self.fast_path = "auto"

    state_size: int

    @property
    def dropout_active(self) -> bool:
        """Recurrent dropout applies only in training mode with keep < 1 (magenta's eval and
        sampling models switch it off)."""
        return self.training and self.recurrent_dropout_keep < 1.0

    def draw_dropout_masks(self, steps: int, batch: int, device, dtype=torch.float32) -> Tensor | None:
        """Fresh inverted-dropout masks for every step, `(steps, batch, hidden)` of {0, 1/keep};
        None when dropout is inactive. Both the reference and the fast path draw them here, so the
        two consume the RNG identically and can be compared mask for mask."""
        if not self.dropout_active:
            return None
        keep = self.recurrent_dropout_keep
        return torch.empty(steps, batch, self.hidden_size, device=device, dtype=dtype).bernoulli_(keep).div_(keep)

    def _candidate(self, j: Tensor, dropout_mask: Tensor | None) -> Tensor:
        """g = dropout(tanh(j)): magenta's recurrent dropout without memory loss."""
        g = torch.tanh(j)
        if dropout_mask is not None:
            return g * dropout_mask
        if self.dropout_active:
            return F.dropout(g, p=1.0 - self.recurrent_dropout_keep, training=True)
        return g

    def output(self, state: Tensor) -> Tensor:
        """h from a flat state (magenta `get_output`)."""
        raise NotImplementedError

    def step(self, x: Tensor, state: Tensor, dropout_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def resolve_path(self, fast=None, x: Tensor | None = None) -> str:
        """The path `sequence` takes: fast=False -> "reference"; None/True -> `self.fast_path`
        ("auto" by default); or a path name."""
        if fast is False:
            return "reference"
        want = self.fast_path if fast is None or fast is True else fast
        if want not in PATHS:
            raise ConfigError(f"unknown sequence path {want!r}; choose one of {PATHS}")
        cudnn_ok = self.kind == "lstm" and not self.dropout_active
        if want == "auto":
            low = x is not None and _autocast_dtype(x.device.type) is not None
            return "cudnn" if cudnn_ok and not low else "bptt"
        if want == "cudnn" and not cudnn_ok:
            raise ConfigError(
                "the cudnn path needs kind='lstm' with recurrent dropout inactive (eval mode or keep=1): "
                "cuDNN has no dropout on the candidate tanh(j)"
            )
        return want

    def sequence(self, x: Tensor, state: Tensor, *, fast=None) -> tuple[Tensor, Tensor]:
        """Teacher-forced run over x (B, T, input_size) from state (B, state_size).
        Returns h (B, T, hidden_size) and the final flat state."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__}.sequence: x must be (B, T, {self.input_size}), got {tuple(x.shape)}")
        if state.dim() != 2 or state.shape != (x.shape[0], self.state_size):
            raise ValueError(f"{type(self).__name__}.sequence: state must be ({x.shape[0]}, {self.state_size}), got {tuple(state.shape)}")
        if x.shape[1] == 0:
            raise ValueError(f"{type(self).__name__}.sequence: empty sequence (T = 0)")
        path = self.resolve_path(fast, x)
        masks = self.draw_dropout_masks(x.shape[1], x.shape[0], x.device)
        if path == "reference":
            outs = []
            for t in range(x.shape[1]):
                h, state = self.step(x[:, t], state, None if masks is None else masks[t])
                outs.append(h)
            return torch.stack(outs, 1), state
        return self._sequence_fast(x, state, masks, path)

    def _sequence_fast(self, x, state, masks, path):
        raise NotImplementedError


class LSTMCell(RecurrentCell):
    """magenta `LSTMCell`: state `[c, h]`, glorot W_xh, block-orthogonal W_hh, zero bias."""

    kind = "lstm"

    def __init__(self, input_size, hidden_size, recurrent_dropout_keep=1.0, forget_bias=1.0):
        super().__init__(input_size, hidden_size, recurrent_dropout_keep, forget_bias)
        H = hidden_size
        self.state_size = 2 * H
        self.W_xh = nn.Parameter(glorot_uniform_(torch.empty(input_size, 4 * H)))
        self.W_hh = nn.Parameter(lstm_orthogonal_(torch.empty(H, 4 * H)))
        self.bias = nn.Parameter(torch.zeros(4 * H))

    def output(self, state):
        return state[:, self.hidden_size :]

    def step(self, x, state, dropout_mask=None):
        c, h = state.split(self.hidden_size, 1)
        hidden = x @ self.W_xh + h @ self.W_hh + self.bias
        i, j, f, o = hidden.chunk(4, 1)
        g = self._candidate(j, dropout_mask)
        new_c = c * torch.sigmoid(f + self.forget_bias) + torch.sigmoid(i) * g
        new_h = torch.tanh(new_c) * torch.sigmoid(o)
        return new_h, torch.cat([new_c, new_h], 1)

    def cudnn_weights(self) -> list[Tensor]:
        """[w_ih, w_hh, b_ih, b_hh] for `torch.lstm`: PyTorch's gate order is (i, f, g, o) against
        magenta's (i, j, f, o), weights are stored transposed, and the +forget_bias goes into b_ih."""

        def reorder(w):
            i, j, f, o = w.chunk(4, -1)
            return torch.cat([i, f, j, o], -1)

        H = self.hidden_size
        fb = torch.zeros(4 * H, dtype=self.bias.dtype, device=self.bias.device)
        fb[H : 2 * H] = self.forget_bias
        return [
            reorder(self.W_xh).t().contiguous(),
            reorder(self.W_hh).t().contiguous(),
            reorder(self.bias) + fb,
            torch.zeros_like(self.bias),
        ]

    def _sequence_fast(self, x, state, masks, path):
        H = self.hidden_size
        c0, h0 = state[:, :H], state[:, H:]
        if path == "cudnn":
            with _no_autocast(x.device.type), warnings.catch_warnings():
                # cuDNN wants one flat weight buffer and copies these (a few MB) every call.
                warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk.*")
                hs, hT, cT = torch.lstm(
                    x, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()), self.cudnn_weights(),
                    True, 1, 0.0, self.training, False, True,
                )
            return hs, torch.cat([cT[0], hT[0]], 1)
        cfg = _make_cfg(x, self.forget_bias)
        xp = _input_projection(x, self.W_xh, self.bias)
        hs, cT = _run_lstm(xp, h0, c0, self.W_hh, None, masks, cfg)
        return hs, torch.cat([cT, hs[:, -1]], 1)


class LayerNormLSTMCell(RecurrentCell):
    """magenta `LayerNormLSTMCell`: state `[h, c]`, no gate bias, LayerNorm (gamma 1, beta 0,
    eps 1e-3) on each of the four gate pre-activations and on the new c."""

    kind = "layer_norm"

    def __init__(self, input_size, hidden_size, recurrent_dropout_keep=1.0, forget_bias=1.0):
        super().__init__(input_size, hidden_size, recurrent_dropout_keep, forget_bias)
        H = hidden_size
        self.state_size = 2 * H
        self.W_xh = nn.Parameter(glorot_uniform_(torch.empty(input_size, 4 * H)))
        self.W_hh = nn.Parameter(lstm_orthogonal_(torch.empty(H, 4 * H)))
        self.ln_gamma = nn.Parameter(torch.ones(4 * H))
        self.ln_beta = nn.Parameter(torch.zeros(4 * H))
        self.ln_c_gamma = nn.Parameter(torch.ones(H))
        self.ln_c_beta = nn.Parameter(torch.zeros(H))

    def ln_params(self):
        return (self.ln_gamma, self.ln_beta, self.ln_c_gamma, self.ln_c_beta)

    def output(self, state):
        return state[:, : self.hidden_size]

    def step(self, x, state, dropout_mask=None):
        h, c = state.split(self.hidden_size, 1)
        concat = x @ self.W_xh + h @ self.W_hh  # no bias: "live life without garbage"
        concat = layer_norm_all(concat, 4, self.ln_gamma, self.ln_beta)
        i, j, f, o = concat.chunk(4, 1)
        g = self._candidate(j, dropout_mask)
        new_c = c * torch.sigmoid(f + self.forget_bias) + torch.sigmoid(i) * g
        new_h = torch.tanh(layer_norm(new_c, self.ln_c_gamma, self.ln_c_beta)) * torch.sigmoid(o)
        return new_h, torch.cat([new_h, new_c], 1)

    def _sequence_fast(self, x, state, masks, path):
        H = self.hidden_size
        h0, c0 = state[:, :H], state[:, H:]
        cfg = _make_cfg(x, self.forget_bias)
        xp = _input_projection(x, self.W_xh)
        hs, cT = _run_lstm(xp, h0, c0, self.W_hh, self.ln_params(), masks, cfg)
        return hs, torch.cat([hs[:, -1], cT], 1)


class HyperLSTMCell(RecurrentCell):
    """magenta `HyperLSTMCell` with layer norm (the sketch-rnn / RPCL / SketchGloc decoder).

    Parameters (magenta names in brackets):
      W_xh, W_hh, bias                        main cell [W_xh, W_hh, bias]
      ln_gamma/beta (4H), ln_c_gamma/beta (H)  [ln_all, ln_c]
      hyper_cell                              LayerNormLSTMCell(I + H, hyper_num_units)
      hyper_zw_w (8, Hy, E) = 0, hyper_zw_b (8, E) = 1      [hyper_*/zw]
      hyper_alpha_w (8, E, H) = 0.1 / E                     [hyper_*/alpha]
      hyper_zb_w (4, Hy, E) ~ N(0, std 0.01)                [hyper_*h/zb]
      hyper_beta_w (4, E, H) = 0                            [hyper_*h/beta]
    with the 8 modulations in the order `HYPER_TERMS` (ix jx fx ox ih jh fh oh); zb/beta exist
    for the four h-terms only. At init alpha = 0.1 and beta = 0 exactly.
    """

    kind = "hyper"

    def __init__(self, input_size, hidden_size, recurrent_dropout_keep=1.0, forget_bias=1.0, hyper_num_units=256, hyper_embedding_size=32):
        super().__init__(input_size, hidden_size, recurrent_dropout_keep, forget_bias)
        H, Hy, E = hidden_size, hyper_num_units, hyper_embedding_size
        self.hyper_num_units, self.hyper_embedding_size = Hy, E
        self.state_size = 2 * (H + Hy)
        self.W_xh = nn.Parameter(glorot_uniform_(torch.empty(input_size, 4 * H)))
        self.W_hh = nn.Parameter(lstm_orthogonal_(torch.empty(H, 4 * H)))
        self.bias = nn.Parameter(torch.zeros(4 * H))
        self.ln_gamma = nn.Parameter(torch.ones(4 * H))
        self.ln_beta = nn.Parameter(torch.zeros(4 * H))
        self.ln_c_gamma = nn.Parameter(torch.ones(H))
        self.ln_c_beta = nn.Parameter(torch.zeros(H))
        # magenta builds the hyper cell with its own defaults: forget bias 1.0, no dropout.
        self.hyper_cell = LayerNormLSTMCell(input_size + H, Hy, recurrent_dropout_keep=1.0, forget_bias=1.0)
        self.hyper_zw_w = nn.Parameter(torch.zeros(8, Hy, E))
        self.hyper_zw_b = nn.Parameter(torch.ones(8, E))
        self.hyper_alpha_w = nn.Parameter(torch.full((8, E, H), 0.1 / E))
        # tf.random_normal_initializer(stddev=0.01) in magenta's super_linear('gaussian').
        self.hyper_zb_w = nn.Parameter(torch.randn(4, Hy, E) * 0.01)
        self.hyper_beta_w = nn.Parameter(torch.zeros(4, E, H))

    def ln_params(self):
        return (self.ln_gamma, self.ln_beta, self.ln_c_gamma, self.ln_c_beta)

    def split_state(self, state):
        """(h, h_hyp, c, c_hyp) views of a flat state."""
        return state.split([self.hidden_size, self.hyper_num_units, self.hidden_size, self.hyper_num_units], 1)

    def output(self, state):
        return state[:, : self.hidden_size]

    def hyper_norm(self, k: int, layer: Tensor, hyper_output: Tensor) -> Tensor:
        """magenta `hyper_norm` for modulation k of HYPER_TERMS: alpha * layer (+ beta for h-terms)."""
        zw = hyper_output @ self.hyper_zw_w[k] + self.hyper_zw_b[k]
        result = (zw @ self.hyper_alpha_w[k]) * layer
        if k >= 4:
            zb = hyper_output @ self.hyper_zb_w[k - 4]
            result = result + zb @ self.hyper_beta_w[k - 4]
        return result

    def step(self, x, state, dropout_mask=None):
        h, h_hyp, c, c_hyp = self.split_state(state)
        hyper_output, hyper_state = self.hyper_cell.step(torch.cat([x, h], 1), torch.cat([h_hyp, c_hyp], 1))
        xh = x @ self.W_xh
        hh = h @ self.W_hh
        xs, hs_, bs = xh.chunk(4, 1), hh.chunk(4, 1), self.bias.chunk(4, 0)
        gates = [self.hyper_norm(g, xs[g], hyper_output) + self.hyper_norm(4 + g, hs_[g], hyper_output) + bs[g] for g in range(4)]
        concat = layer_norm_all(torch.cat(gates, 1), 4, self.ln_gamma, self.ln_beta)
        i, j, f, o = concat.chunk(4, 1)
        g = self._candidate(j, dropout_mask)
        new_c = c * torch.sigmoid(f + self.forget_bias) + torch.sigmoid(i) * g
        new_h = torch.tanh(layer_norm(new_c, self.ln_c_gamma, self.ln_c_beta)) * torch.sigmoid(o)
        hyper_h, hyper_c = hyper_state.split(self.hyper_num_units, 1)
        return new_h, torch.cat([new_h, hyper_h, new_c, hyper_c], 1)

    def _stacked_hyper_weights(self):
        """Wz (Hy, 12E) = [zw of the 8 terms | zb of the 4 h-terms], bz (12E), W_ab (12, E, H)."""
        Hy, E = self.hyper_num_units, self.hyper_embedding_size
        Wz = torch.cat([self.hyper_zw_w, self.hyper_zb_w], 0).permute(1, 0, 2).reshape(Hy, 12 * E)
        bz = torch.cat([self.hyper_zw_b.reshape(-1), self.hyper_zw_b.new_zeros(4 * E)])
        W_ab = torch.cat([self.hyper_alpha_w, self.hyper_beta_w], 0)
        return Wz, bz, W_ab

    def _sequence_fast(self, x, state, masks, path):
        I, H = self.input_size, self.hidden_size
        h0, y0, c0, cy0 = self.split_state(state)
        cfg = _make_cfg(x, self.forget_bias)
        hyp = self.hyper_cell
        # One input GEMM for both cells: x W_xh (main) and x W_hyper_xh[:I] (the hyper cell's x rows).
        proj = _input_projection(x, torch.cat([self.W_xh, hyp.W_xh[:I]], 1))
        xh, hxp = proj[..., : 4 * H], proj[..., 4 * H :]
        Wz, bz, W_ab = self._stacked_hyper_weights()
        args = (xh, hxp, h0, y0, c0, cy0, self.W_hh, hyp.W_xh[I:], hyp.W_hh, self.bias, *self.ln_params(), *hyp.ln_params(), Wz, bz, W_ab)
        if _needs_grad(*args):
            hs, yT, cT, cyT = _HyperSequence.apply(*args, masks, cfg)
        else:
            with _no_autocast(cfg.device_type):
                a = args
                hs, yT, cT, cyT, _ = _hyper_forward(*a[:10], a[10:14], a[14:18], *a[18:21], masks, cfg, False)
            hs, yT, cT, cyT = hs.to(h0.dtype), yT.to(y0.dtype), cT.to(c0.dtype), cyT.to(cy0.dtype)
        return hs, torch.cat([hs[:, -1], yT, cT, cyT], 1)


def make_cell(
    kind: str,
    input_size: int,
    hidden_size: int,
    *,
    recurrent_dropout_keep: float = 1.0,
    hyper_num_units: int = 256,
    hyper_embedding_size: int = 32,
    forget_bias: float = 1.0,
) -> RecurrentCell:
    """Build a sketch-rnn cell: kind is "lstm", "layer_norm" or "hyper" (magenta's dec_model)."""
    if kind == "lstm":
        return LSTMCell(input_size, hidden_size, recurrent_dropout_keep, forget_bias)
    if kind == "layer_norm":
        return LayerNormLSTMCell(input_size, hidden_size, recurrent_dropout_keep, forget_bias)
    if kind == "hyper":
        return HyperLSTMCell(input_size, hidden_size, recurrent_dropout_keep, forget_bias, hyper_num_units, hyper_embedding_size)
    raise ConfigError(f"unknown cell kind {kind!r}; choose one of {KINDS} (magenta's dec_model)")


# --------------------------------------------------------------------------------------------
# Batched autoregressive sampling
# --------------------------------------------------------------------------------------------

START_TOKEN = (0.0, 0.0, 1.0, 0.0, 0.0)  # S_0 of sketch-rnn: pen down, at the origin


class BatchedSampler:
    """Generate `n_steps` stroke-5 rows for a whole batch at once, on the device.

    Each step feeds `[prev_5, z]` (or `prev_5` when z is None) to `cell.step`, the head maps h to
    the mixture parameters, and `mixture.sample_step` draws the next row, all without leaving the
    device. Like the originals it always runs `n_steps` steps (no early stop); cut at the first
    p3 afterwards. The noise for all steps is drawn up front with the caller's generator, so on
    CUDA the whole loop is captured once as a CUDA graph and replayed per call (`use_graph`);
    any capture failure falls back to eager and is kept in `graph_error`.
    """

    def __init__(self, cell: RecurrentCell, head: nn.Module, n_steps: int, *, greedy: bool = False, use_graph: bool | None = None):
        self.cell, self.head, self.n_steps, self.greedy = cell, head, int(n_steps), bool(greedy)
        self.use_graph = use_graph
        self.graph = None
        self.graph_error: str | None = None
        self._static = None

    def _loop(self, state, z, temperature, noise, out, start):
        from sketchlab.nn.mixture import sample_step

        prev = start
        for t in range(self.n_steps):
            x = prev if z is None else torch.cat([prev, z], 1)
            h, state = self.cell.step(x, state)
            prev = sample_step(self.head(h), temperature, greedy=self.greedy, noise=noise[t])
            out[:, t].copy_(prev)
        return out

    @torch.no_grad()
    def __call__(self, state0: Tensor, z: Tensor | None = None, temperature: float | Tensor = 1.0, generator: torch.Generator | None = None) -> Tensor:
        from sketchlab.nn.mixture import draw_noise

        device, B = state0.device, state0.shape[0]
        temp = torch.as_tensor(temperature, dtype=state0.dtype, device=device).reshape(-1, 1).expand(B, 1)
        noise = draw_noise((self.n_steps, B), device, generator, state0.dtype)
        start = torch.tensor(START_TOKEN, dtype=state0.dtype).to(device).expand(B, 5).contiguous()
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
        key = (tuple(state0.shape), None if z is None else tuple(z.shape), state0.dtype, state0.device)
        try:
            if self._static is None or self._static[0] != key:
                st = {"state": state0.clone(), "z": None if z is None else z.clone(), "temp": temp.clone(), "noise": noise.clone(), "start": start.clone()}
                st["out"] = state0.new_empty(state0.shape[0], self.n_steps, 5)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm up (compiles/loads kernels) outside capture
                    self._loop(st["state"], st["z"], st["temp"], st["noise"], st["out"], st["start"])
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._loop(st["state"], st["z"], st["temp"], st["noise"], st["out"], st["start"])
                self._static, self.graph = (key, st), graph
            st = self._static[1]
            st["state"].copy_(state0)
            if z is not None:
                st["z"].copy_(z)
            st["temp"].copy_(temp)
            st["noise"].copy_(noise)
            self.graph.replay()
            return st["out"].clone()
        except Exception as e:  # capture unsupported here: remember why, run eager
            self.graph_error = f"{type(e).__name__}: {e}"[:500]
            self._static, self.graph = None, None
            return None


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
) -> Tensor:
    """One-shot batched sampling (see `BatchedSampler`); returns stroke-5 rows (B, n_steps, 5).
    Keep a `BatchedSampler` instead when sampling repeatedly, so the CUDA graph is reused."""
    return BatchedSampler(cell, head, n_steps, greedy=greedy, use_graph=use_graph)(state0, z, temperature, generator)
