"""The recurrent cells of sketch-rnn, as magenta defines them, and how they run a sequence.

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

* ``"bptt"`` (all cells): one input GEMM, the recurrence with a hand-written backward
  (`sketchlab.nn.rnn_bptt`) and per-step pointwise functions (`sketchlab.nn.rnn_pointwise`),
  compiled with `torch.compile` on CUDA unless the cell's `fusion` says otherwise (the `fusion`
  argument: True, False, or a `Fusion` policy; plain eager PyTorch on CPU).
* ``"cudnn"`` (`LSTMCell` only, when recurrent dropout is inactive: eval, or keep = 1, and no
  low-precision autocast): `torch.lstm` (cuDNN on CUDA) with the weights mapped to PyTorch's gate
  order and the forget bias folded into `b_ih`. cuDNN has no candidate dropout, so with recurrent
  dropout on the LSTM uses "bptt".
* ``"reference"``: loops `step` under autograd (``fast=False``).

Sampling a sketch step by step lives in `sketchlab.nn.sampler`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sketchlab.errors import ConfigError
from sketchlab.nn.init import glorot_uniform_, lstm_orthogonal_
from sketchlab.nn.rnn_bptt import autocast_dtype, input_projection, make_cfg, no_autocast, run_hyper, run_lstm
from sketchlab.nn.rnn_pointwise import LN_EPS, Fusion, as_fusion

KINDS = ("lstm", "layer_norm", "hyper")
PATHS = ("auto", "bptt", "cudnn", "reference")
# The hyper modulations, in the order the stacked parameters hold them: four on the W_xh gate
# terms (alpha only), four on the W_hh gate terms (alpha and beta).
HYPER_TERMS = ("ix", "jx", "fx", "ox", "ih", "jh", "fh", "oh")


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
# The cells
# --------------------------------------------------------------------------------------------


class RecurrentCell(nn.Module):
    """Common interface: `state_size`, `hidden_size`, `step`, `sequence`, `output`."""

    kind = ""

    def __init__(self, input_size: int, hidden_size: int, recurrent_dropout_keep: float = 1.0, forget_bias: float = 1.0, fusion: bool | Fusion = True):
        super().__init__()
        if not 0.0 < recurrent_dropout_keep <= 1.0:
            raise ConfigError(f"recurrent_dropout_keep must be in (0, 1], got {recurrent_dropout_keep}")
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.recurrent_dropout_keep = float(recurrent_dropout_keep)
        self.forget_bias = float(forget_bias)
        # Which sequence path "auto" resolves to can be overridden per cell (see PATHS).
        self.fast_path = "auto"
        # Whether the "bptt" path fuses its per-step pointwise functions (torch.compile on CUDA).
        self.fusion = as_fusion(fusion)

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
            low = x is not None and autocast_dtype(x.device.type) is not None
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

    def __init__(self, input_size, hidden_size, recurrent_dropout_keep=1.0, forget_bias=1.0, fusion=True):
        super().__init__(input_size, hidden_size, recurrent_dropout_keep, forget_bias, fusion)
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
            with no_autocast(x.device.type), warnings.catch_warnings():
                # cuDNN wants one flat weight buffer and copies these (a few MB) every call.
                warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk.*")
                hs, hT, cT = torch.lstm(
                    x, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()), self.cudnn_weights(),
                    True, 1, 0.0, self.training, False, True,
                )
            return hs, torch.cat([cT[0], hT[0]], 1)
        cfg = make_cfg(x, self.forget_bias, self.fusion)
        xp = input_projection(x, self.W_xh, self.bias)
        hs, cT = run_lstm(xp, h0, c0, self.W_hh, None, masks, cfg)
        return hs, torch.cat([cT, hs[:, -1]], 1)


class LayerNormLSTMCell(RecurrentCell):
    """magenta `LayerNormLSTMCell`: state `[h, c]`, no gate bias, LayerNorm (gamma 1, beta 0,
    eps 1e-3) on each of the four gate pre-activations and on the new c."""

    kind = "layer_norm"

    def __init__(self, input_size, hidden_size, recurrent_dropout_keep=1.0, forget_bias=1.0, fusion=True):
        super().__init__(input_size, hidden_size, recurrent_dropout_keep, forget_bias, fusion)
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
        cfg = make_cfg(x, self.forget_bias, self.fusion)
        xp = input_projection(x, self.W_xh)
        hs, cT = run_lstm(xp, h0, c0, self.W_hh, self.ln_params(), masks, cfg)
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

    def __init__(self, input_size, hidden_size, recurrent_dropout_keep=1.0, forget_bias=1.0, hyper_num_units=256, hyper_embedding_size=32, fusion=True):
        super().__init__(input_size, hidden_size, recurrent_dropout_keep, forget_bias, fusion)
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
        self.hyper_cell = LayerNormLSTMCell(input_size + H, Hy, recurrent_dropout_keep=1.0, forget_bias=1.0, fusion=self.fusion)
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
        cfg = make_cfg(x, self.forget_bias, self.fusion)
        hyp = self.hyper_cell
        # One input GEMM for both cells: x W_xh (main) and x W_hyper_xh[:I] (the hyper cell's x rows).
        proj = input_projection(x, torch.cat([self.W_xh, hyp.W_xh[:I]], 1))
        xh, hxp = proj[..., : 4 * H], proj[..., 4 * H :]
        Wz, bz, W_ab = self._stacked_hyper_weights()
        hs, yT, cT, cyT = run_hyper(
            xh, hxp, h0, y0, c0, cy0, self.W_hh, hyp.W_xh[I:], hyp.W_hh, self.bias, *self.ln_params(), *hyp.ln_params(), Wz, bz, W_ab, masks, cfg
        )
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
    fusion: bool | Fusion = True,
) -> RecurrentCell:
    """Build a sketch-rnn cell: kind is "lstm", "layer_norm" or "hyper" (magenta's dec_model).

    `fusion`: whether the fast path compiles its per-step pointwise functions with torch.compile
    (on CUDA; True by default, False: always eager, or a `Fusion` policy for backend/devices)."""
    if kind == "lstm":
        return LSTMCell(input_size, hidden_size, recurrent_dropout_keep, forget_bias, fusion)
    if kind == "layer_norm":
        return LayerNormLSTMCell(input_size, hidden_size, recurrent_dropout_keep, forget_bias, fusion)
    if kind == "hyper":
        return HyperLSTMCell(input_size, hidden_size, recurrent_dropout_keep, forget_bias, hyper_num_units, hyper_embedding_size, fusion)
    raise ConfigError(f"unknown cell kind {kind!r}; choose one of {KINDS} (magenta's dec_model)")

