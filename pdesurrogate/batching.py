"""The plumbing that evaluate, the split and the bound share: the checked request, the model in
the rollout's device and dtype, trajectory batches, coordinates and the provenance attributes."""

from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from datagen.limits import MAX_STEPS

from .devices import resolve_device
from .errors import SurrogateError
from .model import Surrogate
from .source import Source, check_fits, open_source


def request(data: Any, steps: int | None, trajectories: Sequence[int] | None, device: str | torch.device,
            split: str | None = None) -> tuple[Source, int, np.ndarray, torch.device]:
    """The reference, the horizon, the trajectory indices and the device of a scoring request, checked."""
    src = open_source(data, split)
    if steps is None:
        steps = src.n_time - 1
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise SurrogateError(f"steps={steps!r} must be a positive integer")
    if steps > MAX_STEPS:
        raise SurrogateError(f"steps={steps} is above the limit {MAX_STEPS}")
    idx = np.arange(src.n_traj) if trajectories is None else np.asarray(list(trajectories), dtype=int).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= src.n_traj:
        raise SurrogateError(f"trajectories must be indices in 0..{src.n_traj - 1}")
    return src, int(steps), idx, resolve_device(device)


def prepare(model: Surrogate, data: Any, steps: int | None, trajectories: Sequence[int] | None,
            device: str | torch.device, dtype: torch.dtype | None, split: str | None = None):
    """:func:`request` for a :class:`Surrogate`, with its fit to the data checked and its dtype."""
    src, steps, idx, dev = request(data, steps, trajectories, device, split)
    check_fits(model, src)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    return src, steps, idx, dev, dtype


def prepare_stepper(model: Any, data: Any, steps: int | None, trajectories: Sequence[int] | None,
                    device: str | torch.device, dtype: torch.dtype | None, split: str | None = None):
    """:func:`request` for any model (see :func:`pdesurrogate.steppers.as_stepper`)."""
    import math

    from .steppers import as_stepper

    src, steps, idx, dev = request(data, steps, trajectories, device, split)
    stepper = as_stepper(model, dev, dtype)
    if stepper.surrogate is not None:
        check_fits(model, src)
    elif stepper.dt is not None and src.dt is not None and not math.isclose(float(stepper.dt), src.dt, rel_tol=1e-6):
        raise SurrogateError(f"the model steps dt={float(stepper.dt):.6g} but {src.name} is saved every "
                             f"dt={src.dt:.6g}")
    stepper.check(src.n_traj, src.n_time, src.n_fields, tuple(src.shape), steps)
    return src, steps, idx, dev, stepper


def cast(model: Surrogate, dev: torch.device, dtype: torch.dtype) -> Surrogate:
    """The model on ``dev`` in ``dtype``; a copy when that changes it, so the caller's stays as it was."""
    p = next(model.parameters())
    if p.device == dev and p.dtype == dtype:
        return model
    import copy

    return copy.deepcopy(model).to(device=dev, dtype=dtype)


def batches(idx: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SurrogateError(f"batch_size={batch_size!r} must be a positive integer")
    for s in range(0, idx.size, batch_size):
        yield idx[s:s + batch_size]


def coords(idx: np.ndarray, steps: int, dt: float | None) -> dict[str, Any]:
    step = np.arange(1, steps + 1)
    coords: dict[str, Any] = {"trajectory": idx, "step": step}
    if dt is not None:
        coords["time"] = ("step", step * dt)
    return coords


def norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.flatten(1), dim=1)


def attrs(model: Any, src: Source, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Provenance of a report: the model's config and info (a Surrogate's; the type otherwise), the
    data and the versions."""
    import datagen

    from .version import __version__

    config = getattr(model, "config", None) if isinstance(model, Surrogate) else None
    cfg = config.to_dict() if config is not None else ({} if isinstance(model, Surrogate) else
                                                      {"model": type(model).__name__})
    info = model.info if isinstance(model, Surrogate) else {}
    return {"model_config": json.dumps(cfg, sort_keys=True), "model_info": json.dumps(info, default=str),
            "data": src.name, "provenance": json.dumps(src.provenance or {}, sort_keys=True),
            "versions": json.dumps({"pdesurrogate": __version__, "datagen": datagen.__version__,
                                    "torch": torch.__version__, "numpy": np.__version__}),
            **(extra or {})}


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="traj", disable=not enabled)


