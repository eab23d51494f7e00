"""Time integrators as residual layers: one call advances ``u`` by ``h`` using a vector field.

``euler`` (the ResNet block ``u + h F(u)``), ``heun``, ``rk4`` and ``projected_euler``
(an Euler step rescaled to a given Euclidean norm per sample, as the paper does for linear
advection). Any of them can drive a trained vector field: the network is read as a continuous
vector field, and the integrator and step count are choices made at inference time.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["euler", "heun", "rk4", "projected_euler", "INTEGRATORS", "sample_norm"]

Field = Callable[[torch.Tensor], torch.Tensor]


def euler(F: Field, u: torch.Tensor, h: float) -> torch.Tensor:
    """``u + h F(u)``."""
    return u + h * F(u)


def heun(F: Field, u: torch.Tensor, h: float) -> torch.Tensor:
    """Explicit trapezoidal rule (second order)."""
    k1 = F(u)
    k2 = F(u + h * k1)
    return u + 0.5 * h * (k1 + k2)


def rk4(F: Field, u: torch.Tensor, h: float) -> torch.Tensor:
    """Classical fourth-order Runge-Kutta."""
    k1 = F(u)
    k2 = F(u + 0.5 * h * k1)
    k3 = F(u + 0.5 * h * k2)
    k4 = F(u + h * k3)
    return u + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)


def sample_norm(u: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each sample, shaped to broadcast against ``u``."""
    return torch.linalg.vector_norm(u.flatten(1), dim=1).view(-1, *([1] * (u.dim() - 1)))


def projected_euler(F: Field, u: torch.Tensor, h: float, norm: torch.Tensor | None = None) -> torch.Tensor:
    """Euler step, then rescaled to ``norm`` (default: the norm of ``u``)."""
    target = sample_norm(u) if norm is None else norm
    v = u + h * F(u)
    return v * (target / sample_norm(v))


INTEGRATORS = {"euler": euler, "heun": heun, "rk4": rk4, "projected_euler": projected_euler}
