"""Can a model's integrator step the data's dt? Linear stability of one step at constant states.

At a constant state ``c`` the linearised vector field of a translation-invariant network is a
convolution: its Fourier symbol ``J(k)`` (a ``fields x fields`` matrix per wavenumber) comes from
one Jacobian-vector product per field with a unit impulse. One substep of size ``h`` multiplies a
mode by ``R(h J(k))``, ``R`` the integrator's stability polynomial. The step is called unstable
when a mode the field damps grows, or a mode it grows grows faster than its own flow would (e.g.
Fisher's reaction at negative states grows, and may), and the check names the smallest substep
count that brings every mode back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .model import Surrogate

__all__ = ["StepStability", "step_stability", "probe_states", "warn_if_unstable"]

# stability polynomials R(z) of the explicit integrators, lowest degree first
_POLY = {"euler": (1.0, 1.0), "projected_euler": (1.0, 1.0), "heun": (1.0, 1.0, 0.5),
         "rk4": (1.0, 1.0, 0.5, 1 / 6, 1 / 24)}
MAX_SUGGESTED = 4096


@dataclass
class StepStability:
    """The verdict of :func:`step_stability`."""

    stable: bool
    amplification: float  # worst |R(h lambda)| over modes and probe states
    allowed: float  # the growth that mode may have over a substep
    substeps: int  # the model's
    needed: int | None  # the fewest substeps that are stable (None: none up to MAX_SUGGESTED)
    state: float  # the probe state (first field's value) where it is worst

    def message(self, dt: float) -> str:
        """One line for a warning."""
        fix = (f"{self.needed} substeps would be stable" if self.needed else
               f"no substep count up to {MAX_SUGGESTED} is stable")
        return (f"the model's {self.substeps} substep(s) cannot step dt={dt:.4g} stably: a mode grows by "
                f"{self.amplification:.4g} per substep at the constant state {self.state:.3g} (the linearised field "
                f"allows {self.allowed:.4g}); {fix}")


def _symbols(model: Surrogate, c: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """``J(k)`` at the constant state ``c (fields,)``: ``(nx * ny, fields, fields)`` complex.

    Central differences of the float64 field along one impulse per field: exact for the
    piecewise-quadratic fields of power-2 networks away from kinks, ``O(eps^2)`` otherwise.
    """
    import copy

    vf = copy.deepcopy(model.vector_field).to(torch.float64)
    F = c.shape[0]
    base = c.to(torch.float64).view(1, F, 1, 1).expand(F, F, *shape).contiguous()
    tangent = torch.zeros_like(base)
    for j in range(F):
        tangent[j, j, 0, 0] = 1.0
    eps = 1e-4 * max(1.0, float(c.abs().max()))
    with torch.no_grad():
        jv = (vf(base + eps * tangent) - vf(base - eps * tangent)) / (2 * eps)
    spec = np.fft.fft2(jv.cpu().numpy(), axes=(-2, -1))  # (in j, out i, kx, ky)
    return np.transpose(spec.reshape(F, F, -1), (2, 1, 0))  # (k, out, in)


def _excess(poly, lam: np.ndarray, h: float, cap: float) -> tuple[float, float, float]:
    """``(worst amp / allowed, amp, allowed)`` over the modes: a mode the field damps may not grow;
    one it grows may grow as ``exp(h * min(Re lambda, cap))``."""
    amp = np.abs(np.polyval(poly[::-1], h * lam))
    allowed = np.where(lam.real <= 0, 1.0, np.exp(h * np.minimum(lam.real, cap)))
    i = int(np.argmax(amp / allowed))
    return float(amp[i] / allowed[i]), float(amp[i]), float(allowed[i])


def step_stability(model: Surrogate, states: Sequence[Sequence[float]] | np.ndarray, shape: tuple[int, int],
                   tol: float = 1e-3) -> StepStability | None:
    """Linear stability of ``model``'s substeps at the constant ``states`` (each one value per field).

    A mode the linearised field damps (``Re lambda <= 0``) may not grow over a substep; a mode it
    grows may grow as its exact flow does, at a rate capped at the constant mode's growth plus
    ``1 / dt`` (faster growth at a wavenumber is the field's own instability, e.g. a
    modified-equation network stepped far beyond its ``dt``). ``tol`` is the excess growth
    tolerated per step ``dt`` (spread over its substeps): a mode the field barely damps but turns
    fast (a large imaginary part) grows by ``|1 + h lambda|`` slightly above 1 under Euler at any
    step, harmlessly over a horizon of tens of steps. Returns None for integrators without a known
    stability polynomial.
    """
    poly = _POLY.get(model.integrator)
    if poly is None:
        return None
    h = model.dt / model.substeps
    states = np.atleast_2d(np.asarray(states, dtype=np.float64))
    worst = None
    need = 1
    for c in states:
        J = _symbols(model, torch.as_tensor(c), shape)
        lam = np.linalg.eigvals(J)  # (k, fields)
        cap = max(0.0, float(np.max(lam[0].real))) + 1.0 / model.dt  # k = 0 is the first FFT cell
        lam = lam.ravel()
        ratio, amp, allowed = _excess(poly, lam, h, cap)
        if worst is None or ratio > worst[0]:
            worst = (ratio, amp, allowed, float(c[0]))
        need = max(need, _needed(poly, lam, model.dt, cap, tol))
    ratio, amp, allowed, state = worst
    return StepStability(ratio <= (1 + tol) ** (1 / model.substeps), amp, allowed, int(model.substeps),
                         None if need > MAX_SUGGESTED else need, state)


def _needed(poly, lam: np.ndarray, dt: float, cap: float, tol: float) -> int:
    """The fewest substeps ``s`` with every mode inside its allowed growth (doubling, then bisection)."""
    def ok(s: int) -> bool:
        return _excess(poly, lam, dt / s, cap)[0] <= (1 + tol) ** (1 / s)

    hi = 1
    while not ok(hi):
        hi *= 2
        if hi > MAX_SUGGESTED:
            return MAX_SUGGESTED + 1
    lo = max(1, hi // 2)
    if ok(lo):
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def probe_states(frames: np.ndarray) -> np.ndarray:
    """Constant states spanning the data: per field the min, mean and max of ``frames (..., F, x, y)``."""
    f = np.moveaxis(np.asarray(frames, dtype=np.float64), -3, 0).reshape(frames.shape[-3], -1)
    f = f[:, np.isfinite(f).all(axis=0)]
    if f.size == 0:
        return np.zeros((1, frames.shape[-3]))
    return np.stack([f.min(axis=1), f.mean(axis=1), f.max(axis=1)])


def warn_if_unstable(model: Surrogate, frames: np.ndarray, what: str = "the model") -> StepStability | None:
    """Warn (one line, :class:`StabilityWarning`) when ``model`` cannot step stably at the data's states."""
    import warnings

    from .errors import StabilityWarning

    try:
        st = step_stability(model, probe_states(frames), tuple(frames.shape[-2:]))
    except (RuntimeError, ValueError):  # a model the probe cannot run is reported by the rollout itself
        return None
    if st is not None and not st.stable:
        warnings.warn(st.message(model.dt).replace("the model's", f"{what}'s", 1), StabilityWarning, stacklevel=3)
    return st
