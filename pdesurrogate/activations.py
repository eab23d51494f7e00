"""Power-of-ReLU activations.

``relu(x)^p`` is the paper's activation family; two such channels give any power exactly:
``x^p = relu(x)^p + (-1)^p relu(-x)^p`` (:func:`signed_power`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["signed_power", "PowerReLU"]


def signed_power(x: torch.Tensor, p: int) -> torch.Tensor:
    """``relu(x)^p + (-1)^p relu(-x)^p``, which equals ``x^p`` for every real x."""
    if int(p) != p or p < 1:
        raise ValueError(f"power {p!r} must be a positive integer")
    sign = -1.0 if p % 2 else 1.0
    return torch.relu(x) ** p + sign * torch.relu(-x) ** p


class PowerReLU(nn.Module):
    """``relu(x_c)^{p_c}`` with one integer power per channel (axis 1).

    Args:
        powers: one power per channel, or a single power for all channels.
    """

    def __init__(self, powers: Sequence[int] | int) -> None:
        super().__init__()
        ps = [int(powers)] if isinstance(powers, int) else [int(p) for p in powers]
        if not ps or min(ps) < 1:
            raise ValueError(f"powers {powers!r} must be positive integers")
        self.powers = tuple(ps)
        self._groups = [(p, torch.tensor([c for c, q in enumerate(ps) if q == p])) for p in sorted(set(ps))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation channel-wise."""
        r = torch.relu(x)
        if len(self._groups) == 1:
            p = self._groups[0][0]
            if len(self.powers) not in (1, x.shape[1]):
                raise ValueError(f"PowerReLU has {len(self.powers)} powers but the input has {x.shape[1]} channels")
            return r if p == 1 else r ** p
        if x.shape[1] != len(self.powers):
            raise ValueError(f"PowerReLU has {len(self.powers)} powers but the input has {x.shape[1]} channels")
        out = torch.empty_like(r)
        for p, idx in self._groups:
            idx = idx.to(x.device)
            out[:, idx] = r[:, idx] ** p if p > 1 else r[:, idx]
        return out

    def extra_repr(self) -> str:
        return f"powers={self.powers}"
