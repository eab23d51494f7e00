"""``fit``: train a surrogate on unrolled windows.

The loss of a window ``(u0, u1..uk)`` is the mean over its ``k`` steps of the error of the
model's own rollout ``N^j(u0 + noise)`` against ``u_j`` (mean squared, or relative L2). ``k``
follows a curriculum (e.g. 1, then 3, then 5 steps), Adam follows a cosine or plateau schedule,
L-BFGS can polish the result, and training stops early when the validation rollout error (from
:func:`pdesurrogate.evaluate` at the longest horizon) stops improving.

Every random choice of epoch ``e`` (window order, noise, crops) is drawn from generators seeded
by ``(seed, e)``, so a run resumed from the checkpoint written after epoch ``e`` continues exactly
as the uninterrupted run would. Under ``torchrun`` each process takes its share of every global
batch and the gradients are summed across processes: the loss history is that of one process
on the same global batch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .allocator import malloc_tuned
from .data import WindowDataset, receptive_halo
from .devices import resolve_device as _device
from .distributed import allreduce as _allreduce, rank_world as _dist, sync_grads as _sync_grads
from .errors import SurrogateError
from .gauss_newton import lm_polish
from .fit_options import FitOptions
from .losses import stream_seed as _seed, window_loss
from .checkpoint import load_training_state, save
from .model import Surrogate
from .polish import _polish_windows, _valid_error, lbfgs_polish

__all__ = ["fit", "FitOptions", "train_one_epoch", "train_one_batch"]

# options that must agree between a checkpoint and the run that resumes it
_RESUME_KEYS = ("epochs", "batch_size", "unroll", "curriculum", "loss", "noise", "lr", "schedule", "clip", "seed", "dtype",
                "weight_decay", "model", "data", "valid")


def _phase(curriculum: Sequence[int], epoch: int, epochs: int) -> int:
    return int(curriculum[min(epoch * len(curriculum) // max(epochs, 1), len(curriculum) - 1)])


def _describe(train: WindowDataset) -> dict[str, Any]:
    """What defines the training windows: the file and its content, and how windows are cut."""
    import hashlib

    prov = json.dumps(train.provenance, sort_keys=True) if train.provenance else None
    st = train.path.stat()
    return {"file": str(train.path.resolve()), "content": hashlib.sha256(prov.encode()).hexdigest()[:16] if prov
            else f"{st.st_size}:{st.st_mtime_ns}", "unroll": train.unroll, "stride": train.stride,
            "fields": list(train.fields), "trajectories": _ints(train.trajectories), "crop": train.crop,
            "halo": train.halo}


def _name(source: Any) -> str | None:
    if source is None:
        return None
    return str(Path(source).resolve()) if isinstance(source, (str, os.PathLike)) else "in memory"


def _ints(values: Any) -> list[int] | None:
    return None if values is None else [int(v) for v in np.asarray(values).reshape(-1)]


def _differing(old: Any, new: Any) -> str:
    """``old`` against this run's ``new``, naming the first entry that differs when both are dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*old, *(k for k in new if k not in old)]:  # in the order that describes the run
            if json.dumps(old.get(k), sort_keys=True) != json.dumps(new.get(k), sort_keys=True):
                return f"{k} was {old.get(k)!r}, this run has {new.get(k)!r}"
    return f"was {old!r}, this run has {new!r}"


def _check(model: Surrogate, train: WindowDataset, steps_max: int, o: FitOptions) -> None:
    """Refuse, in one line, a model and windows that ``o`` cannot train."""
    if not isinstance(model, Surrogate):
        raise SurrogateError(f"fit trains a pdesurrogate.Surrogate, not {type(model).__name__}")
    if not isinstance(train, WindowDataset):
        raise SurrogateError("train must be a pdesurrogate.WindowDataset (e.g. WindowDataset('train.h5', unroll=5))")
    if steps_max > train.unroll:
        raise SurrogateError(f"the windows hold {train.unroll} steps, the curriculum asks for {steps_max}: "
                             f"build the WindowDataset with unroll={steps_max}")
    if abs(model.dt - train.dt) > 1e-9 * train.dt:
        raise SurrogateError(f"the model steps dt={model.dt:.6g}, the data dt={train.dt:.6g}: build the model "
                             "with dt=train.dt")
    n_fields = getattr(model.vector_field, "n_fields", None)
    if n_fields is not None and n_fields != len(train.fields):
        raise SurrogateError(f"the model has {n_fields} field(s), the data {len(train.fields)}")
    if model.config is not None and model.config.boundary != train.boundary:
        raise SurrogateError(f"the model pads {model.config.boundary}, the data is {train.boundary}")
    if o.lm and train.crop is not None:
        raise SurrogateError("lm= needs full-grid windows: open the training data without crop=")
    if train.crop is not None:
        need = receptive_halo(model, steps_max)
        if train.halo < need:
            raise SurrogateError(f"crops need a halo of {need} cells for {steps_max} steps of this model, the "
                                 f"dataset has {train.halo}: WindowDataset(..., crop={train.crop}, halo={need})")


def _with_tuned_malloc(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with malloc_tuned(kwargs.get("tune_malloc", False) is True):
            return fn(*args, **kwargs)
    return run


@dataclass
class _Run:
    """What the parts of one ``fit`` call share: the objects it trains with and its state so far."""

    model: Surrogate
    train: WindowDataset
    o: FitOptions
    curriculum: list[int]
    dev: torch.device
    dtype: torch.dtype
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: Any
    valid: Any
    valid_steps: int | None
    valid_trajectories: Any
    ckpt: Path | None
    options: dict[str, Any]
    hist: dict[str, list] = field(default_factory=lambda: {k: [] for k in ("loss", "valid", "lr", "unroll", "seconds")})
    best: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0
    start: int = 0

    @property
    def steps_max(self) -> int:
        return max(self.curriculum)

    def valid_error(self) -> float:
        self.model.eval()
        return _valid_error(self.model, self.valid, self.valid_steps, self.valid_trajectories, self.dev, self.dtype)

    def keep_best(self, v: float) -> None:
        self.best = v
        self.best_state = {n: t.detach().cpu().clone() for n, t in self.model.state_dict().items()}


def _options(options: FitOptions | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> FitOptions:
    base = options if isinstance(options, FitOptions) else FitOptions.from_dict(options or {})
    return base.replace(**overrides) if overrides else base


def _prepare(model: Surrogate, train: WindowDataset, valid: Any, o: FitOptions, checkpoint: Any) -> _Run:
    """Check the inputs, move the model, build the optimiser and scheduler, find the validation data."""
    curriculum = o.steps(train.unroll if isinstance(train, WindowDataset) else 1)
    _check(model, train, max(curriculum), o)
    dev = _device(o.device)
    if o.dtype is not None:
        model.to(o.dtype)
    model.to(dev)
    dtype = next(model.parameters()).dtype
    train.dtype = dtype
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SurrogateError("the model has no trainable parameters")
    opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    schedule = None if o.schedule == "none" else o.schedule
    sched: Any = None
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs * math.ceil(len(train) / o.batch_size),
                                                           eta_min=o.lr / 100)
    elif schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    from .source import open_source

    if isinstance(valid, (str, os.PathLike)) and Path(valid).is_dir():
        valid = open_source(valid, "valid").path  # a dataset folder: its valid split
    valid_src = valid.path if isinstance(valid, WindowDataset) else valid
    valid_steps = o.valid_steps
    if valid is not None and valid_steps is None:
        valid_steps = open_source(valid_src).n_time - 1
    valid_trajectories = o.valid_trajectories
    if isinstance(valid, WindowDataset) and valid_trajectories is None:
        valid_trajectories = valid.trajectories
    options = {"batch_size": o.batch_size, "unroll": max(curriculum), "curriculum": curriculum, "loss": o.loss,
               "noise": float(o.noise), "lr": float(o.lr), "schedule": schedule, "clip": o.clip, "seed": int(o.seed),
               "dtype": str(dtype), "weight_decay": float(o.weight_decay), "epochs": o.epochs, "lbfgs": int(o.lbfgs),
               "lm": int(o.lm), "model": model.config.to_dict() if model.config is not None else None,
               "data": _describe(train), "valid": {"source": _name(valid_src), "steps": valid_steps,
                                                   "trajectories": _ints(valid_trajectories)}}
    return _Run(model, train, o, curriculum, dev, dtype, params, opt, sched, valid_src, valid_steps,
                valid_trajectories, Path(checkpoint) if checkpoint is not None else None, options)


def _resume(run: _Run) -> None:
    """Continue from ``last.pt`` of the checkpoint folder, refusing one written with other options."""
    last = run.ckpt / "last.pt"
    state = load_training_state(last, run.model)
    old = state["options"]
    diff = [k for k in _RESUME_KEYS
            if json.dumps(old.get(k), sort_keys=True) != json.dumps(run.options.get(k), sort_keys=True)]
    if diff:
        k = diff[0]
        raise SurrogateError(f"{last} was written with other options ({', '.join(diff)}): "
                             f"{k} {_differing(old.get(k), run.options.get(k))}; "
                             "resume with the same options or start a new checkpoint folder")
    run.opt.load_state_dict(state["optimizer"])
    if run.sched is not None and state.get("scheduler"):
        run.sched.load_state_dict(state["scheduler"])
    run.hist = {k: list(v) for k, v in state["history"].items()}
    run.best, run.stale, run.start = float(state["best"]), int(state["stale"]), int(state["epoch"]) + 1
    run.best_state = state.get("best_state")


def train_one_epoch(run: _Run, epoch: int) -> tuple[float, int]:
    """One pass of Adam over the windows (this process's share of every global batch); returns the
    mean window loss and the unroll it trained at."""
    from datagen.progress import Progress

    o, train, rank, world = run.o, run.train, *_dist()
    k = _phase(run.curriculum, epoch, o.epochs)
    train.set_epoch(epoch)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(_seed(o.seed, epoch, 0)))
    batches = [order[i: i + o.batch_size].tolist() for i in range(0, len(train), o.batch_size)]
    mine = [b[rank::world] for b in batches]
    it = iter(torch.utils.data.DataLoader(train, batch_sampler=[m for m in mine if m], num_workers=o.num_workers))
    total, count = 0.0, 0
    bar = Progress(len(batches), f"epoch {epoch + 1}/{o.epochs} k={k}", "batches", leave=False,
                   enabled=o.progress and rank == 0)
    run.model.train()
    for b, m in zip(batches, mine):
        loss = train_one_batch(run, next(it).to(run.dev) if m else None, m, len(b), k, epoch)
        if not math.isfinite(loss):
            raise SurrogateError(f"the loss became {loss} in epoch {epoch + 1}: lower lr (now "
                                 f"{run.opt.param_groups[0]['lr']:.3g}), raise clip, or check the data")
        total += loss * len(b)
        count += len(b)
        bar.update(1, f"loss {total / count:.3g}")
    bar.close()
    return total / count, k


def train_one_batch(run: _Run, windows: torch.Tensor | None, mine: list[int], size: int, k: int, epoch: int) -> float:
    """One Adam step on a global batch of ``size`` windows (``windows``: this process's share)."""
    o = run.o
    run.opt.zero_grad(set_to_none=True)
    part = torch.zeros((), dtype=torch.float64, device=run.dev)
    if windows is not None:
        seeds = [_seed(o.seed, epoch, 2 + i) for i in mine] if o.noise else None
        per = window_loss(run.model, windows[:, : k + 1], k, o.loss, o.noise, seeds, run.train.crop)
        part = per.sum() / size  # the global batch's mean: processes add their shares of the sum
        part.backward()
    _sync_grads(run.params)
    loss = float(_allreduce(part.detach().to(torch.float64)))
    if math.isfinite(loss):
        if o.clip:
            torch.nn.utils.clip_grad_norm_(run.params, o.clip)
        run.opt.step()
        if o.schedule == "cosine":
            run.sched.step()
    return loss


def _after_epoch(run: _Run, epoch: int, loss: float, k: int, seconds: float) -> None:
    """Validate, record, keep the best state, write the checkpoints and the epoch's line."""
    rank = _dist()[0]
    v = run.valid_error() if run.valid is not None else math.nan
    if run.o.schedule == "plateau":
        run.sched.step(v if run.valid is not None else loss)
    for key, val in (("loss", loss), ("valid", v), ("lr", run.opt.param_groups[0]["lr"]), ("unroll", k),
                     ("seconds", seconds)):
        run.hist[key].append(float(val))
    if run.valid is not None and v < run.best:
        run.stale = 0
        run.keep_best(v)
        if run.ckpt is not None and rank == 0:
            save(run.model, run.ckpt / "best.pt", provenance=run.train.provenance)
    elif run.valid is not None:
        run.stale += 1
    if (run.o.progress if run.o.log is None else run.o.log) and rank == 0:
        from tqdm import tqdm

        tqdm.write(f"epoch {epoch + 1}/{run.o.epochs}  unroll {k}  loss {loss:.4g}"
                   + (f"  valid rel_l2({run.valid_steps}) {v:.4g}" if run.valid is not None else ""))
    if run.ckpt is not None and rank == 0:
        save(run.model, run.ckpt / "last.pt", provenance=run.train.provenance, training={
            "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict() if run.sched is not None else None,
            "epoch": epoch, "history": run.hist, "best": run.best, "stale": run.stale, "best_state": run.best_state,
            "options": run.options})


def _polish(run: _Run) -> dict[str, Any]:
    """The second-order polishers after the epochs: L-BFGS, then Levenberg-Marquardt, each from the
    best state so far and kept only when it validates better."""
    o, attrs = run.o, {}
    if o.lbfgs:
        attrs.update(lbfgs_polish(run.model, run.train, run.params, o.lbfgs, o.lbfgs_windows, o.lbfgs_check,
                                  o.lbfgs_precondition, run.steps_max, o.loss, o.seed, run.dev, run.valid,
                                  run.valid_steps, run.valid_trajectories, run.dtype, run.best_state, run.best))
        if attrs.get("lbfgs_kept"):
            run.best_state, run.best = None, attrs.get("lbfgs_valid", run.best)
    if o.lm:
        if run.best_state is not None:
            run.model.load_state_dict(run.best_state)
        pick, windows = _polish_windows(run.train, o.lm_windows, o.seed, run.dev)  # the first of L-BFGS's
        cells = run.train[pick[0]][0].numel()
        run.model.eval()
        # the model holds the best state so far, whose validation error is `best`
        attrs.update(lm_polish(run.model, windows, len(pick) * run.steps_max * (cells if o.loss == "mse" else 1),
                               run.params, o.lm, run.steps_max, o.loss,
                               run.valid_error if run.valid is not None else (lambda: None),
                               run.best if run.valid is not None else None, _allreduce))
        run.best_state = None
        if attrs["lm_kept"] and run.valid is not None:
            run.best = attrs["lm_valid"]
    return attrs


@_with_tuned_malloc
def fit(model: Surrogate, train: WindowDataset, valid: WindowDataset | str | os.PathLike | None = None,
        options: FitOptions | Mapping[str, Any] | None = None, *, checkpoint: str | os.PathLike | None = None,
        resume: bool = False, tune_malloc: bool = False, **overrides: Any):
    """Train ``model`` in place on the windows of ``train`` by Adam; return the history (``xarray.Dataset``).

    Args:
        model: the surrogate (for example ``build_surrogate(..., init="stencil")``).
        train: a :class:`WindowDataset`.
        valid: a :class:`WindowDataset`, a datagen file or a dataset folder (its ``valid`` split),
            scored by :func:`pdesurrogate.evaluate` after every epoch.
        options: a :class:`FitOptions` or a dict of its fields; keyword ``overrides`` (``epochs=``,
            ``lr=``, ...) replace single fields.
        checkpoint: folder for ``last.pt`` (after every epoch, with optimizer state; resumable),
            ``best.pt`` (best validation error) and ``model.pt`` (the final weights).
        resume: continue from ``checkpoint/last.pt`` when it exists.
        tune_malloc: True: while ``fit`` runs, glibc's malloc keeps freed blocks of up to 32 MB for
            reuse (:func:`malloc_tuned`). Off by default: a library call leaves its caller's
            process as it found it; ``pdesurrogate train`` turns it on in its own process.

    At the end the model holds the weights of the best validation error (the last ones without
    ``valid``). The history has one row per epoch: ``loss``, ``valid``, ``lr``, ``unroll``,
    ``seconds``; its attrs carry the polishers' outcome and why training stopped.
    """
    import xarray as xr

    if not isinstance(tune_malloc, bool):
        raise SurrogateError(f"tune_malloc={tune_malloc!r} must be true or false")
    o = _options(options, overrides)
    run = _prepare(model, train, valid, o, checkpoint)
    if resume and run.ckpt is None:
        raise SurrogateError("resume=True needs checkpoint= (the folder of last.pt)")
    if resume and (run.ckpt / "last.pt").exists():
        _resume(run)
    stop_reason = "epochs" if run.start < o.epochs else "already complete (resumed after the last epoch)"
    if o.epochs == 0:
        stop_reason = "L-BFGS only" if o.lbfgs else "Levenberg-Marquardt only"
        if run.valid is not None:  # the starting point is the one to beat
            run.keep_best(run.valid_error())
    for epoch in range(run.start, o.epochs):
        if run.stale and o.patience is not None and run.stale >= o.patience:
            stop_reason = f"no validation gain for {o.patience} epochs"
            break
        t0 = time.perf_counter()
        loss, k = train_one_epoch(run, epoch)
        _after_epoch(run, epoch, loss, k, time.perf_counter() - t0)
    attrs: dict[str, Any] = {"stopped": stop_reason, **_polish(run)}
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    ds = xr.Dataset({k: ("epoch", np.asarray(v, dtype=float)) for k, v in run.hist.items()},
                    coords={"epoch": np.arange(1, len(run.hist["loss"]) + 1)},
                    attrs={**attrs, "options": json.dumps(run.options), "best_valid": run.best})
    model.info = {**model.info, "trained": {"epochs": len(run.hist["loss"]), "best_valid": run.best,
                                            "valid_steps": run.valid_steps, **run.options}}
    if run.ckpt is not None and _dist()[0] == 0:
        save(model, run.ckpt / "model.pt", provenance=train.provenance)
    return ds
