"""Time integrators for the semi-discrete system ``dU/dt = F(U)``.

Each integrator advances one *saved* step ``dt`` per :meth:`step` call, internally taking
``substeps`` steps of ``h = dt / substeps``; :meth:`rollout` returns the whole trajectory.
Steppers are plain callables in spirit (``u_next = stepper.step(u)``) and keep no time loop of
their own beyond that.

* :class:`Euler` - forward Euler; with the five-point stencil this *is* the scheme that the
  exact network of :mod:`pdesurrogate` reproduces.
* :class:`RK4` - classical Runge-Kutta.
* :class:`ETDRK4` - exponential time differencing RK4 (Cox-Matthews, Kassam-Trefethen
  coefficients by contour integrals) for periodic grids: the stiff linear part is exact.
* :class:`ScipyIVP` - ``scipy.integrate.solve_ivp`` (BDF, Radau, RK45, ...) with the sparse
  analytic Jacobian, for stiff or non-periodic problems.

Explicit methods refuse a step outside their stability region (von Neumann analysis of the
derivative terms) and name the largest stable ``dt``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from ._registry import register
from .errors import DatagenError
from .semidiscrete import SemiDiscrete, irfft2, rfft2

__all__ = ["Euler", "RK4", "ETDRK4", "ScipyIVP", "INTEGRATORS", "make_integrator", "max_stable_step", "reaction_rate",
           "rollout"]


def _r_euler(z: np.ndarray) -> np.ndarray:
    return 1 + z


def _r_rk4(z: np.ndarray) -> np.ndarray:
    return 1 + z + z * z / 2 + z ** 3 / 6 + z ** 4 / 24


def max_stable_step(sd: SemiDiscrete, method: Literal["euler", "rk4"]) -> float:
    """Largest internal step ``h`` for which ``|R(h lambda)| <= 1`` on every grid mode.

    Returns ``inf`` when the derivative terms impose no limit and 0 when no positive step is
    stable (forward Euler on pure advection).
    """
    lam = sd.stiff_eigenvalues()
    lam = lam[np.abs(lam) > 0]
    if lam.size == 0:
        return math.inf
    R = _r_euler if method == "euler" else _r_rk4

    def ok(h: float) -> bool:
        return bool(np.all(np.abs(R(h * lam)) <= 1 + 1e-12))

    hi = 4.0 / np.abs(lam).max()  # both regions lie inside |z| < 4
    lo = 0.0
    if ok(hi):  # pragma: no cover - cannot happen for these methods
        return hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    # With the 1e-12 slack, a spectrum on the imaginary axis admits only a vanishing step.
    return lo if lo > 1e-3 / np.abs(lam).max() else 0.0


def reaction_rate(pde) -> float:
    """Rough rate of the reaction terms: per equation, the sum of |coefficients| of terms with
    no derivatives (constants excluded), for fields of unit size; the largest over equations."""
    rates = [sum(abs(t.coeff) for t in terms if t.factors and all(d.total_order == 0 for d in t.factors))
             for terms in pde.rhs]
    return max(rates, default=0.0)


class _Stepper:
    name = ""
    # the integrator names that make this class (its ``name`` when empty); set by subclasses,
    # which register themselves for make_integrator
    names: tuple[str, ...] = ()
    _registry: dict[str, type[_Stepper]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for name in cls.names or ((cls.name,) if cls.name else ()):
            register(_Stepper._registry, name, cls, "integrator")

    @classmethod
    def create(cls, name: str, sd: SemiDiscrete, dt: float, substeps: int | str, *, check_stability: bool,
               rtol: float, atol: float) -> _Stepper:
        """The integrator ``name`` of this class, as :func:`make_integrator` asks for it."""
        return cls(sd, dt, 1 if substeps == "auto" else int(substeps))

    def __init__(self, sd: SemiDiscrete, dt: float, substeps: int = 1) -> None:
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise DatagenError(f"time step dt={dt!r} must be a positive number")
        if int(substeps) < 1:
            raise DatagenError(f"substeps={substeps!r} must be a positive integer")
        self.sd, self.dt, self.substeps = sd, float(dt), int(substeps)
        self.h = self.dt / self.substeps

    def step(self, u: np.ndarray) -> np.ndarray:
        """Advance ``u (..., field, x, y)`` by one saved step ``dt``."""
        for _ in range(self.substeps):
            u = self._substep(u)
        return u

    __call__ = step

    def _substep(self, u: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def rollout(self, u0: np.ndarray, n_steps: int, out: np.ndarray | None = None) -> np.ndarray:
        """``(..., n_steps + 1, field, x, y)``: ``u0`` and ``n_steps`` saved steps after it, in
        ``out`` when given (any float dtype: frames are stored as they are made)."""
        return self.run(u0, n_steps, out)[0]

    def run(self, u0: np.ndarray, n_steps: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As :func:`rollout` with this stepper: ``(frames, last state)``."""
        return rollout(self.step, u0, n_steps, out)


def rollout(step, u0: np.ndarray, n_steps: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``step`` ``n_steps`` times; the time axis is inserted before the field axis.

    Returns ``(frames, last state)``: frames go into ``out`` (allocated like ``u0`` when None),
    so a float32 ``out`` stores a float64 solve without a float64 copy of the whole rollout;
    the last state keeps the working precision.
    """
    shape = u0.shape[:-3] + (n_steps + 1,) + u0.shape[-3:]
    if out is None:
        out = np.empty(shape, dtype=u0.dtype)
    elif out.shape != shape:
        raise DatagenError(f"rollout buffer of shape {out.shape} does not fit {shape}")
    out[..., 0, :, :, :] = u0
    u = u0
    for n in range(1, n_steps + 1):
        u = step(u)
        out[..., n, :, :, :] = u
    return out, u


class _Explicit(_Stepper):
    def __init__(self, sd: SemiDiscrete, dt: float, substeps: int = 1, check_stability: bool = True) -> None:
        super().__init__(sd, dt, substeps)
        if check_stability:
            hmax = max_stable_step(sd, self.name)
            if self.h > hmax:
                if hmax == 0.0:
                    raise DatagenError(
                        f"explicit {self.name} is unstable for {sd.pde.name} at any step size "
                        "(its spectrum lies on the imaginary axis); use integrator 'rk4' or 'etdrk4'"
                    )
                need = math.ceil(self.dt / hmax)
                raise DatagenError(
                    f"explicit {self.name} with {self.substeps} substep(s) is unstable: dt={self.dt:.6g} "
                    f"exceeds the largest stable dt={hmax * self.substeps:.6g} for {sd.pde.name} on this "
                    f"grid; lower dt, use substeps >= {need}, or integrator 'etdrk4'/'bdf'"
                )

    @classmethod
    def create(cls, name: str, sd: SemiDiscrete, dt: float, substeps: int | str, *, check_stability: bool,
               rtol: float, atol: float) -> _Stepper:
        n = cls.auto_substeps(sd, dt) if substeps == "auto" else int(substeps)
        return cls(sd, dt, n, check_stability=check_stability)

    @classmethod
    def auto_substeps(cls, sd: SemiDiscrete, dt: float, safety: float = 0.9) -> int:
        """Fewest substeps that keep ``h`` within ``safety`` times the stability limit."""
        hmax = max_stable_step(sd, cls.name)
        if hmax == 0.0:
            raise DatagenError(f"explicit {cls.name} is unstable for {sd.pde.name} at any step size")
        return max(1, math.ceil(dt / (safety * hmax))) if math.isfinite(hmax) else 1


class Euler(_Explicit):
    """Forward Euler: ``U <- U + h F(U)``."""

    name = "euler"
    _fused = None

    def _substep(self, u: np.ndarray) -> np.ndarray:
        return self.sd.euler_update(u, self.h)

    def run(self, u0: np.ndarray, n_steps: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As :func:`rollout`; with the numba backend on a periodic grid, every substep is one
        compiled sweep over a padded state kept between substeps (same bytes as step by step)."""
        sd = self.sd
        if not (sd.backend == "numba" and sd.grid.boundary == "periodic" and sd.radius >= 1 and u0.ndim == 4):
            return rollout(self.step, u0, n_steps, out)
        sd._check(u0)
        shape = (u0.shape[0], n_steps + 1) + u0.shape[1:]
        if out is None:
            out = np.empty(shape, dtype=u0.dtype)
        elif out.shape != shape:
            raise DatagenError(f"rollout buffer of shape {out.shape} does not fit {shape}")
        if self._fused is None:
            from ._numba import compile_euler_rollout

            self._fused = compile_euler_rollout(sd)
        last = self._fused(np.asarray(u0, np.float64), n_steps, self.substeps, self.h, out)
        return out, last.astype(u0.dtype, copy=False)


class RK4(_Explicit):
    """Classical fourth-order Runge-Kutta."""

    name = "rk4"

    def _substep(self, u: np.ndarray) -> np.ndarray:
        h, F = self.h, self.sd
        k1 = F(u)
        k2 = F(u + 0.5 * h * k1)
        k3 = F(u + 0.5 * h * k2)
        k4 = F(u + h * k3)
        return u + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)


class ETDRK4(_Stepper):
    """Exponential time differencing RK4 on a periodic grid (works with ``fd`` or ``spectral``).

    The diagonal linear part (each field's own linear terms, in Fourier space) is integrated
    exactly; the rest is treated by the fourth-order scheme of Cox and Matthews, with the phi
    functions evaluated by contour integrals (Kassam and Trefethen, 2005).
    """

    name = "etdrk4"

    def __init__(self, sd: SemiDiscrete, dt: float, substeps: int = 1, contour_points: int = 64) -> None:
        super().__init__(sd, dt, substeps)
        if sd.grid.boundary != "periodic":
            raise DatagenError("etdrk4 needs a periodic grid; use 'rk4' or 'bdf' for walls")
        h = self.h
        L = sd.linear_symbol()
        # Symbols repeat a lot (isotropy); contour sums only over the distinct values.
        vals, inverse = np.unique(L.ravel(), return_inverse=True)
        # the whole circle: the half-circle shortcut is valid for real symbols only
        r = np.exp(2j * np.pi * (np.arange(1, contour_points + 1) - 0.5) / contour_points)
        LR = h * vals[:, None] + r
        eLR = np.exp(LR)
        coeffs = {
            "E": np.exp(h * vals), "E2": np.exp(h * vals / 2),
            "Q": h * np.mean((np.exp(LR / 2) - 1) / LR, axis=-1),
            "f1": h * np.mean((-4 - LR + eLR * (4 - 3 * LR + LR ** 2)) / LR ** 3, axis=-1),
            "f2": h * np.mean((2 + LR + eLR * (-2 + LR)) / LR ** 3, axis=-1),
            "f3": h * np.mean((-4 - 3 * LR - LR ** 2 + eLR * (4 - LR)) / LR ** 3, axis=-1),
        }
        real = bool(np.all(np.abs(np.imag(vals)) <= 1e-12 * np.abs(vals).max()))
        for name, c in coeffs.items():
            c = c[inverse].reshape(L.shape)
            setattr(self, name, np.real(c) if real else c)
        self.shape = sd.grid.shape

    def _N(self, vh: np.ndarray) -> np.ndarray:
        v = irfft2(vh, s=self.shape)
        return rfft2(self.sd.evaluate(v, part="nonlinear"))

    def step(self, u: np.ndarray) -> np.ndarray:
        """One saved step; the substeps stay in Fourier space (two transforms fewer each)."""
        vh = rfft2(u)
        for _ in range(self.substeps):
            vh = self._substep_hat(vh)
        return irfft2(vh, s=self.shape)

    __call__ = step

    def _substep(self, u: np.ndarray) -> np.ndarray:
        return irfft2(self._substep_hat(rfft2(u)), s=self.shape)

    def _substep_hat(self, vh: np.ndarray) -> np.ndarray:
        Nv = self._N(vh)
        a = self.E2 * vh + self.Q * Nv
        Na = self._N(a)
        b = self.E2 * vh + self.Q * Na
        Nb = self._N(b)
        c = self.E2 * a + self.Q * (2 * Nb - Nv)
        Nc = self._N(c)
        # in place: the stage sums need no temporaries of their own
        Na += Nb
        Na *= 2 * self.f2
        Nv *= self.f1
        Nc *= self.f3
        out = self.E * vh
        out += Nv
        out += Na
        out += Nc
        return out


class ScipyIVP(_Stepper):
    """``scipy.integrate.solve_ivp`` with the sparse analytic Jacobian (implicit methods).

    Each trajectory is integrated once over the whole horizon with dense output at the saved
    times; ``rtol``/``atol`` set the accuracy. Needs ``method="fd"`` space discretisation for
    the Jacobian (explicit scipy methods do not use it).
    """

    name = "scipy"
    names = ("bdf", "radau", "rk45")

    @classmethod
    def create(cls, name: str, sd: SemiDiscrete, dt: float, substeps: int | str, *, check_stability: bool,
               rtol: float, atol: float) -> _Stepper:
        return cls(sd, dt, {"bdf": "BDF", "radau": "Radau", "rk45": "RK45"}[name], rtol, atol)

    def __init__(self, sd: SemiDiscrete, dt: float, method: str = "BDF", rtol: float = 1e-8, atol: float = 1e-10) -> None:
        super().__init__(sd, dt, 1)
        if method not in ("BDF", "Radau", "LSODA", "RK45", "RK23", "DOP853"):
            raise DatagenError(f"unknown solve_ivp method {method!r}; try 'BDF' or 'Radau'")
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)

    def step(self, u: np.ndarray) -> np.ndarray:
        """One saved step (one ``solve_ivp`` call per trajectory)."""
        return self.rollout(u, 1)[..., -1, :, :, :]

    def run(self, u0: np.ndarray, n_steps: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Integrate each trajectory over ``n_steps * dt`` in one ``solve_ivp`` call and sample
        at the saved times (into ``out`` when given); ``(frames, last state)``."""
        from scipy.integrate import solve_ivp

        batch_shape = u0.shape[:-3]
        flat = u0.reshape((-1,) + u0.shape[-3:])
        state_shape = u0.shape[-3:]
        t_eval = self.dt * np.arange(n_steps + 1)
        outs = []
        for u in flat:
            def f(t, y):
                return self.sd(y.reshape(state_shape)).ravel()

            def jac(t, y):
                return self.sd.jacobian(y.reshape(state_shape))

            kw = {"jac": jac} if self.method in ("BDF", "Radau", "LSODA") else {}
            sol = solve_ivp(f, (0.0, t_eval[-1]), u.astype(np.float64).ravel(), method=self.method,
                            t_eval=t_eval, rtol=self.rtol, atol=self.atol, **kw)
            if not sol.success:
                raise DatagenError(f"solve_ivp ({self.method}) failed: {sol.message}")
            outs.append(sol.y.T.reshape((n_steps + 1,) + state_shape))
        res = np.stack(outs).reshape(batch_shape + (n_steps + 1,) + state_shape)
        last = res[..., -1, :, :, :].astype(u0.dtype)
        if out is None:
            return res.astype(u0.dtype), last
        out[...] = res
        return out, last


INTEGRATORS = tuple(_Stepper._registry)


def make_integrator(name: str, sd: SemiDiscrete, dt: float, substeps: int | str = 1, *,
                    check_stability: bool = True, rtol: float = 1e-8, atol: float = 1e-10) -> _Stepper:
    """Integrator by name; ``substeps="auto"`` picks the fewest stable ones for explicit methods."""
    cls = _Stepper._registry.get(name)
    if cls is None:
        raise DatagenError(f"unknown integrator {name!r}; choose one of: {', '.join(_Stepper._registry)}")
    return cls.create(name, sd, dt, substeps, check_stability=check_stability, rtol=rtol, atol=atol)
