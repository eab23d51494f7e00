"""Device names from users: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, checked in one line."""

from __future__ import annotations

import torch

from .errors import SurrogateError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when present), or a device torch knows and this machine has; one-line errors."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SurrogateError(f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise SurrogateError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); use "
                             "auto or cpu")
    if dev.type not in ("cpu", "cuda") and not _available(dev):
        raise SurrogateError(f"device {device!r} is not available here; use auto or cpu")
    return dev


def _available(dev: torch.device) -> bool:
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError):
        return False
    return True


