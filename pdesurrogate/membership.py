"""Whether one network is a member of another's class (same layers, no more channels of each
power, the same integrator): what makes a witness's error a bound on the class's."""

from __future__ import annotations

from typing import Sequence

import torch

from .model import Surrogate

__all__ = ["witness_in_class"]


def _power_counts(powers: Sequence[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for p in powers:
        out[int(p)] = out.get(int(p), 0) + 1
    return out


def witness_in_class(witness: Surrogate, model: Surrogate) -> tuple[bool, str]:
    """Whether ``witness`` is a member of ``model``'s network class, and why not."""
    a, b = witness.vector_field, model.vector_field
    for name in ("conv1", "conv2", "act"):
        if not hasattr(a, name) or not hasattr(b, name):
            return False, "not a ConvVectorField"
    if a.n_fields != b.n_fields:
        return False, f"{a.n_fields} vs {b.n_fields} fields"
    if a.conv1.kernel_size > b.conv1.kernel_size or a.conv2.kernel_size > b.conv2.kernel_size:
        return False, (f"kernels {a.conv1.kernel_size}/{a.conv2.kernel_size} exceed the model's "
                       f"{b.conv1.kernel_size}/{b.conv2.kernel_size}")
    need, have = _power_counts(a.act.powers), _power_counts((list(b.act.powers) * b.hidden)[:b.hidden])
    if a.hidden > b.hidden or any(have.get(p, 0) < n for p, n in need.items()):
        return False, f"needs {a.hidden} hidden channels of powers {dict(need)}; the model has {dict(have)}"
    if a.conv1.bias is not None and b.conv1.bias is None and bool(torch.any(a.conv1.bias != 0)):
        return False, "needs a first-layer bias"
    if a.conv2.bias is not None and b.conv2.bias is None and bool(torch.any(a.conv2.bias != 0)):
        return False, "needs an output bias"
    if (witness.integrator, witness.substeps) != (model.integrator, model.substeps):
        return False, "another integrator or substep count"
    if b.conv1.constraint or b.conv2.constraint:
        return False, f"the model's kernels are constrained ({b.conv1.constraint or b.conv2.constraint})"
    return True, "in class"


