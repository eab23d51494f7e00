"""``parse_pde``: a PDE typed as text, ``u_t = 0.01*(u_xx + u_yy) + u - u**2``, as a spec.

One equation per field (``;`` or new lines between them). Derivatives are written as the field
name, an underscore and the variables: ``u_x``, ``u_xx``, ``u_xy``, ``v_yyy``. Parameters are
names given values in ``params``. The right-hand side must be a polynomial in the fields and
their derivatives (what the method of lines and the exact networks handle); anything else, such
as ``sin(u)`` or a derivative in a denominator, is refused with one line.

The text is read by a tokenizer and a small recursive-descent grammar of this module's own,
never evaluated: numbers, names, ``+ - * / ** ^`` and parentheses, nothing else. Polynomials are
expanded here with their sizes bounded (:mod:`datagen.limits`) before each product is formed,
so no text can run code, exhaust memory or run for long.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from .errors import DatagenError
from .limits import MAX_DEGREE, MAX_FIELDS, MAX_NESTING, MAX_ORDER, MAX_PDE_TEXT, MAX_TERMS
from .pde import PDE, Derivative, Term

__all__ = ["parse_pde", "RESERVED_NAMES"]

_LHS = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)_t\s*$")
_DERIV = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_([xy]+)$")
_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op>\*\*|[-+*/^()]))")
_FUNCTIONS = {"sin", "cos", "tan", "exp", "log", "sqrt", "tanh", "sinh", "cosh", "abs", "atan", "asin", "acos",
              "sign", "max", "min", "pow"}
# names a dataset's root attributes, its time and space axes, and the grammar use: a parameter
# of one of these names would overwrite a stored attribute or read as something else
RESERVED_NAMES = frozenset({"t", "x", "y", "time", "n_trajectories", "n_spatial_dims", "dataset_name", "grid_type",
                            "simulation_parameters", "provenance", "datagen_format", "boundary_conditions",
                            "dimensions", "scalars", "t0_fields", "t1_fields", "t2_fields", "inf", "nan"})

Poly = dict  # monomial (sorted tuple of variable indices) -> coefficient


def parse_pde(text: str, fields: Sequence[str] | None = None, params: Mapping[str, Any] | None = None,
              name: str = "custom") -> PDE:
    """The :class:`PDE` spec of ``text`` (e.g. ``"u_t = a*(u_xx + u_yy) + u - u**2"``).

    Args:
        text: one ``f_t = expression`` per field, separated by ``;`` or new lines.
        fields: field names in order (default: the left-hand sides, in order).
        params: values of the parameter names used in the expressions.
        name: the PDE's name.
    """
    if not isinstance(text, str):
        raise DatagenError(f"a PDE text must be a string, got {type(text).__name__}")
    if len(text) > MAX_PDE_TEXT:
        raise DatagenError(f"the PDE text has {len(text)} characters, more than the {MAX_PDE_TEXT} allowed; "
                           "write it with parameters or fewer terms")
    bad = next((c for c in text if not (" " <= c <= "~" or c in "\t\n\r")), None)
    if bad is not None:
        raise DatagenError(f"the PDE text holds the character {bad!r} (U+{ord(bad):04X}); write it in plain ASCII, "
                           "e.g. 'u_t = 0.01*(u_xx + u_yy) + u - u**2'")
    params = _check_params(params)
    eqs = [e for e in re.split(r"[;\n\r]", text) if e.strip()]
    if not eqs:
        raise DatagenError("no equation given; write e.g. 'u_t = 0.01*(u_xx + u_yy) + u - u**2'")
    if len(eqs) > MAX_FIELDS:
        raise DatagenError(f"{len(eqs)} equations, more than the {MAX_FIELDS} fields a system may have")
    sides = []
    for e in eqs:
        if e.count("=") != 1:
            raise DatagenError(f"{_short(e)!r} must be one equation 'f_t = expression'")
        lhs, rhs = e.split("=")
        m = _LHS.match(lhs)
        if not m:
            raise DatagenError(f"the left-hand side {_short(lhs)!r} must be a time derivative like u_t")
        sides.append((m.group(1), rhs))
    lhs_fields = [f for f, _ in sides]
    if len(set(lhs_fields)) != len(lhs_fields):
        raise DatagenError(f"a field has two equations: {lhs_fields}")
    fields = tuple(fields) if fields is not None else tuple(lhs_fields)
    if sorted(fields) != sorted(lhs_fields):
        raise DatagenError(f"fields {list(fields)} do not match the equations for {lhs_fields}")
    for p in params:
        if p in fields:
            raise DatagenError(f"{p!r} is both a field and a parameter; rename the parameter")
        m = _DERIV.match(p)
        if m and m.group(1) in fields:
            raise DatagenError(f"parameter {p!r} names a derivative of field {m.group(1)!r}; rename the parameter")
        if p.endswith("_t") and p[:-2] in fields:
            raise DatagenError(f"parameter {p!r} names the time derivative of {p[:-2]!r}; rename the parameter")
    by_field = dict(sides)
    rhs_terms = tuple(tuple(_terms(by_field[f], fields, params)) for f in fields)
    return PDE(name, fields, rhs_terms, params)


def _short(text: str, n: int = 60) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n] + "..."


def _check_params(params: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in dict(params or {}).items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", k):
            raise DatagenError(f"parameter name {k!r} must be letters, digits and '_', starting with a letter")
        if k in RESERVED_NAMES or k.lower() in _FUNCTIONS or k.startswith("datagen_"):
            raise DatagenError(f"parameter name {k!r} is reserved (a stored attribute, an axis or a function); "
                               "rename it")
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise DatagenError(f"parameter {k}={v!r} must be a number") from None
        if not math.isfinite(out[k]):
            raise DatagenError(f"parameter {k}={v!r} must be a finite number")
    return out


class _Parser:
    """Recursive descent over the tokens of one right-hand side, expanding as it goes::

        sum     := product (('+' | '-') product)*
        product := unary (('*' | '/') unary)*
        unary   := ('+' | '-') unary | power
        power   := atom (('**' | '^') unary)?
        atom    := number | name | '(' sum ')'
    """

    def __init__(self, text: str, variables: Mapping[str, int], params: Mapping[str, float]):
        self.text, self.variables, self.params = text, variables, params
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        stripped = text.rstrip()
        while pos < len(stripped):
            m = _TOKEN.match(stripped, pos)
            if not m or m.end() == pos:
                raise self.error(f"cannot read {stripped[pos:pos + 10].strip()!r}")
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0
        self.depth = 0

    def error(self, why: str) -> DatagenError:
        return DatagenError(f"{_short(self.text)!r}: {why}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise self.error("the expression ends too early")
        self.i += 1
        return tok

    def parse(self) -> Poly:
        if not self.tokens:
            raise self.error("the right-hand side is empty")
        out = self.sum()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()[1]!r}")
        return out

    def nest(self):
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"nested deeper than {MAX_NESTING} levels")

    def sum(self) -> Poly:
        self.nest()
        out = self.product()
        while self.peek() in (("op", "+"), ("op", "-")):
            sign = 1.0 if self.take()[1] == "+" else -1.0
            out = _add(out, self.product(), sign, self)
        self.depth -= 1
        return out

    def product(self) -> Poly:
        out = self.unary()
        while self.peek() in (("op", "*"), ("op", "/")):
            op = self.take()[1]
            rhs = self.unary()
            if op == "*":
                out = _mul(out, rhs, self)
            else:
                c = _constant(rhs)
                if c is None:
                    raise self.error("is not a polynomial in the fields and their derivatives "
                                     "(e.g. no derivative in a denominator)")
                if c == 0:
                    raise self.error("divides by zero")
                out = _scale(out, 1.0 / c, self)
        return out

    def unary(self) -> Poly:
        tok = self.peek()
        if tok in (("op", "+"), ("op", "-")):
            self.take()
            self.nest()
            inner = self.unary()
            self.depth -= 1
            return inner if tok[1] == "+" else _scale(inner, -1.0, self)
        return self.power()

    def power(self) -> Poly:
        base = self.atom()
        if self.peek() in (("op", "**"), ("op", "^")):
            self.take()
            self.nest()
            exp = self.unary()  # right-associative: a**b**c is a**(b**c)
            self.depth -= 1
            e = _constant(exp)
            if e is None:
                raise self.error("an exponent must be a number, not a field or derivative")
            c = _constant(base)
            if c is not None:
                try:
                    val = math.pow(c, e)
                except (OverflowError, ValueError):
                    raise self.error(f"{c:g}**{e:g} is not a finite real number") from None
                return _scale({(): 1.0}, val, self)
            if e != int(e) or e < 0:
                raise self.error(f"is not a polynomial in the fields and their derivatives (power {e:g})")
            if e > MAX_DEGREE:
                raise self.error(f"power {e:g} is above the degree limit {MAX_DEGREE}")
            out: Poly = {(): 1.0}
            for _ in range(int(e)):
                out = _mul(out, base, self)
            return out
        return base

    def atom(self) -> Poly:
        kind, value = self.take()
        if kind == "num":
            return _scale({(): 1.0}, float(value), self)
        if kind == "name":
            if self.peek() == ("op", "("):
                what = f"{value} is not allowed" if value.lower() in _FUNCTIONS else f"{value}(...) is a function call"
                raise self.error(f"is not a polynomial in the fields and their derivatives ({what})")
            if value in self.variables:
                return {(self.variables[value],): 1.0}
            if value in self.params:
                return _scale({(): 1.0}, self.params[value], self)
            raise self.error(f"unknown name {value!r}: give parameter values (--param name=value) or use fields "
                             "and derivatives like u, u_x, u_yy")
        if value == "(":
            self.nest()
            out = self.sum()
            self.depth -= 1
            if self.take() != ("op", ")"):
                raise self.error("a '(' is not closed")
            return out
        raise self.error(f"unexpected {value!r}")


def _constant(p: Poly) -> float | None:
    if not p:
        return 0.0
    if set(p) == {()}:
        return p[()]
    return None


def _finite(c: float, parser: _Parser) -> float:
    if not math.isfinite(c):
        raise parser.error("a coefficient is not a finite number")
    return c


def _scale(p: Poly, c: float, parser: _Parser) -> Poly:
    return {m: _finite(v * c, parser) for m, v in p.items() if v * c != 0}


def _add(a: Poly, b: Poly, sign: float, parser: _Parser) -> Poly:
    out = dict(a)
    for m, v in b.items():
        out[m] = _finite(out.get(m, 0.0) + sign * v, parser)
        if out[m] == 0:
            del out[m]
    if len(out) > MAX_TERMS:
        raise parser.error(f"more than {MAX_TERMS} terms")
    return out


def _mul(a: Poly, b: Poly, parser: _Parser) -> Poly:
    deg = max(map(len, a), default=0) + max(map(len, b), default=0)
    if deg > MAX_DEGREE:
        raise parser.error(f"a term of degree {deg} is above the degree limit {MAX_DEGREE}")
    if len(a) * len(b) > MAX_TERMS ** 2:
        raise parser.error(f"expands to more than {MAX_TERMS} terms")
    out: Poly = {}
    for ma, va in a.items():
        for mb, vb in b.items():
            m = tuple(sorted(ma + mb))
            out[m] = _finite(out.get(m, 0.0) + va * vb, parser)
    out = {m: v for m, v in out.items() if v != 0}
    if len(out) > MAX_TERMS:
        raise parser.error(f"expands to more than {MAX_TERMS} terms")
    return out


def _terms(text: str, fields: Sequence[str], params: Mapping[str, float]) -> list[Term]:
    derivs: list[Derivative] = []
    variables: dict[str, int] = {}
    for n in set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)):
        if n in fields:
            d = Derivative(n, (0, 0))
        else:
            m = _DERIV.match(n)
            if not (m and m.group(1) in fields):
                continue
            v = m.group(2)
            d = Derivative(m.group(1), (v.count("x"), v.count("y")))
            if d.total_order > MAX_ORDER:
                raise DatagenError(f"{_short(text)!r}: derivative {n} of order {d.total_order} is above the limit "
                                   f"{MAX_ORDER}")
        variables[n] = len(derivs)
        derivs.append(d)
    poly = _Parser(text, variables, params).parse()
    out = [Term(c, tuple(derivs[i] for i in mono)) for mono, c in poly.items()]
    # the catalogue's order (highest derivatives first, then by degree), so that a typed catalogue
    # PDE evaluates its terms in the same order and gives the same bytes
    return sorted(out, key=lambda t: (-max((d.total_order for d in t.factors), default=0), t.degree,
                                      tuple((d.field, -d.order[0], -d.order[1]) for d in t.factors)))
