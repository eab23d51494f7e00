"""Solving batches of a resolved configuration: the stepper, the error-controlled reference path
(step doubling per trajectory) and the checks that turn a blow-up into one line."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from .build import build as _build
from .config import GenerationConfig, trajectory_rng
from .errors import DatagenError
from .grid import Grid
from .integrators import make_integrator

__all__ = ["solve", "solve_batch", "MAX_REFINE"]


def solve_batch(cfg_json: str, start: int, stop: int, with_errors: bool = False,
                out: np.ndarray | None = None):
    """Trajectories ``start..stop-1`` of a resolved config, float32 ``(b, steps+1, field, x, y)``
    (in ``out`` when given); with ``with_errors``, also the estimated errors and substeps of each
    (see ``_rollout``)."""
    cfg = json.loads(cfg_json)
    pde, grid, _, sampler = _build(cfg_json)
    u0 = np.stack([sampler.sample(grid, pde.n_fields, trajectory_rng(cfg["seed"], cfg["split"], i))
                   for i in range(start, stop)])
    _check_nonlinear_cfl(pde, grid, cfg, u0, start)
    if not np.all(np.isfinite(u0)):
        raise DatagenError(f"the initial condition of trajectory {start + _first_bad(u0[:, None])[0]} is not finite; "
                           "check the --ic-param values")
    with np.errstate(all="ignore"):  # a blow-up is reported below, once, with its cause
        out, est, used = _rollout(cfg_json, u0, cfg["steps"], np.float32, out)
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


def _rollout(cfg_json: str, u0: np.ndarray, steps: int, dtype: np.dtype | type = np.float64,
             out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(trajectories, estimated relative errors at the last step, substeps used)``; frames are
    stored in ``dtype`` (or in ``out``) as they are made (the solve itself is float64).

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
    result = np.empty(shape, dtype) if out is None else out
    if result.shape != shape:
        raise DatagenError(f"internal: frame buffer of shape {result.shape} for {shape}")
    if not tol:
        base.run(u0, steps, result)
        return result, np.full(b, np.nan), np.full(b, int(cfg["substeps"]))
    s = int(cfg["substeps"])
    last_c = base.run(u0, steps, result)[1].reshape(b, -1)  # the coarse frames are overwritten
    est, used = np.empty(b), np.empty(b, dtype=np.int64)
    todo = np.arange(b)
    while todo.size:
        fine = np.empty((todo.size, *shape[1:]), dtype)
        last_f = _stepper(cfg_json, 2 * s).run(u0[todo], steps, fine)[1].reshape(todo.size, -1)
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


def solve(config: GenerationConfig | Mapping[str, Any], u0: np.ndarray, steps: int,
          errors: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Apply a dataset's own solver to given initial states.

    Args:
        config: a :class:`GenerationConfig`, its dict, or a dataset's whole provenance (as
            :func:`datagen.read_provenance` returns it): the same PDE, grid, integrator, substeps,
            space discretisation and backend are used.
        u0: initial states ``(batch, field, x, y)`` (or one state ``(field, x, y)``).
        steps: saved steps to take.

    Returns float64 ``(batch, steps + 1, field, x, y)`` with ``u0`` first. Started from a file's
    own initial frames, it reproduces the file's frames to their stored (float32) precision. With
    ``errors=True`` also each trajectory's estimated relative error at the last step (the
    step-doubling estimate of the reference path, an over-estimate of the kept finer solution's;
    NaN for a configuration without a tolerance).
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
    traj, est, _ = _rollout(json.dumps(cfg.to_dict(), sort_keys=True), u, int(steps))
    if single:
        traj, est = traj[0], est[0]
    return (traj, est) if errors else traj
