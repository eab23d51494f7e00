"""The PDE catalogue: each entry is a few lines declaring its terms.

Every factory takes its parameters as keyword arguments with the defaults listed by
``datagen list`` and returns a :class:`~datagen.pde.PDE`. :data:`CATALOGUE` also records a
sensible initial-condition sampler and the default saved time step for each entry.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from .errors import DatagenError
from .grid import Grid
from .pde import PDE, Derivative, Term

__all__ = [
    "heat", "advection", "fisher", "allen_cahn", "gray_scott", "fitzhugh_nagumo", "burgers",
    "CATALOGUE", "get", "make_pde",
]


def _d(f: str, i: int = 0, j: int = 0) -> Derivative:
    return Derivative(f, (i, j))


def _lap(f: str, a: float) -> list[Term]:
    return [Term(a, (_d(f, 2, 0),)), Term(a, (_d(f, 0, 2),))]


def heat(a: float = 0.01) -> PDE:
    """Heat equation ``u_t = a (u_xx + u_yy)``; ``a`` is the diffusivity."""
    return PDE("heat", ("u",), (tuple(_lap("u", a)),), {"a": a})


def advection(cx: float = 1.0, cy: float = 0.0) -> PDE:
    """Linear advection ``u_t = -cx u_x - cy u_y`` with velocity ``(cx, cy)``."""
    terms = [Term(-c, (_d("u", *o),)) for c, o in ((cx, (1, 0)), (cy, (0, 1))) if c != 0]
    return PDE("advection", ("u",), (tuple(terms),), {"cx": cx, "cy": cy})


def fisher(a: float = 0.01, r: float = 1.0) -> PDE:
    """Fisher-KPP ``u_t = a Lap u + r u (1 - u)``; fronts travel at ``2 sqrt(a r)``."""
    return PDE("fisher", ("u",), ((*_lap("u", a), Term(r, (_d("u"),)), Term(-r, (_d("u"), _d("u")))),),
               {"a": a, "r": r})


def allen_cahn(epsilon: float = 0.05) -> PDE:
    """Allen-Cahn ``u_t = epsilon^2 Lap u + u - u^3``; interfaces of width ~ epsilon."""
    e2 = epsilon * epsilon
    return PDE("allen_cahn", ("u",), ((*_lap("u", e2), Term(1.0, (_d("u"),)), Term(-1.0, (_d("u"),) * 3)),),
               {"epsilon": epsilon})


def gray_scott(Du: float = 2e-5, Dv: float = 1e-5, F: float = 0.04, k: float = 0.06) -> PDE:
    """Gray-Scott ``u_t = Du Lap u - u v^2 + F (1 - u)``, ``v_t = Dv Lap v + u v^2 - (F + k) v``."""
    u, v = _d("u"), _d("v")
    ru = (*_lap("u", Du), Term(-1.0, (u, v, v)), Term(F, ()), Term(-F, (u,)))
    rv = (*_lap("v", Dv), Term(1.0, (u, v, v)), Term(-(F + k), (v,)))
    return PDE("gray_scott", ("u", "v"), (ru, rv), {"Du": Du, "Dv": Dv, "F": F, "k": k})


def fitzhugh_nagumo(Du: float = 2.8e-4, Dv: float = 5e-3, tau: float = 0.1, kappa: float = -0.005) -> PDE:
    """FitzHugh-Nagumo ``u_t = Du Lap u + u - u^3 - v + kappa``, ``tau v_t = Dv Lap v + u - v``."""
    u, v = _d("u"), _d("v")
    ru = (*_lap("u", Du), Term(1.0, (u,)), Term(-1.0, (u, u, u)), Term(-1.0, (v,)), Term(kappa, ()))
    rv = (*_lap("v", Dv / tau), Term(1.0 / tau, (u,)), Term(-1.0 / tau, (v,)))
    return PDE("fitzhugh_nagumo", ("u", "v"), (ru, rv), {"Du": Du, "Dv": Dv, "tau": tau, "kappa": kappa})


def burgers(nu: float = 0.01) -> PDE:
    """Scalar viscous Burgers ``u_t = nu Lap u - u u_x - u u_y``."""
    u = _d("u")
    return PDE("burgers", ("u",), ((*_lap("u", nu), Term(-1.0, (u, _d("u", 1, 0))), Term(-1.0, (u, _d("u", 0, 1)))),),
               {"nu": nu})


def _diffusive_scale(*keys: str) -> Callable[[Grid, dict], float]:
    def scale(grid: Grid, p: dict) -> float:
        d = max(abs(p[k]) for k in keys)
        if d == 0:
            raise DatagenError(f"the default time step scales with {'/'.join(keys)}, which is 0 here: give --dt")
        return min(grid.spacing) ** 2 / d
    return scale


def _fhn_scale(grid: Grid, p: dict) -> float:
    return min(grid.spacing) ** 2 / max(p["Du"], p["Dv"] / p["tau"])


def _allen_cahn_scale(grid: Grid, p: dict) -> float:
    return min(grid.spacing) ** 2 / p["epsilon"] ** 2


def _advective_scale(grid: Grid, p: dict) -> float:
    return min(grid.spacing) / max(abs(p["cx"]), abs(p["cy"]), 1e-300)


@dataclass(frozen=True)
class Entry:
    """A catalogue entry: factory, description, default IC sampler and default saved step.

    The saved step is ``dt = dt_factor * dt_scale(grid, params)``, where ``dt_scale`` is the
    PDE's natural explicit time scale (``dx^2 / a`` for diffusion, ``dx / |c|`` for transport).
    """

    name: str
    factory: Callable[..., PDE]
    description: str
    initial: dict[str, Any]
    dt_scale: Callable[[Grid, dict], float]
    dt_factor: float
    dt_text: str

    @property
    def defaults(self) -> dict[str, float]:
        """Parameter names and default values."""
        sig = inspect.signature(self.factory)
        return {k: v.default for k, v in sig.parameters.items()}

    def dt(self, grid: Grid, params: dict[str, float] | None = None, factor: float | None = None) -> float:
        """Saved time step ``factor * dt_scale`` (default factor: the entry's)."""
        p = {**self.defaults, **(params or {})}
        return float((self.dt_factor if factor is None else factor) * self.dt_scale(grid, p))


CATALOGUE: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry("heat", heat, "heat equation", {"name": "sincos", "k_min": 5, "k_max": 7},
              _diffusive_scale("a"), 0.24, "dx^2 / a"),
        Entry("advection", advection, "linear advection", {"name": "sincos", "k_min": 1, "k_max": 3},
              _advective_scale, 0.5, "dx / max|c|"),
        Entry("fisher", fisher, "Fisher-KPP reaction-diffusion (the paper's setting)",
              {"name": "sincos", "k_min": 5, "k_max": 8}, _diffusive_scale("a"), 0.24, "dx^2 / a"),
        Entry("allen_cahn", allen_cahn, "Allen-Cahn phase separation",
              {"name": "grf", "amplitude": 0.5, "alpha": 3.0}, _allen_cahn_scale, 0.24, "dx^2 / epsilon^2"),
        Entry("gray_scott", gray_scott, "Gray-Scott two-field reaction-diffusion", {"name": "patches"},
              _diffusive_scale("Du", "Dv"), 0.5, "dx^2 / max(Du, Dv)"),
        Entry("fitzhugh_nagumo", fitzhugh_nagumo, "FitzHugh-Nagumo two-field excitable medium",
              {"name": "grf", "amplitude": 0.1, "alpha": 2.0}, _fhn_scale, 0.24, "dx^2 / max(Du, Dv/tau)"),
        Entry("burgers", burgers, "scalar viscous Burgers", {"name": "fourier", "n_modes": 4, "amplitude": 0.5},
              _diffusive_scale("nu"), 0.2, "dx^2 / nu"),
    ]
}


def get(name: str) -> Entry:
    """Catalogue entry by name, with a clear error listing the choices."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise DatagenError(f"unknown PDE {name!r}; choose one of: {', '.join(CATALOGUE)}") from None


def make_pde(name: str, params: dict[str, Any] | None = None) -> PDE:
    """Build a catalogue PDE, checking parameter names and values."""
    entry = get(name)
    params = dict(params or {})
    unknown = set(params) - set(entry.defaults)
    if unknown:
        raise DatagenError(
            f"{name} has no parameter {sorted(unknown)[0]!r}; its parameters are "
            + ", ".join(f"{k}={v}" for k, v in entry.defaults.items())
        )
    try:
        clean = {k: float(v) for k, v in params.items()}
    except (TypeError, ValueError):
        raise DatagenError(f"parameters of {name} must be numbers, got {params}") from None
    return entry.factory(**clean)
