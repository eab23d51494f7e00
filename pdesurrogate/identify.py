"""``identify``: read a network's vector field as a PDE.

On probe states (frames of the data) the network's field ``F(u)`` is fitted by a polynomial in
the fields and their derivatives (the term library of :func:`datagen.parse_pde`: products of
``u, u_x, u_y, u_xx, u_yy, u_xy`` up to a degree), each derivative taken with the
finite-difference stencil of the grid (second order, as the exact networks use, so the field of
an exact network lies in the library's span). Small terms are dropped by sequential thresholding
(a term goes when its share of the field's RMS is below ``threshold``) and the rest refitted. The
result is a :class:`datagen.PDE`, printed the way a user writes one, with the fit's residual.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datagen.pde import PDE, Derivative, Term

from .data import WindowDataset
from .diagnostics import fd_stencil
from .errors import SurrogateError
from .model import Surrogate

__all__ = ["identify", "identify_data", "Identified", "ORDERS"]

ORDERS = ((0, 0), (1, 0), (0, 1), (2, 0), (0, 2), (1, 1))
MAX_COLUMNS = 2000


@dataclass(frozen=True)
class Identified:
    """A network's field read as a PDE.

    Attributes:
        pde: the identified equation (full-precision coefficients).
        residual: per field, ``||F - fit|| / ||F||`` over the probe cells.
        reference: the data's own PDE when its provenance has one.
    """

    pde: PDE
    residual: dict[str, float]
    reference: PDE | None = None

    def text(self, digits: int = 5) -> str:
        """The identified equations with ``digits`` significant digits, one line per field."""
        rounded = [tuple(Term(float(f"{t.coeff:.{digits}g}"), t.factors) for t in terms) for terms in self.pde.rhs]
        return PDE(self.pde.name, self.pde.fields, tuple(rounded)).expression()

    def __str__(self) -> str:
        res = ", ".join(f"{k} {v:.2g}" for k, v in self.residual.items())
        lines = [f"learned: {line}" for line in self.text().splitlines()]
        lines.append(f"  (relative residual of the fit: {res})")
        if self.reference is not None:
            lines += [f"data:    {line}" for line in self.reference.expression().splitlines()]
        return "\n".join(lines)


def _derivatives(u: torch.Tensor, spacing: tuple[float, float], orders: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``(n, fields * len(orders), x, y)``: every field's derivatives (periodic wrap)."""
    ks = [torch.as_tensor(fd_stencil(o, 3, 2, spacing), dtype=u.dtype) for o in orders]
    K = torch.stack(ks)[:, None]  # (orders, 1, 3, 3)
    n, nf = u.shape[:2]
    up = F.pad(u.reshape(n * nf, 1, *u.shape[-2:]), (1, 1, 1, 1), mode="circular")
    return F.conv2d(up, K).reshape(n, nf * len(orders), *u.shape[-2:])


def identify(model: Surrogate, data: Any, *, degree: int | None = None, threshold: float = 1e-3,
             frames: int = 64, seed: int = 0, split: str = "train",
             spacing: tuple[float, float] | None = None, read: str = "field") -> Identified:
    """Fit ``model``'s vector field (or its flow) on frames of ``data`` by a sparse polynomial in
    derivatives.

    Args:
        model: a :class:`Surrogate` whose ``vector_field`` maps ``(batch, fields, x, y)`` to the same.
        data: a dataset folder (read at ``split``) or file: the probe states and the grid; or the
            probe states themselves, an array ``(n, fields, x, y)`` on a periodic grid of
            ``spacing`` (default: the model's config).
        degree: highest degree of a term (default: the largest activation power, at least 2).
        threshold: a term whose RMS contribution is below this share of its field's RMS is dropped.
        frames: frames drawn (seeded) as probe states.
        read: ``field``: the vector field ``F`` the integrator steps (exact for exact networks:
            the finite-difference network's field is the PDE's right-hand side up to its stencils'
            error). ``flow``: the equation the model's steps follow, read from its own 4-step
            rollouts from the probe states as :func:`identify_data` reads data. A network trained to
            follow the data with Euler substeps carries the modified equation in its field (``F =
            f + h f'f / 2 + ...``); its flow is the PDE it has learned.

    Returns an :class:`Identified`; ``str()`` of it prints the learned equation beside the data's.
    """
    if not isinstance(model, Surrogate):
        raise SurrogateError(f"identify reads a pdesurrogate.Surrogate, not {type(model).__name__}")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0 <= threshold < 1):
        raise SurrogateError(f"threshold={threshold!r} must be a number in [0, 1)")
    powers = getattr(getattr(model.vector_field, "act", None), "powers", (2,))
    degree = max(2, max(int(p) for p in powers)) if degree is None else degree
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= 4:
        raise SurrogateError(f"degree={degree!r} must be an integer from 1 to 4")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 4096:
        raise SurrogateError(f"frames={frames!r} must be an integer from 1 to 4096")
    if read not in ("field", "flow"):
        raise SurrogateError(f"read={read!r}: choose field or flow")
    dtype = torch.float64
    if isinstance(data, (np.ndarray, torch.Tensor)):
        u = torch.as_tensor(data, dtype=dtype)
        if u.dim() != 4:
            raise SurrogateError(f"probe states must be (n, fields, x, y), not {tuple(u.shape)}")
        spacing = spacing or (tuple(model.config.spacing) if model.config is not None else None)
        if spacing is None:
            raise SurrogateError("give spacing= (the grid spacing of the probe states)")
        fields, boundary, reference = ["u", "v", "w"][: u.shape[1]] if u.shape[1] <= 3 else [
            f"u{i}" for i in range(u.shape[1])], "periodic", None
    else:
        ds = data if isinstance(data, WindowDataset) else WindowDataset(data, unroll=1, split=split)
        g = np.random.default_rng([int(seed), 7])
        pick = sorted(g.choice(len(ds), size=min(frames, len(ds)), replace=False).tolist())
        u = torch.stack([torch.as_tensor(ds.window(i)[0]) for i in pick]).to(dtype)
        fields, spacing, boundary, reference = list(ds.fields), ds.spacing, ds.boundary, ds.pde
    if getattr(model.vector_field, "n_fields", len(fields)) != len(fields):
        raise SurrogateError(f"the model has {model.vector_field.n_fields} field(s), the data {len(fields)}")
    cast = copy.deepcopy(model).to(dtype) if next(model.parameters()).dtype != dtype else model
    if read == "flow":
        with torch.no_grad():
            windows = torch.cat([cast.rollout(chunk, 4) for chunk in u.split(8)])
        found = identify_data(windows, cast.dt, spacing, fields=fields, boundary=boundary, degree=degree,
                              threshold=threshold)
        return Identified(found.pde, found.residual, reference)
    base, monomials = _library(fields, degree)
    with torch.no_grad():
        pairs = ((_derivatives(chunk, spacing, ORDERS), cast.vector_field(chunk)) for chunk in u.split(8))
        AtA, Atb, btb = _normal_equations(pairs, monomials, len(fields), boundary)
    rhs, residual = _sparse_fit(AtA, Atb, btb, u.shape[0] * u[0, 0].numel(), fields, base, monomials, threshold)
    pde = PDE("identified", tuple(fields), tuple(rhs))
    return Identified(pde, residual, reference)


def _library(fields: Sequence[str], degree: int) -> tuple[list[Derivative], list[tuple[int, ...]]]:
    base = [Derivative(f, o) for f in fields for o in ORDERS]
    monomials = [()] + [m for d in range(1, degree + 1) for m in combinations_with_replacement(range(len(base)), d)]
    if len(monomials) > MAX_COLUMNS:
        raise SurrogateError(f"degree {degree} with {len(fields)} fields makes {len(monomials)} terms, above "
                             f"{MAX_COLUMNS}: lower degree")
    return base, monomials


def _columns(D: torch.Tensor, monomials) -> torch.Tensor:
    cols = [torch.ones_like(D[:, 0])] + [torch.prod(torch.stack([D[:, i] for i in m]), 0) for m in monomials[1:]]
    return torch.stack(cols, -1).reshape(-1, len(monomials))


def _normal_equations(pairs, monomials, n_fields: int, boundary: str):
    """``A^T A``, ``A^T b`` and ``b^T b`` summed over ``(derivatives, target)`` chunks."""
    P = len(monomials)
    AtA = torch.zeros(P, P, dtype=torch.float64)
    Atb = torch.zeros(P, n_fields, dtype=torch.float64)
    btb = torch.zeros(n_fields, dtype=torch.float64)
    for D, y in pairs:
        if boundary != "periodic":  # the wrap-around is wrong at walls: their cells are left out
            D, y = D[..., 2:-2, 2:-2], y[..., 2:-2, 2:-2]
        A = _columns(D, monomials)
        b = y.permute(0, 2, 3, 1).reshape(-1, n_fields)
        AtA += A.T @ A
        Atb += A.T @ b
        btb += (b * b).sum(0)
    return AtA, Atb, btb


def _sparse_fit(AtA, Atb, btb, n_cells: int, fields, base, monomials, threshold: float):
    """Sequentially thresholded least squares on the normal equations: per field the terms and the
    relative residual."""
    dtype = AtA.dtype
    P = len(monomials)
    scale = (AtA.diagonal() / n_cells).sqrt()  # RMS of each column
    rhs, residual = [], {}
    for f, name in enumerate(fields):
        keep = torch.ones(P, dtype=torch.bool)
        target_rms = float((btb[f] / n_cells).sqrt())
        for _ in range(10):
            idx = keep.nonzero().flatten()
            sub = AtA[idx][:, idx]
            d = sub.diagonal().sqrt().clamp(min=1e-300)
            coef = torch.linalg.lstsq(sub / d[:, None] / d[None, :], (Atb[idx, f] / d)[:, None]).solution[:, 0] / d
            share = (coef.abs() * scale[idx]) / max(target_rms, 1e-300)
            small = share < threshold
            if not bool(small.any()):
                break
            keep[idx[small]] = False
        full = torch.zeros(P, dtype=dtype)
        full[idx] = coef
        res = float(btb[f] - 2 * full @ Atb[:, f] + full @ AtA @ full)
        residual[name] = math.sqrt(max(res, 0.0) / max(float(btb[f]), 1e-300))
        rhs.append(tuple(Term(float(full[k]), tuple(base[i] for i in monomials[k])) for k in idx.tolist()))
    return rhs, residual


def _spectral_derivatives(u: torch.Tensor, spacing: tuple[float, float], orders) -> torch.Tensor:
    """``(n, fields * len(orders), x, y)`` by Fourier multipliers: the data's own derivatives on a
    periodic grid (odd orders drop the Nyquist mode)."""
    n, nf, nx, ny = u.shape
    kx = 2 * math.pi * torch.fft.fftfreq(nx, d=spacing[0], dtype=u.dtype)
    ky = 2 * math.pi * torch.fft.fftfreq(ny, d=spacing[1], dtype=u.dtype)
    if nx % 2 == 0:
        kx_odd = kx.clone()
        kx_odd[nx // 2] = 0
    else:
        kx_odd = kx
    if ny % 2 == 0:
        ky_odd = ky.clone()
        ky_odd[ny // 2] = 0
    else:
        ky_odd = ky
    U = torch.fft.fft2(u)
    out = []
    for c in range(nf):
        for i, j in orders:
            mx = (1j * (kx_odd if i % 2 else kx)) ** i
            my = (1j * (ky_odd if j % 2 else ky)) ** j
            out.append(torch.fft.ifft2(U[:, c] * mx[:, None] * my[None, :]).real)
    return torch.stack(out, 1)


def identify_data(frames: Any, dt: float, spacing: tuple[float, float], *, fields: Sequence[str] = ("u",),
                  boundary: str = "periodic", degree: int = 2, threshold: float = 1e-3) -> Identified:
    """Read a PDE from the data themselves: ``u_t`` at the middle of windows of five consecutive
    frames (fourth-order central differences, error ``O(dt^4)``) fitted by the same sparse
    polynomial library as :func:`identify`, with the data's own derivatives (Fourier multipliers
    on periodic grids, the grid's stencils otherwise).

    Args:
        frames: ``(n, 5, fields, x, y)`` windows, ``dt`` apart.
    """
    w = torch.as_tensor(frames, dtype=torch.float64)
    if w.dim() != 5 or w.shape[1] != 5:
        raise SurrogateError(f"identify_data needs windows of five frames (n, 5, fields, x, y), not {tuple(w.shape)}")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise SurrogateError(f"dt={dt!r} must be a positive number")
    fields = list(fields)[: w.shape[2]] if len(fields) >= w.shape[2] else [f"u{i}" for i in range(w.shape[2])]
    base, monomials = _library(fields, degree)
    deriv = _spectral_derivatives if boundary == "periodic" else _derivatives
    pairs = ((deriv(c[:, 2], spacing, ORDERS), (-c[:, 4] + 8 * c[:, 3] - 8 * c[:, 1] + c[:, 0]) / (12 * dt))
             for c in w.split(8))
    AtA, Atb, btb = _normal_equations(pairs, monomials, len(fields), boundary)
    n_cells = int(w.shape[0]) * int(w[0, 0, 0].numel())
    rhs, residual = _sparse_fit(AtA, Atb, btb, n_cells, fields, base, monomials, threshold)
    return Identified(PDE("identified", tuple(fields), tuple(rhs)), residual, None)
