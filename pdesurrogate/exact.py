"""The constructive theorem: a method-of-lines Euler step is exactly a small residual ConvNet.

For a PDE whose right-hand side is a polynomial in derivatives, ``exact_surrogate`` builds the
two-layer vector field ``F(U) = K2 sigma(K1 U) + b2`` with power-of-ReLU activations that equals
``datagen``'s finite-difference ``F(U)`` for every input:

* every derivative is a K1 kernel equal to ``datagen``'s stencil (the same numbers);
* an equation's linear terms form one linear combination z, and ``z = relu(z) - relu(-z)``;
* a product of d factors is a sum of d-th powers of sums of the factors (polarisation):
  ``x_1 ... x_d = 1/d! sum_{S != {}} (-1)^{d-|S|} (sum_{i in S} x_i)^d``, and every power is
  ``z^d = relu(z)^d + (-1)^d relu(-z)^d``: two hidden channels of power d;
* constant terms are the bias b2.

Before polarising, each factor is scaled by the reciprocal of its stencil's l1 norm (and the
product rescaled), so that the sums combine quantities of similar size: a derivative on a fine
grid is far larger than the field, and adding them unscaled would cost digits.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np
import torch

from datagen.grid import Grid
from datagen.pde import PDE, Derivative
from datagen.stencils import kernel2d, stencil_radius

from .errors import SurrogateError
from .model import Surrogate, build_surrogate

__all__ = ["exact_surrogate", "exact_channels"]

Form = tuple[tuple[Derivative, float], ...]


def _canonical(form: dict[Derivative, float], power: int) -> tuple[Form, float]:
    """Normalise a linear form so its first coefficient is 1; return it and the factor^power."""
    items = tuple(sorted((d, c) for d, c in form.items() if c != 0.0))
    s = items[0][1]
    return tuple((d, c / s) for d, c in items), s ** power


def exact_channels(pde: PDE, grid: Grid, accuracy: int = 2, max_degree: int = 4) -> dict[str, Any]:
    """The channel plan of the exact network: ``(form, power) -> weights per output field``,
    the constants ``b2`` and the kernel size. Raises for terms outside the class."""
    if not isinstance(pde, PDE):
        raise SurrogateError(f"exact_surrogate needs a datagen PDE, got {type(pde).__name__}")
    spacing = grid.spacing
    plan: dict[tuple[Form, int], np.ndarray] = {}
    b2 = np.zeros(pde.n_fields)

    def add(form: dict[Derivative, float], power: int, out: int, weight: float) -> None:
        key, scale = _canonical(form, power)
        plan.setdefault((key, power), np.zeros(pde.n_fields))[out] += weight * scale

    def l1(d: Derivative) -> float:
        return float(np.abs(kernel2d(d.order, accuracy, spacing)).sum())

    for c, terms in enumerate(pde.rhs):
        linear: dict[Derivative, float] = {}
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
            else:
                lam = [1.0 / l1(d) for d in t.factors]
                k = t.degree
                pref = t.coeff / (math.factorial(k) * math.prod(lam))
                for size in range(1, k + 1):
                    for S in combinations(range(k), size):
                        form: dict[Derivative, float] = {}
                        for i in S:
                            form[t.factors[i]] = form.get(t.factors[i], 0.0) + lam[i]
                        add(form, k, c, pref * (-1) ** (k - size))
        linear = {d: v for d, v in linear.items() if v != 0.0}
        if linear:
            add(linear, 1, c, 1.0)
    plan = {k: w for k, w in plan.items() if np.any(w != 0.0)}
    orders = [d.order for d in pde.derivatives()]
    radius = max((stencil_radius(max(o), accuracy) for o in orders if sum(o)), default=0)
    return {"plan": plan, "b2": b2, "kernel_size": 2 * radius + 1}


def exact_surrogate(pde: PDE, grid: Grid, dt: float, substeps: int = 1, accuracy: int = 2,
                    dtype: torch.dtype = torch.float64, max_degree: int = 4) -> Surrogate:
    """The network whose Euler substeps equal ``datagen``'s explicit-Euler MOL step.

    Args:
        pde: a :class:`datagen.PDE` (any catalogue entry, or your own polynomial).
        grid: the :class:`datagen.Grid`; its boundary sets the padding (same ghost cells).
        dt: time step of one call; ``substeps`` Euler steps of ``dt/substeps`` make it.
        accuracy: finite-difference order of the stencils.
        dtype: parameter dtype (float64 for exactness to round-off).
        max_degree: largest polynomial degree accepted.

    ``.vector_field.hidden`` is the number of hidden channels used; ``.info`` records the plan.
    """
    spec = exact_channels(pde, grid, accuracy, max_degree)
    plan, K = spec["plan"], spec["kernel_size"]
    keys = list(plan)
    hidden = 2 * len(keys)
    if hidden == 0:
        raise SurrogateError(f"{pde.name} has no non-constant terms: nothing for a network to compute")
    powers = []
    for (_, p) in keys:
        powers += [p, p]
    bv = grid.boundary_value
    model = build_surrogate(
        fields=pde.n_fields, hidden=hidden, kernel_size=K, kernel_size2=1, powers=tuple(powers), bias1=False,
        bias2=True, integrator="euler", substeps=substeps, dt=dt, boundary=grid.boundary,
        boundary_value=bv, init="zeros", accuracy=accuracy, spacing=grid.spacing, seed=None,
    ).to(dtype)
    fi = {f: k for k, f in enumerate(pde.fields)}
    vf = model.vector_field
    with torch.no_grad():
        W1 = np.zeros((hidden, pde.n_fields, K, K))
        W2 = np.zeros((pde.n_fields, hidden, 1, 1))
        for n, ((form, p), w) in enumerate(plan.items()):
            z = np.zeros((pde.n_fields, K, K))
            for d, coef in form:
                z[fi[d.field]] += coef * kernel2d(d.order, accuracy, grid.spacing, K)
            W1[2 * n], W1[2 * n + 1] = z, -z
            W2[:, 2 * n, 0, 0] = w
            W2[:, 2 * n + 1, 0, 0] = w * (-1) ** p
        vf.conv1.weight.copy_(torch.as_tensor(W1, dtype=dtype))
        vf.conv2.weight.copy_(torch.as_tensor(W2, dtype=dtype))
        vf.conv2.bias.copy_(torch.as_tensor(spec["b2"], dtype=dtype))
    model.info = {"exact": True, "pde": pde.to_dict(), "grid": grid.to_dict(), "accuracy": accuracy,
                  "hidden_channels": hidden, "kernel_size": K}
    return model
