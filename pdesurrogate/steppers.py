"""Any model the evaluator can score: a :class:`Surrogate`, any ``torch.nn.Module`` or callable
mapping a batch ``(batch, field, x, y)`` to the next state, or an array of its predictions
``(trajectory, time, field, x, y)``. One small object gives the rollout its next state either way."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .errors import SurrogateError
from .model import Surrogate

__all__ = ["Stepper", "as_stepper"]


@dataclass
class Stepper:
    """The next state of a rollout, from a network or from stored predictions."""

    name: str
    dtype: torch.dtype
    surrogate: Surrogate | None = None  # the stencil class's checks and witness apply only to this
    step_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    predictions: Any = None  # (trajectory, time, field, x, y)
    dt: float | None = None

    def next(self, u: torch.Tensor, n: int, rows: np.ndarray) -> torch.Tensor:
        """State ``n`` of trajectories ``rows`` given state ``n - 1`` (``u``)."""
        if self.predictions is not None:
            return torch.as_tensor(np.asarray(self.predictions[rows, n]), device=u.device).to(self.dtype)
        with torch.no_grad():
            out = self.step_fn(u)
        if isinstance(out, np.ndarray):
            out = torch.as_tensor(out, device=u.device)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(u.shape):
            got = tuple(getattr(out, "shape", ())) or type(out).__name__
            raise SurrogateError(f"the model {self.name} maps a state of shape {tuple(u.shape)} to {got}; a stepper "
                                 "must return the next state in the shape it is given (batch, field, x, y)")
        return out.to(self.dtype)

    def check(self, n_traj: int, n_time: int, n_fields: int, shape: tuple[int, ...], steps: int) -> None:
        """One-line refusals for predictions that do not fit the reference."""
        if self.predictions is None:
            return
        p = self.predictions
        want = (n_traj, n_fields, *shape)
        if p.ndim != 5 or (p.shape[0], *p.shape[2:]) != want:
            raise SurrogateError(f"predictions of shape {tuple(p.shape)} do not fit the reference: expected "
                                 f"({n_traj}, time, {', '.join(map(str, want[1:]))})")
        if p.shape[1] < steps + 1:
            raise SurrogateError(f"the predictions hold {p.shape[1] - 1} steps after frame 0; ask for steps <= "
                                 f"{p.shape[1] - 1}")


def _module_dtype(m: torch.nn.Module) -> torch.dtype:
    for p in m.parameters():
        return p.dtype
    return torch.float64


def as_stepper(model: Any, device: torch.device, dtype: torch.dtype | None) -> Stepper:
    """Wrap ``model`` (a Surrogate, a torch module, a callable or a prediction array) for a rollout
    on ``device`` in ``dtype`` (default: the model's own; float64 for arrays and plain callables);
    the caller's model is never changed (a copy is moved when device or dtype differ)."""
    if isinstance(model, (np.ndarray, torch.Tensor)):
        arr = model.detach().cpu().numpy() if isinstance(model, torch.Tensor) else model
        if arr.ndim != 5:
            raise SurrogateError(f"predictions of shape {arr.shape} must be (trajectory, time, field, x, y)")
        if not np.issubdtype(arr.dtype, np.floating):
            raise SurrogateError(f"predictions of dtype {arr.dtype} must be floating point")
        return Stepper("predictions", dtype or torch.float64, predictions=arr)
    if isinstance(model, torch.nn.Module):
        dt = dtype or _module_dtype(model)
        net = model
        p = next(model.parameters(), None)
        if p is not None and (p.device != device or p.dtype != dt):
            net = copy.deepcopy(model).to(device=device, dtype=dt)
        net.eval()
        if isinstance(model, Surrogate):
            return Stepper("surrogate", dt, surrogate=net, step_fn=net, dt=model.dt)
        return Stepper(type(model).__name__, dt, step_fn=net, dt=getattr(model, "dt", None))
    if callable(model):
        return Stepper(getattr(model, "__name__", type(model).__name__), dtype or torch.float64, step_fn=model,
                       dt=getattr(model, "dt", None))
    raise SurrogateError(f"cannot score a {type(model).__name__}: pass a Surrogate, a torch.nn.Module or callable "
                         "mapping (batch, field, x, y) to the next state, or an array of predictions "
                         "(trajectory, time, field, x, y)")
