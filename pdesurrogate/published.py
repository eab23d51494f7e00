"""Load the published baseline weights of "Predictions based on pixel data" (arXiv 2305.00723).

Those are bare PyTorch ``state_dict``s of ``F = Sequential(Conv2d, activation, Conv2d)``; this
module maps them onto :func:`pdesurrogate.build_surrogate`'s architecture.

Key mapping (published -> pdesurrogate)::

    F.0.weight -> vector_field.conv1.weight     (H, 1, 5, 5)
    F.0.bias   -> vector_field.conv1.bias       (H,)
    F.2.weight -> vector_field.conv2.weight     (1, H, 5, 5)
    F.2.bias   -> vector_field.conv2.bias       (1,)   Fisher only

Architecture by file name: ``Fisher*`` H = 10, activation relu^2, second bias;
``Heat*`` and ``Linadv*`` H = 2, ReLU, no second bias. One step = 3 explicit-Euler substeps of
``dt/3`` with ``dt = 0.0024`` (Fisher, heat) or ``0.1`` (linear advection, the network's own
constant); ``*Preserve*`` variants use projected Euler (norm kept after every substep).
Circular padding: periodic 100 x 100 grid of the unit square in the paper.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import SurrogateError
from .checkpoint import read_tensors
from .model import Surrogate, build_surrogate

__all__ = ["KEY_MAP", "published_config", "load_published"]

KEY_MAP = {
    "F.0.weight": "vector_field.conv1.weight",
    "F.0.bias": "vector_field.conv1.bias",
    "F.2.weight": "vector_field.conv2.weight",
    "F.2.bias": "vector_field.conv2.bias",
}


def published_config(name: str) -> dict[str, Any]:
    """The ``build_surrogate`` config of a published network, from its file name."""
    stem = Path(name).stem
    base = dict(n_fields=1, kernel_size=5, integrator="euler", substeps=3, boundary="periodic", seed=None)
    if stem.startswith("Fisher"):
        return {**base, "hidden": 10, "powers": (2,), "bias2": True, "dt": 0.0024}
    if stem.startswith("Heat"):
        return {**base, "hidden": 2, "powers": (1,), "bias2": False, "dt": 0.0024}
    if stem.startswith("Linadv"):
        preserve = "NoPreserve" not in stem
        return {**base, "hidden": 2, "powers": (1,), "bias2": False, "dt": 0.1,
                "integrator": "projected_euler" if preserve else "euler"}
    raise SurrogateError(f"{stem!r} is not a published network name (Fisher*, Heat*, Linadv*)")


def load_published(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None,
                   dtype: torch.dtype = torch.float32) -> Surrogate:
    """Build the published architecture named by ``path``'s file name and load its weights."""
    path = Path(path)
    cfg = published_config(path.name)
    if state_dict is None:
        state_dict = read_tensors(path, "PyTorch state_dict")
    unknown = set(state_dict) - set(KEY_MAP)
    if unknown:
        raise SurrogateError(f"{path.name}: unexpected keys {sorted(unknown)}; expected {sorted(KEY_MAP)}")
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise SurrogateError(f"{path.name}: {bad[0]!r} is a {type(state_dict[bad[0]]).__name__}, not a tensor")
    model = build_surrogate(**cfg).to(dtype)
    mapped = {KEY_MAP[k]: v.to(dtype) for k, v in state_dict.items()}
    # the published kernels are physical numbers: unit scale
    mapped.update({k: v for k, v in model.state_dict().items() if k.endswith(("kernel_scale", "bias_scale"))})
    try:
        model.load_state_dict(mapped)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SurrogateError(f"{path.name}: weights do not fit the published architecture ({first})") from None
    # the paper's grid: 100 x 100 periodic nodes on the unit square
    model.info = {"published": path.name, "grid": {"shape": [100, 100], "extent": [1.0, 1.0], "boundary": "periodic"}}
    return model
