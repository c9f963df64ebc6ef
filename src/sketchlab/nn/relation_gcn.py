"""SketchGloc's multi-relation graph convolution (CMACH508/SketchGloc `model.py` `build_sketchBoard`).

For node features V (B, S, D) and R binary adjacency matrices A_c (B, S, S, R):

    M_c  = A_c V                          plain sum aggregation, no normalisation
    H2_c = ReLU(ReLU(M_c W1_c) W2_c)      W1_c, W2_c (D, D) per relation, no bias, N(0, 2/D)
    u    = (sum_c M_c + sum_c H2_c) / 2   (B, S, D)

The relations are combined only by this sum: no attention, no learned relation weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class RelationGCN(nn.Module):
    def __init__(self, dim: int, n_relations: int = 9):
        super().__init__()
        std = math.sqrt(2.0 / dim)                      # kaiming_init(..., 'relu'), fan_in = D
        self.W1 = nn.Parameter(torch.randn(n_relations, dim, dim) * std)
        self.W2 = nn.Parameter(torch.randn(n_relations, dim, dim) * std)

    def forward(self, v: Tensor, adj: Tensor) -> Tensor:
        """v (B, S, D), adj (B, S, S, R) with adj[b, i, j, c] = 1 when i receives from j."""
        m = torch.einsum("bijc,bjd->bcid", adj.to(v.dtype), v)          # (B, R, S, D)
        h1 = torch.relu(torch.einsum("bcid,cde->bcie", m, self.W1))
        h2 = torch.relu(torch.einsum("bcid,cde->bcie", h1, self.W2))
        return 0.5 * (m.sum(1) + h2.sum(1))


__all__ = ["RelationGCN"]
