"""Dataset generation: sample initial conditions, solve in batches, write HDF5.

Work is split into batches of trajectories, solved in this process, in local worker processes
or on a Dask cluster. Each finished batch goes straight into its place in the output's final
HDF5 layout, written under a temporary name (see :mod:`datagen.writer`), so a killed run loses
at most the batches in flight and ``resume=True`` continues where it stopped. Because each
trajectory draws its initial condition from its own seed
(``SeedSequence(seed, spawn_key=(split, index))``) and every batch has a fixed place in the file,
an interrupted-and-resumed run produces the same bytes as an uninterrupted one, whatever the
number of workers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import zlib
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from . import catalogue
from .errors import DatagenError
from .grid import Grid
from .initial import make_sampler
from .pde import PDE
from .integrators import RK4, make_integrator, reaction_rate, rollout
from .semidiscrete import SemiDiscrete
from .store import COMPRESSIONS

log = logging.getLogger("datagen")

__all__ = ["GenerationConfig", "generate", "generate_splits", "solve", "solve_batch", "trajectory_rng"]


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that determines a dataset. ``resolve()`` fills the defaults in.

    Args:
        pde: catalogue name (``datagen list``); with ``spec``, the spec's name.
        params: PDE parameters overriding the catalogue defaults.
        spec: a PDE of the user's own (a :class:`datagen.PDE`, its ``to_dict()`` or JSON, e.g.
            from :func:`datagen.parse_pde`) instead of a catalogue entry; its parameters are its
            own, ``dt`` defaults to 0.24 dx^2 over its largest diffusion coefficient and the
            initial condition to ``fourier``.
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
        for name in ("steps", "n_trajectories", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise DatagenError(f"{name}={v!r} must be a positive integer")
        if self.compression not in COMPRESSIONS:
            raise DatagenError(f"unknown compression {self.compression!r}; choose one of {COMPRESSIONS}")
        if self.dt is not None and self.dt_factor is not None:
            raise DatagenError("give either dt or dt_factor, not both")
        if self.dt is not None:
            dt = float(self.dt)
        else:
            if self.dt_factor is not None and not (self.dt_factor > 0):
                raise DatagenError(f"dt_factor={self.dt_factor!r} must be positive")
            dt = entry.dt(grid, params, self.dt_factor) if entry is not None else _spec_dt(pde, grid, self.dt_factor)
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
            except (TypeError, ValueError):
                raise DatagenError(f"substeps={substeps!r} must be a positive integer or 'auto'") from None
        cfg = GenerationConfig(
            pde=self.pde, params=params if self.spec is None else {}, spec=self.spec, grid=grid.to_dict(),
            steps=int(self.steps), dt=dt, dt_factor=None,
            integrator=integrator, substeps=substeps, method=method, accuracy=accuracy,
            initial=sampler.to_dict(), seed=int(self.seed), split=str(self.split),
            n_trajectories=int(self.n_trajectories), batch_size=int(self.batch_size),
            compression=self.compression, backend=self.backend, rtol=float(self.rtol), atol=float(self.atol),
            tolerance=tolerance, scenario=self.scenario,
        )
        stepper = _build(json.dumps(cfg.to_dict(), sort_keys=True))[2]
        if cfg.substeps == "auto":  # record the count actually used
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


def _spec_dt(pde: PDE, grid: Grid, factor: float | None) -> float:
    """Default saved step of a user PDE: ``factor`` (0.24) times dx^2 over its largest diffusion
    coefficient (linear second-derivative terms)."""
    d = max((abs(t.coeff) for eq in pde.rhs for t in eq
             if len(t.factors) == 1 and t.factors[0].total_order == 2), default=0.0)
    if d == 0:
        raise DatagenError(f"{pde.name} has no diffusion term to set a default time step from: give dt (--dt)")
    return float((0.24 if factor is None else factor) * min(grid.spacing) ** 2 / d)


@lru_cache(maxsize=8)
def _build(cfg_json: str):
    cfg = json.loads(cfg_json)
    pde = PDE.from_dict(cfg["spec"]) if cfg.get("spec") else catalogue.make_pde(cfg["pde"], cfg["params"])
    grid = Grid.from_dict(cfg["grid"])
    sd = SemiDiscrete(pde, grid, accuracy=cfg["accuracy"] or 2, method=cfg["method"], backend=cfg["backend"])
    stepper = make_integrator(cfg["integrator"], sd, cfg["dt"], cfg["substeps"], rtol=cfg["rtol"], atol=cfg["atol"])
    return pde, grid, stepper, make_sampler(cfg["initial"])


def solve_batch(cfg_json: str, start: int, stop: int, with_errors: bool = False):
    """Trajectories ``start..stop-1`` of a resolved config, float32 ``(b, steps+1, field, x, y)``;
    with ``with_errors``, also the estimated errors and substeps of each (see ``_rollout``)."""
    cfg = json.loads(cfg_json)
    pde, grid, _, sampler = _build(cfg_json)
    u0 = np.stack([sampler.sample(grid, pde.n_fields, trajectory_rng(cfg["seed"], cfg["split"], i))
                   for i in range(start, stop)])
    _check_nonlinear_cfl(pde, grid, cfg, u0, start)
    if not np.all(np.isfinite(u0)):
        raise DatagenError(f"the initial condition of trajectory {start + _first_bad(u0[:, None])[0]} is not finite; "
                           "check the --ic-param values")
    with np.errstate(all="ignore"):  # a blow-up is reported below, once, with its cause
        out, est, used = _rollout(cfg_json, u0, cfg["steps"], np.float32)
    if not np.all(np.isfinite(out)):
        i, n = _first_bad(out)
        big = float(np.abs(u0).max())
        raise DatagenError(
            f"the solution blew up (non-finite) in trajectory {start + i} at step {n} of {cfg['steps']}: the time "
            f"step dt={cfg['dt']:.3g} with {cfg['substeps']} substep(s) of {cfg['integrator']} is likely too large "
            f"for this PDE's stability limit or reaction rate (initial max |u| = {big:.3g}); lower --dt or "
            "--dt-factor, raise --substeps, use --integrator reference, or lower the initial amplitude")
    if with_errors:
        return out, est, used
    return out


@lru_cache(maxsize=16)
def _stepper(cfg_json: str, substeps: int):
    cfg = json.loads(cfg_json)
    stepper = _build(cfg_json)[2]
    if substeps == stepper.substeps:
        return stepper
    return make_integrator(cfg["integrator"], stepper.sd, cfg["dt"], substeps, rtol=cfg["rtol"], atol=cfg["atol"])


# substeps may grow at most this factor over the resolved ones to meet the tolerance; a
# trajectory that still misses it is recorded as it is, and `validate` warns
MAX_REFINE = 64


def _rollout(cfg_json: str, u0: np.ndarray, steps: int,
             dtype: np.dtype | type = np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(trajectories, estimated relative errors at the last step, substeps used)``; frames are
    stored in ``dtype`` as they are made (the solve itself is float64).

    Without a tolerance: the configured substeps, errors NaN. With one: each trajectory is solved
    with ``s`` and ``2s`` substeps; the finer solution is kept once the step-doubling
    (Richardson, fourth order) estimate ``|u_s - u_2s| / (15 |u_2s|)`` at the last saved step
    meets the tolerance, else ``s`` doubles. A trajectory's result depends on its own data only,
    not on the batch it is solved in.
    """
    cfg = json.loads(cfg_json)
    base = _stepper(cfg_json, int(cfg["substeps"]))
    b = u0.shape[0]
    shape = (b, steps + 1, *u0.shape[1:])
    tol = cfg.get("tolerance")
    if not tol:
        out = base.rollout(u0, steps, out=np.empty(shape, dtype))
        return out, np.full(b, np.nan), np.full(b, int(cfg["substeps"]))
    s = int(cfg["substeps"])
    result = np.empty(shape, dtype)
    last_c = rollout(base.step, u0, steps, result)[1].reshape(b, -1)  # the coarse frames are overwritten
    est, used = np.empty(b), np.empty(b, dtype=np.int64)
    todo = np.arange(b)
    while todo.size:
        fine = np.empty((todo.size, *shape[1:]), dtype)
        last_f = rollout(_stepper(cfg_json, 2 * s).step, u0[todo], steps, fine)[1].reshape(todo.size, -1)
        e = np.linalg.norm(last_c - last_f, axis=1) / np.maximum(np.linalg.norm(last_f, axis=1), 1e-300) / 15.0
        # a coarse solution that blew up is no estimate: refine; a fine one that blew up is reported
        done = (e <= tol) | (2 * s >= MAX_REFINE * int(cfg["substeps"])) | ~np.isfinite(last_f).all(axis=1)
        result[todo[done]], est[todo[done]], used[todo[done]] = fine[done], e[done], 2 * s
        todo, last_c, s = todo[~done], last_f[~done], 2 * s
    return result, est, used


def _check_nonlinear_cfl(pde, grid: Grid, cfg: dict, u0: np.ndarray, start: int) -> None:
    """Explicit steppers: the transport speed of terms like ``u u_x`` (one first derivative times
    other factors) at the initial state's size must satisfy ``speed h / dx <= 1``; the linear
    stability check cannot see it (Burgers with small viscosity)."""
    if cfg["integrator"] not in ("euler", "rk4"):
        return
    size = float(np.abs(u0).max()) if u0.size else 0.0
    if not math.isfinite(size):
        return  # reported as a non-finite initial condition
    speed = 0.0
    for eq in pde.rhs:
        for t in eq:
            firsts = [d for d in t.factors if d.total_order == 1]
            if len(firsts) == 1 and len(t.factors) >= 2 and all(
                    d.total_order == 0 for d in t.factors if d is not firsts[0]):
                speed += abs(t.coeff) * size ** (len(t.factors) - 1)
    h = cfg["dt"] / int(cfg["substeps"])
    courant = speed * h / min(grid.spacing)
    if courant > 1.0:
        need = math.ceil(cfg["substeps"] * courant)
        raise DatagenError(
            f"the nonlinear transport of {pde.name} moves {courant:.3g} cells per substep at the initial size "
            f"max |u| = {size:.3g} (trajectory {start}..): explicit {cfg['integrator']} needs at most 1; use "
            f"--substeps {need} or more, a smaller --dt, or --integrator reference")


def _first_bad(a: np.ndarray) -> tuple[int, int]:
    """(trajectory, step) of the earliest non-finite value of ``a (b, time, ...)``."""
    bad = ~np.isfinite(a).reshape(a.shape[0], a.shape[1], -1).any(axis=2)
    step = int(np.argwhere(bad)[:, 1].min())
    return int(np.argmax(bad[:, step])), step


def solve(config: GenerationConfig | Mapping[str, Any], u0: np.ndarray, steps: int) -> np.ndarray:
    """Apply a dataset's own solver to given initial states.

    Args:
        config: a :class:`GenerationConfig`, its dict, or a dataset's whole provenance (as
            :func:`datagen.read_provenance` returns it): the same PDE, grid, integrator, substeps,
            space discretisation and backend are used.
        u0: initial states ``(batch, field, x, y)`` (or one state ``(field, x, y)``).
        steps: saved steps to take.

    Returns float64 ``(batch, steps + 1, field, x, y)`` with ``u0`` first. Started from a file's
    own initial frames, it reproduces the file's frames to their stored (float32) precision.
    """
    if isinstance(config, Mapping) and "config" in config and "pde" in config:
        config = config["config"]
    if isinstance(config, Mapping):
        try:
            config = GenerationConfig.from_dict(config)
        except TypeError as exc:
            raise DatagenError(f"not a generation config: {exc}") from None
    if not isinstance(config, GenerationConfig):
        raise DatagenError(f"solve needs a GenerationConfig or a provenance dict, got {type(config).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise DatagenError(f"steps={steps!r} must be a non-negative integer")
    cfg = config.resolve()
    pde, grid, _, _ = _build(json.dumps(cfg.to_dict(), sort_keys=True))
    u = np.asarray(u0, dtype=np.float64)
    single = u.ndim == 3
    if single:
        u = u[None]
    want = (pde.n_fields, *grid.shape)
    if u.ndim != 4 or u.shape[1:] != want:
        raise DatagenError(f"initial states of shape {np.shape(u0)} do not fit (batch, {', '.join(map(str, want))})")
    if not np.all(np.isfinite(u)):
        raise DatagenError("initial states hold NaN or inf values")
    traj = _rollout(json.dumps(cfg.to_dict(), sort_keys=True), u, int(steps))[0]
    return traj[0] if single else traj


def _versions() -> dict[str, str]:
    import ducc0
    import h5py
    import scipy

    from . import __version__

    return {"datagen": __version__, "numpy": np.__version__, "scipy": scipy.__version__, "h5py": h5py.__version__,
            "ducc0": ducc0.__version__}


def generate(config: GenerationConfig, out: str | os.PathLike, *, workers: int = 1, scheduler: str | None = None,
             resume: bool = False, overwrite: bool = False,
             progress: Callable[[int, int], None] | bool = False) -> Path:
    """Generate one split into the HDF5 file ``out``; returns its path.

    Args:
        config: what to generate (resolved here).
        out: output file name (its folder is created).
        workers: local worker processes (1 solves in this process).
        scheduler: address of a Dask distributed scheduler to run the batches on instead.
        resume: continue an interrupted run of the same config.
        overwrite: replace an existing output (and discard an interrupted run's work).
        progress: ``True`` for a progress bar on stderr, or a callback ``(done, total)`` counting
            trajectories.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        if resume:
            return _finished(config, out)
        raise DatagenError(f"{out} exists; pass --overwrite to replace it")
    if workers < 1:
        raise DatagenError(f"workers={workers} must be at least 1")
    config = config.with_scenario()
    pde = config.make_pde()
    grid = Grid.from_dict(config.grid)
    _check_memory(config, pde.n_fields, grid, workers if not scheduler else 1)
    _check_space(out, pde.n_fields * grid.n_cells * 4 * (int(config.steps) + 1) * int(config.n_trajectories))
    cfg = config.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with _output_lock(out):
        if out.exists() and not overwrite:  # another run may have finished it meanwhile
            if resume:
                return _finished(config, out)
            raise DatagenError(f"{out} exists; pass --overwrite to replace it")
        return _generate_locked(cfg, out, pde, grid, workers, scheduler, resume, overwrite, progress)


def _generate_locked(cfg: GenerationConfig, out: Path, pde, grid: Grid, workers: int, scheduler: str | None,
                     resume: bool, overwrite: bool, progress) -> Path:
    from .writer import IsolatedWriter

    cfg_json = json.dumps(cfg.to_dict(), sort_keys=True)
    bounds = [(s, min(s + cfg.batch_size, cfg.n_trajectories)) for s in range(0, cfg.n_trajectories, cfg.batch_size)]
    meta = {
        "dataset_name": cfg.pde, "fields": pde.fields, "parameters": pde.parameters,
        "n_trajectories": cfg.n_trajectories, "time": cfg.dt * np.arange(cfg.steps + 1),
        "x": grid.x, "y": grid.y, "boundary": cfg.grid,
    }
    partial = IsolatedWriter(out, meta, cfg_json, bounds, cfg.compression)
    try:
        todo = partial.open(resume, overwrite)
    except OSError as exc:
        partial.close()
        text = exc.strerror or str(exc)
        if "ermission denied" in text:
            raise DatagenError(f"cannot write to {out.parent}: permission denied; choose another --out") from None
        raise DatagenError(f"writing {out} failed: {text}; nothing was written under that name "
                           "(free space if the disk is full, then rerun)") from None
    except BaseException:
        partial.close()
        raise

    report = _progress_reporter(progress, cfg.n_trajectories, cfg.split)
    report(sum(b - a for k, (a, b) in enumerate(bounds) if k not in todo))

    def provenance(est: np.ndarray, used: np.ndarray) -> dict[str, Any]:
        prov: dict[str, Any] = {"config": cfg.to_dict(), "pde": pde.to_dict(), "expression": pde.expression(),
                                "versions": _versions()}
        if cfg.tolerance:
            prov["reference_error"] = {
                "tolerance": cfg.tolerance, "estimate": "step doubling at the last saved step, relative L2",
                "worst": float(np.max(est)), "worst_trajectory": int(np.argmax(est)),
                "per_trajectory": [float(x) for x in est], "substeps": [int(x) for x in used]}
        return prov

    try:
        for k, (arr, est, used) in _run(cfg_json, [bounds[k] for k in todo], todo, workers, scheduler):
            partial.write(k, arr, est, used)
            report(bounds[k][1] - bounds[k][0])
        partial.finish(provenance)
    except OSError as exc:
        partial.close()
        raise DatagenError(
            f"writing {out} failed: {exc.strerror or exc}; nothing was written under that name "
            "(free space if the disk is full, then rerun with --resume)"
        ) from None
    except BaseException as exc:
        # a run that fails on its input (a blow-up, a bad scheduler) would fail again: its partial
        # file must not block the corrected rerun; interruptions keep theirs for --resume
        if isinstance(exc, Exception) and not getattr(exc, "resumable", False):
            partial.discard()
        else:
            partial.close()
        raise
    finally:
        report(None)
    return out


@contextmanager
def _output_lock(out: Path):
    """An exclusive OS lock on ``out`` for the whole run (released by the OS if the process dies).

    A second run on the same output stops at once, naming the first one's pid, so that
    ``--overwrite`` can never delete the work of a live run.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    path = out.with_name(f".{out.name}.lock")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DatagenError(f"cannot write to {out.parent}: {exc.strerror}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DatagenError(f"another run (pid {other}) is writing {out}; wait for it to finish or choose "
                               "another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was replaced while we waited for it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


def _finished(config: GenerationConfig, out: Path) -> Path:
    """``out`` when it is a finished run of ``config`` (``--resume`` keeps it), else an error."""
    from .store import read_provenance

    try:
        stored = read_provenance(out)["config"]
    except (DatagenError, KeyError, TypeError):
        raise DatagenError(f"{out} exists and is not a finished datagen run; pass --overwrite to replace it") from None
    if json.dumps(stored, sort_keys=True) != json.dumps(config.resolve().to_dict(), sort_keys=True):
        raise DatagenError(f"{out} exists with other options; pass --overwrite to replace it")
    log.info("%s is complete (same options); kept", out)
    return out


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(cfg: GenerationConfig, n_fields: int, grid: Grid, workers: int) -> None:
    """Refuse before allocating when a batch cannot fit: each worker holds its batch's float32
    frames (twice on the step-doubling reference path) and about ten float64 states of stepper
    temporaries, and the writer shares two batches of frames with this process."""
    frame = n_fields * grid.n_cells
    try:
        batch = min(int(cfg.batch_size), int(cfg.n_trajectories))
        need = (workers * batch * frame * ((int(cfg.steps) + 1) * 8 + 10 * 8)
                + 2 * batch * frame * (int(cfg.steps) + 1) * 4)
    except (TypeError, ValueError):
        return  # malformed counts: resolve() reports them
    avail = _available_memory()
    if avail is not None and need > avail:
        raise DatagenError(
            f"solving needs about {need / 2**30:.3g} GiB ({workers} worker(s) x a batch of {batch} trajectories of "
            f"{int(cfg.steps) + 1} frames of {grid.shape[0]} x {grid.shape[1]}), more than the {avail / 2**30:.3g} "
            "GiB available: lower --batch-size or --workers, or use a smaller grid")


def _check_space(out: Path, dataset_bytes: int) -> None:
    """Refuse before any work when the disk cannot hold the file (with room for its metadata)."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DatagenError(f"cannot write to {out.parent}: {folder} is not a folder")
    need, free = int(1.1 * dataset_bytes) + 2 ** 20, shutil.disk_usage(folder).free
    if need > free:
        raise DatagenError(
            f"not enough disk space in {folder}: the dataset needs about {need / 1e9:.3g} GB "
            f"but {free / 1e9:.3g} GB are free; free space or use fewer trajectories"
        )


def _progress_reporter(progress, total: int, label: str = "generate"):
    if callable(progress):
        done = [0]

        def cb(n):
            if n is not None:
                done[0] += n
                progress(done[0], total)
        return cb
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="traj", desc=label)

        def tq(n):
            if n is None:
                bar.close()
            else:
                bar.update(n)
        return tq
    return lambda n: None


def _run(cfg_json: str, bounds: list[tuple[int, int]], keys: list[int], workers: int, scheduler: str | None):
    """Yield ``(key, batch)`` as batches finish, keeping at most 2 x workers in flight."""
    if scheduler:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise DatagenError("--scheduler needs the dask extra: pip install 'pdesurrogate[dask]'") from None
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise DatagenError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        try:
            futs = {client.submit(solve_batch, cfg_json, a, b, True, pure=False): k for k, (a, b) in zip(keys, bounds)}
            for fut in as_completed(futs):
                try:
                    result = fut.result()
                except (OSError, TimeoutError) as exc:  # the scheduler or a worker went away
                    err = DatagenError(f"lost the Dask scheduler at {scheduler} ({type(exc).__name__}: {exc}); the "
                                       "finished batches are kept: rerun with --resume")
                    err.resumable = True
                    raise err from None
                yield futs[fut], result
                fut.release()
        finally:
            try:
                client.close()
            except (OSError, TimeoutError):
                pass
        return
    if workers == 1:
        for k, (a, b) in zip(keys, bounds):
            yield k, solve_batch(cfg_json, a, b, True)
        return
    import multiprocessing as mp

    # fork where available: spawn re-imports __main__, which fails for notebooks and stdin scripts
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as ex:
        pending: dict = {}
        queue = list(zip(keys, bounds))
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                k, (a, b) = queue.pop(0)
                pending[ex.submit(solve_batch, cfg_json, a, b, True)] = k
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()


def _die_with_parent(parent: int) -> None:
    """Worker initialiser: exit when the parent process dies (a SIGKILLed parent would otherwise
    leave its workers blocked on their queue forever)."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: Linux delivers SIGTERM when the parent dies
    except (OSError, AttributeError):  # pragma: no cover - not Linux: fall back to polling below
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    import threading

    def watch() -> None:  # other POSIX systems: poll for re-parenting
        import time

        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def generate_splits(config: GenerationConfig, splits: Mapping[str, int], out_dir: str | os.PathLike,
                    **kwargs: Any) -> list[Path]:
    """Generate ``{split: n_trajectories}`` into a dataset folder in The Well's layout.

    Each split goes to ``out_dir/data/<split>/<name>.hdf5`` (same options otherwise), and
    ``out_dir/stats.yaml`` gets the normalisation statistics of the ``train`` split (or of the only
    split). Splits already in the folder must come from the same configuration (a folder is one
    dataset); ``kwargs`` go to :func:`generate`.
    """
    from .store import dataset_files, read_provenance, split_path, write_stats

    if not splits:
        raise DatagenError("no splits given; e.g. train=64,test=16")
    name = config.pde
    if not isinstance(name, str) or not _SPLIT_NAME.fullmatch(name):
        raise DatagenError(f"dataset name {name!r} must be letters, digits, '_' or '-' (it names the files "
                           "data/<split>/<name>.hdf5); pass another --name")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DatagenError(f"--out {out_dir} is a file; datasets are folders (data/<split>/<name>.hdf5)")
    mine = {k: v for k, v in config.resolve().to_dict().items() if k not in ("split", "n_trajectories")}
    if out_dir.is_dir():
        for split, path in dataset_files(out_dir).items():
            if split in splits:  # generate() keeps, replaces or refuses it itself
                continue
            try:
                theirs = {k: v for k, v in read_provenance(path)["config"].items() if k not in ("split", "n_trajectories")}
            except (DatagenError, KeyError, TypeError):
                theirs = None
            if theirs != mine:
                raise DatagenError(f"{out_dir} already holds split {split!r} made with other options ({path}); a "
                                   "folder is one dataset: choose another --out, or remove that split")
    paths: list[Path] = []
    made = [d for d in (out_dir, out_dir / "data", *(out_dir / "data" / k for k in splits)) if not d.exists()]
    try:
        for split, n in splits.items():
            cfg = GenerationConfig(**{**config.to_dict(), "split": split, "n_trajectories": n})
            paths.append(generate(cfg, split_path(out_dir, split, name), **kwargs))
        write_stats(out_dir)
    except BaseException:
        for d in reversed(made):  # folders this call made and left empty
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    return paths
