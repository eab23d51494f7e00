"""The PDE specification: a polynomial in derivatives of the fields.

    d/dt u_c = sum_k  a_k * prod_j  D^{alpha_kj} u_{c_kj}

A :class:`PDE` is plain data: field names, one right-hand side per field made of
:class:`Term` objects, and the named parameters it was built from (for provenance).
It round-trips through JSON and prints as a readable expression.  Both ``datagen`` (numpy)
and ``pdesurrogate`` (torch) read the same object.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import DatagenError
from .limits import MAX_DEGREE, MAX_FIELDS, MAX_ORDER, MAX_TERMS, loads_bounded

__all__ = ["Derivative", "Term", "PDE"]


@dataclass(frozen=True, order=True)
class Derivative:
    """``d^i/dx^i d^j/dy^j`` of one field; ``order=(0, 0)`` is the field itself."""

    field: str
    order: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        order = tuple(int(o) for o in self.order)
        if len(order) != 2 or min(order) < 0 or sum(order) > MAX_ORDER:
            raise DatagenError(
                f"derivative order {self.order!r} of field {self.field!r} must be two "
                f"non-negative integers (i, j) meaning d^i/dx^i d^j/dy^j, with i + j <= {MAX_ORDER}"
            )
        object.__setattr__(self, "order", order)

    @property
    def total_order(self) -> int:
        """Sum of the x and y orders."""
        return self.order[0] + self.order[1]

    def name(self) -> str:
        """Subscript notation: ``u``, ``u_x``, ``u_xxy``."""
        i, j = self.order
        return self.field if i + j == 0 else f"{self.field}_{'x' * i}{'y' * j}"


@dataclass(frozen=True)
class Term:
    """``coeff * prod(factors)``; no factors means a constant term."""

    coeff: float
    factors: tuple[Derivative, ...] = ()

    def __post_init__(self) -> None:
        coeff = float(self.coeff)
        if not math.isfinite(coeff):
            raise DatagenError(f"term coefficient {self.coeff!r} is not a finite number")
        object.__setattr__(self, "coeff", coeff)
        object.__setattr__(self, "factors", tuple(sorted(self.factors)))

    @property
    def degree(self) -> int:
        """Number of factors (polynomial degree of the term)."""
        return len(self.factors)

    def monomial(self) -> str:
        """The factors as text, powers collapsed: ``u^2*v``."""
        parts: list[str] = []
        names = [f.name() for f in self.factors]
        for name in dict.fromkeys(names):
            power = names.count(name)
            parts.append(name if power == 1 else f"{name}^{power}")
        return "*".join(parts)


def _fmt(x: float) -> str:
    return f"{x:.12g}"


@dataclass(frozen=True)
class PDE:
    """A system ``d/dt fields[c] = sum(rhs[c])`` of polynomial terms in derivatives.

    Args:
        name: catalogue name or a label of your own.
        fields: field names, in the order of the ``field`` axis of arrays.
        rhs: one tuple of :class:`Term` per field.
        parameters: the named parameters the terms were built from (kept for provenance).
    """

    name: str
    fields: tuple[str, ...]
    rhs: tuple[tuple[Term, ...], ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        if not fields:
            raise DatagenError(f"PDE {self.name!r} has no fields; give at least one field name")
        if len(set(fields)) != len(fields):
            raise DatagenError(f"PDE {self.name!r} repeats a field name: {list(fields)}")
        for f in fields:
            if not isinstance(f, str) or not f.isidentifier():
                raise DatagenError(f"field name {f!r} must be an identifier such as 'u'")
        try:
            rhs = tuple(tuple(terms) for terms in self.rhs)
        except TypeError:
            raise DatagenError(
                f"PDE {self.name!r}: rhs must hold one sequence of Terms per field"
            ) from None
        if len(rhs) != len(fields):
            raise DatagenError(
                f"PDE {self.name!r} has {len(fields)} fields but {len(rhs)} right-hand sides; "
                "give one list of terms per field"
            )
        if len(fields) > MAX_FIELDS:
            raise DatagenError(f"PDE {self.name!r} has {len(fields)} fields, more than the limit {MAX_FIELDS}")
        for c, terms in enumerate(rhs):
            if len(terms) > MAX_TERMS:
                raise DatagenError(f"the equation for {fields[c]!r} has {len(terms)} terms, more than the limit "
                                   f"{MAX_TERMS}")
            for t in terms:
                if isinstance(t, Term) and t.degree > MAX_DEGREE:
                    raise DatagenError(f"a term of the equation for {fields[c]!r} has degree {t.degree}, above the "
                                       f"limit {MAX_DEGREE}")
                if not isinstance(t, Term):
                    raise DatagenError(f"right-hand side of {fields[c]!r} holds {t!r}, not a Term")
                for d in t.factors:
                    if d.field not in fields:
                        raise DatagenError(
                            f"term {t.monomial()!r} in the equation for {fields[c]!r} uses "
                            f"unknown field {d.field!r}; fields are {list(fields)}"
                        )
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "rhs", rhs)
        object.__setattr__(self, "parameters", dict(self.parameters))

    # -- structure ---------------------------------------------------------------------
    @property
    def n_fields(self) -> int:
        """Number of fields."""
        return len(self.fields)

    def derivatives(self) -> list[Derivative]:
        """Every distinct derivative the right-hand side uses, sorted."""
        return sorted({d for terms in self.rhs for t in terms for d in t.factors})

    @property
    def max_order(self) -> int:
        """Highest total derivative order appearing."""
        return max((d.total_order for d in self.derivatives()), default=0)

    @property
    def degree(self) -> int:
        """Highest polynomial degree of a term."""
        return max((t.degree for terms in self.rhs for t in terms), default=0)

    def field_index(self, name: str) -> int:
        """Position of a field on the field axis."""
        return self.fields.index(name)

    # -- text --------------------------------------------------------------------------
    def expression(self) -> str:
        """Readable equations, one line per field: ``u_t = 0.01*(u_xx + u_yy) + u - u^2``."""
        lines = []
        for fname, terms in zip(self.fields, self.rhs):
            lines.append(f"{fname}_t = {self._rhs_text(terms)}")
        return "\n".join(lines)

    @staticmethod
    def _rhs_text(terms: Iterable[Term]) -> str:
        # Group terms that share a coefficient and are all single factors, so the Laplacian
        # reads as 0.01*(u_xx + u_yy) rather than 0.01*u_xx + 0.01*u_yy.
        groups: dict[float, list[Term]] = {}
        for t in terms:
            groups.setdefault(t.coeff, []).append(t)
        chunks: list[tuple[float, str]] = []
        for coeff, ts in groups.items():
            mons = [t.monomial() for t in ts]
            if len(ts) > 1 and all(t.degree == 1 and t.factors[0].total_order > 0 for t in ts):
                chunks.append((coeff, "(" + " + ".join(mons) + ")"))
            else:
                chunks.extend((coeff, m) for m in mons)
        out = ""
        for k, (coeff, mon) in enumerate(chunks):
            sign = "-" if coeff < 0 else "+"
            mag = abs(coeff)
            if not mon:
                body = _fmt(mag)
            elif mag == 1.0:
                body = mon
            else:
                body = f"{_fmt(mag)}*{mon}"
            if k == 0:
                out = ("-" if sign == "-" else "") + body
            else:
                out += f" {sign} {body}"
        return out or "0"

    def __str__(self) -> str:
        return self.expression()

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; :meth:`from_dict` inverts it exactly."""
        return {
            "name": self.name,
            "fields": list(self.fields),
            "rhs": {
                f: [
                    {"coeff": t.coeff, "factors": [[d.field, list(d.order)] for d in t.factors]}
                    for t in terms
                ]
                for f, terms in zip(self.fields, self.rhs)
            },
            "parameters": dict(self.parameters),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PDE":
        """Rebuild a PDE from :meth:`to_dict` output, with clear errors for malformed input."""
        if not isinstance(data, Mapping):
            raise DatagenError(f"a PDE spec must be a JSON object, got {type(data).__name__}")
        missing = {"name", "fields", "rhs"} - set(data)
        if missing:
            raise DatagenError(f"PDE spec lacks key(s) {sorted(missing)}; expected name, fields, rhs")
        if not isinstance(data["fields"], (list, tuple)) or len(data["fields"]) > MAX_FIELDS:
            raise DatagenError(f"PDE spec 'fields' must be a list of at most {MAX_FIELDS} names")
        fields = list(data["fields"])
        rhs_map = data["rhs"]
        if not isinstance(rhs_map, Mapping) or set(rhs_map) != set(fields):
            raise DatagenError(
                f"PDE spec 'rhs' must map each field {fields} to a list of terms"
            )
        rhs = []
        for f in fields:
            terms = []
            if not isinstance(rhs_map[f], (list, tuple)) or len(rhs_map[f]) > MAX_TERMS:
                raise DatagenError(f"PDE spec: the equation for {f!r} must be a list of at most {MAX_TERMS} terms")
            for t in rhs_map[f]:
                if isinstance(t, Mapping) and isinstance(t.get("factors"), (list, tuple)) and \
                        len(t["factors"]) > MAX_DEGREE:
                    raise DatagenError(f"PDE spec: a term for {f!r} has {len(t['factors'])} factors, more than the "
                                       f"degree limit {MAX_DEGREE}")
                try:
                    factors = tuple(Derivative(str(a), tuple(o)) for a, o in t.get("factors", []))
                    terms.append(Term(t["coeff"], factors))
                except (KeyError, TypeError, ValueError) as exc:
                    if isinstance(exc, DatagenError):
                        raise
                    raise DatagenError(
                        f"malformed term {t!r} for field {f!r}: expected "
                        "{'coeff': number, 'factors': [[field, [i, j]], ...]}"
                    ) from None
            rhs.append(tuple(terms))
        return cls(str(data["name"]), tuple(fields), tuple(rhs), dict(data.get("parameters", {})))

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys) of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PDE":
        """Inverse of :meth:`to_json`."""
        try:
            data = loads_bounded(text, "PDE spec")
        except DatagenError as exc:
            raise DatagenError(f"PDE spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)
