"""The one switch of the hand-written passes.

Two places replace torch's generic code by hand-written passes on CPU, both measured faster
(``benchmarks/train.py``): the periodic convolution takes its input gradient as a forward
correlation (``stencil_conv._PeriodicConv``), and the paper's two-convolution field runs as one
fused autograd function (``vector_field._PeriodicField``). ``library_passes()`` turns both off
for the code inside it, so the same model runs on torch's own forward and backward: for
comparisons, for forward-mode autodiff (which the hand-written backward does not provide), and
to check one against the other.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

__all__ = ["library_passes", "fused_field", "adjoint_input_grad"]

_ON = {"fused": True, "adjoint": True}


def fused_field() -> bool:
    """Whether the fused forward/backward of the two-convolution field is in use."""
    return _ON["fused"] and _ON["adjoint"]


def adjoint_input_grad() -> bool:
    """Whether periodic convolutions take their input gradient by the hand-written correlation."""
    return _ON["adjoint"]


@contextmanager
def library_passes(fused: bool = False, adjoint: bool = False) -> Iterator[None]:
    """Inside, the hand-written passes are off (or set as given); the previous state comes back on exit."""
    saved = dict(_ON)
    _ON.update(fused=bool(fused), adjoint=bool(adjoint))
    try:
        yield
    finally:
        _ON.update(saved)
