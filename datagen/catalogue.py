"""The PDE catalogue: each entry is a few lines declaring its terms.

Every factory takes its parameters as keyword arguments with the defaults listed by
``datagen list`` and returns a :class:`~datagen.pde.PDE`. :data:`CATALOGUE` also records a
sensible initial-condition sampler and the default saved time step for each entry.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from .errors import DatagenError
from .grid import Grid
from .pde import PDE, Derivative, Term

__all__ = [
    "heat", "advection", "fisher", "allen_cahn", "gray_scott", "fitzhugh_nagumo", "burgers",
    "CATALOGUE", "Scenario", "get", "make_pde",
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
class Scenario:
    """A named setting of a catalogue PDE that shows one behaviour over its saved horizon.

    Everything here is a default: options given to :class:`~datagen.GenerationConfig` (or the
    CLI) go over it. ``params`` go over the PDE's own defaults and ``grid`` over ``Grid()``'s;
    the saved step is ``dt``, or ``dt_factor`` times the entry's time scale when ``dt`` is None;
    the solver takes whatever internal substeps its accuracy needs.
    """

    name: str
    description: str
    params: Mapping[str, float] = field(default_factory=dict)
    grid: Mapping[str, Any] = field(default_factory=dict)
    initial: Mapping[str, Any] | None = None
    dt: float | None = None
    dt_factor: float | None = None
    steps: int = 40
    signed: bool = False  # its initial data take both signs by design (validation does not flag them)


@dataclass(frozen=True)
class Entry:
    """A catalogue entry: factory, description, default IC sampler, default saved step and
    named scenarios (the first is the default).

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
    scenarios: tuple[Scenario, ...] = ()
    envelope: Callable[[np.ndarray, np.ndarray, dict], tuple[np.ndarray, np.ndarray] | None] | None = None
    envelope_certified: bool = True

    def value_range(self, lo: np.ndarray, hi: np.ndarray, params: dict[str, float]
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Per field, the range the solution keeps for all time when each field starts (and,
        with Dirichlet walls, is held) within ``[lo, hi]``; ``None`` where the entry declares none.

        ``envelope_certified`` says whether the range is proven (a maximum principle or an
        invariant rectangle of the reaction) or a generous plausibility range (systems without
        one, and finite differences of transport that overshoot by dispersion).
        """
        if self.envelope is None:
            return None
        p = {**self.defaults, **params}
        return self.envelope(np.asarray(lo, float), np.asarray(hi, float), p)

    @property
    def defaults(self) -> dict[str, float]:
        """Parameter names and default values."""
        sig = inspect.signature(self.factory)
        return {k: v.default for k, v in sig.parameters.items()}

    def dt(self, grid: Grid, params: dict[str, float] | None = None, factor: float | None = None) -> float:
        """Saved time step ``factor * dt_scale`` (default factor: the entry's)."""
        p = {**self.defaults, **(params or {})}
        return float((self.dt_factor if factor is None else factor) * self.dt_scale(grid, p))

    def scenario(self, name: str | None = None) -> Scenario:
        """Scenario ``name`` (``None``: the default, the first)."""
        if name is None:
            return self.scenarios[0]
        for sc in self.scenarios:
            if sc.name == name:
                return sc
        raise DatagenError(f"{self.name} has no scenario {name!r}; choose one of: "
                           + ", ".join(sc.name for sc in self.scenarios))


_PERIODIC_100 = {"shape": (100, 100), "extent": (1.0, 1.0), "boundary": "periodic"}
_PERIODIC_128 = {"shape": (128, 128), "extent": (1.0, 1.0), "boundary": "periodic"}

# The Well's gray_scott_reaction_diffusion regimes (F, k), with Du = 2e-5, Dv = 1e-5. Its sixth,
# bubbles (0.098, 0.057), decays to the uniform state u = 1, v = 0 from these patch data, so it
# is left out rather than named for a behaviour it does not show. Maze takes k = 0.059 where The
# Well has 0.057: the same labyrinth of stripes, but The Well's are wide enough that v > 0.1 on
# 65 % of the area, the background more than the pattern; here 54 % (0.058: 58 %, 0.057: 65 %).
_WELL_GRAY_SCOTT = (("spots", 0.03, 0.062), ("maze", 0.029, 0.059), ("gliders", 0.014, 0.054),
                    ("worms", 0.058, 0.065), ("spirals", 0.018, 0.051))


def _gray_scott(name: str, F: float, k: float) -> Scenario:
    # The Well's resolution (dx = 1/64) on a unit square; patterns settle by t ~ 2000
    regime = ("labyrinthine stripes (The Well's maze regime has k=0.057)" if name == "maze"
              else f"The Well's {name} regime")
    return Scenario(name, f"{regime}, F={F:g}, k={k:g}; 64^2 cells, t = 0..2000",
                    params={"F": F, "k": k}, grid={"shape": (64, 64), "extent": (1.0, 1.0), "boundary": "periodic"},
                    initial={"name": "patches", "n_patches": 6, "size": 0.15}, dt=20.0, steps=100)


CATALOGUE: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry("heat", heat, "heat equation", {"name": "sincos", "k_min": 5, "k_max": 7},
              _diffusive_scale("a"), 0.24, "dx^2 / a",
              (Scenario("decay", "sin-cos modes k = 5..7 decay by about 85 % over 40 steps of 0.24 dx^2/a",
                        grid=_PERIODIC_100, dt_factor=0.24),)),
        Entry("advection", advection, "linear advection", {"name": "sincos", "k_min": 1, "k_max": 3},
              _advective_scale, 0.5, "dx / max|c|",
              (Scenario("crossing", "sin-cos modes k = 1..3 carried 1.25 times across the domain (t = 0..1.25)",
                        grid=_PERIODIC_100, dt=0.025, steps=50),)),
        Entry("fisher", fisher, "Fisher-KPP reaction-diffusion (the paper's setting)",
              {"name": "sincos", "k_min": 5, "k_max": 8}, _diffusive_scale("a"), 0.24, "dx^2 / a",
              (Scenario("paper", "the paper's setting: sin-cos data k = 5..8, 100^2, dt = 0.24 dx^2/a, 40 steps",
                        grid=_PERIODIC_100, dt_factor=0.24, signed=True),
               # fronts of width 0.2 = sqrt(a/r) / 0.5 decay like exp(-sqrt(r/a) x), the critical tail, so
               # their speed is within about 2 % of 2 sqrt(a r) after t = 5; beyond t ~ 20, round-off
               # ahead of the front (u = 0 is unstable, and unbounded below) grows like e^t
               Scenario("front", "a band of u = 1 invading u = 0: two fronts at speed 2 sqrt(a r) = 0.2, t = 0..20 on "
                        "[0, 12.8]^2", grid={"shape": (128, 128), "extent": (12.8, 12.8), "boundary": "periodic"},
                        initial={"name": "band", "half_min": 0.05, "half_max": 0.075, "width": 0.2 / 12.8},
                        dt=0.5, steps=40))),
        Entry("allen_cahn", allen_cahn, "Allen-Cahn phase separation",
              {"name": "grf", "amplitude": 0.5, "alpha": 3.0}, _allen_cahn_scale, 0.24, "dx^2 / epsilon^2",
              (Scenario("coarsening", "small random data separate into +-1 phases that coarsen (epsilon = 0.01, "
                        "t = 0..500)", params={"epsilon": 0.01}, grid=_PERIODIC_128,
                        initial={"name": "grf", "amplitude": 0.1, "alpha": 3.0, "length_scale": 0.2},
                        dt=10.0, steps=50),)),
        Entry("gray_scott", gray_scott, "Gray-Scott two-field reaction-diffusion", {"name": "patches"},
              _diffusive_scale("Du", "Dv"), 0.5, "dx^2 / max(Du, Dv)",
              tuple(_gray_scott(*r) for r in _WELL_GRAY_SCOTT)),
        Entry("fitzhugh_nagumo", fitzhugh_nagumo, "FitzHugh-Nagumo two-field excitable medium",
              {"name": "grf", "amplitude": 0.1, "alpha": 2.0}, _fhn_scale, 0.24, "dx^2 / max(Du, Dv/tau)",
              (Scenario("waves", "excitable medium: stimuli at rest u = v = kappa^(1/3) launch rings that sweep the "
                        "domain and annihilate (t = 0..80)",
                        params={"Du": 1e-4, "Dv": 0.0, "tau": 10.0, "kappa": -0.3}, grid=_PERIODIC_128,
                        initial={"name": "bumps", "n_bumps": 2, "width": 0.05, "amplitude": 2.0,
                                 "offset": -0.3 ** (1 / 3)}, dt=2.0, steps=40),
               Scenario("pdebench", "PDEBench's 2-D diffusion-reaction setting: Du = 1e-3, Dv = 5e-3, k = 5e-3 on "
                        "[-1, 1]^2, 128^2, random data, t = 0..5 in 100 steps",
                        params={"Du": 1e-3, "Dv": 5e-3, "tau": 1.0, "kappa": -5e-3},
                        grid={"shape": (128, 128), "extent": (2.0, 2.0), "boundary": "neumann"},
                        initial={"name": "grf", "amplitude": 1.0, "alpha": 1.0, "length_scale": 0.05},
                        dt=0.05, steps=100))),
        Entry("burgers", burgers, "scalar viscous Burgers", {"name": "fourier", "n_modes": 4, "amplitude": 0.5},
              _diffusive_scale("nu"), 0.2, "dx^2 / nu",
              (Scenario("steepening", "smooth data of size 1 steepen into shocks (max |grad u| grows 6-15x) that "
                        "then decay; nu = 0.004, t = 0..1.5", params={"nu": 0.004}, grid=_PERIODIC_128,
                        initial={"name": "fourier", "n_modes": 1, "amplitude": 1.0}, dt=0.03, steps=50),)),
    ]
}


# -- ranges the solutions keep (validation facts) ---------------------------------------------------------

def _max_principle(lo: np.ndarray, hi: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
    return lo, hi


def _fisher_range(lo: np.ndarray, hi: np.ndarray, p: dict):
    # r u (1 - u) >= 0 on [0, 1] and < 0 above 1: min(u) >= 0 stays, max(u) never passes max(1, max u0);
    # below 0 the reaction drives u down without bound
    if p["r"] < 0 or p["a"] < 0:
        return None
    return np.where(lo >= 0, 0.0, -np.inf), np.maximum(hi, 1.0)


def _allen_cahn_range(lo: np.ndarray, hi: np.ndarray, p: dict):
    return np.minimum(lo, -1.0), np.maximum(hi, 1.0)  # u - u^3 points inwards outside [-1, 1]


def _fhn_range(lo: np.ndarray, hi: np.ndarray, p: dict):
    # the square [-A, A]^2 is invariant once A^3 - 2A >= |kappa|: at u = A the reaction is
    # A - A^3 - v + kappa <= 2A - A^3 + |kappa| <= 0, and at v = A it is (u - A) / tau <= 0
    if p["tau"] <= 0:
        return None
    A = max(float(np.abs(lo).max()), float(np.abs(hi).max()))
    root = max(np.roots([1.0, 0.0, -2.0, -abs(p["kappa"])]).real)
    A = max(A, float(root))
    return np.full(2, -A), np.full(2, A)


def _gray_scott_range(lo: np.ndarray, hi: np.ndarray, p: dict):
    # proven: u stays in [min(0, u0), max(1, u0)] (F(1 - u) - u v^2 points inwards) and v >= min(0, v0);
    # v has no invariant upper bound, so ten times the largest initial value stands in for one
    if p["F"] < 0:
        return None
    top = 10.0 * max(1.0, float(np.abs(hi).max()), float(np.abs(lo).max()))
    return np.array([min(lo[0], 0.0), min(lo[1], 0.0)]), np.array([max(hi[0], 1.0), top])


_RANGES = {"heat": (_max_principle, True), "advection": (_max_principle, False), "burgers": (_max_principle, False),
           "fisher": (_fisher_range, True), "allen_cahn": (_allen_cahn_range, True),
           "fitzhugh_nagumo": (_fhn_range, True), "gray_scott": (_gray_scott_range, False)}
CATALOGUE = {k: replace(e, envelope=_RANGES[k][0], envelope_certified=_RANGES[k][1]) if k in _RANGES else e
             for k, e in CATALOGUE.items()}


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
