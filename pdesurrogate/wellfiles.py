"""The Well's layout read without datagen's provenance: fields, time step, grid and boundary.

A file written by another solver (or one of The Well's own) carries its frames in
``/t0_fields/<name>`` ``(trajectory, time, x, y)``, its coordinates in ``/dimensions`` and its
boundary in ``/boundary_conditions``. That is all a surrogate needs to be trained and scored:
the PDE is never read. Coordinates are stored in float32, so the step and the spacing are
snapped to the simplest fraction within ``1e-6`` of the stored value (``0.0024`` rather than
``0.0024000001``): the same numbers a provenance would give for round values.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from datagen.grid import Grid
from datagen.limits import MAX_CELLS, MAX_FIELDS

from .errors import SurrogateError

__all__ = ["WellLayout", "read_layout"]

MAX_TIMES = 1_000_000


@dataclass(frozen=True)
class WellLayout:
    """What a Well-format file says of itself."""

    fields: tuple[str, ...]
    n_traj: int
    n_time: int
    dt: float
    grid: Grid


def snap(value: float, tol: float = 1e-6) -> float:
    """The simplest fraction within ``tol`` (relative) of ``value``, as a float."""
    for d in (10 ** k for k in range(1, 8)):
        fr = Fraction(value).limit_denominator(d)
        if abs(float(fr) - value) <= tol * abs(value):
            return float(fr)
    return float(value)


def _step(coords, name: str, path: Path) -> float:
    c = np.asarray(coords[...], dtype=np.float64).reshape(-1)
    if c.size < 2 or not np.all(np.isfinite(c)):
        raise SurrogateError(f"{path}: /dimensions/{name} needs at least two finite values")
    steps = np.diff(c)
    h = (c[-1] - c[0]) / (c.size - 1)
    if h <= 0 or np.max(np.abs(steps - h)) > 1e-4 * abs(h):
        raise SurrogateError(f"{path}: /dimensions/{name} is not uniformly spaced and increasing")
    return snap(h)


def _boundary(f, path: Path) -> tuple[str, float]:
    bcs = f.get("boundary_conditions")
    kinds = set()
    value = 0.0
    for g in (bcs.values() if bcs is not None else ()):
        kind = str(g.attrs.get("bc_type", "")).lower()
        condition = str(g.attrs.get("condition", "")).lower()
        if kind == "periodic":
            kinds.add("periodic")
        elif kind == "wall" and condition in ("dirichlet", "neumann"):
            kinds.add(condition)
            if condition == "dirichlet" and "values" in g:
                value = float(np.asarray(g["values"][...]).reshape(-1)[0])
        else:
            raise SurrogateError(f"{path}: boundary {kind or '?'!r} ({condition or 'no condition'}) is not one a "
                                 "surrogate pads: periodic, or wall with condition dirichlet / neumann")
    if len(kinds) != 1:
        raise SurrogateError(f"{path}: /boundary_conditions must give one boundary for both axes, found "
                             f"{sorted(kinds) or 'none'}")
    return kinds.pop(), value


def read_layout(f, path: Path) -> WellLayout:
    """The layout of the open HDF5 file ``f`` (The Well's groups), every size bounded first."""
    try:
        t0 = f["t0_fields"]
        names = [str(n) for n in t0.attrs.get("field_names", list(t0.keys()))]
        if not names or len(names) > MAX_FIELDS:
            raise SurrogateError(f"{path}: /t0_fields must name 1 to {MAX_FIELDS} fields, it names {len(names)}")
        shape = tuple(int(s) for s in t0[names[0]].shape)
        if len(shape) != 4:
            raise SurrogateError(f"{path}: /t0_fields/{names[0]} must be (trajectory, time, x, y), not {shape}")
        for n in names:
            if tuple(t0[n].shape) != shape:
                raise SurrogateError(f"{path}: field {n!r} has shape {tuple(t0[n].shape)}, {names[0]!r} {shape}")
        n_traj, n_time, nx, ny = shape
        if nx * ny > MAX_CELLS or n_time > MAX_TIMES:
            raise SurrogateError(f"{path}: {nx} x {ny} cells and {n_time} frames exceed the limits")
        dims = f["dimensions"]
        dt = _step(dims["time"], "time", path)
        hx, hy = _step(dims["x"], "x", path), _step(dims["y"], "y", path)
        boundary, value = _boundary(f, path)
    except KeyError as exc:
        raise SurrogateError(f"{path} lacks The Well's layout ({exc}); it needs /t0_fields, /dimensions/time, "
                             "/dimensions/x, /dimensions/y and /boundary_conditions") from None
    cells = {"dirichlet": (nx + 1, ny + 1)}.get(boundary, (nx, ny))
    extent = (float(Fraction(hx) * cells[0]), float(Fraction(hy) * cells[1]))
    grid = Grid((nx, ny), extent=extent, boundary=boundary, boundary_value=value)
    return WellLayout(tuple(names), n_traj, n_time, dt, grid)
