"""The approximation / optimisation split of a rollout error against a witness of the class."""

from __future__ import annotations

import json
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .batching import attrs as _attrs, batches as _batches, cast as _cast, coords as _coords, norm as _norm
from .batching import prepare as _prepare, progress_bar as _progress
from .errors import SurrogateError
from .evaluation import evaluate
from .lipschitz import TRACK, _no_param_grads, _power, _track
from .membership import witness_in_class
from .model import Surrogate
from .source import check_memory as _check_memory
from .witness import default_witness

__all__ = ["error_split", "split_verdict", "SPLIT_VARS"]


SPLIT_VARS = ("total", "witness_error", "witness_gap", "local_total", "local_witness_error", "local_witness_gap")
BOUND_VARS = ("approximation_bound", "optimisation_lower_bound")


def error_split(model: Surrogate, data: Any, steps: int = 40, witness: Surrogate | None = None,
                lipschitz: bool | int = True, trajectories: Sequence[int] | None = None, batch_size: int = 32,
                device: str | torch.device = "auto", dtype: torch.dtype | None = None, seed: int = 0,
                progress: bool = False, split: str = "test", others: Mapping[str, Surrogate] | None = None):
    """Bound a surrogate's rollout error's approximation and optimisation parts.

    No one can compute the best network of a class, so the split says what it can know: the
    class's approximation error is at most the smallest error of any member known (the witness,
    the network judged, and ``others``), and the network's optimisation error is at least its
    total minus that.

    Args:
        model: the (trained) surrogate N.
        data: as for :func:`evaluate`; a file or dataset with provenance when ``witness`` is None.
        steps: horizon.
        witness: a member E of N's class to compare against (default: :func:`default_witness`,
            the modified-equation or finite-difference exact network of the data's PDE and grid,
            with N's integrator and substeps). Any surrogate works, e.g. a larger trained one.
        lipschitz: ``True`` (track the top singular pair along the trajectory: half a power
            iteration per step, alternating ``J`` and ``J^T``, warm-started from the previous
            step; two full iterations at the first step), an iteration count per step
            (warm-started; four times that at the first step), or ``False`` to skip
            ``lipschitz`` and ``propagated_estimate``.
        trajectories, batch_size, device, dtype, progress, split: as for :func:`evaluate`.
        seed: seed of the power iteration's start vector.
        others: more members of the class by name (e.g. other trained networks): their errors
            tighten ``approximation_bound``.

    Returns an ``xarray.Dataset`` with dims ``(trajectory, step)``, all relative to
    ``||Phi^n u0||``: ``total`` (N against the reference), ``witness_error`` (W against the
    reference), ``witness_gap`` (``||N - W||``), ``approximation_bound`` (the smallest error of a
    member known: an upper bound on the class's approximation error), ``optimisation_lower_bound``
    (``total - approximation_bound``), ``approximation_bound_member`` (index into
    ``attrs["members"]``), the ``local_*`` one-step versions, and ``lipschitz`` and
    ``propagated_estimate`` unless ``lipschitz=False``. ``attrs`` name the witness, whether it is in
    the model's class (a warning says so when it is not), the member that attains the bound at the
    last step (``approximation_bound_attained_by``) and ``model_is_best_known`` (1 when the model
    beats every other member known there).
    """
    import xarray as xr

    src, steps, idx, dev, dtype = _prepare(model, data, steps, trajectories, device, dtype, split)
    _check_memory(src, steps, batch_size)
    meta: dict[str, Any]
    if witness is None:
        if src.pde is None:
            raise SurrogateError("data without provenance: pass witness= (e.g. pdesurrogate.exact_surrogate(...))")
        witness, meta = default_witness(model, src.pde, src.grid)
    else:
        ok, why = witness_in_class(witness, model)
        meta = {"witness": witness.info.get("published") or ("given" if not witness.info else "given: " + ", ".join(
            f"{k}={v}" for k, v in witness.info.items() if k in ("exact", "modified_equation", "hidden_channels"))),
            "witness_in_class": ok, "witness_class_note": why, "witness_truncated": bool(witness.info.get("dropped")),
            "witness_dropped": list(witness.info.get("dropped", [])), "witness_hidden": witness.vector_field.hidden}
    if not meta["witness_in_class"]:
        warnings.warn(f"the witness ({meta['witness']}) is not in the model's class: {meta['witness_class_note']}; "
                      "its error is then no bound on the class's approximation error", stacklevel=2)
    if abs(witness.dt - model.dt) > 1e-12 * model.dt:
        raise SurrogateError(f"the witness steps dt={witness.dt:.6g}, the model dt={model.dt:.6g}")
    from .stability import probe_states, step_stability

    first = src.read(idx[:1], 0)[:, 0] if src.n_time else None
    st = step_stability(witness, probe_states(first), tuple(src.shape)) if first is not None else None
    meta["witness_stable"] = int(st is None or st.stable)
    if not meta["witness_stable"]:
        warnings.warn(f"the witness ({meta['witness']}) is unstable at the data's dt: "
                      f"{st.message(witness.dt).split(': ', 1)[1]}; its error is no bound on anything", stacklevel=2)
    iters = 0 if lipschitz is False else (TRACK if lipschitz is True else int(lipschitz))
    N, E = _cast(model, dev, dtype), _cast(witness, dev, dtype)
    names = list(SPLIT_VARS) + (["lipschitz", "propagated_estimate"] if iters else [])
    out = {k: np.empty((idx.size, steps)) for k in names}
    bar = _progress(idx.size, "split", progress)
    row = 0
    with _no_param_grads(N, E):
        for b in _batches(idx, batch_size):
            _split_batch(N, E, src.read(b, steps), steps, iters, dev, dtype, seed, out, row)
            row += b.size
            bar.update(b.size)
    bar.close()
    members, errors = ["model"], [out["total"]]
    if meta["witness_in_class"] and meta["witness_stable"] and np.isfinite(out["witness_error"]).all():
        members.append(str(meta["witness"]))
        errors.append(out["witness_error"])
    for name, net in (others or {}).items():
        ok, why = witness_in_class(net, model)
        if not ok:
            warnings.warn(f"{name} is not in the model's class ({why}); it does not bound the class's error",
                          stacklevel=2)
            continue
        members.append(str(name))
        errors.append(evaluate(net, data, steps=steps, trajectories=idx, batch_size=batch_size, device=dev,
                               dtype=dtype, split=split).rel_l2.values)
    stack = np.stack(errors)
    out["approximation_bound"] = stack.min(axis=0)
    out["optimisation_lower_bound"] = out["total"] - out["approximation_bound"]
    out["approximation_bound_member"] = stack.argmin(axis=0)
    last = stack[:, :, -1].mean(axis=1)
    meta.update({"members": members, "approximation_bound_attained_by": members[int(np.argmin(last))],
                 "model_is_best_known": int(len(members) > 1 and bool(np.all(last[0] < last[1:])))})
    coords = _coords(idx, steps, src.dt)
    ds = xr.Dataset({k: (("trajectory", "step"), v) for k, v in out.items()}, coords=coords,
                    attrs=_attrs(model, src, {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in meta.items()}))
    ds.attrs["witness_in_class"] = int(meta["witness_in_class"])
    ds.attrs["witness_truncated"] = int(meta["witness_truncated"])
    ds.attrs["lipschitz_iterations"] = 0.5 if iters == TRACK else iters
    ds["approximation_bound"].attrs["long_name"] = "upper bound on the class's approximation error (best member known)"
    ds["optimisation_lower_bound"].attrs["long_name"] = "lower bound on the model's optimisation error"
    ds["witness_gap"].attrs["long_name"] = "||N - W||: the model's distance to the witness"
    if iters:
        ds["lipschitz"].attrs["long_name"] = "spectral norm of the step's Jacobian at the reference frame n-1"
        ds["propagated_estimate"].attrs["long_name"] = ("P_n = L_{n-1} P_{n-1} + local_total_n, relative: an estimate, "
                                                        "not a bound (error_bound gives one)")
    return ds


def _split_batch(N: Surrogate, E: Surrogate, ref_np: np.ndarray, steps: int, iters: int, dev: torch.device,
                 dtype: torch.dtype, seed: int, out: dict[str, np.ndarray], row: int) -> None:
    ref = torch.as_tensor(ref_np, device=dev)
    f64 = torch.float64
    uN = ref[:, 0].to(dtype)
    uE = uN
    v = w = None
    bound = torch.zeros(ref.shape[0], dtype=f64, device=dev)
    cols: dict[str, list] = {k: [] for k in out}
    for n in range(1, steps + 1):
        prev = ref[:, n - 1].to(dtype)
        with torch.no_grad():
            uN = N(uN)
            uE, lE = E(torch.cat([uE, prev])).split(prev.shape[0])
        if iters == TRACK:
            lN, sigma, v, w = _track(N, prev, n, v, w, seed)
        elif iters:
            # warm start: the Jacobian moves little from one reference frame to the next
            lN, sigma, v = _power(N, prev, iters * 4 if n == 1 else iters, v, seed)
        else:
            with torch.no_grad():
                lN = N(prev)
        r = ref[:, n]
        scale = _norm(r)
        tot, app, opt = _norm(uN.to(f64) - r), _norm(uE.to(f64) - r), _norm(uN.to(f64) - uE.to(f64))
        ltot, lapp, lopt = _norm(lN.to(f64) - r), _norm(lE.to(f64) - r), _norm(lN.to(f64) - lE.to(f64))
        for k, val in zip(SPLIT_VARS, (tot, app, opt, ltot, lapp, lopt)):
            cols[k].append(val / scale)
        if iters:
            bound = sigma * bound + ltot
            cols["lipschitz"].append(sigma)
            cols["propagated_estimate"].append(bound / scale)
    for k in out:
        out[k][row:row + ref.shape[0]] = torch.stack(cols[k], 1).cpu().numpy()




def split_verdict(split) -> str:
    """One line on what the split can say at its last step: which member attains the bound on the
    class's approximation error, and how much of the model's error training certainly left."""
    last = split["step"].values[-1]
    m = split.sel(step=last).mean("trajectory")
    total, app, opt = float(m["total"]), float(m["approximation_bound"]), float(m["optimisation_lower_bound"])
    who = split.attrs.get("approximation_bound_attained_by", "?")
    if not split.attrs.get("witness_stable", 1):
        return (f"the witness ({split.attrs.get('witness')}) is unstable at the data's dt: its columns mean nothing "
                f"and the class's approximation error is bounded only by this model's own {total:.4g} at step {last}")
    if split.attrs.get("model_is_best_known"):
        return (f"training found a better member of the class than any construction: the class's best is at most "
                f"{total:.4g} at step {last} (this model); the optimisation error is not bounded away from zero")
    return (f"at step {last} the class holds a member with error {app:.4g} ({who}): the model's optimisation error is "
            f"at least {opt:.4g} of its {total:.4g}")
