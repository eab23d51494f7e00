"""The options of :func:`pdesurrogate.fit` (the Adam recipe): one set of defaults and their checks,
read alike by ``fit``'s keywords, the TOML ``[fit]`` table and ``pdesurrogate train``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

from .errors import SurrogateError
from .losses import LOSSES

__all__ = ["FitOptions"]

SCHEDULES = (None, "none", "cosine", "plateau")


@dataclass(frozen=True)
class FitOptions:
    """Options of :func:`pdesurrogate.fit` (the Adam recipe), checked when made.

    Args:
        epochs: passes over the training windows (0: the polishers only, from the model as given).
        batch_size: windows per (global) batch.
        unroll: steps per window in the loss (default: the dataset's ``unroll``).
        curriculum: unroll lengths for equal shares of the epochs, e.g. ``[1, 3, 5]``; default
            ``1, 2, ..., unroll``.
        loss: ``mse`` or ``relative`` (see :func:`window_loss`).
        noise: input-noise level relative to each window's RMS.
        lr, weight_decay: Adam's.
        schedule: ``cosine`` (to lr/100 over the run), ``plateau`` (halve after 2 epochs without
            validation gain) or ``none``.
        clip: gradient-norm clipping (``None`` for none).
        lbfgs: L-BFGS iterations (strong Wolfe line search) after the Adam epochs, on
            ``lbfgs_windows`` windows at the longest unroll. With validation data the error is
            measured every ``lbfgs_check`` iterations and the best state is kept (the Adam result
            when none is better): a lower window loss need not mean a lower rollout error.
        lbfgs_precondition: run L-BFGS on the parameters scaled by the square root of their
            Gauss-Newton diagonal (estimated with random probes), so that weights of very
            different sizes move on one scale (exact networks mix biases near 1e3 with kernel
            entries near 1e-4).
        lm: Levenberg-Marquardt iterations at the end, from the best state so far, on
            ``lm_windows`` full-grid windows at the longest unroll, with the exact Jacobian
            (:func:`pdesurrogate.step_jacobian`), solved in the variables scaled by its column
            norms; the best validated state is kept.
        patience: stop after this many epochs without validation gain (``None``: never).
        valid_steps: horizon of the validation rollout (default: every stored step).
        valid_trajectories: trajectories of the validation data to score (default: all).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        dtype: train in this dtype (the model is cast in place); ``None``: the model's; a
            ``torch.dtype`` or ``"float32"`` / ``"float64"``.
        seed: seed of the window order, the noise and the crops.
        progress: a tqdm bar per epoch with the running loss.
        log: print one line per epoch (loss, validation error); default: as ``progress``.
        num_workers: DataLoader workers.
    """

    epochs: int = 10
    batch_size: int = 4
    unroll: int | None = None
    curriculum: Sequence[int] | None = None
    loss: str = "mse"
    noise: float = 1e-3
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str | None = "cosine"
    clip: float | None = 1.0
    lbfgs: int = 0
    lbfgs_windows: int = 64
    lbfgs_check: int = 25
    lbfgs_precondition: bool = False
    lm: int = 0
    lm_windows: int = 32
    patience: int | None = None
    valid_steps: int | None = None
    valid_trajectories: Sequence[int] | None = None
    device: Any = "auto"
    dtype: Any = None
    seed: int = 0
    progress: bool = True
    log: bool | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.curriculum is not None:
            try:
                steps = tuple(int(k) for k in self.curriculum)
            except (TypeError, ValueError):
                raise SurrogateError(f"curriculum={self.curriculum!r} must be a list of step counts") from None
            if not steps or any(k < 1 for k in steps):
                raise SurrogateError(f"curriculum {list(self.curriculum)} must hold positive step counts")
            object.__setattr__(self, "curriculum", steps)
        if self.loss not in LOSSES:
            raise SurrogateError(f"unknown loss {self.loss!r}; choose mse or relative")
        if self.schedule not in SCHEDULES:
            raise SurrogateError(f"unknown schedule {self.schedule!r}; choose cosine, plateau or none")
        for name, low in (("epochs", 0), ("batch_size", 1), ("lbfgs", 0), ("lbfgs_windows", 1), ("lbfgs_check", 1),
                          ("lm", 0), ("lm_windows", 1), ("num_workers", 0), ("seed", 0), ("patience", 1),
                          ("valid_steps", 1), ("unroll", 1)):
            v = getattr(self, name)
            if v is None and name in ("patience", "valid_steps", "unroll"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise SurrogateError(f"{name}={v!r} must be an integer >= {low}")
        c = self.clip
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0):
            raise SurrogateError(f"clip={c!r} must be a positive number (the largest gradient norm), or None for none")
        for name in ("lbfgs_precondition", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise SurrogateError(f"{name}={getattr(self, name)!r} must be true or false")
        for name in ("lr", "noise", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise SurrogateError(f"{name}={v!r} must be a finite non-negative number")
        if self.epochs == 0 and not self.lbfgs and not self.lm:
            raise SurrogateError("epochs=0 trains nothing: give epochs >= 1, lbfgs= or lm= iterations")
        if isinstance(self.dtype, str):
            import torch

            if self.dtype not in ("float32", "float64"):
                raise SurrogateError(f"dtype = {self.dtype!r}: use float32 or float64")
            object.__setattr__(self, "dtype", getattr(torch, self.dtype))

    def steps(self, window_steps: int) -> list[int]:
        """The unroll of each curriculum phase, for windows of ``window_steps`` steps."""
        if self.curriculum is not None:
            return list(self.curriculum)
        return list(range(1, int(self.unroll or window_steps) + 1))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "fit") -> "FitOptions":
        """Options from a plain dict (a TOML table, keywords), refusing unknown keys in one line."""
        unknown = set(d) - set(cls.names())
        if unknown:
            raise SurrogateError(f"unknown {where} option(s) {sorted(unknown)}; allowed: {', '.join(cls.names())}")
        return cls(**d)

    @classmethod
    def names(cls) -> list[str]:
        """The option names, in order."""
        return [f.name for f in fields(cls)]

    def replace(self, **changes: Any) -> "FitOptions":
        """A copy with ``changes`` (checked)."""
        return FitOptions.from_dict({**asdict(self), **changes})
