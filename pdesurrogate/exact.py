"""The constructive theorem: a method-of-lines Euler step is exactly a small residual ConvNet.

For a PDE whose right-hand side is a polynomial in derivatives, ``exact_surrogate`` builds the
two-layer vector field ``F(U) = K2 sigma(K1 U + b1) + b2`` with power-of-ReLU activations that
equals ``datagen``'s finite-difference ``F(U)`` for every input:

* every derivative is a K1 kernel equal to ``datagen``'s stencil (the same numbers);
* an equation's linear terms form one linear combination z, and ``z = relu(z) - relu(-z)``;
* a product of d factors is a sum of d-th powers of sums of the factors (polarisation):
  ``x_1 ... x_d = 1/d! sum_{S != {}} (-1)^{d-|S|} (sum_{i in S} x_i)^d``, and every power is
  ``z^d = relu(z)^d + (-1)^d relu(-z)^d``: two hidden channels of power d;
* constant terms are the bias b2.

With ``powers=(2,)`` (the paper's Fisher class, relu^2 alone) the same map is built from squares
only: a linear form is a difference of shifted squares, ``z = ((z + c)^2 - (z - c)^2) / (4c)``
(four channels, exact for every input, with ``z`` scaled so that ``c = 1`` keeps round-off near
machine precision for fields of order one), and the quadratic part of each equation, a symmetric
form in the derivative values, is diagonalised: ``sum_k lambda_k (v_k . w)^2``, two channels per
eigenvalue. Cubic and higher terms are outside that class.

Before polarising, each factor is scaled by the reciprocal of its stencil's l1 norm (and the
product rescaled), so that the sums combine quantities of similar size: a derivative on a fine
grid is far larger than the field, and adding them unscaled would cost digits.

Witnesses (members of a smaller class that approximate the PDE well, for the error split) come
from two further options: ``modified_equation=1`` builds the network of the modified equation
(:func:`datagen.modified_equation`), whose Euler steps follow the PDE's flow to one more order,
and ``k2_derivatives=True`` lets K2 apply derivative stencils to squared channels
(``Lap(u^2)`` as K2 * u^2, periodic grids), which saves channels at the price of being a different
(still consistent) discretisation than the term-by-term finite differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Callable, Sequence

import numpy as np
import torch

from datagen.grid import Grid
from datagen.modified import modified_equation as _modified
from datagen.pde import PDE, Derivative, Term
from datagen.stencils import kernel2d, stencil_radius

from .errors import SurrogateError
from .model import Surrogate, build_surrogate

__all__ = ["exact_surrogate", "exact_channels", "Channel"]

Form = tuple[tuple[Derivative, float], ...]
ACCURACIES = (2, 4, 6, 8)


@dataclass
class Channel:
    """One hidden channel: ``relu(form . w + bias)^power``, read out by K2.

    ``out[c]`` maps derivative orders to the coefficient with which that derivative stencil of
    this channel enters output field ``c`` (``(0, 0)``: pointwise).
    """

    form: Form
    bias: float
    power: int
    out: dict[int, dict[tuple[int, int], float]] = field(default_factory=dict)

    def add(self, c: int, weight: float, order: tuple[int, int] = (0, 0)) -> None:
        """Add ``weight`` to the read-out of this channel into field ``c``."""
        o = self.out.setdefault(c, {})
        o[order] = o.get(order, 0.0) + weight


class _Plan:
    """Channels keyed by (canonical form, bias, power), merged as they are added."""

    def __init__(self) -> None:
        self.channels: dict[tuple[Form, float, int], Channel] = {}

    def add(self, form: dict[Derivative, float], bias: float, power: int, c: int, weight: float,
            order: tuple[int, int] = (0, 0)) -> None:
        items = tuple(sorted((d, v) for d, v in form.items() if v != 0.0))
        s = abs(items[0][1])  # positive scale only: relu(s x)^p = s^p relu(x)^p needs s > 0
        key = (tuple((d, v / s) for d, v in items), bias / s, power)
        ch = self.channels.setdefault(key, Channel(key[0], key[1], power))
        ch.add(c, weight * s ** power, order)

    def signed_power(self, form: dict[Derivative, float], power: int, c: int, weight: float,
                     order: tuple[int, int] = (0, 0)) -> None:
        """``weight * (form . w)^power`` as ``relu(z)^p + (-1)^p relu(-z)^p``."""
        self.add(form, 0.0, power, c, weight, order)
        self.add({d: -v for d, v in form.items()}, 0.0, power, c, weight * (-1) ** power, order)

    def finished(self) -> list[Channel]:
        out = []
        for ch in self.channels.values():
            ch.out = {c: {o: w for o, w in ws.items() if w != 0.0} for c, ws in ch.out.items()}
            ch.out = {c: ws for c, ws in ch.out.items() if ws}
            if ch.out:
                out.append(ch)
        return out


def _accuracy_rule(accuracy: int | str, kernel_size: int | None) -> Callable[[tuple[int, int]], int]:
    if accuracy == "max":
        if kernel_size is None:
            raise SurrogateError("accuracy='max' needs a kernel_size to fit the stencils into")

        def best(order: tuple[int, int]) -> int:
            fits = [a for a in ACCURACIES if max(stencil_radius(max(order), a) if max(order) else 0, 0)
                    <= kernel_size // 2]
            if not fits:
                raise SurrogateError(f"no stencil of order {order} fits a {kernel_size}x{kernel_size} kernel")
            return max(fits)
        return best
    if not isinstance(accuracy, int) or accuracy not in ACCURACIES:
        raise SurrogateError(f"accuracy={accuracy!r}: choose 2, 4, 6, 8 or 'max'")
    return lambda order: accuracy


def exact_channels(pde: PDE, grid: Grid, accuracy: int | str = 2, max_degree: int = 4,
                   powers: Sequence[int] | None = None, kernel_size: int | None = None,
                   k2_derivatives: bool = False, truncate: bool = False) -> dict[str, Any]:
    """The channel plan of the exact network.

    Returns ``channels`` (list of :class:`Channel`), the constants ``b2``, the kernel sizes, the
    stencil accuracy of each derivative and the terms ``dropped`` (only with ``truncate=True``).
    Raises for terms outside the class.
    """
    if not isinstance(pde, PDE):
        raise SurrogateError(f"exact_surrogate needs a datagen PDE, got {type(pde).__name__}")
    acc_of = _accuracy_rule(accuracy, kernel_size)
    spacing = grid.spacing
    plan = _Plan()
    b2 = np.zeros(pde.n_fields)
    dropped: list[str] = []
    only = None if powers is None else tuple(sorted({int(p) for p in powers}))
    if only not in (None, (1,), (2,)):
        raise SurrogateError(f"powers={tuple(powers)}: exact networks are built with mixed powers (None), (1,) or (2,)")
    if k2_derivatives and grid.boundary != "periodic":
        raise SurrogateError("k2_derivatives applies derivative stencils to squared channels: periodic grids only")

    def l1(d: Derivative) -> float:
        return float(np.abs(kernel2d(d.order, acc_of(d.order), spacing)).sum())

    def refuse(t: Term, c: int, why: str) -> None:
        if truncate:
            dropped.append(f"{t.coeff:+.6g}*{t.monomial()} ({pde.fields[c]}_t)")
            return
        raise SurrogateError(f"term {t.monomial()!r} of {pde.fields[c]}_t is {why}; pass truncate=True to drop it")

    for c, terms in enumerate(pde.rhs):
        linear: dict[Derivative, float] = {}
        quadratic: list[Term] = []
        for t in terms:
            if t.degree > max_degree:
                raise SurrogateError(
                    f"term {t.monomial()!r} of {pde.fields[c]}_t has degree {t.degree}: outside the class of "
                    f"this construction (degree <= {max_degree}); raise max_degree if you accept 2^d channels"
                )
            if t.degree == 0:
                b2[c] += t.coeff
            elif t.degree == 1:
                d = t.factors[0]
                linear[d] = linear.get(d, 0.0) + t.coeff
            elif only == (1,):
                refuse(t, c, "nonlinear, outside a class of power 1 alone")
            elif only == (2,):
                if t.degree == 2:
                    quadratic.append(t)
                else:
                    refuse(t, c, f"of degree {t.degree}, outside a class of relu^2 alone")
            else:
                lam = [1.0 / l1(d) for d in t.factors]
                k = t.degree
                pref = t.coeff / (math.factorial(k) * math.prod(lam))
                for size in range(1, k + 1):
                    for S in combinations(range(k), size):
                        form: dict[Derivative, float] = {}
                        for i in S:
                            form[t.factors[i]] = form.get(t.factors[i], 0.0) + lam[i]
                        plan.signed_power(form, k, c, pref * (-1) ** (k - size))
        linear = {d: v for d, v in linear.items() if v != 0.0}
        if linear and only == (2,):
            # z = s z' with |z'| <= max|U|: (z' + 1)^2 - (z' - 1)^2 = 4 z'
            s = sum(abs(v) * l1(d) for d, v in linear.items())
            z = {d: v / s for d, v in linear.items()}
            plan.add(z, 1.0, 2, c, s / 4)
            plan.add({d: -v for d, v in z.items()}, -1.0, 2, c, s / 4)
            plan.add(z, -1.0, 2, c, -s / 4)
            plan.add({d: -v for d, v in z.items()}, 1.0, 2, c, -s / 4)
        elif linear:
            plan.signed_power(linear, 1, c, 1.0)
        if quadratic:
            _squares(plan, quadratic, c, l1, k2_derivatives, kernel_size, spacing)
    channels = plan.finished()
    orders = {d.order for ch in channels for d, _ in ch.form}
    radius = max((stencil_radius(max(o), acc_of(o)) for o in orders if sum(o)), default=0)
    r2 = max((max(stencil_radius(max(o), 2) if sum(o) else 0 for o in ws) for ch in channels
              for ws in ch.out.values()), default=0)
    return {"channels": channels, "b2": b2, "kernel_size": 2 * radius + 1, "kernel_size2": 2 * r2 + 1,
            "accuracy": {str(o): acc_of(o) for o in sorted(orders)}, "dropped": dropped, "acc_of": acc_of}


def _squares(plan: _Plan, terms: list[Term], c: int, l1, k2_derivatives: bool, kernel_size: int | None,
             spacing: tuple[float, float]) -> None:
    """The quadratic part of equation ``c`` as a sum of squares of linear forms (relu^2 channels)."""
    basis = sorted({d for t in terms for d in t.factors})
    ix = {d: k for k, d in enumerate(basis)}
    A = np.zeros((len(basis), len(basis)))
    for t in terms:
        i, j = ix[t.factors[0]], ix[t.factors[1]]
        A[i, j] += t.coeff / 2
        A[j, i] += t.coeff / 2
    if k2_derivatives:
        # u * D^b u appears twice in the Leibniz expansion of D^b(u^2): take it from there, with D^b
        # applied by K2 to the u^2 channels, so the remainder leaves the undifferentiated field alone
        r2 = (kernel_size or 5) // 2
        picks = []
        for f in sorted({d.field for d in basis}):
            u = Derivative(f, (0, 0))
            if u not in ix:
                continue
            for d in basis:
                if d.field == f and A[ix[u], ix[d]] != 0.0 and (
                        not sum(d.order) or stencil_radius(max(d.order), 2) <= r2):
                    picks.append((f, d.order, float(A[ix[u], ix[d]])))
        needed = {Derivative(f, (a, b)) for f, (i, j), _ in picks for a in range(i + 1) for b in range(j + 1)}
        if needed - set(basis):
            basis = sorted(set(basis) | needed)
            old, ix = ix, {d: k for k, d in enumerate(basis)}
            B = np.zeros((len(basis), len(basis)))
            for p, i in old.items():
                for q, j in old.items():
                    B[ix[p], ix[q]] = A[i, j]
            A = B
        for f, order, coef in picks:
            _subtract_leibniz(A, ix, f, order, coef)
            plan.signed_power({Derivative(f, (0, 0)): 1.0}, 2, c, coef, order)
    scale = np.array([l1(d) for d in basis])
    As = A * np.outer(scale, scale)  # in the variables w_i / l1_i, all of the size of the field
    lam, V = np.linalg.eigh(As)
    tol = 1e-13 * max(np.abs(lam).max(initial=0.0), 1e-300)
    for k in np.flatnonzero(np.abs(lam) > tol):
        form = {d: V[ix[d], k] / scale[ix[d]] for d in basis if V[ix[d], k] != 0.0}
        plan.signed_power(form, 2, c, float(lam[k]))


def _subtract_leibniz(A: np.ndarray, ix: dict[Derivative, int], f: str, order: tuple[int, int], coef: float) -> None:
    """``A -= coef * (quadratic form of D^order(f^2))`` by the Leibniz rule."""
    i, j = order
    for a in range(i + 1):
        for b in range(j + 1):
            w = coef * math.comb(i, a) * math.comb(j, b)
            p, q = Derivative(f, (a, b)), Derivative(f, (i - a, j - b))
            A[ix[p], ix[q]] -= w / 2
            A[ix[q], ix[p]] -= w / 2


def exact_surrogate(pde: PDE, grid: Grid, dt: float, substeps: int = 1, accuracy: int | str = 2,
                    dtype: torch.dtype = torch.float64, max_degree: int = 4, powers: Sequence[int] | None = None,
                    modified_equation: int = 0, kernel_size: int | None = None, k2_derivatives: bool = False,
                    truncate: bool = False, integrator: str = "euler") -> Surrogate:
    """The network whose Euler substeps equal ``datagen``'s explicit-Euler MOL step.

    Args:
        pde: a :class:`datagen.PDE` (any catalogue entry, or your own polynomial).
        grid: the :class:`datagen.Grid`; its boundary sets the padding (same ghost cells).
        dt: time step of one call; ``substeps`` Euler steps of ``dt/substeps`` make it.
        accuracy: finite-difference order of the stencils, or ``"max"``: per derivative, the
            highest order whose stencil fits ``kernel_size``.
        dtype: parameter dtype (float64 for exactness to round-off).
        max_degree: largest polynomial degree accepted (mixed powers).
        powers: ``None`` (power 1 for linear terms, power d for degree-d products), ``(2,)``
            (relu^2 alone: the paper's Fisher class) or ``(1,)`` (linear PDEs).
        modified_equation: 0, or 1 / 2 to build the network of the modified equation for the
            substep ``dt / substeps`` (:func:`datagen.modified_equation`), whose Euler steps follow
            the PDE's flow rather than its Euler scheme.
        kernel_size: K1 width to fit stencils into (with ``accuracy="max"``) and the K2 width
            allowed for ``k2_derivatives``.
        k2_derivatives: let K2 apply derivative stencils to squared channels (fewer channels,
            periodic grids; no longer term-by-term equal to datagen's finite differences).
        truncate: drop terms the chosen powers cannot represent (recorded in ``.info["dropped"]``)
            instead of raising.
        integrator: the integrator the network is read with (``euler`` makes it exact).

    ``.vector_field.hidden`` is the number of hidden channels used; ``.info`` records the plan.
    """
    target = pde
    if modified_equation:
        if not isinstance(pde, PDE):
            raise SurrogateError(f"exact_surrogate needs a datagen PDE, got {type(pde).__name__}")
        target = _modified(pde, dt / substeps, int(modified_equation))
    spec = exact_channels(target, grid, accuracy, max_degree, powers, kernel_size, k2_derivatives, truncate)
    channels, K, K2 = spec["channels"], spec["kernel_size"], spec["kernel_size2"]
    if kernel_size is not None and K > kernel_size:
        raise SurrogateError(f"the stencils need a {K}x{K} kernel, more than kernel_size={kernel_size}")
    hidden = len(channels)
    if hidden == 0:
        raise SurrogateError(f"{pde.name} has no non-constant terms: nothing for a network to compute")
    acc_of = spec["acc_of"]
    bias1 = any(ch.bias != 0.0 for ch in channels)
    model = build_surrogate(
        n_fields=pde.n_fields, hidden=hidden, kernel_size=K, kernel_size2=K2, powers=tuple(ch.power for ch in channels),
        bias1=bias1, bias2=True, integrator=integrator, substeps=substeps, dt=dt, boundary=grid.boundary,
        boundary_value=grid.boundary_value, init="zeros", accuracy=acc_of((2, 0)), spacing=grid.spacing, seed=None,
    ).to(dtype)
    fi = {f: k for k, f in enumerate(pde.fields)}
    vf = model.vector_field
    W1 = np.zeros((hidden, pde.n_fields, K, K))
    W2 = np.zeros((pde.n_fields, hidden, K2, K2))
    S1, S2 = np.ones(W1.shape[:2]), np.ones(W2.shape[:2])
    b1 = np.zeros(hidden)
    dx, dy = grid.spacing

    def factor(order: tuple[int, int]) -> float:
        return 1.0 / (dx ** order[0] * dy ** order[1])

    # kernels in grid units: each carries the factor of its highest derivative, the weights the
    # unit-grid stencils times the coefficient (and the lower orders' factor ratios)
    for n, ch in enumerate(channels):
        for f in pde.fields:
            orders = [d.order for d, _ in ch.form if d.field == f]
            if orders:
                S1[n, fi[f]] = factor(max(orders, key=sum))
        for d, coef in ch.form:
            s = S1[n, fi[d.field]]
            W1[n, fi[d.field]] += coef * (factor(d.order) / s) * kernel2d(d.order, acc_of(d.order), (1.0, 1.0), K)
        b1[n] = ch.bias
        for c, ws in ch.out.items():
            S2[c, n] = factor(max(ws, key=sum))
            for order, w in ws.items():
                W2[c, n] += w * (factor(order) / S2[c, n]) * kernel2d(order, 2, (1.0, 1.0), K2)
    with torch.no_grad():
        vf.conv1.weight.copy_(torch.as_tensor(W1, dtype=dtype))
        vf.conv1.kernel_scale.copy_(torch.as_tensor(S1))
        if bias1:
            vf.conv1.bias.copy_(torch.as_tensor(b1, dtype=dtype))
        vf.conv2.weight.copy_(torch.as_tensor(W2, dtype=dtype))
        vf.conv2.kernel_scale.copy_(torch.as_tensor(S2))
        vf.conv2.bias.copy_(torch.as_tensor(spec["b2"], dtype=dtype))
    exact = not (modified_equation or k2_derivatives or spec["dropped"]) and isinstance(accuracy, int)
    model.info = {"exact": exact, "pde": pde.to_dict(), "grid": grid.to_dict(), "accuracy": spec["accuracy"],
                  "hidden_channels": hidden, "kernel_size": K, "kernel_size2": K2,
                  "powers": sorted({ch.power for ch in channels}), "modified_equation": int(modified_equation),
                  "k2_derivatives": bool(k2_derivatives), "dropped": spec["dropped"]}
    return model


@torch.no_grad()
def embed(witness: Surrogate, into: Surrogate) -> Surrogate:
    """Copy ``witness`` into the first hidden channels of ``into`` (in place) and return ``into``.

    Kernels are zero-padded to ``into``'s sizes; the other channels keep what they had (with
    ``init="stencil"``: stencils in K1 and zero K2, so they add nothing yet still get gradients).
    The result computes the witness's step exactly; training can start from it. Needs a witness
    in ``into``'s class with its channels' powers in the same order (see
    :func:`pdesurrogate.witness_in_class`).
    """
    from .membership import witness_in_class

    ok, why = witness_in_class(witness, into)
    if not ok:
        raise SurrogateError(f"the witness is not in the target's class: {why}")
    a, b = witness.vector_field, into.vector_field
    n = a.hidden
    pa, pb = list(a.act.powers), (list(b.act.powers) * b.hidden)[: b.hidden]
    if pa != pb[:n]:
        raise SurrogateError(f"the witness's channel powers {pa} differ from the target's first {n}: {pb[:n]}")
    for src, dst, sl in ((a.conv1, b.conv1, (slice(0, n), slice(None))), (a.conv2, b.conv2, (slice(None), slice(0, n)))):
        k, K = src.kernel_size, dst.kernel_size
        p = (K - k) // 2
        w = torch.zeros_like(dst.weight[sl])
        w[..., p: p + k, p: p + k] = src.weight.to(w.dtype)
        dst.weight[sl] = w
        dst.kernel_scale[sl] = src.kernel_scale
        if dst.bias is not None:
            bias = src.bias.to(dst.bias.dtype) if src.bias is not None else torch.zeros(src.out_channels)
            scale = src.bias_scale if src.bias is not None else torch.ones(src.out_channels, dtype=torch.float64)
            if dst is b.conv1:
                dst.bias[:n], dst.bias_scale[:n] = bias, scale
            else:
                dst.bias[:], dst.bias_scale[:] = bias, scale
    into.info = {**into.info, "embedded": {k: v for k, v in witness.info.items() if k != "pde"}}
    return into

