"""Graph pieces of SP-gra2seq (CMACH508/SP-gra2seq `model.py` `gcn_encoder`): the patch CNN and
the synonymous-proximity adjacency.

* `PatchCNN`: stride-2 2x2 convolutions without bias or normalisation, ReLU between them, the last
  one linear, then a 2x2 max-pool: an S x S image becomes one vector (256 -> 1 with the paper's
  seven layers 8, 32, 64, 128, 256, 512, 512). Weights N(0, c / (4 C_in)) with c = 2 for the
  ReLU layers and 1 for the last (plain, untruncated normals).
* `proximity_adjacency`: per sketch, the signed cosine similarity between patch embeddings, the
  top picks (self, best other, second other) chosen by zeroing the previous winner (not -inf, ties
  to the lowest index) among ALL patch slots, edge weights 1 / 0.5 / 0.2 times the cosine, cut by
  the validity mask Mk, a 0.5 link from every valid patch to the global node, the global node
  linked to itself only, then row-normalised. Directed; gradients flow through the cosines.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sketchlab.errors import ConfigError

__all__ = ["PatchCNN", "proximity_adjacency"]

EDGE_WEIGHTS = (1.0, 0.5, 0.2)    # self, best other patch, second other patch
GLOBAL_LINK = 0.5                 # patch -> global node
COS_EPS = 1e-30                   # the original's cosine denominator guard
ROW_EPS = 1e-10                   # the original's row-normalisation guard


class PatchCNN(nn.Module):
    """`(N, 1, S, S)` images -> `(N, channels[-1])` embeddings (pre-ReLU, pre-BN)."""

    def __init__(self, picture_size: int = 256, channels: Sequence[int] = (8, 32, 64, 128, 256, 512, 512)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        need = int(round(math.log2(picture_size))) - 1 if picture_size > 0 else -1
        if picture_size < 4 or 2 ** (need + 1) != picture_size:
            raise ConfigError(f"graph_picture_size={picture_size}: the patch CNN halves the image "
                              "down to 1 pixel, so it must be a power of two >= 4 (paper: 256)")
        if len(channels) != need or min(channels) < 1:
            raise ConfigError(f"cnn_channels={channels}: a {picture_size}-px patch needs {need} "
                              f"positive conv widths (log2({picture_size}) - 1; the paper's 256 px "
                              "uses 8,32,64,128,256,512,512)")
        self.picture_size = picture_size
        self.out_features = channels[-1]
        convs, cin = [], 1
        for i, cout in enumerate(channels):
            conv = nn.Conv2d(cin, cout, kernel_size=2, stride=2, bias=False)
            gain = 1.0 if i == len(channels) - 1 else 2.0    # linear last layer, ReLU before
            nn.init.normal_(conv.weight, 0.0, math.sqrt(gain / (4 * cin)))
            convs.append(conv)
            cin = cout
        self.convs = nn.ModuleList(convs)

    def forward(self, x: Tensor) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return F.max_pool2d(x, 2).flatten(1)


def proximity_adjacency(e: Tensor, mk: Tensor, v: Tensor) -> Tensor:
    """The row-normalised `(B, P+1, P+1)` adjacency (`gcn_encoder`'s `coff_adjs`; node 0 = the
    global image).

    e: `(B, P, D)` patch embeddings (nodes 1..P); mk: `(B, P, P)` edge mask; v: `(B, P)` node
    validity (both from `sketchlab.data.patches.node_mask`).
    """
    B, P, _ = e.shape
    dot = e @ e.transpose(1, 2)
    norm = torch.linalg.vector_norm(e, dim=-1)
    cos = dot / (norm[:, :, None] * norm[:, None, :] + COS_EPS)
    with torch.no_grad():
        # Top picks by zeroing the previous winners' entries (a non-positive row can pick the
        # same slot again: the weights then add up). argmax returns the first maximum.
        sel = torch.zeros_like(cos)
        taken = torch.zeros_like(cos)
        for w in EDGE_WEIGHTS:
            one = F.one_hot((cos - cos * taken).argmax(-1), P).to(cos.dtype)
            sel = sel + w * one
            taken = taken + one
    rel = cos * sel * mk
    a = torch.zeros(B, P + 1, P + 1, dtype=cos.dtype, device=cos.device)
    a[:, 0, 0] = 1.0
    a[:, 1:, 0] = GLOBAL_LINK * v.to(cos.dtype)
    a[:, 1:, 1:] = rel
    return a / (a.sum(-1, keepdim=True) + ROW_EPS)
