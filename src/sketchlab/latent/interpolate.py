"""Moving through a latent space: interpolation and analogies between codes."""

from __future__ import annotations

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation (magenta's latent interpolation); linear when a and b are parallel."""
    na, nb = a / a.norm(), b / b.norm()
    omega = torch.arccos(torch.clamp((na * nb).sum(), -1.0, 1.0))
    so = torch.sin(omega)
    if float(so) < 1e-6:
        return (1 - t) * a + t * b
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int, spherical: bool = True) -> torch.Tensor:
    """`steps` codes from `a` to `b` inclusive, shape (steps, D)."""
    ts = torch.linspace(0.0, 1.0, steps).tolist()
    if spherical:
        return torch.stack([slerp(a, b, t) for t in ts])
    return torch.stack([(1 - t) * a + t * b for t in ts])


def analogy(z_a: torch.Tensor, z_b: torch.Tensor, z_c: torch.Tensor) -> torch.Tensor:
    """The "latent calculator" of RPCL-pix2seqH: z_c + (z_b - z_a)."""
    return z_c + (z_b - z_a)
