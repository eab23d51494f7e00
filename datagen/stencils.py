"""Finite-difference stencils: weights, 1-D and 2-D kernels, symbols and sparse matrices.

Weights come from Fornberg's recursion evaluated in exact rational arithmetic, so a stencil is
the same numbers everywhere it is used (the numpy solver, the torch kernels, the tests).
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

from .errors import DatagenError
from .grid import Grid

__all__ = [
    "fornberg_weights",
    "central_stencil",
    "kernel2d",
    "laplacian_kernel",
    "stencil_symbol",
    "ACCURACIES",
]

ACCURACIES = (2, 4, 6, 8)


def fornberg_weights(order: int, offsets: Sequence[int | Fraction], x0: int | Fraction = 0) -> list[Fraction]:
    """Exact weights ``w`` with ``sum_k w_k f(x0 + offsets_k) ~ f^(order)(x0)`` on unit spacing.

    Fornberg (1988), "Generation of finite difference formulas on arbitrarily spaced grids".
    """
    x = [Fraction(o) for o in offsets]
    n = len(x)
    if order < 0 or order >= n:
        raise DatagenError(f"a derivative of order {order} needs more than {n} stencil points")
    z = Fraction(x0)
    c = [[Fraction(0)] * (order + 1) for _ in range(n)]
    c[0][0] = Fraction(1)
    c1 = Fraction(1)
    c4 = x[0] - z
    for i in range(1, n):
        mn = min(i, order)
        c2 = Fraction(1)
        c5 = c4
        c4 = x[i] - z
        for j in range(i):
            c3 = x[i] - x[j]
            c2 *= c3
            if j == i - 1:
                for k in range(mn, 0, -1):
                    c[i][k] = c1 * (k * c[i - 1][k - 1] - c5 * c[i - 1][k]) / c2
                c[i][0] = -c1 * c5 * c[i - 1][0] / c2
            for k in range(mn, 0, -1):
                c[j][k] = (c4 * c[j][k] - k * c[j][k - 1]) / c3
            c[j][0] = c4 * c[j][0] / c3
        c1 = c2
    return [c[k][order] for k in range(n)]


@lru_cache(maxsize=None)
def central_stencil(order: int, accuracy: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and float64 weights of the central difference of ``order`` on unit spacing.

    Uses ``2 * ((order + 1) // 2) - 1 + accuracy`` points, the fewest that reach ``accuracy``
    (an even number). Order 0 is the identity ``([0], [1.0])``.
    """
    if accuracy not in ACCURACIES:
        raise DatagenError(f"stencil accuracy {accuracy} is not supported; choose one of {ACCURACIES}")
    if order < 0:
        raise DatagenError(f"derivative order {order} must be >= 0")
    if order == 0:
        return np.array([0]), np.array([1.0])
    npts = 2 * ((order + 1) // 2) - 1 + accuracy
    r = (npts - 1) // 2
    offsets = list(range(-r, r + 1))
    w = fornberg_weights(order, offsets)
    return np.array(offsets), np.array([float(v) for v in w])


def stencil_radius(order: int, accuracy: int) -> int:
    """Half-width of the central stencil."""
    offs, _ = central_stencil(order, accuracy)
    return int(np.max(np.abs(offs)))


def kernel2d(order: tuple[int, int], accuracy: int, spacing: tuple[float, float] = (1.0, 1.0),
             size: int | None = None) -> np.ndarray:
    """2-D cross-correlation kernel of ``d^i/dx^i d^j/dy^j``: ``K[a, b]`` weights ``U[i+a-r, j+b-r]``.

    Outer product of the 1-D stencils, scaled by ``dx^-i dy^-j``. ``size`` (odd) zero-pads it
    to a larger square; by default the smallest square holding it.
    """
    i, j = order
    ox, wx = central_stencil(i, accuracy)
    oy, wy = central_stencil(j, accuracy)
    r = max(int(np.abs(ox).max()), int(np.abs(oy).max()))
    if size is None:
        size = 2 * r + 1
    if size % 2 == 0 or size < 2 * r + 1:
        raise DatagenError(f"kernel size {size} must be odd and at least {2 * r + 1} for order {order}")
    R = size // 2
    k = np.zeros((size, size))
    for a, wa in zip(ox, wx):
        for b, wb in zip(oy, wy):
            k[R + a, R + b] += wa * wb
    return k / (spacing[0] ** i * spacing[1] ** j)


def laplacian_kernel(accuracy: int = 2, spacing: tuple[float, float] = (1.0, 1.0), size: int | None = None) -> np.ndarray:
    """``u_xx + u_yy`` as one kernel (five-point at accuracy 2)."""
    r = stencil_radius(2, accuracy)
    size = size or 2 * r + 1
    return kernel2d((2, 0), accuracy, spacing, size) + kernel2d((0, 2), accuracy, spacing, size)


def stencil_symbol(order: int, accuracy: int, theta: np.ndarray) -> np.ndarray:
    """Fourier symbol ``sum_k w_k exp(i o_k theta)`` of the unit-spacing stencil (theta = k dx)."""
    offs, w = central_stencil(order, accuracy)
    return (w[None, :] * np.exp(1j * np.multiply.outer(theta, offs))).sum(axis=-1)


def apply_1d(padded: np.ndarray, order: int, accuracy: int, axis: int, pad: int, n: int, h: float) -> np.ndarray:
    """Stencil of ``order`` along ``axis`` of an array carrying ``pad`` ghost cells on that axis.

    Symmetric pairs of offsets are summed before weighting and ``h^-order`` is folded into the
    weights, so the pass costs about half the multiplications of a term-by-term sum.
    """
    offs, w = central_stencil(order, accuracy)
    w = w * h ** (-order)
    axis = axis % padded.ndim

    def shifted(o: int) -> np.ndarray:
        sl = [slice(None)] * padded.ndim
        sl[axis] = slice(pad + o, pad + o + n)
        return padded[tuple(sl)]

    r = len(offs) // 2
    out = shifted(0) * w[r] if w[r] != 0.0 else None
    sign = -1.0 if order % 2 else 1.0  # central weights are even or odd in the offset
    for k in range(1, r + 1):
        pair = shifted(k) - shifted(-k) if sign < 0 else shifted(k) + shifted(-k)
        pair *= w[r + k]
        if out is None:
            out = pair
        else:
            out += pair
    return out


def matrix_1d(grid: Grid, axis: int, order: int, accuracy: int) -> sp.csr_matrix:
    """Sparse matrix of the linear part of the ``order``-th derivative along one axis.

    Ghost cells are eliminated through the grid's boundary rule (with a zero wall value, so
    for Dirichlet data the affine part is left out). Used for Jacobians.
    """
    n = grid.shape[axis]
    r = stencil_radius(order, accuracy) if order else 0
    eye = np.eye(n)
    zero_grid = Grid((max(n, 3), 3), (1.0, 1.0), grid.boundary, 0.0)
    padded = zero_grid.pad(eye[:, None, :, None] * np.ones((1, 1, 1, 3)), (r, 0))[:, 0, :, 0]
    # padded[c, :] is column c of the identity with ghost cells; apply the stencil along axis 1.
    cols = apply_1d(padded, order, accuracy, axis=1, pad=r, n=n, h=grid.spacing[axis])
    import scipy.sparse as sp  # here, not at import: the CLI and workers start faster without it

    return sp.csr_matrix(cols.T)
