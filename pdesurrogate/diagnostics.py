"""Kernel diagnostics: what linear stencil a network applies, and how far it is from an FD one.

A vector field built from convolutions is translation invariant on a periodic grid, so its
linearisation at a constant state ``c`` is itself a convolution. :func:`effective_stencil`
measures it by probing with a unit impulse, by central differences: ReLU networks have kinks
exactly at constant states (every derivative of a constant vanishes), where the central
difference returns the average of the one-sided slopes, and for polynomial activations of degree
<= 2 it is exact. For the exact network of the heat equation it is ``a`` times the five-point
Laplacian.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from datagen.stencils import kernel2d

from .errors import SurrogateError

__all__ = ["effective_stencil", "stencil_distance", "fd_stencil"]


def _radius(vf: nn.Module) -> int:
    r = 0
    for m in vf.modules():
        k = getattr(m, "kernel_size", None)
        if isinstance(k, int):
            r += k // 2
    return r


def effective_stencil(vector_field: nn.Module, fields: int | None = None, state: float = 0.0,
                      dtype: torch.dtype = torch.float64, eps: float = 1e-4) -> np.ndarray:
    """``S[out, in, a, b]``: d F_out(x_i, y_j) / d U_in(x_{i+a-R}, y_{j+b-R}) at ``U = state``.

    ``R`` is the network's total receptive radius (sum of kernel radii), so the stencil is
    ``(2R+1) x (2R+1)``, a cross-correlation kernel like those of ``datagen.stencils``.
    """
    fields = fields or getattr(vector_field, "n_fields", None)
    if fields is None:
        raise SurrogateError("give the number of fields")
    R = _radius(vector_field)
    n = 2 * (2 * R + 1) + 1  # large enough that the periodic images do not overlap
    vf = vector_field.to(dtype)
    base = torch.full((1, fields, n, n), float(state), dtype=dtype)
    c = n // 2
    S = np.zeros((fields, fields, 2 * R + 1, 2 * R + 1))
    for j in range(fields):
        probe = torch.zeros_like(base)
        probe[0, j, c, c] = 1.0
        with torch.no_grad():
            jvp = (vf(base + eps * probe) - vf(base - eps * probe)) / (2 * eps)
        # the correlation weight at offset a - R is the response of output cell i to input cell
        # i + (a - R): with the impulse at c, that is the output at c - (a - R)
        resp = jvp[0].cpu().numpy()
        S[:, j] = resp[:, c + R: c - R - 1: -1, c + R: c - R - 1: -1]
    return S


def fd_stencil(order: tuple[int, int], size: int, accuracy: int = 2,
               spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """``datagen``'s stencil of ``order`` zero-padded to ``size x size``."""
    return kernel2d(tuple(order), accuracy, spacing, size)


def stencil_distance(effective: np.ndarray, reference: np.ndarray) -> float:
    """``||effective - reference|| / ||reference||`` after padding both to the same size."""
    a, b = np.asarray(effective, float), np.asarray(reference, float)
    size = max(a.shape[-1], b.shape[-1])

    def pad(k):
        p = (size - k.shape[-1]) // 2
        return np.pad(k, [(0, 0)] * (k.ndim - 2) + [(p, p), (p, p)])

    a, b = pad(a), pad(b)
    nb = np.linalg.norm(b)
    if nb == 0:
        raise SurrogateError("the reference stencil is zero")
    return float(np.linalg.norm(a - b) / nb)
