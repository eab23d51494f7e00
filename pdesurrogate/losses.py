"""The training loss of unrolled windows, and the seeds of its random draws."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch

from .model import Surrogate

__all__ = ["window_loss", "LOSSES", "stream_seed"]

LOSSES = ("mse", "relative")


def _center(x: torch.Tensor, size: int) -> torch.Tensor:
    dx, dy = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., dx: dx + size, dy: dy + size]


def window_loss(model: Surrogate, windows: torch.Tensor, steps: int, loss: str = "mse", noise: float = 0.0,
                seeds: Sequence[int] | None = None, crop: int | None = None) -> torch.Tensor:
    """Per-window loss ``(batch,)`` of ``steps`` unrolled steps from ``windows[:, 0]``.

    Args:
        windows: ``(batch, >= steps + 1, fields, x, y)``.
        loss: ``mse`` (mean over steps, fields and cells of the squared error) or ``relative``
            (mean over steps of ``||pred - ref|| / ||ref||``).
        noise: standard deviation of Gaussian noise added to the input, relative to each
            window's root-mean-square value.
        seeds: one seed per window for its noise (so a window's noise does not depend on the
            batch or the process it lands in).
        crop: score the central ``crop x crop`` cells, stepping with unpadded convolutions (the
            windows then carry the receptive halo around the patch).
    """
    u = windows[:, 0]
    if noise:
        seeds = list(seeds) if seeds is not None else list(range(u.shape[0]))
        rms = u.flatten(1).pow(2).mean(1).sqrt().view(-1, 1, 1, 1)
        eps = torch.stack([torch.randn(u.shape[1:], generator=torch.Generator().manual_seed(int(s)), dtype=u.dtype)
                           for s in seeds]).to(u.device)
        u = u + noise * rms * eps
    terms = []
    ctx = model.unpadded() if crop is not None else nullcontext()
    with ctx:
        for j in range(1, steps + 1):
            u = model(u)
            ref = windows[:, j]
            if crop is not None:
                pred, ref = _center(u, crop), _center(ref, crop)
            else:
                pred = u
            err = (pred - ref).flatten(1)
            if loss == "mse":
                terms.append(err.pow(2).mean(1))
            else:
                terms.append(err.norm(dim=1) / ref.flatten(1).norm(dim=1).clamp(min=torch.finfo(ref.dtype).tiny))
    return torch.stack(terms, 1).mean(1)


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1)[0])


# what the L-BFGS closure returns for an overflowing trial step: far above the loss scaled to 1,
# yet small enough that the line search's cubic interpolation stays finite in float32
