"""The sequence engines behind the recurrent cells' fast path ("bptt"): hand-written BPTT.

The input projection `x W_xh` of all T steps is one GEMM; the time loop keeps only the recurrent
GEMM(s) and one pointwise function per step (`sketchlab.nn.rnn_pointwise`, fused on CUDA); a
hand-written backward (`torch.autograd.Function`) runs the dh/dc recurrence step by step and then
forms every weight gradient with ONE big GEMM over all T*B rows instead of T small accumulations.
The GEMMs run in the autocast dtype when autocast is on (bf16: state and pointwise math stay
fp32). The loops do no host synchronisation and keep static shapes, so a whole training step that
uses them can be captured in one CUDA graph (see `benchmarks/rnn.py`).

`run_lstm` serves `LSTMCell` and `LayerNormLSTMCell`, `run_hyper` the `HyperLSTMCell`
(`sketchlab.nn.cells`); `make_cfg` fixes a sequence's dtypes and fusion policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sketchlab.nn.rnn_pointwise import LN_EPS, Fusion


# --------------------------------------------------------------------------------------------
# Dtype policy
# --------------------------------------------------------------------------------------------


def autocast_dtype(device_type: str) -> torch.dtype | None:
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
class Cfg:
    """What one sequence run fixes: the forget bias, the dtypes, the device and the fusion policy."""

    forget_bias: float
    dt: torch.dtype  # GEMM / stored-activation dtype
    acc: torch.dtype  # pointwise math and cell-state dtype
    device_type: str
    fusion: Fusion

    def pointwise(self, name: str):
        return self.fusion.pointwise(name, self.device_type)


def make_cfg(x: Tensor, forget_bias: float, fusion: Fusion) -> Cfg:
    low = autocast_dtype(x.device.type)
    base = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    dt = low if low is not None else base
    acc = torch.float64 if base == torch.float64 else torch.float32
    return Cfg(float(forget_bias), dt, acc, x.device.type, fusion)


def needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class no_autocast:
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


def _lstm_forward(xp, h0, c0, W_hh, ln, masks, cfg: Cfg, save: bool):
    """Run the recurrence given the input projections `xp` (T, B, 4H). `ln` is None (plain LSTM)
    or (gamma_4, beta_4, gamma_c, beta_c). Returns h (B, T, H), c_T and the saved lists."""
    T = xp.shape[0]
    fwd = cfg.pointwise("ln_lstm_fwd" if ln is not None else "lstm_fwd")
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
    def forward(ctx, xp, h0, c0, W_hh, g4, b4, gc, bc, masks, cfg: Cfg):
        ln = None if g4 is None else (g4, b4, gc, bc)
        with no_autocast(cfg.device_type):
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
        with no_autocast(cfg.device_type):
            bwd = cfg.pointwise("ln_lstm_bwd" if ln is not None else "lstm_bwd")
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


def run_lstm(xp, h0, c0, W_hh, ln, masks, cfg: Cfg):
    """LSTM / LayerNorm-LSTM over the input projections `xp` (T, B, 4H) from (h0, c0): returns
    h (B, T, H) and c_T; through `_LSTMSequence` when a gradient is needed."""
    if needs_grad(xp, h0, c0, W_hh, *(ln or ())):
        g4, b4, gc, bc = ln if ln is not None else (None,) * 4
        return _LSTMSequence.apply(xp, h0, c0, W_hh, g4, b4, gc, bc, masks, cfg)
    with no_autocast(cfg.device_type):
        hs, cT, _ = _lstm_forward(xp, h0, c0, W_hh, ln, masks, cfg, save=False)
    return hs.to(h0.dtype), cT.to(c0.dtype)


def input_projection(x: Tensor, W: Tensor, bias: Tensor | None = None) -> Tensor:
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
    main_fwd = cfg.pointwise("hyper_main_fwd")
    hyp_fwd = cfg.pointwise("ln_lstm_fwd")
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
        with no_autocast(cfg.device_type):
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
        with no_autocast(cfg.device_type):
            main_bwd = cfg.pointwise("hyper_main_bwd")
            hyp_bwd = cfg.pointwise("ln_lstm_bwd")
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


def run_hyper(xh, hxp, h0, hy0, c0, cy0, W_hh, W_yh, W_yy, bias, g4, b4, gc, bc, yg4, yb4, ygc, ybc, Wz, bz, W_ab, masks, cfg: Cfg):
    """HyperLSTM over the input projections (see `_hyper_forward` for the arguments): returns
    h (B, T, H), h_hyp_T, c_T and c_hyp_T; through `_HyperSequence` when a gradient is needed."""
    args = (xh, hxp, h0, hy0, c0, cy0, W_hh, W_yh, W_yy, bias, g4, b4, gc, bc, yg4, yb4, ygc, ybc, Wz, bz, W_ab)
    if needs_grad(*args):
        return _HyperSequence.apply(*args, masks, cfg)
    with no_autocast(cfg.device_type):
        hs, yT, cT, cyT, _ = _hyper_forward(
            xh, hxp, h0, hy0, c0, cy0, W_hh, W_yh, W_yy, bias, (g4, b4, gc, bc), (yg4, yb4, ygc, ybc), Wz, bz, W_ab, masks, cfg, False
        )
    return hs.to(h0.dtype), yT.to(hy0.dtype), cT.to(c0.dtype), cyT.to(cy0.dtype)
