"""``parse_pde``: a PDE typed as text, ``u_t = 0.01*(u_xx + u_yy) + u - u**2``, as a spec.

One equation per field (``;`` or new lines between them). Derivatives are written as the field
name, an underscore and the variables: ``u_x``, ``u_xx``, ``u_xy``, ``v_yyy``. Parameters are
names given values in ``params``. The right-hand side must be a polynomial in the fields and
their derivatives (what the method of lines and the exact networks handle); anything else, such
as ``sin(u)`` or a derivative in a denominator, is refused with one line. Parsed with sympy.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from .errors import DatagenError
from .pde import PDE, Derivative, Term

__all__ = ["parse_pde"]

_LHS = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)_t\s*$")
_FUNCTIONS = {"sin", "cos", "tan", "exp", "log", "sqrt", "tanh", "sinh", "cosh", "Abs", "abs", "atan", "asin",
              "acos", "sign", "Max", "Min"}
_DERIV = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_([xy]+)$")


def parse_pde(text: str, fields: Sequence[str] | None = None, params: Mapping[str, Any] | None = None,
              name: str = "custom") -> PDE:
    """The :class:`PDE` spec of ``text`` (e.g. ``"u_t = a*(u_xx + u_yy) + u - u**2"``).

    Args:
        text: one ``f_t = expression`` per field, separated by ``;`` or new lines.
        fields: field names in order (default: the left-hand sides, in order).
        params: values of the parameter names used in the expressions.
        name: the PDE's name.
    """
    try:
        import sympy
    except ImportError:  # pragma: no cover - sympy comes with torch; declared in the package too
        raise DatagenError("parsing a PDE needs sympy: pip install sympy") from None
    params = {k: float(v) for k, v in dict(params or {}).items()}
    eqs = [e for e in re.split(r"[;\n]", text) if e.strip()]
    if not eqs:
        raise DatagenError("no equation given; write e.g. 'u_t = 0.01*(u_xx + u_yy) + u - u**2'")
    sides = []
    for e in eqs:
        if e.count("=") != 1:
            raise DatagenError(f"{e.strip()!r} must be one equation 'f_t = expression'")
        lhs, rhs = e.split("=")
        m = _LHS.match(lhs)
        if not m:
            raise DatagenError(f"the left-hand side {lhs.strip()!r} must be a time derivative like u_t")
        sides.append((m.group(1), rhs))
    lhs_fields = [f for f, _ in sides]
    if len(set(lhs_fields)) != len(lhs_fields):
        raise DatagenError(f"a field has two equations: {lhs_fields}")
    fields = tuple(fields) if fields is not None else tuple(lhs_fields)
    if sorted(fields) != sorted(lhs_fields):
        raise DatagenError(f"fields {list(fields)} do not match the equations for {lhs_fields}")
    clash = set(params) & set(fields)
    if clash:
        raise DatagenError(f"{sorted(clash)} are both fields and parameters")
    by_field = dict(sides)
    rhs_terms = []
    for f in fields:
        rhs_terms.append(tuple(_terms(sympy, by_field[f], fields, params)))
    return PDE(name, fields, tuple(rhs_terms), params)


def _terms(sympy, text: str, fields: Sequence[str], params: Mapping[str, float]) -> list[Term]:
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    derivs: dict[str, Derivative] = {}
    for n in names:
        if n in fields:
            derivs[n] = Derivative(n, (0, 0))
            continue
        m = _DERIV.match(n)
        if m and m.group(1) in fields:
            v = m.group(2)
            derivs[n] = Derivative(m.group(1), (v.count("x"), v.count("y")))
    funcs = sorted(n for n in names if n not in derivs and n not in params and n in _FUNCTIONS)
    if funcs:
        raise DatagenError(f"{text.strip()!r} is not a polynomial in the fields and their derivatives "
                           f"({', '.join(funcs)} is not allowed)")
    unknown = sorted(n for n in names if n not in derivs and n not in params)
    if unknown:
        raise DatagenError(f"unknown name(s) {unknown} in {text.strip()!r}: give parameter values "
                           "(--param name=value) or use fields and derivatives like u, u_x, u_yy")
    symbols = {n: sympy.Symbol(n) for n in derivs}
    local = {**symbols, **{k: sympy.Float(v) for k, v in params.items()}}
    try:
        expr = sympy.sympify(text, locals=local)
    except (sympy.SympifyError, SyntaxError, TypeError) as exc:
        raise DatagenError(f"cannot read {text.strip()!r}: {exc}") from None
    free = set(expr.free_symbols) - set(symbols.values())
    if free:
        raise DatagenError(f"{text.strip()!r} uses {sorted(map(str, free))}, which are neither fields nor parameters")
    gens = [symbols[n] for n in sorted(symbols)]
    if not gens:
        poly_terms = [((), expr)]
    else:
        try:
            poly = sympy.Poly(sympy.expand(expr), *gens)
        except sympy.PolynomialError:
            raise DatagenError(f"{text.strip()!r} is not a polynomial in the fields and their derivatives "
                               "(e.g. no sin(u), no derivative in a denominator)") from None
        if any(not c.is_number for c in poly.coeffs()):
            raise DatagenError(f"{text.strip()!r} is not a polynomial in the fields and their derivatives "
                               "(e.g. no sin(u), no derivative in a denominator)")
        poly_terms = list(poly.terms())
    out = []
    for powers, coeff in poly_terms:
        try:
            c = float(coeff)
        except (TypeError, ValueError):
            raise DatagenError(f"{text.strip()!r} has a coefficient {coeff} that is not a number") from None
        if c == 0:
            continue
        factors = []
        for g, p in zip(gens, powers):
            factors += [derivs[str(g)]] * int(p)
        out.append(Term(c, tuple(factors)))
    # the catalogue's order (highest derivatives first, then by degree), so that a typed catalogue
    # PDE evaluates its terms in the same order and gives the same bytes
    return sorted(out, key=lambda t: (-max((d.total_order for d in t.factors), default=0), t.degree,
                                      tuple((d.field, -d.order[0], -d.order[1]) for d in t.factors)))
