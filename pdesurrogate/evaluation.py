"""Rollout evaluation against the reference solver, and the approximation / optimisation split.

``evaluate`` rolls a surrogate out from each trajectory's first frame and scores every step
against the reference frames. ``error_split`` explains that error (all norms are Euclidean over
fields and cells, relative to the reference ``||Phi^n u0||``):

* ``total`` = ``||N^n u0 - Phi^n u0||``: the trained network N against the reference flow Phi;
* ``approximation`` = ``||E^n u0 - Phi^n u0||``: a *witness* E, a member of N's class built by hand
  (the exact network of the scheme, or of its modified equation), against the reference. The best
  network of the class is at least this good, so this is an upper bound on the class's
  approximation error, not the infimum (which no one can compute);
* ``optimisation`` = ``||N^n u0 - E^n u0||``: how far training left N from that witness.
  ``total <= approximation + optimisation`` by the triangle inequality;
* ``local_*``: the same three for one step started from the reference frame ``n-1``;
* ``lipschitz``: the spectral norm ``L_{n-1}`` of the Jacobian of N's step at the reference
  frame ``n-1`` (power iteration with forward- and reverse-mode products, warm-started from the
  previous step's singular vector); ``stability_bound`` propagates the local errors,
  ``B_n = L_{n-1} B_{n-1} + delta_n``. With the Jacobian at the reference frame standing for the
  Lipschitz constant along the segment to the rolled-out state, it is a first-order bound.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .batching import attrs as _attrs, batches as _batches, cast as _cast, coords as _coords, norm as _norm
from .batching import prepare as _prepare, progress_bar as _progress
from .errors import SurrogateError
from .model import Surrogate
from .source import check_memory as _check_memory

__all__ = ["evaluate", "summarize", "rollout_error", "METRICS"]

METRICS = ("mse", "max_error", "rel_l2")


# -- evaluate --------------------------------------------------------------------------------
def evaluate(model: Surrogate, data: Any, steps: int | None = None, trajectories: Sequence[int] | None = None,
             batch_size: int = 32, device: str | torch.device = "auto", dtype: torch.dtype | None = None,
             progress: bool = False, split: str = "test"):
    """Roll ``model`` out from each trajectory's frame 0 and score steps ``1..steps``.

    Args:
        model: any :class:`Surrogate` (trained, exact or published).
        data: a datagen dataset folder (read at ``split``) or file, the ``xarray.Dataset`` of
            :func:`datagen.open_dataset`, or an array ``(trajectory, time, field, x, y)``.
        steps: horizon (default: all stored steps); beyond the stored ones the reference is
            extended by the dataset's own solver (:func:`datagen.solve`).
        trajectories: indices to score (default: all).
        batch_size: trajectories per batch (memory stays flat in the number of trajectories).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ...
        dtype: rollout dtype (default: the model's; ``torch.float64`` for round-off studies).
        progress: show a progress bar.
        split: the split of a dataset folder to score (default ``"test"``).

    Returns an ``xarray.Dataset`` with dims ``(trajectory, step)``: ``mse`` (mean over fields and
    cells of the squared error), ``max_error`` (largest absolute error), ``rel_l2``
    (``||pred - ref|| / ||ref||``), and ``field_*`` variants over a ``field`` dim when there are
    several fields. Frame 0 is never scored.
    """
    import xarray as xr

    src, steps, idx, dev, dtype = _prepare(model, data, steps, trajectories, device, dtype, split)
    _check_memory(src, steps, batch_size)
    net = _cast(model, dev, dtype)
    F = src.n_fields
    out = {k: np.empty((idx.size, steps)) for k in METRICS}
    per_field = {k: np.empty((idx.size, steps, F)) for k in METRICS} if F > 1 else {}
    bar = _progress(idx.size, "evaluate", progress)
    row = 0
    with torch.no_grad():
        for b in _batches(idx, batch_size):
            ref = torch.as_tensor(src.read(b, steps), device=dev)
            u = ref[:, 0].to(dtype)
            ms, mx, rl = [], [], []
            fms, fmx, frl = [], [], []
            for n in range(1, steps + 1):
                u = net(u)
                diff = u.to(torch.float64) - ref[:, n]
                sq = diff * diff
                ms.append(sq.mean(dim=(1, 2, 3)))
                mx.append(diff.abs().amax(dim=(1, 2, 3)))
                rl.append(torch.sqrt(sq.sum(dim=(1, 2, 3))) / _norm(ref[:, n]))
                if F > 1:
                    fms.append(sq.mean(dim=(2, 3)))
                    fmx.append(diff.abs().amax(dim=(2, 3)))
                    frl.append(torch.sqrt(sq.sum(dim=(2, 3))) / torch.linalg.vector_norm(ref[:, n], dim=(2, 3)))
            for k, vals in zip(METRICS, (ms, mx, rl)):
                out[k][row:row + b.size] = torch.stack(vals, 1).cpu().numpy()
            if F > 1:
                for k, vals in zip(METRICS, (fms, fmx, frl)):
                    per_field[k][row:row + b.size] = torch.stack(vals, 1).cpu().numpy()
            row += b.size
            bar.update(b.size)
    bar.close()
    coords = _coords(idx, steps, src.dt)
    data_vars = {k: (("trajectory", "step"), v) for k, v in out.items()}
    if F > 1:
        coords["field"] = list(src.fields) or list(range(F))
        data_vars.update({f"field_{k}": (("trajectory", "step", "field"), v) for k, v in per_field.items()})
    ds = xr.Dataset(data_vars, coords=coords, attrs=_attrs(model, src))
    ds["mse"].attrs["long_name"] = "mean squared error over fields and cells"
    ds["max_error"].attrs["long_name"] = "largest absolute error"
    ds["rel_l2"].attrs["long_name"] = "relative L2 error ||pred - ref|| / ||ref||"
    return ds


def rollout_error(model: Surrogate, data: Any, steps: int, trajectories: Sequence[int] | None = None,
                  device: str | torch.device = "auto", dtype: torch.dtype | None = None) -> float:
    """Mean over trajectories of the relative L2 error at step ``steps`` (the validation score
    of training); NaN when a rollout blows up."""
    rep = evaluate(model, data, steps=steps, trajectories=trajectories, device=device, dtype=dtype)
    return float(rep.rel_l2.sel(step=steps).mean())


def summarize(report, horizons: Sequence[int] | None = None, metrics: Sequence[str] | None = None):
    """A small table (``pandas.DataFrame``): mean, median and max over trajectories per metric and horizon."""
    import pandas as pd

    steps = [int(s) for s in report["step"].values]
    horizons = list(horizons) if horizons is not None else sorted({1, *steps[len(steps) // 4 - 1:: max(1, len(steps) // 4)],
                                                                     steps[-1]} & set(steps))
    missing = [h for h in horizons if h not in steps]
    if missing:
        raise SurrogateError(f"horizons {missing} are not in the report (steps 1..{steps[-1]})")
    metrics = [m for m in (metrics or report.data_vars) if report[m].dims == ("trajectory", "step")]
    rows = []
    for m in metrics:
        for h in horizons:
            v = report[m].sel(step=h).values
            rows.append({"metric": m, "step": h, "mean": float(np.mean(v)), "median": float(np.median(v)),
                         "max": float(np.max(v))})
    return pd.DataFrame(rows).set_index(["metric", "step"])


