"""What determines a dataset: :class:`GenerationConfig`, its defaults and checks, and the
per-trajectory random generators."""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

import numpy as np

from . import catalogue
from .build import build
from .errors import DatagenError
from .grid import Grid
from .limits import MAX_STEPS, MAX_SUBSTEPS, MAX_TRAJECTORIES
from .metadata import COMPRESSIONS
from .initial import make_sampler
from .integrators import RK4, reaction_rate
from .pde import PDE
from .semidiscrete import SemiDiscrete

__all__ = ["GenerationConfig", "check_split_name", "trajectory_rng"]


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that determines a dataset. ``resolve()`` fills the defaults in.

    Args:
        pde: catalogue name (``datagen list``); with ``spec``, the spec's name.
        params: PDE parameters overriding the catalogue defaults.
        spec: a PDE of the user's own (a :class:`datagen.PDE`, its ``to_dict()`` or JSON, e.g.
            from :func:`datagen.parse_pde`) instead of a catalogue entry; its parameters are its
            own, ``dt`` defaults to the larger of 0.24 dx^2 over its largest diffusion
            coefficient and the step that makes the horizon one reaction time, and the initial
            condition to ``fourier``.
        scenario: a named setting of the catalogue entry (``datagen list`` shows them; ``None``:
            its default, e.g. the paper's setting for ``fisher``). It supplies defaults for
            ``params``, ``grid``, ``initial``, ``dt`` and ``steps``; what is given here goes over it.
        grid: ``Grid.to_dict()``-style mapping (shape, extent, boundary, boundary_value); keys
            left out come from the scenario, then from ``Grid()``.
        steps: saved steps after the initial state (the file holds ``steps + 1`` frames;
            ``None``: the scenario's).
        dt: saved time step; ``None``: the scenario's (or ``dt_factor`` times the PDE's time scale).
        dt_factor: multiplier of the catalogue time scale (e.g. 0.24 for ``0.24 dx^2 / a``).
        integrator: ``"reference"`` (accurate default: spectral ETDRK4 on periodic grids,
            fourth-order FD with RK4 otherwise) or a name from ``datagen.integrators``.
        substeps: internal steps per saved step, or ``"auto"`` (fewest stable).
        method: ``"fd"`` or ``"spectral"`` (``None``: chosen by ``integrator="reference"``, else fd).
        accuracy: finite-difference order.
        initial: initial-condition sampler spec (``None``: the catalogue's).
        seed: root seed; split: split name (part of each trajectory's seed).
        n_trajectories, batch_size: how many trajectories, and how many per solver call.
        compression: HDF5 compression of the fields.
        backend: ``"numpy"`` or ``"numba"`` (compiled finite differences; recorded, since the
            two agree only to round-off).
        rtol, atol: tolerances of the scipy integrators.
        tolerance: the reference path's target relative error at the last saved step (default
            1e-7): each trajectory's substeps are doubled until a step-doubling estimate of its
            error meets it, and the estimates are recorded in the provenance.
    """

    pde: str = "fisher"
    params: Mapping[str, float] = field(default_factory=dict)
    grid: Mapping[str, Any] = field(default_factory=dict)
    steps: int | None = None
    dt: float | None = None
    dt_factor: float | None = None
    integrator: str = "reference"
    substeps: int | str = 1
    method: str | None = None
    accuracy: int | None = None
    initial: Mapping[str, Any] | None = None
    seed: int = 0
    split: str = "train"
    n_trajectories: int = 64
    batch_size: int = 32
    compression: str = "none"
    backend: str = "numpy"
    rtol: float = 1e-8
    atol: float = 1e-10
    spec: Mapping[str, Any] | None = None
    tolerance: float | None = None
    scenario: str | None = None

    def __post_init__(self) -> None:
        check_split_name(self.split)
        if self.spec is not None:
            spec = self.spec
            if isinstance(spec, str):
                try:
                    spec = json.loads(spec)
                except ValueError:
                    raise DatagenError("spec must be a PDE, its to_dict() or its JSON") from None
            if isinstance(spec, PDE):
                spec = spec.to_dict()
            if not isinstance(spec, Mapping):
                raise DatagenError("spec must be a PDE, its to_dict() or its JSON")
            PDE.from_dict(spec)  # checks it
            object.__setattr__(self, "spec", dict(spec))
            object.__setattr__(self, "pde", str(spec.get("name", "custom")))

    def make_pde(self) -> PDE:
        """The PDE: the catalogue's with ``params``, or ``spec``."""
        if self.spec is not None:
            if self.params:
                raise DatagenError("a user PDE carries its own parameters: set them in the spec (parse_pde(params=))")
            return PDE.from_dict(self.spec)
        return catalogue.make_pde(self.pde, dict(self.params))

    def with_scenario(self) -> "GenerationConfig":
        """A copy with the scenario's defaults filled in under the given options (nothing checked
        or built beyond that); user PDEs get ``Grid()`` and 40 steps."""
        if self.spec is not None:
            if self.scenario is not None:
                raise DatagenError("scenarios belong to catalogue PDEs; a user PDE takes its options directly")
            return replace(self, grid={**Grid().to_dict(), **dict(self.grid)},
                           steps=40 if self.steps is None else self.steps)
        entry = catalogue.get(self.pde)
        sc = entry.scenario(self.scenario)
        dt, dt_factor = self.dt, self.dt_factor
        if dt is None and dt_factor is None:
            dt, dt_factor = sc.dt, sc.dt_factor
        grid = {**Grid().to_dict(), **{k: list(v) if isinstance(v, tuple) else v for k, v in sc.grid.items()},
                **dict(self.grid)}
        return replace(self, scenario=sc.name, params={**sc.params, **dict(self.params)}, grid=grid,
                       steps=sc.steps if self.steps is None else self.steps, dt=dt, dt_factor=dt_factor,
                       initial=self.initial if self.initial is not None else sc.initial)

    def resolve(self) -> "GenerationConfig":
        """A copy with every default made explicit and every value checked."""
        self = self.with_scenario()
        entry = catalogue.get(self.pde) if self.spec is None else None
        pde = self.make_pde()
        params = {k: float(v) for k, v in pde.parameters.items()}
        bad = [f"{k}={v}" for k, v in params.items() if not math.isfinite(v)]
        if bad:
            raise DatagenError(f"parameter {bad[0]} must be a finite number")
        g = dict(self.grid)
        bv = np.atleast_1d(np.asarray(g.get("boundary_value", 0.0), dtype=float)) if g.get("boundary_value") \
            is not None else np.zeros(1)
        if not np.all(np.isfinite(bv)):
            raise DatagenError(f"boundary value {g.get('boundary_value')} must be finite")
        grid = Grid.from_dict(g)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise DatagenError(f"seed={self.seed!r} must be a non-negative integer")
        for name, most in (("steps", MAX_STEPS), ("n_trajectories", MAX_TRAJECTORIES), ("batch_size", MAX_TRAJECTORIES)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise DatagenError(f"{name}={v!r} must be a positive integer")
            if v > most:
                raise DatagenError(f"{name}={v} is above the limit {most}")
        if self.compression not in COMPRESSIONS:
            raise DatagenError(f"unknown compression {self.compression!r}; choose one of {COMPRESSIONS}")
        if self.dt is not None and self.dt_factor is not None:
            raise DatagenError("give either dt or dt_factor, not both")
        if self.dt is not None:
            dt = float(self.dt)
        else:
            if self.dt_factor is not None and not (self.dt_factor > 0):
                raise DatagenError(f"dt_factor={self.dt_factor!r} must be positive")
            dt = (entry.dt(grid, params, self.dt_factor) if entry is not None
                  else _spec_dt(pde, grid, self.dt_factor, self.steps or 40))
        if not (math.isfinite(dt) and dt > 0):
            raise DatagenError(f"time step dt={dt!r} must be a positive number")
        integrator, method, substeps = self.integrator, self.method, self.substeps
        tolerance = None
        if integrator == "reference":
            tolerance = 1e-7 if self.tolerance is None else float(self.tolerance)
            if not (math.isfinite(tolerance) and tolerance > 0):
                raise DatagenError(f"tolerance={self.tolerance!r} must be a positive number")
        elif self.tolerance is not None:
            tolerance = float(self.tolerance)
            if integrator not in ("etdrk4", "rk4") or not (math.isfinite(tolerance) and tolerance > 0):
                raise DatagenError("tolerance applies to the reference path (etdrk4 or rk4 substeps)")
        given = self.accuracy not in (None, 0)  # 0 is the resolved value of spectral runs
        accuracy = int(self.accuracy) if given else 2
        if given and accuracy not in (2, 4, 6, 8):
            raise DatagenError(f"accuracy={self.accuracy!r} must be a finite-difference order 2, 4, 6 or 8")
        if integrator == "reference":
            # resolve reactions too: at most h * rate = 0.25 (ETDRK4) or 0.1 (RK4) per substep
            rate = reaction_rate(pde)
            if grid.boundary == "periodic":
                integrator, method = "etdrk4", method or "spectral"
                substeps = max(1, math.ceil(dt * rate / 0.25))
            else:
                integrator, method, accuracy = "rk4", method or "fd", max(accuracy, 4)
                stable = RK4.auto_substeps(SemiDiscrete(pde, grid, accuracy, method), dt)
                substeps = max(stable, math.ceil(dt * rate / 0.1))
        method = method or "fd"
        if method == "spectral":
            if given:
                raise DatagenError(f"accuracy={self.accuracy} applies to finite differences; the {integrator} "
                                   "path here is spectral: drop --accuracy or pass --method fd")
            accuracy = 0
        default_ic = entry.initial if entry is not None else {"name": "fourier"}
        sampler = make_sampler(self.initial if self.initial is not None else default_ic)
        if substeps != "auto":
            try:
                substeps = int(substeps)
            except (TypeError, ValueError, OverflowError):
                raise DatagenError(f"substeps={substeps!r} must be a positive integer or 'auto'") from None
        _check_substeps(substeps, dt)
        cfg = GenerationConfig(
            pde=self.pde, params=params if self.spec is None else {}, spec=self.spec, grid=grid.to_dict(),
            steps=int(self.steps), dt=dt, dt_factor=None,
            integrator=integrator, substeps=substeps, method=method, accuracy=accuracy,
            initial=sampler.to_dict(), seed=int(self.seed), split=str(self.split),
            n_trajectories=int(self.n_trajectories), batch_size=int(self.batch_size),
            compression=self.compression, backend=self.backend, rtol=float(self.rtol), atol=float(self.atol),
            tolerance=tolerance, scenario=self.scenario,
        )
        _check_stepper_memory(pde.n_fields, grid)
        try:
            with np.errstate(over="raise", invalid="raise"):
                stepper = build(json.dumps(cfg.to_dict(), sort_keys=True))[2]
        except FloatingPointError:
            raise DatagenError(f"dt={dt:.3g} with {substeps} substep(s) overflows the {integrator} solver's "
                               "coefficients; choose a smaller --dt or more --substeps") from None
        if cfg.substeps == "auto":  # record the count actually used
            _check_substeps(stepper.substeps, dt)
            cfg = GenerationConfig(**{**cfg.to_dict(), "substeps": stepper.substeps})
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``GenerationConfig(**d)`` inverts it."""
        d = asdict(self)
        d["params"], d["grid"] = dict(self.params), dict(self.grid)
        d["initial"] = dict(self.initial) if self.initial is not None else None
        if self.spec is None:
            del d["spec"]  # catalogue runs: provenance as before
        if self.tolerance is None:
            del d["tolerance"]
        if self.scenario is None:
            del d["scenario"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GenerationConfig":
        """Inverse of :meth:`to_dict`, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DatagenError(f"unknown generation option(s) {sorted(unknown)}")
        return cls(**d)


_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_split_name(name: Any) -> str:
    """``name`` if it is a valid split name (letters, digits, ``_`` and ``-``: it becomes a file name)."""
    if not isinstance(name, str) or not _SPLIT_NAME.fullmatch(name):
        raise DatagenError(f"split name {name!r} must be letters, digits, '_' or '-' (it names the folder "
                           "data/<split>/ of the dataset)")
    return name


def trajectory_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that draws trajectory ``index`` of ``split``: independent of batching."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(split.encode()), index)))


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), ``None`` off Linux."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_stepper_memory(n_fields: int, grid: Grid) -> None:
    """Refuse a grid whose stepper alone (spectral coefficients and stage temporaries, about
    twenty complex arrays per field) cannot fit, before building it."""
    need = 20 * 16 * n_fields * grid.n_cells
    avail = available_memory()
    if avail is not None and need > avail:
        raise DatagenError(f"a {grid.shape[0]} x {grid.shape[1]} grid needs about {need / 2**30:.3g} GiB for the "
                           f"solver alone, more than the {avail / 2**30:.3g} GiB available: use a smaller grid")


def _check_substeps(substeps: int | str, dt: float) -> None:
    """Refuse a step that would take more internal substeps than any run can finish."""
    if substeps != "auto" and substeps > MAX_SUBSTEPS:
        raise DatagenError(f"dt={dt:.3g} needs {substeps:.3g} internal substeps per saved step, more than the limit "
                           f"{MAX_SUBSTEPS}; choose a smaller --dt")


def _spec_dt(pde: PDE, grid: Grid, factor: float | None, steps: int) -> float:
    """Default saved step of a user PDE.

    With ``factor``: that multiple of dx^2 over its largest diffusion coefficient D (linear
    second-derivative terms). Without: the saved horizon is the shorter of one reaction time
    ``1 / rate`` (:func:`reaction_rate`) and the decay time ``L^2 / (4 pi^2 D)`` of the domain's
    longest mode, and never under ``steps`` steps of 0.24 dx^2 / D: on a fine grid the diffusive
    step alone can make ``steps`` frames that hardly change.
    """
    d = max((abs(t.coeff) for eq in pde.rhs for t in eq
             if len(t.factors) == 1 and t.factors[0].total_order == 2), default=0.0)
    if factor is not None or d == 0:
        if d == 0:
            raise DatagenError(f"{pde.name} has no diffusion term to set a default time step from: give dt (--dt)")
        return float(factor * min(grid.spacing) ** 2 / d)
    rate = reaction_rate(pde)
    horizon = min(1.0 / rate if rate > 0 else math.inf, min(grid.extent) ** 2 / (4 * math.pi ** 2 * d))
    return float(max(0.24 * min(grid.spacing) ** 2 / d, horizon / max(int(steps), 1)))
