"""Exponential moving average of a module's weights, held as buffers.

The copy's parameters are re-registered as buffers, so the EMA is saved with the model's state
dict (`model.safetensors`) but is invisible to `model.parameters()` and the optimiser.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def _parameters_to_buffers(module: nn.Module) -> nn.Module:
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, p.detach().clone())
    return module


class EMA(nn.Module):
    """theta_ema <- d * theta_ema + (1 - d) * theta after each optimiser step.

    `rate` is the original's `ema_rate` (0.9999). With `warmup`, d = min(rate, (1 + n) / (10 + n))
    after n updates, so a short run's EMA is not stuck near the random initial weights (at
    0.9999 the average spans ~10k steps; the original had no warm-up and ran 50k steps).
    """

    def __init__(self, module: nn.Module, rate: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must lie in [0, 1), got {rate}")
        self.rate = float(rate)
        self.warmup = bool(warmup)
        self.module = _parameters_to_buffers(copy.deepcopy(module)).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def decay(self) -> float:
        n = int(self.num_updates) + 1
        return min(self.rate, (1.0 + n) / (10.0 + n)) if self.warmup else self.rate

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        ema, src = self._pairs(source)
        torch._foreach_lerp_(ema, src, 1.0 - self.decay())
        self.num_updates += 1

    def _pairs(self, source: nn.Module):
        mine = dict(self.module.named_buffers())
        try:
            pairs = [(mine[name], p.detach()) for name, p in source.named_parameters()]
        except KeyError as e:
            raise RuntimeError(f"EMA: the source has a parameter {e} the copy lacks") from None
        return [a for a, _ in pairs], [b for _, b in pairs]

    @torch.no_grad()
    def copy_from(self, source: nn.Module) -> None:
        """Reset the average to `source`'s current weights."""
        ema, src = self._pairs(source)
        for a, b in zip(ema, src):
            a.copy_(b)
        self.num_updates.zero_()

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
