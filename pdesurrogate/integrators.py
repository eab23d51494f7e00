"""Time integrators as residual layers: one call advances ``u`` by ``h`` using a vector field.

``euler`` (the ResNet block ``u + h F(u)``), ``heun``, ``rk4`` and ``projected_euler``
(an Euler step rescaled to a given Euclidean norm per sample, as the paper does for linear
advection). Any of them can drive a trained vector field: the network is read as a continuous
vector field, and the integrator and step count are choices made at inference time.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["euler", "heun", "rk4", "projected_euler", "INTEGRATORS", "STEP_FUNCTIONS", "STAGES", "sample_norm"]

Field = Callable[[torch.Tensor], torch.Tensor]


def _c(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``a`` cut to ``like``'s grid around the centre: under unpadded convolutions each stage
    returns a smaller grid (identity when the shapes agree)."""
    dx, dy = a.shape[-2] - like.shape[-2], a.shape[-1] - like.shape[-1]
    if dx == 0 and dy == 0:
        return a
    return a[..., dx // 2: a.shape[-2] - dx // 2, dy // 2: a.shape[-1] - dy // 2]


def euler(F: Field, u: torch.Tensor, h: float) -> torch.Tensor:
    """``u + h F(u)``."""
    k = F(u)
    return _c(u, k) + h * k


def heun(F: Field, u: torch.Tensor, h: float) -> torch.Tensor:
    """Explicit trapezoidal rule (second order)."""
    k1 = F(u)
    k2 = F(_c(u, k1) + h * k1)
    return _c(u, k2) + 0.5 * h * (_c(k1, k2) + k2)


def rk4(F: Field, u: torch.Tensor, h: float) -> torch.Tensor:
    """Classical fourth-order Runge-Kutta."""
    k1 = F(u)
    k2 = F(_c(u, k1) + 0.5 * h * k1)
    k3 = F(_c(u, k2) + 0.5 * h * k2)
    k4 = F(_c(u, k3) + h * k3)
    return _c(u, k4) + (h / 6.0) * (_c(k1, k4) + 2 * _c(k2, k4) + 2 * _c(k3, k4) + k4)


def sample_norm(u: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each sample, shaped to broadcast against ``u``."""
    return torch.linalg.vector_norm(u.flatten(1), dim=1).view(-1, *([1] * (u.dim() - 1)))


def projected_euler(F: Field, u: torch.Tensor, h: float, norm: torch.Tensor | None = None) -> torch.Tensor:
    """Euler step, then rescaled to ``norm`` (default: the norm of ``u``)."""
    target = sample_norm(u) if norm is None else norm
    v = u + h * F(u)
    return v * (target / sample_norm(v))


# vector-field evaluations per step: each shrinks the grid by the network's radius when the
# convolutions are unpadded (cropped training)
STAGES = {"euler": 1, "heun": 2, "rk4": 4}

# name -> one step of dt; INTEGRATORS holds the names, as datagen.integrators.INTEGRATORS does
STEP_FUNCTIONS = {"euler": euler, "heun": heun, "rk4": rk4, "projected_euler": projected_euler}
INTEGRATORS = tuple(STEP_FUNCTIONS)
