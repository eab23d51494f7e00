"""The default witness of a model's class: the sharpest exact network that is a member."""

from __future__ import annotations

from typing import Any

from datagen.grid import Grid
from datagen.pde import PDE

from .errors import SurrogateError
from .exact import exact_surrogate
from .membership import witness_in_class
from .model import Surrogate

__all__ = ["default_witness", "fd_network"]


def default_witness(model: Surrogate, pde: PDE, grid: Grid) -> tuple[Surrogate, dict[str, Any]]:
    """The sharpest hand-built member of ``model``'s class: the modified-equation network when it
    fits, else the finite-difference scheme's exact network; outside the class (with a note) when
    neither fits."""
    vf = model.vector_field
    powers = sorted(set(getattr(getattr(vf, "act", None), "powers", ()) or ()))
    K1 = getattr(getattr(vf, "conv1", None), "kernel_size", 3)
    K2 = getattr(getattr(vf, "conv2", None), "kernel_size", 1)
    dtype = next(model.parameters()).dtype
    base = dict(dtype=dtype, integrator=model.integrator)
    candidates = []
    only = tuple(powers) if tuple(powers) in ((1,), (2,)) else None
    if model.integrator == "euler":
        candidates.append(("modified equation (order 1)", dict(
            modified_equation=1, accuracy="max", kernel_size=K1, powers=only, truncate=only == (2,),
            k2_derivatives=K2 > 1 and grid.boundary == "periodic")))
    candidates.append(("finite-difference scheme", dict(accuracy=2, powers=only, truncate=False)))
    candidates.append(("finite-difference scheme (mixed powers)", dict(accuracy=2)))
    first = None
    for name, kw in candidates:
        try:
            w = exact_surrogate(pde, grid, model.dt, substeps=model.substeps, **base, **kw)
        except SurrogateError:
            continue
        ok, why = witness_in_class(w, model)
        meta = {"witness": name, "witness_in_class": ok, "witness_class_note": why,
                "witness_truncated": bool(w.info.get("dropped")), "witness_dropped": list(w.info.get("dropped", [])),
                "witness_hidden": w.vector_field.hidden}
        if ok:
            return w, meta
        first = first or (w, meta)
    if first is None:
        raise SurrogateError(f"no exact network can be built for {pde.name}; pass witness=")
    return first




def fd_network(model: Surrogate, pde: PDE, grid: Grid) -> Surrogate | None:
    """The finite-difference network of ``model``'s class: the exact network of the five-point
    scheme with the model's integrator, substeps and activation powers (None when the PDE has no
    such network), the baseline a trained model must beat."""
    powers = tuple(sorted(set(getattr(getattr(model.vector_field, "act", None), "powers", ()) or ())))
    try:
        return exact_surrogate(pde, grid, model.dt, substeps=model.substeps, integrator=model.integrator,
                               accuracy=2, powers=powers if powers in ((1,), (2,)) else None, truncate=False,
                               dtype=next(model.parameters()).dtype)
    except SurrogateError:
        return None
