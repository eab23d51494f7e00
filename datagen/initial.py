"""Initial-condition samplers: seeded, serialisable, one trajectory at a time.

A sampler is a small dataclass; ``sampler.sample(grid, n_fields, rng)`` returns one initial state
``(field, x, y)`` in float64, drawing only from ``rng`` (a ``numpy.random.Generator``), so the
same seed gives the same state whatever the batch size or worker that draws it.
``to_dict()`` / :func:`make_sampler` round-trip a sampler through JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Mapping

import numpy as np

from ._registry import register
from .errors import DatagenError
from .limits import MAX_MODES
from .grid import Grid

__all__ = ["SinCos", "Fourier", "GRF", "Bumps", "Front", "Band", "Patches", "SAMPLERS", "make_sampler"]


SAMPLERS: dict[str, type[Sampler]] = {}  # filled by Sampler subclasses as they are defined


@dataclass(frozen=True)
class Sampler:
    """Base class: subclasses set ``name`` and implement ``_one(grid, rng)`` for one field."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        # a subclass with a name is a sampler make_sampler knows (and GenerationConfig's initial)
        super().__init_subclass__(**kw)
        if cls.name:
            register(SAMPLERS, cls.name, cls, "initial condition")

    def sample(self, grid: Grid, n_fields: int, rng: np.random.Generator) -> np.ndarray:
        """One initial state ``(n_fields, nx, ny)``; each field drawn in turn from ``rng``.

        On Dirichlet grids the state is blended to the wall values, ``g + w (u - g)`` with the
        window ``w = sin(pi x / Lx) sin(pi y / Ly)`` that vanishes on the walls, so that the data
        meet their boundary condition instead of jumping to it in the first step.
        """
        u = self._state(grid, n_fields, rng)
        if grid.boundary == "dirichlet":
            X, Y = grid.meshgrid()
            w = np.sin(np.pi * X / grid.extent[0]) * np.sin(np.pi * Y / grid.extent[1])
            for k in range(n_fields):
                g = grid.wall_value(k)
                u[k] = g + w * (u[k] - g)
        return u

    def _state(self, grid: Grid, n_fields: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([self._one(grid, rng) for _ in range(n_fields)])

    def _one(self, grid: Grid, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **parameters}``."""
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class SinCos(Sampler):
    """The paper's family ``offset + amplitude sin(2 pi k1 (x - s1)) cos(2 pi k2 (y - s2))``.

    ``k1, k2`` are integers drawn uniformly from ``k_min..k_max`` (inclusive), ``s1, s2``
    uniformly from [0, 1); coordinates are taken relative to the domain size.
    """

    name: ClassVar[str] = "sincos"
    k_min: int = 5
    k_max: int = 8
    amplitude: float = 1.0
    offset: float = 0.0

    def _one(self, grid: Grid, rng: np.random.Generator) -> np.ndarray:
        if not 0 <= self.k_min <= self.k_max:
            raise DatagenError(f"sincos needs 0 <= k_min <= k_max, got {self.k_min}..{self.k_max}")
        k1, k2 = rng.integers(self.k_min, self.k_max + 1, size=2)
        s1, s2 = rng.random(2)
        X, Y = grid.meshgrid()
        X, Y = X / grid.extent[0], Y / grid.extent[1]
        return self.offset + self.amplitude * np.sin(2 * np.pi * k1 * (X - s1)) * np.cos(2 * np.pi * k2 * (Y - s2))


def _basis(grid: Grid, axis: int, k: int) -> np.ndarray:
    """A mode along one axis that respects the boundary (sine for Dirichlet, cosine for Neumann)."""
    s = grid.axis(axis) / grid.extent[axis]
    if grid.boundary == "dirichlet":
        return np.sin(np.pi * (k + 1) * s)
    if grid.boundary == "neumann":
        return np.cos(np.pi * k * s)
    return np.exp(2j * np.pi * k * s)


@dataclass(frozen=True)
class Fourier(Sampler):
    """Random Fourier series with ``|k| <= n_modes`` per axis, Gaussian coefficients decaying as
    ``(1 + |k|^2)^(-decay/2)``, scaled so that ``max |u - offset| = amplitude``.

    Periodic grids use complex exponentials; Dirichlet and Neumann grids use sine and cosine
    modes that satisfy the boundary condition.
    """

    name: ClassVar[str] = "fourier"
    n_modes: int = 4
    amplitude: float = 1.0
    decay: float = 1.0
    offset: float = 0.0

    def _one(self, grid: Grid, rng: np.random.Generator) -> np.ndarray:
        if self.n_modes < 1:
            raise DatagenError(f"fourier needs n_modes >= 1, got {self.n_modes}")
        if self.n_modes > max(grid.shape) // 2:
            raise DatagenError(f"fourier n_modes={self.n_modes} is more than a {grid.shape[0]} x {grid.shape[1]} grid "
                               f"resolves (at most {max(grid.shape) // 2})")
        periodic = grid.boundary == "periodic"
        ks = np.arange(-self.n_modes, self.n_modes + 1) if periodic else np.arange(self.n_modes + 1)
        u = np.zeros(grid.shape)
        for kx in ks:
            bx = _basis(grid, 0, int(kx))
            for ky in ks:
                c = rng.standard_normal() + (1j * rng.standard_normal() if periodic else 0.0)
                w = (1.0 + kx * kx + ky * ky) ** (-self.decay / 2)
                u = u + np.real(w * c * np.multiply.outer(bx, _basis(grid, 1, int(ky))))
        u = u - u.mean() if periodic else u
        peak = np.abs(u).max()
        return self.offset + self.amplitude * u / (peak if peak > 0 else 1.0)


@dataclass(frozen=True)
class GRF(Sampler):
    """Gaussian random field with spectrum ``(1 + (|k| length_scale)^2)^(-alpha)`` (periodic
    synthesis on the grid), scaled to standard deviation ``amplitude`` about ``offset``."""

    name: ClassVar[str] = "grf"
    alpha: float = 3.0
    length_scale: float = 0.1
    amplitude: float = 1.0
    offset: float = 0.0

    def _one(self, grid: Grid, rng: np.random.Generator) -> np.ndarray:
        nx, ny = grid.shape
        kx = 2 * np.pi * np.fft.fftfreq(nx, d=grid.dx)
        ky = 2 * np.pi * np.fft.fftfreq(ny, d=grid.dy)
        k2 = kx[:, None] ** 2 + ky[None, :] ** 2
        amp = (1.0 + k2 * self.length_scale ** 2) ** (-self.alpha / 2)
        amp[0, 0] = 0.0
        noise = rng.standard_normal((nx, ny))
        u = np.real(np.fft.ifft2(np.fft.fft2(noise) * amp))
        sd = u.std()
        return self.offset + self.amplitude * u / (sd if sd > 0 else 1.0)


@dataclass(frozen=True)
class Bumps(Sampler):
    """``offset`` plus ``n_bumps`` Gaussians of width ``width`` (relative to the domain) and heights
    uniform in [0, amplitude], at uniform random centres (periodic distance on periodic grids)."""

    name: ClassVar[str] = "bumps"
    n_bumps: int = 3
    width: float = 0.05
    amplitude: float = 1.0
    offset: float = 0.0

    def _one(self, grid: Grid, rng: np.random.Generator) -> np.ndarray:
        X, Y = grid.meshgrid()
        X, Y = X / grid.extent[0], Y / grid.extent[1]
        u = np.full(grid.shape, float(self.offset))
        for _ in range(self.n_bumps):
            cx, cy, h = rng.random(3)
            dx, dy = X - cx, Y - cy
            if grid.boundary == "periodic":
                dx, dy = dx - np.round(dx), dy - np.round(dy)
            u += self.amplitude * h * np.exp(-(dx * dx + dy * dy) / (2 * self.width ** 2))
        return u


def _relative_coordinate(grid: Grid, axis: int, sampler: str) -> np.ndarray:
    """Cell-centre coordinate along ``axis`` (0 = x, 1 = y) as a fraction of the domain."""
    if axis not in (0, 1):
        raise DatagenError(f"{sampler} needs axis 0 (x) or 1 (y), got {axis}")
    return grid.meshgrid()[axis] / grid.extent[axis]


@dataclass(frozen=True)
class Front(Sampler):
    """A planar front ``(high + low)/2 + (high - low)/2 * tanh((position - s) / width)`` along
    ``axis`` (0 = x, 1 = y), with s the relative coordinate; position jittered by ``jitter``."""

    name: ClassVar[str] = "front"
    position: float = 0.1
    width: float = 0.01
    axis: int = 0
    high: float = 1.0
    low: float = 0.0
    jitter: float = 0.0

    def _one(self, grid: Grid, rng: np.random.Generator) -> np.ndarray:
        s = _relative_coordinate(grid, self.axis, self.name)
        p = self.position + self.jitter * (2 * rng.random() - 1)
        return 0.5 * (self.high + self.low) + 0.5 * (self.high - self.low) * np.tanh((p - s) / self.width)


@dataclass(frozen=True)
class Band(Sampler):
    """A band of ``high`` in ``low`` across ``axis`` (0 = x, 1 = y): two fronts
    ``low + (high - low) (tanh((h - |s - c|) / width) + 1) / 2`` with s the relative coordinate,
    centre c uniform in [0, 1) and half-width h uniform in ``[half_min, half_max]`` (periodic
    distance on periodic grids). Values stay in [low, high]: Fisher invasion fronts."""

    name: ClassVar[str] = "band"
    half_min: float = 0.05
    half_max: float = 0.1
    width: float = 0.01
    axis: int = 0
    high: float = 1.0
    low: float = 0.0

    def _one(self, grid: Grid, rng: np.random.Generator) -> np.ndarray:
        s = _relative_coordinate(grid, self.axis, self.name)
        if not (0 < self.half_min <= self.half_max < 0.5 and self.width > 0):
            raise DatagenError("band needs 0 < half_min <= half_max < 0.5 and width > 0")
        c, h = rng.random(), self.half_min + (self.half_max - self.half_min) * rng.random()
        d = s - c
        if grid.boundary == "periodic":
            d = d - np.round(d)
        return self.low + (self.high - self.low) * 0.5 * (np.tanh((h - np.abs(d)) / self.width) + 1.0)


@dataclass(frozen=True)
class Patches(Sampler):
    """Two-field Gray-Scott start: ``u = 1, v = 0`` with ``n_patches`` square patches of relative
    side ``size`` where ``u = 0.5, v = 0.25``, plus uniform noise of amplitude ``noise``."""

    name: ClassVar[str] = "patches"
    n_patches: int = 3
    size: float = 0.1
    noise: float = 0.01

    def _state(self, grid: Grid, n_fields: int, rng: np.random.Generator) -> np.ndarray:
        """One ``(2, nx, ny)`` state; refuses other field counts."""
        if n_fields != 2:
            raise DatagenError(f"the 'patches' initial condition is for two-field systems, not {n_fields}")
        u, v = np.ones(grid.shape), np.zeros(grid.shape)
        X, Y = grid.meshgrid()
        X, Y = X / grid.extent[0], Y / grid.extent[1]
        for _ in range(self.n_patches):
            cx, cy = rng.random(2)
            m = (np.abs(X - cx) < self.size / 2) & (np.abs(Y - cy) < self.size / 2)
            u[m], v[m] = 0.5, 0.25
        u += self.noise * (2 * rng.random(grid.shape) - 1)
        v += self.noise * (2 * rng.random(grid.shape) - 1)
        # concentrations: the noise may not make a species negative
        return np.maximum(np.stack([u, v]), 0.0)




def make_sampler(spec: Mapping[str, Any] | Sampler) -> Sampler:
    """Sampler from ``{"name": ..., **params}`` (or pass a sampler through)."""
    if isinstance(spec, Sampler):
        return spec
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in SAMPLERS:
        raise DatagenError(f"unknown initial condition {name!r}; choose one of: {', '.join(SAMPLERS)} (a Sampler "
                           "subclass of your own registers its name when its module is imported)")
    cls = SAMPLERS[name]
    known = {f.name: f.type for f in fields(cls)}
    unknown = set(spec) - set(known)
    if unknown:
        raise DatagenError(
            f"initial condition {name!r} has no parameter {sorted(unknown)[0]!r}; it takes "
            + ", ".join(f"{f.name}={f.default}" for f in fields(cls))
        )
    clean = {}
    for k, v in spec.items():
        default = next(f.default for f in fields(cls) if f.name == k)
        try:
            clean[k] = int(v) if isinstance(default, int) and not isinstance(default, bool) else float(v)
        except (TypeError, ValueError, OverflowError):
            raise DatagenError(f"initial condition parameter {k}={v!r} is not a number") from None
        if not np.isfinite(clean[k]):
            raise DatagenError(f"initial condition parameter {k}={v!r} must be a finite number")
        if isinstance(clean[k], int) and abs(clean[k]) > MAX_MODES:
            raise DatagenError(f"initial condition parameter {k}={v!r} is above the limit {MAX_MODES} of counts and "
                               "wavenumbers")
    return cls(**clean)
