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
  previous step's singular vector); ``propagated_estimate`` propagates the local errors,
  ``B_n = L_{n-1} B_{n-1} + delta_n``. With the Jacobian at the reference frame standing for the
  Lipschitz constant along the segment to the rolled-out state, it is a first-order bound.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .batching import attrs as _attrs, batches as _batches, coords as _coords
from .batching import prepare_stepper as _prepare_stepper, progress_bar as _progress
from .errors import SurrogateError
from .metrics import CORRELATION_THRESHOLD, METRIC_NAMES, METRICS, correlation_time
from .source import check_memory as _check_memory

__all__ = ["evaluate", "summarize", "rollout_error", "relative_to", "constant_state_growth", "METRIC_NAMES"]


# -- evaluate --------------------------------------------------------------------------------
def evaluate(model: Any, data: Any, steps: int | None = None, trajectories: Sequence[int] | None = None,
             batch_size: int = 32, device: str | torch.device = "auto", dtype: torch.dtype | None = None,
             progress: bool = False, split: str = "test", baselines: bool = False):
    """Roll ``model`` out from each trajectory's frame 0 and score steps ``1..steps``.

    Args:
        model: any stepper: a :class:`Surrogate` (trained, exact or published), any
            ``torch.nn.Module`` or callable mapping ``(batch, field, x, y)`` to the next state (an
            FNO, a U-Net of one's own), or an array of predictions ``(trajectory, time, field, x,
            y)`` whose frame ``n`` is the model's state at step ``n``.
        data: a datagen dataset folder (read at ``split``) or file, a plain Well-format file, the
            ``xarray.Dataset`` of :func:`datagen.open_dataset`, or an array ``(trajectory, time,
            field, x, y)``.
        steps: horizon (default: all stored steps); beyond the stored ones the reference is
            extended by the dataset's own solver (:func:`datagen.solve`).
        trajectories: indices to score (default: all).
        batch_size: trajectories per batch (memory stays flat in the number of trajectories).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ...
        dtype: rollout dtype (default: the model's; float64 for arrays and plain callables).
        progress: show a progress bar.
        split: the split of a dataset folder to score (default ``"test"``).
        baselines: also score the finite-difference network of a Surrogate's class when the data
            carry their PDE (``fd_network_rel_l2``: one more rollout).

    Returns an ``xarray.Dataset`` with dims ``(trajectory, step)``, one variable per metric of
    :data:`pdesurrogate.metrics.METRICS` (``mse``, ``max_error``, ``rel_l2``, The Well's ``nrmse``,
    ``vrmse``, ``pearson`` and ``band_low/mid/high``, APEBench's ``nrmse_ape``), ``field_*``
    variants over a ``field`` dim when there are several fields, and ``correlation_time`` per
    trajectory (first step with ``pearson < 0.8``; ``steps + 1`` when it never drops),
    ``persistence_rel_l2`` (the baseline ``u_n = u_0``) and ``ref_norm`` (``||u_n||``, what
    ``rel_l2`` is relative to). Frame 0 is never scored; ``attrs["non_finite_trajectories"]``
    counts rollouts that blew up (``summarize`` never averages them).
    """
    import xarray as xr

    src, steps, idx, dev, stepper = _prepare_stepper(model, data, steps, trajectories, device, dtype, split)
    _check_memory(src, steps, batch_size)
    F = src.n_fields
    out = {k: np.empty((idx.size, steps)) for k in (*METRIC_NAMES, "persistence_rel_l2", "ref_norm")}
    per_field = {m.name: np.empty((idx.size, steps, F)) for m in METRICS} if F > 1 else {}
    bar = _progress(idx.size, "evaluate", progress)
    row = 0
    stability = None
    for b in _batches(idx, batch_size):
        ref = torch.as_tensor(src.read(b, steps), device=dev)
        if row == 0 and stepper.surrogate is not None:
            from .stability import warn_if_unstable

            stability = warn_if_unstable(stepper.surrogate, ref[:, 0].cpu().numpy())
        u = ref[:, 0].to(stepper.dtype)
        cols: dict[str, list] = {m.name: [] for m in METRICS}
        fcols: dict[str, list] = {m.name: [] for m in METRICS}
        rel = METRICS[METRIC_NAMES.index("rel_l2")]
        out["persistence_rel_l2"][row:row + b.size] = torch.stack(
            [rel.joint(ref[:, 0], ref[:, n]) for n in range(1, steps + 1)], 1).cpu().numpy()
        out["ref_norm"][row:row + b.size] = torch.stack(
            [torch.linalg.vector_norm(ref[:, n].flatten(1), dim=1) for n in range(1, steps + 1)], 1).cpu().numpy()
        for n in range(1, steps + 1):
            u = stepper.next(u, n, b)
            pred = u.to(torch.float64)
            for m in METRICS:
                cols[m.name].append(m.joint(pred, ref[:, n]))
                if F > 1:
                    fcols[m.name].append(m.per_field(pred, ref[:, n]))
        for m in METRICS:
            out[m.name][row:row + b.size] = torch.stack(cols[m.name], 1).cpu().numpy()
            if F > 1:
                per_field[m.name][row:row + b.size] = torch.stack(fcols[m.name], 1).cpu().numpy()
        row += b.size
        bar.update(b.size)
    bar.close()
    coords = _coords(idx, steps, src.dt)
    data_vars: dict[str, Any] = {k: (("trajectory", "step"), v) for k, v in out.items()}
    if F > 1:
        coords["field"] = list(src.fields) or list(range(F))
        data_vars.update({f"field_{k}": (("trajectory", "step", "field"), v) for k, v in per_field.items()})
    data_vars["correlation_time"] = ("trajectory", correlation_time(torch.as_tensor(out["pearson"])).numpy())
    bad = ~np.isfinite(out["rel_l2"]).all(axis=1)
    extra = {"model_kind": stepper.name, "non_finite_trajectories": int(bad.sum()),
             "first_non_finite_step": int(np.argmax(~np.isfinite(out["rel_l2"][bad]).any(axis=0)) + 1) if bad.any() else 0}
    if stability is not None:
        extra.update({"step_stable": int(stability.stable), "step_amplification": stability.amplification,
                      "stable_substeps": stability.needed or 0})
    ds = xr.Dataset(data_vars, coords=coords, attrs=_attrs(model, src, extra))
    for m in METRICS:
        ds[m.name].attrs["long_name"] = m.long_name
    ds["correlation_time"].attrs["long_name"] = (f"first step with pearson < {CORRELATION_THRESHOLD} "
                                                 f"({steps + 1}: not within the horizon)")
    ds["persistence_rel_l2"].attrs["long_name"] = "rel_l2 of persistence (u_n = u_0): the baseline to beat"
    ds["ref_norm"].attrs["long_name"] = "||u_n||, what rel_l2 is relative to"
    if baselines and stepper.surrogate is not None and src.pde is not None and src.grid is not None:
        from .witness import fd_network

        fd = fd_network(stepper.surrogate, src.pde, src.grid)
        if fd is not None:
            base = evaluate(fd, data, steps=steps, trajectories=idx, batch_size=batch_size, device=device,
                            dtype=dtype, split=split)
            ds["fd_network_rel_l2"] = base["rel_l2"]
            ds["fd_network_rel_l2"].attrs["long_name"] = "rel_l2 of the finite-difference network of the class"
    return ds


def rollout_error(model: Any, data: Any, steps: int, trajectories: Sequence[int] | None = None,
                  device: str | torch.device = "auto", dtype: torch.dtype | None = None) -> float:
    """Mean over trajectories of the relative L2 error at step ``steps`` (the validation score
    of training); NaN when a rollout blows up."""
    rep = evaluate(model, data, steps=steps, trajectories=trajectories, device=device, dtype=dtype)
    return float(rep.rel_l2.sel(step=steps).mean())


def summarize(report, horizons: Sequence[int] | None = None, metrics: Sequence[str] | None = None):
    """A small table (``pandas.DataFrame``): mean, median and max over the finite trajectories per
    metric and horizon; a ``non_finite`` column counts the others when a rollout blew up."""
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
            ok = v[np.isfinite(v)]  # a blown-up trajectory is counted, never averaged
            row = {"metric": m, "step": h, "mean": float(np.mean(ok)) if ok.size else float("nan"),
                   "median": float(np.median(ok)) if ok.size else float("nan"),
                   "max": float(np.max(ok)) if ok.size else float("nan")}
            if ok.size < v.size:
                row["non_finite"] = int(v.size - ok.size)
            rows.append(row)
    table = pd.DataFrame(rows).set_index(["metric", "step"])
    if "non_finite" in table:
        table["non_finite"] = table["non_finite"].fillna(0).astype(int)
    return table




def relative_to(report) -> str:
    """One line saying what ``rel_l2`` is relative to and how that norm moves over the horizon."""
    n = report["ref_norm"].mean("trajectory").values
    steps = report["step"].values
    return (f"rel_l2 = ||pred - ref|| / ||ref|| at each step; the mean ||ref|| goes from {n[0]:.4g} at step "
            f"{steps[0]} to {n[-1]:.4g} at step {steps[-1]} ({n[-1] / n[0]:.3g}x)")


def constant_state_growth(model: Any, data: Any, values: Sequence[float] = (0.25, 0.5, 0.75)) -> dict[float, float]:
    """How ``model`` steps spatially constant states, against the data's own solver.

    For each value ``c`` (all fields at ``c``) the relative error of one step's increment,
    ``(N(c) - c) / (Phi(c) - c) - 1``: ``+0.02`` means the model grows a constant state 2 % too
    fast per step. Zero-mean training data hardly see wavenumber zero, and a solution that decays
    to its mean is governed by this number after the trained horizon (docs/training.md). Values
    where the reference does not move (``|Phi(c) - c|`` below 1e-12) are left out. Needs data
    with datagen provenance (the solver).
    """
    import datagen

    src, _, _, dev, stepper = _prepare_stepper(model, data, 1, None, "cpu", None)
    if src.provenance is None:
        raise SurrogateError("constant_state_growth needs data written by datagen (its solver steps the states)")
    if stepper.predictions is not None:
        raise SurrogateError("constant_state_growth steps a model, not stored predictions")
    vals = np.asarray(values, dtype=np.float64)
    states = np.broadcast_to(vals[:, None, None, None], (len(vals), src.n_fields, *src.shape)).copy()
    ref = datagen.solve(src.provenance, states, 1)[:, 1]
    out = stepper.next(torch.as_tensor(states, device=dev).to(stepper.dtype), 1, np.arange(len(vals)))
    out = out.detach().cpu().numpy().astype(np.float64)
    result = {}
    for c, r, n in zip(vals, ref, out):
        d_ref, d_net = float((r - c).mean()), float((n - c).mean())
        if abs(d_ref) > 1e-12:
            result[float(c)] = d_net / d_ref - 1.0
    return result
