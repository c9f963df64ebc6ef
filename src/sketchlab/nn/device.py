"""Which torch device to run on: the one rule every command and the API share."""

from __future__ import annotations

import torch

from sketchlab.errors import ConfigError


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """`requested` when given (checked), else `cuda`, then `mps`, then `cpu`."""
    if requested is not None and str(requested) not in ("", "auto"):
        try:
            dev = torch.device(requested)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"--device {requested!r}: not a device name (cpu, cuda, cuda:1, "
                              f"mps)") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: CUDA is not available on this machine")
        if dev.type == "mps" and not _mps_available():
            raise ConfigError(f"--device {requested}: MPS is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


__all__ = ["pick_device"]
