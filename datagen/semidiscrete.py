"""The method-of-lines right-hand side F(U) of a :class:`~datagen.pde.PDE` on a :class:`Grid`.

``SemiDiscrete(pde, grid, accuracy=2, method="fd")(U)`` evaluates F on arrays shaped
``(..., field, x, y)``: every derivative the PDE uses is computed once per call with whole-array
operations, and the polynomial terms are then products of those arrays. The space
discretisations are subclasses behind that one interface, registered by ``method``:
:class:`FiniteDifference` (stencils on ghost-padded arrays; any boundary; a numba backend and a
sparse Jacobian) and :class:`Spectral` (Fourier multipliers; periodic grids). Each supplies its
derivative arrays and the Fourier symbol of a derivative; the polynomial, the linear part the
exponential integrators split off, and the stability eigenvalues are shared.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import ducc0
import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

from ._registry import register
from .errors import DatagenError
from .grid import Grid
from .pde import PDE, Derivative, Term
from .stencils import apply_1d, matrix_1d, stencil_radius, stencil_symbol

__all__ = ["SemiDiscrete", "FiniteDifference", "Spectral", "METHODS", "BACKENDS"]


def rfft2(a: np.ndarray) -> np.ndarray:
    """Real 2-D FFT over the last two axes, by ducc0 (the successor of the pocketfft that numpy
    and scipy ship): twice as fast as scipy's and three times numpy's on batches of 100^2
    fields on these machines."""
    return ducc0.fft.r2c(np.asarray(a, dtype=np.float64), axes=(-2, -1), nthreads=FFT_WORKERS)


def irfft2(a: np.ndarray, s: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`rfft2` to shape ``s`` (normalised as ``numpy.fft.irfft2``)."""
    return ducc0.fft.c2r(a, axes=(-2, -1), lastsize=int(s[-1]), forward=False, inorm=2, nthreads=FFT_WORKERS)


FFT_WORKERS = min(2, os.cpu_count() or 1)


BACKENDS = ("numpy", "numba")


class SemiDiscrete:
    """Callable ``F(U)`` for the method of lines; ``SemiDiscrete(..., method=m)`` makes the
    subclass registered for ``m``.

    Args:
        pde: the equations.
        grid: grid and boundary.
        accuracy: order of the central finite differences (2, 4, 6, 8); ignored for ``spectral``.
        method: ``"fd"`` (any boundary) or ``"spectral"`` (Fourier pseudo-spectral, periodic only;
            products are formed in physical space without dealiasing).
        backend: ``"numpy"`` (default) or ``"numba"`` (compiled loop nest for ``fd``; agrees with
            numpy to round-off, several times faster; needs numba).
    """

    method: ClassVar[str] = ""
    radius: int = 0  # ghost cells a derivative reads on each side
    _registry: ClassVar[dict[str, type[SemiDiscrete]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.method:
            register(SemiDiscrete._registry, cls.method, cls, "space discretisation")

    def __new__(cls, *args: Any, **kwargs: Any) -> SemiDiscrete:
        if cls is SemiDiscrete:
            method = kwargs.get("method", args[3] if len(args) > 3 else "fd")
            if method not in cls._registry:
                raise DatagenError(f"unknown space discretisation {method!r}; choose one of {METHODS}")
            cls = cls._registry[method]
        return super().__new__(cls)

    def __init__(self, pde: PDE, grid: Grid, accuracy: int = 2, method: Literal["fd", "spectral"] | None = None,
                 backend: Literal["numpy", "numba"] = "numpy") -> None:
        if method is not None and method != self.method:
            raise DatagenError(f"{type(self).__name__} is method {self.method!r}, not {method!r}")
        if backend not in BACKENDS:
            raise DatagenError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        bv = grid.boundary_value
        if grid.boundary == "dirichlet" and isinstance(bv, tuple) and len(bv) != pde.n_fields:
            raise DatagenError(
                f"boundary_value has {len(grid.boundary_value)} entries but {pde.name} has "
                f"{pde.n_fields} fields; give one per field"
            )
        self.pde, self.grid, self.accuracy, self.backend = pde, grid, int(accuracy), backend
        self.derivs = pde.derivatives()
        self._lin_mask = [[self._is_linear_diag(c, t) for t in terms] for c, terms in enumerate(pde.rhs)]

    # -- evaluation --------------------------------------------------------------------
    def __call__(self, u: np.ndarray) -> np.ndarray:
        """F(U) for ``U`` of shape ``(..., field, x, y)``."""
        return self.evaluate(u)

    def euler_update(self, u: np.ndarray, h: float) -> np.ndarray:
        """``U + h F(U)``."""
        return u + h * self.evaluate(u)

    def evaluate(self, u: np.ndarray, part: Literal["all", "nonlinear"] = "all") -> np.ndarray:
        """F(U), or with ``part="nonlinear"`` only the terms outside :meth:`linear_symbol`."""
        self._check(u)
        if part == "nonlinear":
            needed = {d for c, terms in enumerate(self.pde.rhs)
                      for t, lin in zip(terms, self._lin_mask[c]) if not lin for d in t.factors}
        else:
            needed = None
        D = self.derivative_arrays(u, needed)
        out = np.empty_like(u)
        for c, terms in enumerate(self.pde.rhs):
            acc = out[..., c, :, :]
            # terms sharing a coefficient (a Laplacian) are summed first and scaled once
            groups: dict[float, list[Term]] = {}
            for t, lin in zip(terms, self._lin_mask[c]):
                if not (part == "nonlinear" and lin):
                    groups.setdefault(t.coeff, []).append(t)
            first, const = True, 0.0
            for coeff, ts in groups.items():
                total = None
                for t in ts:
                    if not t.factors:
                        const += t.coeff
                        continue
                    prod = D[t.factors[0]]
                    for d in t.factors[1:]:
                        prod = prod * D[d]
                    if total is None:
                        total = prod.copy() if len(ts) > 1 and len(t.factors) == 1 else prod
                    else:
                        total += prod
                if total is None:
                    continue
                if first:
                    np.multiply(total, coeff, out=acc)
                    first = False
                elif coeff == 1.0:
                    acc += total
                elif coeff == -1.0:
                    acc -= total
                else:
                    acc += coeff * total
            if first:
                acc[...] = const
            elif const:
                acc += const
        return out

    def derivative_arrays(self, u: np.ndarray, needed: set[Derivative] | None = None) -> dict[Derivative, np.ndarray]:
        """The derivatives the PDE uses (or those in ``needed``), keyed by :class:`Derivative`,
        each ``(..., x, y)``."""
        raise NotImplementedError

    def _wanted(self, needed: set[Derivative] | None) -> list[Derivative]:
        return self.derivs if needed is None else [d for d in self.derivs if d in needed]

    # -- linear structure --------------------------------------------------------------
    def _is_linear_diag(self, c: int, t: Term) -> bool:
        return t.degree == 1 and t.factors[0].field == self.pde.fields[c]

    def linear_symbol(self) -> np.ndarray:
        """Diagonal linear part per field on the rfft2 layout, shape ``(field, nx, ny//2+1)``.

        It collects each equation's terms that are linear in its own field; the other terms form
        the ``nonlinear`` part. Used by exponential integrators on periodic grids.
        """
        if self.grid.boundary != "periodic":
            raise DatagenError("a Fourier symbol needs a periodic grid")
        nx, ny = self.grid.shape
        L = np.zeros((self.pde.n_fields, nx, ny // 2 + 1), dtype=complex)
        for c, terms in enumerate(self.pde.rhs):
            for t, lin in zip(terms, self._lin_mask[c]):
                if lin:
                    L[c] += t.coeff * self._symbol(t.factors[0].order)
        return L

    def _symbol(self, order: tuple[int, int]) -> np.ndarray:
        """The Fourier symbol of the derivative of ``order`` on the rfft2 layout."""
        raise NotImplementedError

    def stiff_eigenvalues(self) -> np.ndarray:
        """Eigenvalues of the constant-coefficient derivative terms (von Neumann analysis).

        Only same-field terms of derivative order >= 1 count: they set the explicit step limit.
        Reaction terms and nonlinear transport are left out.
        """
        nx, ny = self.grid.shape
        lams = []
        for c, terms in enumerate(self.pde.rhs):
            L = np.zeros((nx, ny // 2 + 1), dtype=complex)
            for t, lin in zip(terms, self._lin_mask[c]):
                if lin and t.factors[0].total_order > 0:
                    L += t.coeff * self._symbol(t.factors[0].order)
            lams.append(L.ravel())
        return np.concatenate(lams)

    def jacobian(self, u: np.ndarray) -> sp.csr_matrix:
        """Sparse dF/dU at one state ``u (field, x, y)`` (finite differences only)."""
        raise DatagenError("a sparse Jacobian needs method='fd'")

    def _check(self, u: np.ndarray) -> None:
        if u.ndim < 3 or u.shape[-3:] != (self.pde.n_fields, *self.grid.shape):
            raise DatagenError(
                f"state of shape {u.shape} does not fit {self.pde.name} on {self.grid.shape}: "
                f"expected (..., {self.pde.n_fields}, {self.grid.shape[0]}, {self.grid.shape[1]})"
            )


class FiniteDifference(SemiDiscrete):
    """Central finite differences of order ``accuracy`` on ghost-padded arrays (any boundary);
    ``backend="numba"`` compiles the whole right-hand side into one loop nest."""

    method = "fd"

    def __init__(self, pde: PDE, grid: Grid, accuracy: int = 2, method: Literal["fd"] | None = None,
                 backend: Literal["numpy", "numba"] = "numpy") -> None:
        super().__init__(pde, grid, accuracy, method, backend)
        self._compiled: dict[bool, object] = {}
        self.radius = max((stencil_radius(max(d.order), self.accuracy) for d in self.derivs if d.total_order), default=0)
        if self.radius and min(grid.shape) < 2 * self.radius + 1:
            raise DatagenError(f"grid {grid.shape} is too small for stencils of radius {self.radius}")

    def __call__(self, u: np.ndarray) -> np.ndarray:
        """F(U) for ``U`` of shape ``(..., field, x, y)``."""
        if self.backend == "numba":
            self._check(u)
            return self.compiled(fused=False)(u, 1.0)
        return self.evaluate(u)

    def euler_update(self, u: np.ndarray, h: float) -> np.ndarray:
        """``U + h F(U)``, in one pass with the numba backend."""
        if self.backend == "numba":
            self._check(u)
            return self.compiled(fused=True)(u, h)
        return u + h * self.evaluate(u)

    def compiled(self, fused: bool):
        """The numba kernel (compiled on first use)."""
        if fused not in self._compiled:
            from ._numba import compile_rhs

            self._compiled[fused] = compile_rhs(self, fused)
        return self._compiled[fused]

    def derivative_arrays(self, u: np.ndarray, needed: set[Derivative] | None = None) -> dict[Derivative, np.ndarray]:
        fi = {f: k for k, f in enumerate(self.pde.fields)}
        out: dict[Derivative, np.ndarray] = {}
        derivs = self._wanted(needed)
        R = self.radius if any(d.total_order for d in derivs) else 0
        padded = self.grid.pad(u, R) if R else u
        nx, ny = self.grid.shape
        dx, dy = self.grid.spacing
        for d in derivs:
            c = fi[d.field]
            if d.total_order == 0:
                out[d] = u[..., c, :, :]
                continue
            i, j = d.order
            p = padded[..., c, :, :]
            if not j:  # drop the ghost columns before the x pass when no y pass needs them
                p = p[..., R:R + ny]
            if not i:
                p = p[..., R:R + nx, :]
            if i:
                p = apply_1d(p, i, self.accuracy, axis=-2, pad=R, n=nx, h=dx)
            if j:
                p = apply_1d(p, j, self.accuracy, axis=-1, pad=R, n=ny, h=dy)
            out[d] = p
        return out

    def _symbol(self, order: tuple[int, int]) -> np.ndarray:
        nx, ny = self.grid.shape
        tx = 2 * np.pi * np.fft.fftfreq(nx)
        ty = 2 * np.pi * np.fft.rfftfreq(ny)
        sx = stencil_symbol(order[0], self.accuracy, tx) / self.grid.dx ** order[0]
        sy = stencil_symbol(order[1], self.accuracy, ty) / self.grid.dy ** order[1]
        return sx[:, None] * sy[None, :]

    def jacobian(self, u: np.ndarray) -> sp.csr_matrix:
        """Sparse dF/dU at one state ``u (field, x, y)``, on the C-order flattening of ``u``."""
        import scipy.sparse as sp  # here, not at import: the CLI and workers start faster without it

        self._check(u)
        if u.ndim != 3:
            raise DatagenError(f"jacobian takes one state (field, x, y), got shape {u.shape}")
        D = self.derivative_arrays(u)
        mats = {d: self._operator(d.order) for d in self.derivs}
        nf, n = self.pde.n_fields, self.grid.n_cells
        fi = {f: k for k, f in enumerate(self.pde.fields)}
        blocks = [[None] * nf for _ in range(nf)]
        for c, terms in enumerate(self.pde.rhs):
            for t in terms:
                for k, dk in enumerate(t.factors):
                    others = np.full(self.grid.shape, t.coeff)
                    for m, dm in enumerate(t.factors):
                        if m != k:
                            others = others * D[dm]
                    blk = sp.diags(others.ravel()) @ mats[dk]
                    col = fi[dk.field]
                    blocks[c][col] = blk if blocks[c][col] is None else blocks[c][col] + blk
        for c in range(nf):
            for col in range(nf):
                if blocks[c][col] is None:
                    blocks[c][col] = sp.csr_matrix((n, n))
        return sp.bmat(blocks, format="csr")

    def _operator(self, order: tuple[int, int]) -> sp.csr_matrix:
        import scipy.sparse as sp

        ax = matrix_1d(self.grid, 0, order[0], self.accuracy)
        ay = matrix_1d(self.grid, 1, order[1], self.accuracy)
        return sp.kron(ax, ay, format="csr")


class Spectral(SemiDiscrete):
    """Fourier pseudo-spectral derivatives on periodic grids; products are formed in physical
    space without dealiasing."""

    method = "spectral"

    def __init__(self, pde: PDE, grid: Grid, accuracy: int = 2, method: Literal["spectral"] | None = None,
                 backend: Literal["numpy", "numba"] = "numpy") -> None:
        if backend == "numba":
            raise DatagenError("backend 'numba' supports method='fd' only")
        if grid.boundary != "periodic":
            raise DatagenError(
                f"the spectral method needs a periodic grid, not {grid.boundary!r}; use method='fd'"
            )
        super().__init__(pde, grid, accuracy, method, backend)
        nx, ny = grid.shape
        self._kx = 2j * np.pi * np.fft.fftfreq(nx, d=grid.dx)
        self._ky = 2j * np.pi * np.fft.rfftfreq(ny, d=grid.dy)

    def derivative_arrays(self, u: np.ndarray, needed: set[Derivative] | None = None) -> dict[Derivative, np.ndarray]:
        fi = {f: k for k, f in enumerate(self.pde.fields)}
        out: dict[Derivative, np.ndarray] = {}
        derivs = self._wanted(needed)
        if all(d.total_order == 0 for d in derivs):
            return {d: u[..., fi[d.field], :, :] for d in derivs}
        uh = rfft2(u)
        for d in derivs:
            c = fi[d.field]
            if d.total_order == 0:
                out[d] = u[..., c, :, :]
            else:
                out[d] = irfft2(uh[..., c, :, :] * self.multiplier(d.order), s=self.grid.shape)
        return out

    def multiplier(self, order: tuple[int, int]) -> np.ndarray:
        """Fourier multiplier ``(i kx)^i (i ky)^j`` on the rfft2 layout (odd orders drop Nyquist)."""
        i, j = order
        kx, ky = self._kx.copy(), self._ky.copy()
        nx, ny = self.grid.shape
        if i % 2 and nx % 2 == 0:
            kx[nx // 2] = 0
        if j % 2 and ny % 2 == 0:
            ky[-1] = 0
        return (kx ** i)[:, None] * (ky ** j)[None, :]

    def _symbol(self, order: tuple[int, int]) -> np.ndarray:
        return self.multiplier(order)


METHODS = tuple(SemiDiscrete._registry)
