"""``ConvVectorField``: F(U) = K2 * sigma(K1 * U + b1) + b2, the right-hand side as a network."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .activations import PowerReLU
from .stencil_conv import StencilConv2d

__all__ = ["ConvVectorField"]


class ConvVectorField(nn.Module):
    """Two convolutions around a power-of-ReLU activation.

    Args:
        fields: input and output channels (the PDE's fields).
        hidden: hidden channels.
        kernel_size: width of K1 (odd).
        powers: one activation power per hidden channel, or a shorter tuple repeated to fill them.
        boundary: padding rule of both convolutions.
        bias1, bias2: biases b1 and b2.
        kernel_size2: width of K2 (default ``kernel_size``; 1 makes K2 pointwise).
        boundary_value: Dirichlet wall value(s) of the fields.
    """

    def __init__(self, fields: int, hidden: int, kernel_size: int = 5, powers: Sequence[int] | int = (1,),
                 boundary: str = "periodic", bias1: bool = True, bias2: bool = True, kernel_size2: int | None = None,
                 boundary_value: float | Sequence[float] = 0.0) -> None:
        super().__init__()
        ps = [int(powers)] if isinstance(powers, int) else [int(p) for p in powers]
        ps = (ps * (hidden // len(ps) + 1))[:hidden]
        self.fields, self.hidden = fields, hidden
        self.conv1 = StencilConv2d(fields, hidden, kernel_size, boundary, bias1, boundary_value)
        self.act = PowerReLU(ps)
        # hidden channels have no wall data: they are continued as the field would be with value 0
        self.conv2 = StencilConv2d(hidden, fields, kernel_size2 or kernel_size, boundary, bias2, 0.0)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """F(U) for ``U (batch, fields, x, y)``."""
        return self.conv2(self.act(self.conv1(u)))
