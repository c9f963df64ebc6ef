"""Weight initialisers the originals use, written once.

* `glorot_uniform_`, `lstm_orthogonal_`: the TF defaults magenta's `sketch_rnn/rnn.py` gives its
  cells (`tf.get_variable`'s glorot-uniform, `lstm_ortho_initializer`).
* `normal_linear`: a `Linear` with weight ~ N(0, std^2) and a zero bias (or none): magenta
  `model.py`'s `super_linear(init_w="gaussian")` (std 0.001 in sketch-rnn's encoder head), the
  seeds' `fc` layers (std sqrt(2 / fan_in)), SP-gra2seq's bias-free GCN and head weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


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


def normal_linear(n_in: int, n_out: int, std: float, bias: bool = True) -> nn.Linear:
    """`nn.Linear(n_in, n_out, bias)` with weight ~ N(0, std^2) (untruncated) and bias = 0.

    The layer is built by `nn.Linear` first, so it draws from the global RNG exactly as the
    helpers it replaces did (its default init, then the normal weight).
    """
    lin = nn.Linear(n_in, n_out, bias=bias)
    nn.init.normal_(lin.weight, 0.0, std)
    if bias:
        nn.init.zeros_(lin.bias)
    return lin
