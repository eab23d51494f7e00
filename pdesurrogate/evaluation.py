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

import json
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from datagen.errors import DatagenError
from datagen.grid import Grid
from datagen.pde import PDE

from datagen.limits import MAX_STEPS, loads_bounded

from .errors import SurrogateError
from .model import Surrogate

__all__ = ["evaluate", "summarize", "error_split", "default_witness", "witness_in_class", "lipschitz_estimate",
           "rollout_error", "METRICS"]

METRICS = ("mse", "max_error", "rel_l2")


# -- data ------------------------------------------------------------------------------------
@dataclass
class _Source:
    """Reference trajectories from a file, an xarray.Dataset or an array, read in batches."""

    name: str
    n_traj: int
    n_time: int  # stored frames
    n_fields: int
    shape: tuple[int, int]
    dt: float | None
    provenance: dict[str, Any] | None
    array: np.ndarray | None = None
    path: Path | None = None
    fields: tuple[str, ...] = ()
    layout_grid: Grid | None = None  # from The Well's /dimensions when the file has no provenance

    @property
    def pde(self) -> PDE | None:
        return PDE.from_dict(self.provenance["pde"]) if self.provenance else None

    @property
    def grid(self) -> Grid | None:
        return Grid.from_dict(self.provenance["config"]["grid"]) if self.provenance else self.layout_grid

    def read(self, idx: np.ndarray, steps: int) -> np.ndarray:
        """Float64 ``(b, steps + 1, field, x, y)`` for trajectories ``idx``, extended by the solver."""
        stored = min(self.n_time, steps + 1)
        if self.array is not None:
            ref = np.asarray(self.array[idx, :stored], dtype=np.float64)
        else:
            import h5py

            with h5py.File(self.path, "r") as f:
                lo, hi = int(idx.min()), int(idx.max()) + 1
                parts = [f["t0_fields"][name][lo:hi, :stored] for name in self.fields]
            ref = np.stack(parts, axis=2)[idx - lo].astype(np.float64)
        self._check_finite(ref, idx)
        if steps + 1 > stored:
            if self.provenance is None:
                raise SurrogateError(
                    f"{self.name} holds {self.n_time - 1} steps and no provenance to extend it; ask for steps <= "
                    f"{self.n_time - 1}"
                )
            from datagen import solve

            more = solve(self.provenance, ref[:, -1], steps + 1 - stored)
            ref = np.concatenate([ref, more[:, 1:]], axis=1)
            self._check_finite(ref, idx)
        return ref

    def _check_finite(self, ref: np.ndarray, idx: np.ndarray) -> None:
        # never average a corrupt trajectory away: name it so that it can be left out or regenerated
        bad = ~np.isfinite(ref.reshape(ref.shape[0], ref.shape[1], -1)).all(axis=2)
        if bad.any():
            b, n = np.argwhere(bad)[0]
            raise SurrogateError(f"{self.name}: the reference of trajectory {int(idx[b])} is not finite at step "
                                 f"{int(n)} ({int(bad.sum())} frames in this batch); regenerate the data or leave that "
                                 "trajectory out (trajectories=...)")


def _source(data: Any, split: str | None = None) -> _Source:
    """What ``data`` holds; a dataset folder is read at ``split``."""
    if isinstance(data, (str, os.PathLike)):
        from datagen.store import dataset_file, read_provenance

        try:
            path = dataset_file(data, split if Path(data).is_dir() else None)
        except DatagenError as exc:
            raise SurrogateError(str(exc)) from None
        if not _has_provenance(path):
            return _well_source(path)
        try:
            prov = read_provenance(path)
            cfg, pde = prov["config"], PDE.from_dict(prov["pde"])
            grid = Grid.from_dict(cfg["grid"])
            import h5py

            with h5py.File(path, "r") as f:
                d = f["t0_fields"][pde.fields[0]]
                n_traj, n_time = int(d.shape[0]), int(d.shape[1])
                for name in pde.fields:
                    if f["t0_fields"][name].shape != (n_traj, n_time, *grid.shape):
                        raise SurrogateError(f"{path}: field {name!r} has shape {f['t0_fields'][name].shape}, "
                                             f"expected {(n_traj, n_time, *grid.shape)}")
        except DatagenError as exc:
            raise SurrogateError(str(exc)) from None
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise SurrogateError(f"{path} is not a readable datagen dataset ({type(exc).__name__}: {exc})") from None
        return _Source(str(path), n_traj, n_time, pde.n_fields, grid.shape, float(cfg["dt"]), prov, path=path,
                       fields=pde.fields)
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        xr = None
    if xr is not None and isinstance(data, xr.Dataset):
        prov = loads_bounded(data.attrs["provenance"], "the dataset's provenance") if "provenance" in data.attrs else None
        names = PDE.from_dict(prov["pde"]).fields if prov else tuple(data.data_vars)
        arr = np.stack([data[n].transpose("trajectory", "time", "x", "y").values for n in names], axis=2)
        dt = float(prov["config"]["dt"]) if prov else None
        return _Source("dataset", arr.shape[0], arr.shape[1], arr.shape[2], arr.shape[3:], dt, prov, array=arr,
                       fields=tuple(names))
    arr = np.asarray(data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data)
    if arr.ndim != 5:
        raise SurrogateError(f"reference array of shape {arr.shape} must be (trajectory, time, field, x, y)")
    return _Source("array", arr.shape[0], arr.shape[1], arr.shape[2], arr.shape[3:], None, None, array=arr)


def _has_provenance(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "provenance" in f.attrs
    except OSError:
        raise SurrogateError(f"{path} is not a readable HDF5 file (corrupt, truncated or another format)") from None


def _well_source(path: Path) -> _Source:
    """A Well-format file without datagen's provenance: its frames, step, grid and boundary."""
    import h5py

    from .wellfiles import read_layout

    with h5py.File(path, "r") as f:
        lay = read_layout(f, path)
    return _Source(str(path), lay.n_traj, lay.n_time, len(lay.fields), lay.grid.shape, lay.dt, None, path=path,
                   fields=lay.fields, layout_grid=lay.grid)


def _model_fields(model: Surrogate) -> int | None:
    return getattr(model.vector_field, "fields", None)


def _check(model: Surrogate, src: _Source) -> None:
    """One-line refusals for a model that does not fit the data."""
    nf = _model_fields(model)
    if nf is not None and nf != src.n_fields:
        raise SurrogateError(f"the model has {nf} field(s) but {src.name} has {src.n_fields}")
    if src.dt is not None and not math.isclose(model.dt, src.dt, rel_tol=1e-6):
        raise SurrogateError(f"the model steps dt={model.dt:.6g} but {src.name} is saved every dt={src.dt:.6g}; "
                             "evaluate on data of the model's time step")
    grid = src.grid
    cfg = model.config
    if grid is not None and cfg is not None and cfg.boundary != grid.boundary:
        raise SurrogateError(f"the model pads for a {cfg.boundary} boundary but {src.name} is {grid.boundary}")
    mg = model.info.get("grid") if isinstance(model.info, dict) else None
    if mg and tuple(mg.get("shape", src.shape)) != tuple(src.shape):
        raise SurrogateError(f"the model was built for a {tuple(mg['shape'])} grid but {src.name} is {tuple(src.shape)}")
    if grid is not None and mg and "extent" in mg and tuple(mg["extent"]) != tuple(grid.extent):
        raise SurrogateError(f"the model was built for extent {tuple(mg['extent'])} but {src.name} has {grid.extent}")
    if grid is not None and cfg is not None and cfg.init == "stencil" and not mg:
        if not np.allclose(cfg.spacing, grid.spacing, rtol=1e-9):
            raise SurrogateError(f"the model's stencils use spacing {cfg.spacing} but {src.name} has {grid.spacing}")


def _device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when present), or a device torch knows and this machine has; one-line errors."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SurrogateError(f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise SurrogateError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); use "
                             "auto or cpu")
    if dev.type not in ("cpu", "cuda") and not _available(dev):
        raise SurrogateError(f"device {device!r} is not available here; use auto or cpu")
    return dev


def _available(dev: torch.device) -> bool:
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError):
        return False
    return True


def _prepare(model: Surrogate, data: Any, steps: int | None, trajectories: Sequence[int] | None,
             device: str | torch.device, dtype: torch.dtype | None, split: str | None = None):
    src = _source(data, split)
    _check(model, src)
    if steps is None:
        steps = src.n_time - 1
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise SurrogateError(f"steps={steps!r} must be a positive integer")
    if steps > MAX_STEPS:
        raise SurrogateError(f"steps={steps} is above the limit {MAX_STEPS}")
    idx = np.arange(src.n_traj) if trajectories is None else np.asarray(list(trajectories), dtype=int).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= src.n_traj:
        raise SurrogateError(f"trajectories must be indices in 0..{src.n_traj - 1}")
    dev = _device(device)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    return src, int(steps), idx, dev, dtype


def _cast(model: Surrogate, dev: torch.device, dtype: torch.dtype) -> Surrogate:
    """The model on ``dev`` in ``dtype``; a copy when that changes it, so the caller's stays as it was."""
    p = next(model.parameters())
    if p.device == dev and p.dtype == dtype:
        return model
    import copy

    return copy.deepcopy(model).to(device=dev, dtype=dtype)


def _check_memory(src: _Source, steps: int, batch_size: int) -> None:
    """Refuse a horizon whose reference frames for one batch cannot fit (float64, with the
    solver's copy when the horizon is extended), before reading or solving anything."""
    from datagen.config import available_memory

    b = max(1, min(int(batch_size), src.n_traj))
    need = 3 * b * (steps + 1) * src.n_fields * int(np.prod(src.shape)) * 8
    avail = available_memory()
    if avail is not None and need > avail:
        raise SurrogateError(f"{steps} steps of a batch of {b} trajectories need about {need / 2**30:.3g} GiB of "
                             f"reference frames, more than the {avail / 2**30:.3g} GiB available: lower --steps or "
                             "--batch-size")


def _batches(idx: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SurrogateError(f"batch_size={batch_size!r} must be a positive integer")
    for s in range(0, idx.size, batch_size):
        yield idx[s:s + batch_size]


def _coords(idx: np.ndarray, steps: int, dt: float | None) -> dict[str, Any]:
    step = np.arange(1, steps + 1)
    coords: dict[str, Any] = {"trajectory": idx, "step": step}
    if dt is not None:
        coords["time"] = ("step", step * dt)
    return coords


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.flatten(1), dim=1)


def _attrs(model: Surrogate, src: _Source, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import datagen

    from . import __version__

    cfg = model.config.to_dict() if model.config is not None else {}
    return {"model_config": json.dumps(cfg, sort_keys=True), "model_info": json.dumps(model.info, default=str),
            "data": src.name, "provenance": json.dumps(src.provenance or {}, sort_keys=True),
            "versions": json.dumps({"pdesurrogate": __version__, "datagen": datagen.__version__,
                                    "torch": torch.__version__, "numpy": np.__version__}),
            **(extra or {})}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="traj", disable=not enabled)


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
            cols["stability_bound"].append(bound / scale)
    for k in out:
        out[k][row:row + ref.shape[0]] = torch.stack(cols[k], 1).cpu().numpy()


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


# -- witnesses -------------------------------------------------------------------------------
def _power_counts(powers: Sequence[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for p in powers:
        out[int(p)] = out.get(int(p), 0) + 1
    return out


def witness_in_class(witness: Surrogate, model: Surrogate) -> tuple[bool, str]:
    """Whether ``witness`` is a member of ``model``'s network class, and why not."""
    a, b = witness.vector_field, model.vector_field
    for name in ("conv1", "conv2", "act"):
        if not hasattr(a, name) or not hasattr(b, name):
            return False, "not a ConvVectorField"
    if a.fields != b.fields:
        return False, f"{a.fields} vs {b.fields} fields"
    if a.conv1.kernel_size > b.conv1.kernel_size or a.conv2.kernel_size > b.conv2.kernel_size:
        return False, (f"kernels {a.conv1.kernel_size}/{a.conv2.kernel_size} exceed the model's "
                       f"{b.conv1.kernel_size}/{b.conv2.kernel_size}")
    need, have = _power_counts(a.act.powers), _power_counts((list(b.act.powers) * b.hidden)[:b.hidden])
    if a.hidden > b.hidden or any(have.get(p, 0) < n for p, n in need.items()):
        return False, f"needs {a.hidden} hidden channels of powers {dict(need)}; the model has {dict(have)}"
    if a.conv1.bias is not None and b.conv1.bias is None and bool(torch.any(a.conv1.bias != 0)):
        return False, "needs a first-layer bias"
    if a.conv2.bias is not None and b.conv2.bias is None and bool(torch.any(a.conv2.bias != 0)):
        return False, "needs an output bias"
    if (witness.integrator, witness.substeps) != (model.integrator, model.substeps):
        return False, "another integrator or substep count"
    if b.conv1.constraint or b.conv2.constraint:
        return False, f"the model's kernels are constrained ({b.conv1.constraint or b.conv2.constraint})"
    return True, "in class"


def default_witness(model: Surrogate, pde: PDE, grid: Grid) -> tuple[Surrogate, dict[str, Any]]:
    """The sharpest hand-built member of ``model``'s class: the modified-equation network when it
    fits, else the finite-difference scheme's exact network; outside the class (with a note) when
    neither fits."""
    from .exact import exact_surrogate

    vf = model.vector_field
    powers = sorted(set(getattr(getattr(vf, "act", None), "powers", ()) or ()))
    K1 = getattr(getattr(vf, "conv1", None), "kernel_size", 3)
    K2 = getattr(getattr(vf, "conv2", None), "kernel_size", 1)
    dtype = next(model.parameters()).dtype
    base = dict(dtype=dtype, integrator=model.integrator)
    candidates = []
    only = tuple(powers) if tuple(powers) in ((1,), (2,)) else None
    if model.integrator == "euler":
        candidates.append(("modified equation (order 1)", dict(
            modified_equation=1, accuracy="max", kernel_size=K1, powers=only, truncate=only == (2,),
            k2_derivatives=K2 > 1 and grid.boundary == "periodic")))
    candidates.append(("finite-difference scheme", dict(accuracy=2, powers=only, truncate=False)))
    candidates.append(("finite-difference scheme (mixed powers)", dict(accuracy=2)))
    first = None
    for name, kw in candidates:
        try:
            w = exact_surrogate(pde, grid, model.dt, substeps=model.substeps, **base, **kw)
        except SurrogateError:
            continue
        ok, why = witness_in_class(w, model)
        meta = {"witness": name, "witness_in_class": ok, "witness_class_note": why,
                "witness_truncated": bool(w.info.get("dropped")), "witness_dropped": list(w.info.get("dropped", [])),
                "witness_hidden": w.vector_field.hidden}
        if ok:
            return w, meta
        first = first or (w, meta)
    if first is None:
        raise SurrogateError(f"no exact network can be built for {pde.name}; pass witness=")
    return first


# -- Lipschitz -------------------------------------------------------------------------------
@contextmanager
def _no_param_grads(*models: torch.nn.Module):
    """Input gradients only: weight gradients would double the cost of every backward pass."""
    params = [p for m in models for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _jvp_fd(model: Surrogate, u: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``J v`` by a forward difference from ``y = model(u)``, with a step of ``sqrt(eps)`` of the
    state's size per sample: one extra forward pass (forward-mode AD costs about three here).

    Truncation and round-off are both about ``sqrt(eps)`` relative: 3e-4 in float32 and 1.5e-8 in
    float64 (for a linear map only round-off remains).
    """
    size = u.flatten(1).abs().amax(1).clamp(min=1e-30) / v.flatten(1).abs().amax(1).clamp(min=1e-30)
    h = (torch.finfo(u.dtype).eps ** 0.5 * size).view(-1, 1, 1, 1)
    with torch.no_grad():
        return (model(u + h * v) - y) / h


def _power(model: Surrogate, u: torch.Tensor, iterations: int, v0: torch.Tensor | None, seed: int):
    """``(N(u), sigma, v)``: one forward pass with a graph, then power iteration on ``J^T J``."""
    x = u.detach().requires_grad_(True)
    with torch.enable_grad():
        y = model(x)
    y0 = y.detach()
    if v0 is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        v0 = torch.randn(u.shape, generator=g, dtype=torch.float64).to(u.device, u.dtype)
    v = v0 / _norm(v0).view(-1, 1, 1, 1)
    sigma = torch.zeros(u.shape[0], dtype=torch.float64, device=u.device)
    n_it = max(1, int(iterations))
    for k in range(n_it):
        Jv = _jvp_fd(model, u, v, y0)
        sigma = _norm(Jv).to(torch.float64)
        (w,) = torch.autograd.grad(y, x, Jv, retain_graph=k < n_it - 1)
        n = _norm(w).view(-1, 1, 1, 1)
        v = torch.where(n > 0, w / n.clamp(min=torch.finfo(w.dtype).tiny), v)
    return y0, sigma, v.detach()


def lipschitz_estimate(model: Surrogate, u: torch.Tensor, iterations: int = 20, v0: torch.Tensor | None = None,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral norm of the Jacobian of one step of ``model`` at each sample of ``u``.

    Power iteration on ``J^T J``: ``J v`` by forward differences, ``J^T w`` by reverse-mode AD.
    Returns ``(sigma per sample, v)``, ``v`` the last right singular vector estimate (pass it back
    as ``v0`` to warm-start at a nearby state). The estimate increases to the norm from below;
    after k iterations its relative error is about ``(sigma_2 / sigma_1)^(2k)`` times the start's
    weight on the other singular vectors.
    """
    with _no_param_grads(model):
        _, sigma, v = _power(model, u, iterations, v0, seed)
    return sigma, v


TRACK = -1  # lipschitz=True: half a power iteration per step, alternating J and J^T


def _track(model: Surrogate, u: torch.Tensor, n: int, v: torch.Tensor | None, w: torch.Tensor | None, seed: int):
    """``(N(u), sigma, v, w)`` tracking the top singular pair along the reference trajectory.

    Two full iterations at the first step; after that each step applies only one of ``J`` or
    ``J^T`` to the previous step's unit vector, alternately: ``||J v||`` and ``||J^T w||`` are both
    lower bounds of ``||J||`` that power iteration drives up, and the half iteration halves the
    cost (a forward difference on even steps, one backward pass on odd ones).
    """
    if n == 1 or v is None:
        y, sigma, v = _power(model, u, 2, None, seed)
        Jv = _jvp_fd(model, u, v, y)
        return y, sigma, v, Jv / _norm(Jv).clamp(min=torch.finfo(Jv.dtype).tiny).view(-1, 1, 1, 1)
    if n % 2 == 0:
        with torch.no_grad():
            y = model(u)
        Jv = _jvp_fd(model, u, v, y)
        sigma = _norm(Jv).to(torch.float64)
        nz = sigma.view(-1, 1, 1, 1) > 0
        return y, sigma, v, torch.where(nz, Jv / sigma.clamp(min=1e-300).view(-1, 1, 1, 1).to(Jv.dtype), w)
    x = u.detach().requires_grad_(True)
    with torch.enable_grad():
        y = model(x)
    (g,) = torch.autograd.grad(y, x, w)
    sigma = _norm(g).to(torch.float64)
    nz = sigma.view(-1, 1, 1, 1) > 0
    return y.detach(), sigma, torch.where(nz, g / sigma.clamp(min=1e-300).view(-1, 1, 1, 1).to(g.dtype), v), w


# -- error split -----------------------------------------------------------------------------
SPLIT_VARS = ("total", "approximation", "optimisation", "local_total", "local_approximation", "local_optimisation")


def error_split(model: Surrogate, data: Any, steps: int = 40, witness: Surrogate | None = None,
                lipschitz: bool | int = True, trajectories: Sequence[int] | None = None, batch_size: int = 32,
                device: str | torch.device = "auto", dtype: torch.dtype | None = None, seed: int = 0,
                progress: bool = False, split: str = "test"):
    """Split a surrogate's rollout error into approximation and optimisation parts.

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
            ``lipschitz`` and ``stability_bound``.
        trajectories, batch_size, device, dtype, progress, split: as for :func:`evaluate`.
        seed: seed of the power iteration's start vector.

    Returns an ``xarray.Dataset`` with dims ``(trajectory, step)`` and variables ``total``,
    ``approximation``, ``optimisation``, ``local_total``, ``local_approximation``,
    ``local_optimisation`` (all relative to ``||Phi^n u0||``), and ``lipschitz`` and
    ``stability_bound`` unless ``lipschitz=False``. ``attrs`` name the witness and whether it is in
    the model's class (``witness_in_class``); a warning says so when it is not.
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
    iters = 0 if lipschitz is False else (TRACK if lipschitz is True else int(lipschitz))
    N, E = _cast(model, dev, dtype), _cast(witness, dev, dtype)
    names = list(SPLIT_VARS) + (["lipschitz", "stability_bound"] if iters else [])
    out = {k: np.empty((idx.size, steps)) for k in names}
    bar = _progress(idx.size, "split", progress)
    row = 0
    with _no_param_grads(N, E):
        for b in _batches(idx, batch_size):
            _split_batch(N, E, src.read(b, steps), steps, iters, dev, dtype, seed, out, row)
            row += b.size
            bar.update(b.size)
    bar.close()
    coords = _coords(idx, steps, src.dt)
    ds = xr.Dataset({k: (("trajectory", "step"), v) for k, v in out.items()}, coords=coords,
                    attrs=_attrs(model, src, {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in meta.items()}))
    ds.attrs["witness_in_class"] = int(meta["witness_in_class"])
    ds.attrs["witness_truncated"] = int(meta["witness_truncated"])
    ds.attrs["lipschitz_iterations"] = 0.5 if iters == TRACK else iters
    if iters:
        ds["lipschitz"].attrs["long_name"] = "spectral norm of the step's Jacobian at the reference frame n-1"
        ds["stability_bound"].attrs["long_name"] = "B_n = L_{n-1} B_{n-1} + local_total_n, relative"
    return ds
