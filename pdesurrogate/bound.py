"""An a-posteriori error bound for any stepper, from the PDE's stability, and its per-step budget.

With ``U_n`` the model's state, ``u_n`` the reference frame and ``Phi`` the PDE's semi-discrete
flow over one saved step,

    U_{n+1} - u_{n+1} = [N(U_n) - Phi(U_n)] + [Phi(U_n) - Phi(u_n)] + [Phi(u_n) - u_{n+1}].

The first term is the model's local defect, computed for any model by one error-controlled
reference step from the model's own state (``Phi_h``, within its step-doubling estimate ``eps``);
the third is the reference's own defect (its stored frames against a fresh step, plus ``eps``).
The second is at most ``exp(mu_n dt) ||U_n - u_n||`` when ``mu_n`` bounds the logarithmic norm
(Euclidean) of the right-hand side's Jacobian on the segment between the two solutions over the
step. So

    B_{n+1} = exp(mu_n dt) B_n + ||N(U_n) - Phi_h(U_n)|| + eps(U_n) + ||Phi_h(u_n) - u_{n+1}|| + eps(u_n)

bounds ``||U_n - u_n||`` at every step, whatever the network. For a scalar reaction-diffusion PDE
``u_t = L u + f(u)`` on a periodic grid (``L`` linear with constant coefficients: the heat,
Fisher, Allen-Cahn equations and a user's scalar PDE with a polynomial reaction), ``L`` is normal
with log-norm ``max Re symbol(L)``, and the reaction adds ``max f_nl'`` over the range of values
the two solutions take during the step, which the comparison principle bounds by the scalar ODE
from the extreme values: the bound is **certified** (given the solver's error estimate). For
systems (Gray-Scott, Brusselator) no invariant region is known to the code: ``mu`` is the largest
eigenvalue of the reaction Jacobian's symmetric part over the sampled states, an **estimate**;
likewise on non-periodic grids. ``attrs["bound_status"]`` says which.

The budget reads each defect against a witness ``W`` of the class: ``||W(U_n) - Phi_h(U_n)||``, the
witness's defect from the model's own state, is the approximation share (what the best member
known leaves at that step), and ``||d_n|| - ||W(U_n) - Phi_h(U_n)||`` the optimisation share
(positive where the model's step is worse than the witness's, negative where training found a
better one). The shares add up to ``||d_n||`` (band by band in the certified case), they are
propagated by the same recursion, and ``bound = bound_approximation + bound_optimisation +
bound_reference`` to round-off (each share taken along the bound's band vector).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from datagen.pde import PDE

from .batching import attrs as _attrs, batches as _batches, coords as _coords, norm as _norm
from .batching import prepare_stepper as _prepare_stepper, progress_bar as _progress
from .errors import SurrogateError
from .model import Surrogate
from .source import check_memory as _check_memory

__all__ = ["error_bound", "BOUND_VARS"]

BOUND_VARS = ("total", "bound", "local_defect", "reference_defect", "growth", "mu")
BUDGET_VARS = ("bound_approximation", "bound_optimisation", "bound_reference")


@dataclass
class _Stability:
    """What ``mu`` is made of for one PDE on one grid."""

    certified: bool
    note: str
    mu_linear: float  # log-norm of the linear, constant-coefficient part
    reaction: list[list[tuple[float, tuple[int, ...]]]]  # per field: (coeff, field index per factor)
    scalar_poly: np.ndarray | None  # scalar case: coefficients of f_nl(u), lowest degree first
    g0: float  # scalar case: the linear part's rate on constants (for the comparison ODE)


def _stability(pde: PDE, grid: Any, sd: Any) -> _Stability:
    """Split the PDE into a linear constant-coefficient part and a pointwise reaction, or refuse."""
    lin = sd._lin_mask
    reaction: list[list[tuple[float, tuple[int, ...]]]] = []
    for c, terms in enumerate(pde.rhs):
        r = []
        for t, is_lin in zip(terms, lin[c]):
            if is_lin:
                continue
            if any(d.total_order for d in t.factors):
                raise SurrogateError(f"the error bound handles reaction-diffusion PDEs (derivatives only in linear "
                                     f"terms of a field's own equation); {pde.name} has the term "
                                     f"{t.coeff:g} {t.monomial()} in the equation of {pde.fields[c]}")
            r.append((t.coeff, tuple(pde.field_index(d.field) for d in t.factors)))
        reaction.append(r)
    periodic = grid.boundary == "periodic"
    if periodic:
        mu_lin = float(np.max(sd.linear_symbol().real))
        g0 = float(sd.linear_symbol()[0, 0, 0].real) if pde.n_fields == 1 else 0.0
    else:
        # the diffusion part is dissipative in the boundary-weighted norm, not in the plain one
        mu_lin = max((t.coeff for c, terms in enumerate(pde.rhs) for t, is_lin in zip(terms, lin[c])
                      if is_lin and t.factors[0].total_order == 0), default=0.0)
        mu_lin = max(mu_lin, 0.0)
        g0 = mu_lin
    poly = None
    if pde.n_fields == 1:
        deg = max((len(f) for _, f in reaction[0]), default=0)
        poly = np.zeros(deg + 1)
        for coeff, f in reaction[0]:
            poly[len(f)] += coeff
    if pde.n_fields == 1 and periodic:
        return _Stability(True, "certified: scalar reaction-diffusion on a periodic grid (the linear part's log-norm "
                          "from its Fourier symbol, the reaction's from the range the comparison principle allows), "
                          "given the reference solver's error estimate", mu_lin, reaction, poly, g0)
    why = ("a system: no invariant region is known, mu is the reaction Jacobian's largest symmetric eigenvalue over the "
           "sampled states" if pde.n_fields > 1 else "a non-periodic grid: the linear part is dissipative in a "
           "boundary-weighted norm, not the plain one")
    return _Stability(False, f"estimate: {why}", mu_lin, reaction, poly, g0)


def _poly_derivative_range(poly: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(min f', max f')`` over ``[lo, hi]`` per trajectory for the polynomial ``f`` (lowest degree first)."""
    d1 = np.polynomial.polynomial.polyder(poly) if poly.size > 1 else np.zeros(1)
    d2 = np.polynomial.polynomial.polyder(d1) if d1.size > 1 else np.zeros(1)
    crit = [r.real for r in (np.polynomial.polynomial.polyroots(d2) if np.any(d2) and d2.size > 1 else [])
            if abs(r.imag) < 1e-12]
    a, b = np.polynomial.polynomial.polyval(lo, d1), np.polynomial.polynomial.polyval(hi, d1)
    top, bottom = np.maximum(a, b), np.minimum(a, b)
    for r in crit:
        inside = (lo <= r) & (r <= hi)
        v = np.polynomial.polynomial.polyval(r, d1)
        top, bottom = np.where(inside, np.maximum(top, v), top), np.where(inside, np.minimum(bottom, v), bottom)
    return bottom, top


def _ode_range(poly: np.ndarray, g0: float, c0: np.ndarray, dt: float, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Min and max along ``c' = g0 c + f_nl(c)`` from ``c0`` over ``[0, dt]`` (RK4, ``n`` steps)."""
    def g(c):
        return g0 * c + np.polynomial.polynomial.polyval(c, poly)

    h = dt / n
    c = c0.astype(np.float64).copy()
    lo, hi = c.copy(), c.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(n):
            k1 = g(c)
            k2 = g(c + h / 2 * k1)
            k3 = g(c + h / 2 * k2)
            k4 = g(c + h * k3)
            c = c + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            lo, hi = np.minimum(lo, c), np.maximum(hi, c)
    return np.where(np.isfinite(lo), lo, -np.inf), np.where(np.isfinite(hi), hi, np.inf)


def _reaction_jacobian(reaction, x: np.ndarray) -> np.ndarray:
    """``(b, cells, F, F)`` Jacobian of the pointwise reaction at states ``x (b, F, X, Y)``."""
    b, F = x.shape[:2]
    v = x.reshape(b, F, -1)
    J = np.zeros((b, v.shape[2], F, F))
    for i, terms in enumerate(reaction):
        for coeff, fac in terms:
            for k, j in enumerate(fac):
                rest = np.ones((b, v.shape[2]))
                for m, f in enumerate(fac):
                    if m != k:
                        rest = rest * v[:, f]
                J[:, :, i, j] += coeff * rest
    return J


def _reaction_slopes(stab: _Stability, states: list[np.ndarray], start: list[np.ndarray],
                     dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Scalar case: the least and largest ``f_nl'`` over the values the two solutions can take
    during the step (the sampled ``states``, widened by the comparison ODE from ``start``)."""
    lo = np.min([s.reshape(s.shape[0], -1).min(1) for s in states], axis=0)
    hi = np.max([s.reshape(s.shape[0], -1).max(1) for s in states], axis=0)
    s_lo = np.min([s.reshape(s.shape[0], -1).min(1) for s in start], axis=0)
    s_hi = np.max([s.reshape(s.shape[0], -1).max(1) for s in start], axis=0)
    o_lo, o_hi = _ode_range(stab.scalar_poly, stab.g0, np.stack([s_lo, s_hi]), dt)
    lo, hi = np.minimum(lo, o_lo.min(0)), np.maximum(hi, o_hi.max(0))
    return _poly_derivative_range(stab.scalar_poly, lo, hi)


def _mu(stab: _Stability, states: list[np.ndarray], start: list[np.ndarray], dt: float) -> np.ndarray:
    """``mu`` per trajectory for the step whose sampled states are ``states`` (each ``(b, F, X, Y)``)
    and whose two starting states are ``start``."""
    if stab.scalar_poly is not None and stab.certified:
        return stab.mu_linear + _reaction_slopes(stab, states, start, dt)[1]
    out = np.full(states[0].shape[0], -np.inf)
    for s in states + [0.5 * (states[0] + states[1])]:
        J = _reaction_jacobian(stab.reaction, s)
        sym = 0.5 * (J + np.swapaxes(J, -1, -2))
        out = np.maximum(out, np.linalg.eigvalsh(sym)[..., -1].max(axis=1))
    return stab.mu_linear + out


class _Bands:
    """Fourier bands of a periodic scalar grid, grouped by how strongly the linear part damps them
    (octaves of the gap to the least damped mode): the error is bounded band by band, so that a
    defect the diffusion damps is not carried at the rate of the mean mode."""

    def __init__(self, sd: Any, device: torch.device):
        lam = np.asarray(sd.linear_symbol()[0].real, dtype=np.float64)  # (nx, ny//2 + 1)
        nx, ny = sd.grid.shape
        w = np.full(lam.shape, 2.0)
        w[:, 0] = 1.0
        if ny % 2 == 0:
            w[:, -1] = 1.0
        gap = lam.max() - lam
        pos = gap[gap > 1e-12 * max(1.0, float(gap.max()))]
        band = np.zeros(lam.shape, dtype=np.int64)
        if pos.size:
            octave = np.floor(np.log2(np.maximum(gap, pos.min()) / pos.min())).astype(np.int64) + 1
            band = np.where(gap > 1e-12 * max(1.0, float(gap.max())), octave, 0)
        _, band = np.unique(band, return_inverse=True)
        band = band.reshape(lam.shape)
        self.n = int(band.max()) + 1
        self.alpha = torch.as_tensor([lam[band == j].max() for j in range(self.n)], dtype=torch.float64, device=device)
        self.onehot = torch.nn.functional.one_hot(torch.as_tensor(band.ravel(), device=device), self.n).to(torch.float64)
        self.w = torch.as_tensor(w.ravel(), dtype=torch.float64, device=device) / (nx * ny)

    def _hat(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(x[:, 0]).flatten(1)

    def norms(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, bands)`` Euclidean norms of the band projections of ``x (b, 1, X, Y)``."""
        return torch.sqrt(((self._hat(x).abs() ** 2) * self.w) @ self.onehot)

    def dots(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(b, bands)`` inner products of the band projections of ``x`` and ``y``."""
        return ((self._hat(x).conj() * self._hat(y)).real * self.w) @ self.onehot

    def propagator(self, m: np.ndarray, M: np.ndarray, dt: float) -> torch.Tensor:
        """``(b, bands, bands)`` ``exp(A dt)``, ``A = diag(alpha + c) + rho 1 1^T`` with ``c`` and
        ``rho`` the centre and half-width of ``[m, M]``, the range of ``f_nl'``: band norms ``x_j``
        of the error obey ``x' <= A x`` (a cooperative system), so ``x(dt) <= exp(A dt) x(0)``."""
        c = torch.as_tensor(0.5 * (m + M), device=self.alpha.device)
        rho = torch.as_tensor(0.5 * (M - m), device=self.alpha.device)
        A = torch.diag_embed(self.alpha[None, :] + c[:, None]) + rho[:, None, None] * torch.ones(
            self.n, self.n, dtype=torch.float64, device=self.alpha.device)
        return torch.linalg.matrix_exp(A * dt)


def error_bound(model: Any, data: Any, steps: int = 40, witness: Surrogate | None = None,
                trajectories: Sequence[int] | None = None, batch_size: int = 16, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None, progress: bool = False, split: str = "test"):
    """A bound on the rollout error of any stepper that holds at every step, and its budget.

    Args:
        model: as for :func:`pdesurrogate.evaluate` (a Surrogate, any torch module or callable,
            or an array of predictions).
        data: a datagen dataset (folder or file) or its ``xarray.Dataset``: the bound needs the
            data's PDE and its error-controlled solver (the provenance).
        steps: horizon.
        witness: a member of the model's class (default for a :class:`Surrogate`: the split's
            :func:`pdesurrogate.default_witness`); ``False`` skips the budget.
        trajectories, batch_size, device, dtype, progress, split: as for ``evaluate``.

    Returns an ``xarray.Dataset`` over ``(trajectory, step)``, all relative to ``||u_n||``:
    ``total`` (the true error), ``bound`` (``>= total``), ``local_defect`` ``||N(U_{n-1}) -
    Phi_h(U_{n-1})||``, ``reference_defect`` (the reference's share of the step: its stored frame
    against a fresh step, plus both steps' error estimates), ``growth`` ``exp(mu dt)`` and ``mu``;
    with a witness also ``bound_approximation``, ``bound_optimisation`` and ``bound_reference``
    (they add up to ``bound``). ``attrs``: ``bound_status`` (``certified`` or ``estimate``),
    ``bound_note`` and the witness.
    """
    import xarray as xr

    from datagen.semidiscrete import SemiDiscrete
    from datagen.solver import solve

    src, steps, idx, dev, stepper = _prepare_stepper(model, data, steps, trajectories, device, dtype, split)
    if src.provenance is None or src.pde is None:
        raise SurrogateError(f"{src.name} has no datagen provenance: the bound needs the data's PDE and solver "
                             "(evaluate scores such data without it)")
    _check_memory(src, steps, batch_size)
    prov = src.provenance
    cfg = prov["config"]
    pde, grid, dt = src.pde, src.grid, float(cfg["dt"])
    sd = SemiDiscrete(pde, grid, accuracy=cfg.get("accuracy") or 2, method=cfg.get("method") or "fd")
    stab = _stability(pde, grid, sd)
    meta: dict[str, Any] = {}
    W = None
    if witness is None and stepper.surrogate is not None:
        from .witness import default_witness

        W, meta = default_witness(stepper.surrogate, pde, grid)
    elif isinstance(witness, Surrogate):
        W, meta = witness, {"witness": "given"}
    if W is not None:
        import copy

        W = copy.deepcopy(W).to(device=dev, dtype=stepper.dtype)
    names = list(BOUND_VARS) + (list(BUDGET_VARS) if W is not None else [])
    out = {k: np.empty((idx.size, steps)) for k in names}
    estimated_ref = False
    bar = _progress(idx.size, "bound", progress)
    row = 0
    f64 = torch.float64
    bands = _Bands(sd, dev) if stab.certified else None
    for b in _batches(idx, batch_size):
        ref = torch.as_tensor(src.read(b, steps), device=dev)
        nb = ref.shape[0]
        U = ref[:, 0].to(stepper.dtype)
        e0 = U.to(f64) - ref[:, 0]
        # the bound's state: band norms (certified case) or one norm, split into its three shares
        share = {k: (bands.norms(e0) if bands else _norm(e0)[:, None]) * (k == "bound_reference")
                 for k in BUDGET_VARS}
        cols: dict[str, list] = {k: [] for k in names}
        for n in range(1, steps + 1):
            prev_U, prev_u = U.to(f64), ref[:, n - 1]
            U = stepper.next(U, n, b)
            # a model state that blew up has no reference step: its bound is infinite from here on
            lost = ~torch.isfinite(_norm(prev_U)) | ~torch.isfinite(_norm(U.to(f64)))
            prev_U = torch.where(lost[:, None, None, None], prev_u, prev_U)
            with np.errstate(all="ignore"):  # a huge model state overflows the step: its bound is then inf
                traj, est = solve(prov, torch.cat([prev_U, prev_u]).cpu().numpy(), 1, errors=True)
            phi = torch.as_tensor(traj[:, 1], device=dev)
            phi_U, phi_u = phi[:nb], phi[nb:]
            if np.isnan(est).any():
                estimated_ref = True
                est = np.nan_to_num(est, nan=0.0)
            eps = torch.as_tensor(est, device=dev) * _norm(phi)
            eps = eps[:nb] + eps[nb:]
            d, rv = U.to(f64) - phi_U, phi_u - ref[:, n]
            sampled = [prev_U.cpu().numpy(), prev_u.cpu().numpy(), traj[:nb, 1], traj[nb:, 1]]
            w = None
            if W is not None:
                with torch.no_grad():
                    w = W(prev_U.to(stepper.dtype)).to(f64)
            if bands is not None:
                m, M = _reaction_slopes(stab, sampled, sampled[:2], dt)
                mu = torch.as_tensor(stab.mu_linear + M, device=dev)
                E = bands.propagator(m, M, dt)
                nd_b = bands.norms(d)
                inject = {"bound_reference": bands.norms(rv) + eps[:, None]}
                if w is not None:
                    app = bands.norms(w - phi_U)
                    inject.update({"bound_approximation": app, "bound_optimisation": nd_b - app})
                else:
                    inject["bound_reference"] = inject["bound_reference"] + nd_b
                share = {k: (E @ v[:, :, None])[:, :, 0] + inject.get(k, 0.0) for k, v in share.items()}
            else:
                mu = torch.as_tensor(_mu(stab, sampled, sampled[:2], dt), device=dev)
                g = torch.exp(mu * dt)[:, None]
                nd = _norm(d)
                inject = {"bound_reference": (_norm(rv) + eps)[:, None]}
                if w is not None:
                    app = _norm(w - phi_U)[:, None]
                    inject.update({"bound_approximation": app, "bound_optimisation": nd[:, None] - app})
                else:
                    inject["bound_reference"] = inject["bound_reference"] + nd[:, None]
                share = {k: g * v + inject.get(k, 0.0) for k, v in share.items()}
            vec = sum(share.values())
            B = torch.linalg.vector_norm(vec, dim=1)
            B = torch.where(lost | ~torch.isfinite(B), torch.inf, B)
            scale = _norm(ref[:, n])
            vals = {"total": _norm(U.to(f64) - ref[:, n]) / scale, "bound": B / scale, "local_defect": _norm(d) / scale,
                    "reference_defect": (_norm(rv) + eps) / scale, "growth": torch.exp(mu * dt), "mu": mu}
            if W is not None:
                # each share's component along the bound's vector: they add up to its norm exactly
                for k in BUDGET_VARS:
                    vals[k] = torch.where(B > 0, (vec * share[k]).sum(1) / B.clamp(min=1e-300), 0.0) / scale
            for k in names:
                cols[k].append(vals[k])
        for k in names:
            out[k][row:row + nb] = torch.stack(cols[k], 1).cpu().numpy()
        row += nb
        bar.update(nb)
    bar.close()
    status = "estimate" if (estimated_ref or not stab.certified) else "certified"
    note = stab.note if not estimated_ref else (stab.note.replace("certified: ", "estimate: ") +
                                                "; the reference's error is not estimated (no tolerance)")
    extra = {"bound_status": status, "bound_note": note, "model_kind": stepper.name,
             **{k: (json.dumps(v) if isinstance(v, list) else (int(v) if isinstance(v, bool) else v))
                for k, v in meta.items()}}
    ds = xr.Dataset({k: (("trajectory", "step"), v) for k, v in out.items()}, coords=_coords(idx, steps, src.dt),
                    attrs=_attrs(model, src, extra))
    ds["bound"].attrs["long_name"] = "B_n = exp(mu dt) B_{n-1} + local defect + reference defect, relative"
    ds["total"].attrs["long_name"] = "||U_n - u_n|| / ||u_n||"
    if W is not None:
        ds["bound_approximation"].attrs["long_name"] = "the bound's share from the witness's own defect W - Phi"
        ds["bound_optimisation"].attrs["long_name"] = "the bound's share from the model's gap to the witness N - W"
    if not math.isfinite(float(np.nanmax(out["bound"]))) and np.isfinite(out["total"]).all():
        ds.attrs["bound_note"] += "; the bound is infinite (the comparison ODE left every range)"
    return ds
