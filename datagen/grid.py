"""Uniform 2-D grids and their boundary conditions.

Array convention: a field on the grid is ``U[i, j] = u(x_i, y_j)``; axis -2 is x, axis -1 is y.

Where the nodes sit depends on the boundary, so that ghost cells are exact mirror images:

* ``periodic``: ``x_i = i * Lx / nx``; node 0 and node nx are the same point.
* ``dirichlet``: ``x_i = (i + 1) * Lx / (nx + 1)``; the walls are the (unknown-free) nodes
  x = 0 and x = Lx, where u equals ``boundary_value``. Ghost cells continue u oddly about the
  wall value, which is exact for the homogeneous problem's odd extension.
* ``neumann``: cell centres ``x_i = (i + 1/2) * Lx / nx``; walls halfway between the first
  node and its ghost; ghost cells mirror u evenly, so the normal derivative vanishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import DatagenError
from .limits import MAX_CELLS

__all__ = ["Grid", "BOUNDARIES"]

BOUNDARIES = ("periodic", "dirichlet", "neumann")


@dataclass(frozen=True)
class Grid:
    """A uniform ``nx x ny`` grid on ``[0, Lx] x [0, Ly]`` with one boundary kind on all sides.

    Args:
        shape: ``(nx, ny)`` number of unknowns per axis (at least 3 each).
        extent: ``(Lx, Ly)`` side lengths; the paper uses the unit square.
        boundary: ``"periodic"``, ``"dirichlet"`` or ``"neumann"``.
        boundary_value: wall value(s) for Dirichlet, one number or one per field.
    """

    shape: tuple[int, int] = (100, 100)
    extent: tuple[float, float] = (1.0, 1.0)
    boundary: str = "periodic"
    boundary_value: float | tuple[float, ...] = 0.0

    def __post_init__(self) -> None:
        try:
            shape = tuple(int(s) for s in self.shape)
            extent = tuple(float(e) for e in self.extent)
        except (TypeError, ValueError):
            raise DatagenError(
                f"grid shape {self.shape!r} and extent {self.extent!r} must be two numbers each"
            ) from None
        if len(shape) != 2 or min(shape) < 3:
            raise DatagenError(f"grid shape {self.shape!r} must be two integers >= 3, e.g. (100, 100)")
        if shape[0] * shape[1] > MAX_CELLS:
            raise DatagenError(f"grid shape {shape[0]} x {shape[1]} has more than the {MAX_CELLS} cells allowed "
                               "; use a smaller grid")
        if len(extent) != 2 or not all(np.isfinite(extent)) or min(extent) <= 0:
            raise DatagenError(f"grid extent {self.extent!r} must be two positive lengths, e.g. (1, 1)")
        if self.boundary not in BOUNDARIES:
            raise DatagenError(
                f"unknown boundary {self.boundary!r}; choose one of {', '.join(BOUNDARIES)}"
            )
        bv = self.boundary_value
        bv = tuple(float(v) for v in bv) if isinstance(bv, (tuple, list)) else float(bv)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "extent", extent)
        object.__setattr__(self, "boundary_value", bv)

    # -- geometry ----------------------------------------------------------------------
    @property
    def spacing(self) -> tuple[float, float]:
        """``(dx, dy)``."""
        return tuple(self._spacing(n, length) for n, length in zip(self.shape, self.extent))

    @property
    def dx(self) -> float:
        """Grid spacing along x."""
        return self.spacing[0]

    @property
    def dy(self) -> float:
        """Grid spacing along y."""
        return self.spacing[1]

    def _spacing(self, n: int, length: float) -> float:
        return length / (n + 1) if self.boundary == "dirichlet" else length / n

    def axis(self, k: int) -> np.ndarray:
        """Node coordinates along axis ``k`` (0 = x, 1 = y), float64."""
        n, h = self.shape[k], self.spacing[k]
        i = np.arange(n, dtype=np.float64)
        if self.boundary == "periodic":
            return i * h
        if self.boundary == "dirichlet":
            return (i + 1) * h
        return (i + 0.5) * h

    @property
    def x(self) -> np.ndarray:
        """x coordinates of the nodes."""
        return self.axis(0)

    @property
    def y(self) -> np.ndarray:
        """y coordinates of the nodes."""
        return self.axis(1)

    def meshgrid(self) -> tuple[np.ndarray, np.ndarray]:
        """``X, Y`` with ``X[i, j] = x_i`` and ``Y[i, j] = y_j``."""
        return np.meshgrid(self.x, self.y, indexing="ij")

    @property
    def n_cells(self) -> int:
        """Number of unknowns per field."""
        return self.shape[0] * self.shape[1]

    def wall_value(self, field_index: int) -> float:
        """Dirichlet wall value of one field."""
        bv = self.boundary_value
        if isinstance(bv, tuple):
            if field_index >= len(bv):
                raise DatagenError(
                    f"boundary_value {bv} has no entry for field {field_index}; give one per field"
                )
            return bv[field_index]
        return bv

    # -- ghost cells -------------------------------------------------------------------
    def pad(self, u: np.ndarray, radius: int | tuple[int, int]) -> np.ndarray:
        """Extend ``u (..., field, x, y)`` by ``radius`` ghost cells on each side of x and y.

        Per-field Dirichlet values apply to the field axis in order (position k is field k).
        """
        rx, ry = (radius, radius) if isinstance(radius, int) else radius
        if self.boundary == "periodic":
            if rx > u.shape[-2] or ry > u.shape[-1]:
                return np.pad(u, [(0, 0)] * (u.ndim - 2) + [(rx, rx), (ry, ry)], mode="wrap")
            # block copies into one buffer: several times faster than np.pad(mode="wrap")
            nx, ny = u.shape[-2:]
            P = np.empty(u.shape[:-2] + (nx + 2 * rx, ny + 2 * ry), dtype=u.dtype)
            P[..., rx:rx + nx, ry:ry + ny] = u
            P[..., :rx, ry:ry + ny] = u[..., nx - rx:, :]
            P[..., rx + nx:, ry:ry + ny] = u[..., :rx, :]
            P[..., :, :ry] = P[..., :, ny:ny + ry]
            P[..., :, ry + ny:] = P[..., :, ry:2 * ry]
            return P
        if self.boundary == "neumann":
            return np.pad(u, [(0, 0)] * (u.ndim - 2) + [(rx, rx), (ry, ry)], mode="symmetric")
        nf = u.shape[-3] if u.ndim >= 3 else 1
        g = np.array([self.wall_value(k) for k in range(nf)], dtype=u.dtype)
        g = g.reshape((nf, 1, 1)) if u.ndim >= 3 else g.reshape(())
        return _odd_pad(_odd_pad(u, rx, -2, g), ry, -1, g)

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description; :meth:`from_dict` inverts it."""
        bv = self.boundary_value
        return {
            "shape": list(self.shape),
            "extent": list(self.extent),
            "boundary": self.boundary,
            "boundary_value": list(bv) if isinstance(bv, tuple) else bv,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Grid":
        """Inverse of :meth:`to_dict`."""
        bv = d.get("boundary_value", 0.0)
        return cls(tuple(d["shape"]), tuple(d.get("extent", (1.0, 1.0))), d.get("boundary", "periodic"),
                   tuple(bv) if isinstance(bv, list) else bv)


def _odd_pad(u: np.ndarray, r: int, axis: int, g: np.ndarray) -> np.ndarray:
    """Ghost cells continuing ``u`` oddly about the wall node (value ``g``) just outside it."""
    if r == 0:
        return u
    wall = np.take(np.broadcast_to(g, u.shape), [0], axis=axis)
    ext = np.concatenate([wall, u, wall], axis=axis)
    if r == 1:
        return ext
    pads = [(0, 0)] * u.ndim
    pads[axis % u.ndim] = (r - 1, r - 1)
    # odd reflection about the wall node: ghost = 2 g - mirror image
    return np.pad(ext, pads, mode="reflect", reflect_type="odd")
