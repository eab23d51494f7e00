"""The options of the default recipe (:func:`pdesurrogate.learn`): one set of defaults for Python,
the TOML ``[recipe]`` table and the CLI, checked when made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

from .errors import SurrogateError

__all__ = ["Recipe", "MODEL_DEFAULTS"]

# the paper's class for Fisher: 10 hidden channels of power 2, 5 x 5 kernels, Euler x 3
MODEL_DEFAULTS: dict[str, Any] = {"hidden": 10, "kernel_size": 5, "powers": (2,), "substeps": 3, "init": "stencil"}
# frame pairs the least-squares start reads at most (seeded draw): bounds its memory
START_PAIRS = 256
# how often, and up to how many substeps, the recipe retries a start its substeps cannot step
ADAPT_TRIES, MAX_ADAPTED = 4, 96
MAX_WINDOWS = 4096


@dataclass(frozen=True)
class Recipe:
    """Options of the default recipe, one set of defaults for Python, the TOML ``[recipe]`` table
    and the CLI.

    Args:
        margin: channel shifts as a multiple of the largest ``|z_c|`` on the training inputs.
        lbfgs: L-BFGS iterations (strong Wolfe line search) on ``windows`` one-step windows,
            validated every ``check`` iterations.
        lm: Levenberg-Marquardt iterations afterwards on ``lm_windows`` one-step windows (0: none).
        valid_steps: horizon of the validation rollout (default: every stored step).
        loss: ``mse`` or ``relative`` (see :func:`pdesurrogate.window_loss`).
        seed: seed of the window draws.
        start: ``least-squares`` (K1 stencils with shifts from the data, K2's centre taps fitted)
            or ``identify``: read a PDE from the data (:func:`pdesurrogate.identify_data`, sparse
            regression) and start from the class's modified-equation network of it; it keeps the
            growth of constant states that zero-mean data barely show (falls back to
            least-squares when that network is not in the class).
        anchor: weight of the penalty that holds the model's step at ``anchor_states`` constant
            states (spanning the training data's range) to the start's, during L-BFGS; 0: none.
            Zero-mean data hardly constrain wavenumber zero, which governs a solution that decays
            to its mean after the trained horizon.
        precondition: L-BFGS on the weights scaled by their Gauss-Newton diagonal (needed from the
            identified start, whose biases near 1e3 sit beside K2 entries near 1e-4).
        adapt_substeps: when the start's linearised field cannot be stepped stably at the data's
            ``dt`` by the model's substeps, take the fewest that can (one line says so) and start
            again.
    """

    margin: float = 1.25
    lbfgs: int = 200
    windows: int = 64
    check: int = 10
    lm: int = 0
    lm_windows: int = 16
    valid_steps: int | None = None
    loss: str = "mse"
    seed: int = 0
    start: str = "identify"
    anchor: float = 100.0
    anchor_states: int = 8
    precondition: bool = True
    adapt_substeps: bool = True

    def __post_init__(self) -> None:
        if self.loss not in ("mse", "relative"):
            raise SurrogateError(f"loss={self.loss!r}: choose mse or relative")
        if self.start not in ("least-squares", "identify"):
            raise SurrogateError(f"start={self.start!r}: choose least-squares or identify")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not (
                math.isfinite(self.margin) and self.margin > 1):
            raise SurrogateError(f"margin={self.margin!r} must be a number above 1 (the shift over the largest |z|)")
        for flag in ("precondition", "adapt_substeps"):
            if not isinstance(getattr(self, flag), bool):
                raise SurrogateError(f"{flag}={getattr(self, flag)!r} must be true or false")
        if isinstance(self.anchor, bool) or not isinstance(self.anchor, (int, float)) or not (
                math.isfinite(self.anchor) and 0 <= self.anchor <= 1e12):
            raise SurrogateError(f"anchor={self.anchor!r} must be a finite number >= 0 (0: no anchor)")
        for name, low, high in (("lbfgs", 0, 100_000), ("windows", 1, MAX_WINDOWS), ("check", 1, 100_000),
                                ("lm", 0, 1000), ("lm_windows", 1, MAX_WINDOWS), ("seed", 0, 2 ** 63 - 1),
                                ("anchor_states", 1, 256),
                                ("valid_steps", 1, 100_000)):
            v = getattr(self, name)
            if v is None and name == "valid_steps":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise SurrogateError(f"{name}={v!r} must be an integer from {low} to {high}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        """A recipe from a plain dict (a TOML table), refusing unknown keys."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise SurrogateError(f"unknown recipe option(s) {sorted(unknown)}; allowed: "
                                 f"{', '.join(f.name for f in fields(cls))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def _draw(n: int, k: int, seed: int, stream: int) -> list[int]:
    """``k`` of ``range(n)`` (seeded, sorted), all of them when ``k >= n``."""
    if k >= n:
        return list(range(n))
    g = np.random.default_rng([int(seed), int(stream)])
    return sorted(int(i) for i in g.choice(n, size=k, replace=False))
