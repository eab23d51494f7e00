"""The default recipe: train the paper's class from data alone.

``learn(model, train, valid)`` needs no PDE and no witness: the grid, ``dt`` and the boundary of
the data are all it reads. Two phases, each scored by the validation rollout:

1. **Start from the data.** ``start="identify"`` (the default) reads a PDE from the frames by
   sparse regression (:func:`pdesurrogate.identify_data`) and builds the class's
   modified-equation network of it, the construction of the witnesses with the identified
   equation in place of a given one. ``start="least-squares"`` (also the fallback when too few
   frames or a PDE outside the class): K1 holds sign pairs ``+d, -d`` of the finite-difference
   stencils, each channel shifted by ``margin`` times the largest ``|z_c|`` its stencil gives on
   the data, so ``relu^2(b + z)`` and ``relu^2(b - z)`` together span ``{1, z, z^2}``; the field
   is then linear in K2's centre taps and ``b2``, fitted by least squares to the time derivative
   read from the data (variable projection). When the start cannot be stepped stably at the
   data's ``dt`` by the model's substeps, it takes more and starts again.
2. **L-BFGS on one-step windows** over all weights, preconditioned by the Gauss-Newton diagonal,
   with a penalty that holds the model's step at constant states to the start's (``anchor``):
   zero-mean data hardly see wavenumber zero, and free training bends the network there, which
   governs the rollout once the solution decays to its mean (the drift after the trained
   horizon). Optionally Levenberg-Marquardt with the exact Jacobian afterwards.

After every check the validation rollout error decides, and the model ends in the best validated
state (never worse than its start); a rollout that blows up is reported in one line.
Measured on Fisher (docs/training.md): without the anchor the same L-BFGS reached rE(40) 1.2e-4
but 7e-3 at step 200 (constant states grown 1.6 % too fast); K2's off-centre taps fitted by least
squares made every rollout blow up; Levenberg-Marquardt from the least-squares start moved the
validation error up and down threefold from one iteration to the next.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from datagen.progress import eta_text

from .checkpoint import save
from .data import WindowDataset
from .errors import SurrogateError
from .evaluation import rollout_error
from .gauss_newton import lm_polish
from .model import Surrogate, build_surrogate
from .polish import lbfgs_polish
from .recipe import MODEL_DEFAULTS, START_PAIRS, Recipe, _draw
from .starts import _anchor, _field_of, _frames, _start, _with_unroll, data_start

__all__ = ["Recipe", "learn", "train", "data_start"]


def learn(model: Surrogate, train: WindowDataset | str | os.PathLike, valid: Any = None,
          recipe: Recipe | Mapping[str, Any] | None = None, *, checkpoint: str | os.PathLike | None = None,
          log: Callable[[str], None] | None = print):
    """Train ``model`` in place by the default recipe; return the history (``xarray.Dataset``).

    Args:
        model: a surrogate of the paper's class (``build_surrogate(..., init="stencil")``); it is
            trained in float64.
        train: a :class:`WindowDataset`, a dataset folder (its ``train`` split) or a file.
        valid: a dataset folder (its ``valid`` split), a file or an array scored by
            :func:`pdesurrogate.evaluate` after every iteration; ``None`` keeps the last state.
        recipe: a :class:`Recipe` or a dict of its options.
        checkpoint: folder for ``best.pt`` (after every phase).
        log: called with one line per iteration and per phase (``None``: silent).

    The history has one row per iteration (phase ``start``, ``one-step``, ``multi-step``) with
    the window loss (mean squared error per cell and step) and the validation error; its
    attrs say what was kept and why training stopped.
    """
    import xarray as xr

    rc = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe or {})
    if not isinstance(model, Surrogate):
        raise SurrogateError(f"learn trains a pdesurrogate.Surrogate, not {type(model).__name__}")
    _field_of(model)
    if not isinstance(train, WindowDataset):
        train = WindowDataset(train, unroll=1)
    if abs(model.dt - train.dt) > 1e-9 * train.dt:
        raise SurrogateError(f"the model steps dt={model.dt:.6g}, the data dt={train.dt:.6g}: build the model "
                             "with dt=train.dt")
    if model.vector_field.n_fields != len(train.fields):
        raise SurrogateError(f"the model has {model.vector_field.n_fields} field(s), the data {len(train.fields)}")
    if train.crop is not None:
        raise SurrogateError("the default recipe trains on full-grid windows: open the data without crop=")
    if isinstance(valid, (str, os.PathLike)) and Path(valid).is_dir():
        from datagen.store import dataset_files

        valid = dataset_files(valid).get("valid")
    say = log or (lambda line: None)
    model.to(device="cpu", dtype=torch.float64)
    valid_steps = rc.valid_steps
    if valid is not None and valid_steps is None:
        from .source import open_source as _source

        valid_steps = _source(valid).n_time - 1

    def score() -> float | None:
        return rollout_error(model, valid, valid_steps) if valid is not None else None

    rows: list[tuple[str, int, float, float]] = []
    t0 = time.perf_counter()
    frames = _frames(train, START_PAIRS, rc.seed)
    fit = _start(model, train, frames, rc, say)
    v0 = score()
    with torch.no_grad():
        loss0 = float(((model(frames[:16, 0]) - frames[:16, 1]) ** 2).mean())
    rows.append(("start", 0, loss0, math.nan if v0 is None else v0))
    what = "least-squares" if rc.start == "least-squares" and "identified" not in fit else "identified PDE's fit"
    say(f"start from the data: {what} residual {', '.join(f'{v:.3g}' for k, v in fit.items() if k != 'identified')}"
        + (f"; valid rel_l2({valid_steps}) {v0:.4g}" if v0 is not None else ""))
    best = v0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    params = [p for p in model.parameters() if p.requires_grad]
    blown: list[str] = []

    def record(name: str, total: int) -> Callable[[int, float, float | None], None]:
        began = time.perf_counter()

        def hear(it: int, loss: float, v: float | None) -> None:
            rows.append((name, it, loss, math.nan if v is None else v))
            if v is not None and not math.isfinite(v):
                blown.append(f"{name} iteration {it}")
            say(f"{name} {it}/{total}: loss {loss:.4g}" + (f"  valid rel_l2({valid_steps}) {v:.4g}" if v is not None
                                                             else "")
                + f"  ({eta_text(it, total, time.perf_counter() - began)})")
        return hear

    extra = _anchor(model, frames, rc) if rc.anchor > 0 else None
    if rc.lbfgs:
        one = _with_unroll(train, 1)
        one.dtype = torch.float64
        out = lbfgs_polish(model, one, params, rc.lbfgs, rc.windows, rc.check, rc.precondition, 1, rc.loss, rc.seed,
                           torch.device("cpu"), valid, valid_steps, None, torch.float64, None,
                           math.inf if best is None else best, on_check=record("L-BFGS", rc.lbfgs), extra=extra)
        if valid is not None and out["lbfgs_kept"]:
            best = out["lbfgs_valid"]
        if ckpt is not None:
            save(model, ckpt / "best.pt", provenance=train.provenance)
    if rc.lm:
        one = _with_unroll(train, 1)
        wins = [torch.as_tensor(one.window(i), dtype=torch.float64) for i in _draw(len(one), rc.lm_windows, rc.seed, 2)]
        norm = len(wins) * (wins[0][0].numel() if rc.loss == "mse" else 1)
        out = lm_polish(model, wins, norm, params, rc.lm, 1, rc.loss, score, best, lambda t: t,
                        on_iteration=record("Levenberg-Marquardt", rc.lm))
        if valid is not None and out["lm_kept"]:
            best = out["lm_valid"]
        if ckpt is not None:
            save(model, ckpt / "best.pt", provenance=train.provenance)
    if blown:
        say(f"the validation rollout blew up ({blown[0]}); kept the best state (valid rel_l2 {best:.4g})")
    phase, iteration, loss, vals = zip(*rows)
    hist = xr.Dataset({"loss": ("iteration", np.asarray(loss)), "valid": ("iteration", np.asarray(vals))},
                      coords={"phase": ("iteration", list(phase)), "step": ("iteration", list(iteration))},
                      attrs={"recipe": "default", "best_valid": math.nan if best is None else best,
                             "valid_steps": valid_steps or 0, "seconds": time.perf_counter() - t0,
                             "blew_up": blown[0] if blown else ""})
    model.info = {**model.info, "trained": {"recipe": "default", **rc.to_dict(), "best_valid": hist.attrs["best_valid"],
                                            "valid_steps": valid_steps}}
    return hist


def train(data: str | os.PathLike, recipe: Recipe | Mapping[str, Any] | None = None, *,
          log: Callable[[str], None] | None = print, **model_options: Any) -> tuple[Surrogate, Any]:
    """Build the paper's class on ``data``'s grid and train it by the default recipe.

    Args:
        data: a dataset folder (``train`` split, validated on ``valid`` when there is one) or a
            file.
        recipe: :class:`Recipe` options.
        model_options: :class:`SurrogateConfig` options over the defaults (hidden 10, 5 x 5
            kernels, power 2, Euler x 3, stencil init).

    Returns ``(model, history)``.
    """
    ds = WindowDataset(data, unroll=1)
    model = build_surrogate(**{**MODEL_DEFAULTS, **model_options}, **_from_data(ds), dtype=torch.float64)
    valid = data if Path(data).is_dir() else None
    if valid is not None:
        from datagen.store import dataset_files

        if "valid" not in dataset_files(data):
            valid = None
    return model, learn(model, ds, valid, recipe, log=log)


def _from_data(ds: WindowDataset) -> dict[str, Any]:
    """What a model takes from its data: step, grid spacing, boundary, field count."""
    return {"dt": ds.dt, "spacing": ds.spacing, "boundary": ds.boundary, "boundary_value": ds.grid.boundary_value,
            "n_fields": len(ds.fields)}

