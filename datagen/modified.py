"""Modified equations: the vector field whose forward-Euler step follows the PDE's flow more closely.

The exact flow of ``u_t = f(u)`` over a step ``h`` has the Taylor series

    phi_h(u) = u + h f + h^2/2 f'f + h^3/6 (f''(f, f) + f'f'f) + O(h^4),

so one forward-Euler step ``u + h g(u)`` of

    g = f + h/2 f'f                               (order 1)
    g = f + h/2 f'f + h^2/6 (f''(f, f) + f'f'f)   (order 2)

matches the flow with a local error of ``O(h^3)`` (order 1) or ``O(h^4)`` (order 2) instead of
Euler's ``O(h^2)``. For a PDE that is a polynomial in derivatives, ``f'`` (the Frechet derivative)
and ``f''`` are again polynomials in derivatives: a derivative of a product is expanded by the
Leibniz rule. :func:`modified_equation` does this symbolically on the spec, so the result is a
:class:`~datagen.pde.PDE` like any other (it can be generated, discretised, or turned into an exact
network). Fisher's order-1 field, for instance, gains ``-(3h/2) u^2 - (h/2) a Lap(u^2) - h a u Lap u``,
``(h/2)(a^2 Lap^2 u + 2 a Lap u + u)`` and ``h u^3``.
"""

from __future__ import annotations

import math

from .errors import DatagenError
from .pde import PDE, Derivative, Term

__all__ = ["modified_equation", "Polynomial"]

Monomial = tuple[Derivative, ...]
Polynomial = dict[Monomial, float]  # sorted factors -> coefficient; () is the constant


def _add(p: Polynomial, mono: Monomial, coeff: float) -> None:
    if coeff != 0.0:
        key = tuple(sorted(mono))
        p[key] = p.get(key, 0.0) + coeff


def _from_terms(terms) -> Polynomial:
    p: Polynomial = {}
    for t in terms:
        _add(p, t.factors, t.coeff)
    return p


def _scale(p: Polynomial, s: float) -> Polynomial:
    return {m: s * c for m, c in p.items()}


def _sum(*ps: Polynomial) -> Polynomial:
    out: Polynomial = {}
    for p in ps:
        for m, c in p.items():
            _add(out, m, c)
    return {m: c for m, c in out.items() if c != 0.0}


def _mul(p: Polynomial, q: Polynomial) -> Polynomial:
    out: Polynomial = {}
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            _add(out, m1 + m2, c1 * c2)
    return out


def _shift(d: Derivative, axis: int) -> Derivative:
    o = list(d.order)
    o[axis] += 1
    return Derivative(d.field, tuple(o))


def _diff(p: Polynomial, order: tuple[int, int]) -> Polynomial:
    """``d^i/dx^i d^j/dy^j`` of a polynomial, by the Leibniz rule."""
    for axis, n in enumerate(order):
        for _ in range(n):
            q: Polynomial = {}
            for mono, c in p.items():
                for k in range(len(mono)):
                    _add(q, mono[:k] + (_shift(mono[k], axis),) + mono[k + 1:], c)
            p = q
    return p


def _frechet(rhs: list[Polynomial], fields: tuple[str, ...], v: list[Polynomial]) -> list[Polynomial]:
    """``f'(u)[v]``: each factor in turn replaced by the same derivative of ``v``."""
    idx = {f: k for k, f in enumerate(fields)}
    out = []
    for p in rhs:
        acc: Polynomial = {}
        for mono, c in p.items():
            for k, d in enumerate(mono):
                rest = {mono[:k] + mono[k + 1:]: c}
                acc = _sum(acc, _mul(rest, _diff(v[idx[d.field]], d.order)))
        out.append(acc)
    return out


def _second(rhs: list[Polynomial], fields: tuple[str, ...], v: list[Polynomial], w: list[Polynomial]) -> list[Polynomial]:
    """``f''(u)[v, w]``: each ordered pair of distinct factors replaced by derivatives of v and w."""
    idx = {f: k for k, f in enumerate(fields)}
    out = []
    for p in rhs:
        acc: Polynomial = {}
        for mono, c in p.items():
            for i, di in enumerate(mono):
                for j, dj in enumerate(mono):
                    if i == j:
                        continue
                    rest = {tuple(d for k, d in enumerate(mono) if k not in (i, j)): c}
                    term = _mul(_mul(rest, _diff(v[idx[di.field]], di.order)), _diff(w[idx[dj.field]], dj.order))
                    acc = _sum(acc, term)
        out.append(acc)
    return out


def modified_equation(pde: PDE, h: float, order: int = 1) -> PDE:
    """The PDE whose forward-Euler step of size ``h`` matches ``pde``'s flow to one (or two) more orders.

    Args:
        pde: any polynomial PDE spec.
        h: the Euler step the field is meant for (a network's ``dt / substeps``).
        order: 1 (local error ``O(h^3)``) or 2 (``O(h^4)``).

    Returns a new :class:`PDE` named ``<name>_modified<order>``, with ``h`` and ``order`` added to
    its parameters. Derivative orders grow (``Lap^2`` appears for diffusion) and so do degrees.
    """
    if order not in (1, 2):
        raise DatagenError(f"modified equation order {order!r}: choose 1 or 2")
    if not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0):
        raise DatagenError(f"modified equation step h={h!r} must be a positive number")
    f = [_from_terms(terms) for terms in pde.rhs]
    fp_f = _frechet(f, pde.fields, f)
    g = [_sum(a, _scale(b, h / 2)) for a, b in zip(f, fp_f)]
    if order == 2:
        second = _second(f, pde.fields, f, f)
        fp_fp_f = _frechet(f, pde.fields, fp_f)
        g = [_sum(a, _scale(_sum(b, c), h * h / 6)) for a, b, c in zip(g, second, fp_fp_f)]
    rhs = tuple(tuple(Term(c, m) for m, c in sorted(p.items(), key=lambda mc: (len(mc[0]), mc[0])))
                for p in g)
    params = {**pde.parameters, "h": float(h), "order": order}
    return PDE(f"{pde.name}_modified{order}", pde.fields, rhs, params)
