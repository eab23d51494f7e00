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
from typing import Any, Sequence

import numpy as np
import torch

from .allocator import malloc_tuned
from .data import WindowDataset, receptive_halo
from .devices import resolve_device as _device
from .distributed import allreduce as _allreduce, rank_world as _dist, sync_grads as _sync_grads
from .errors import SurrogateError
from .gauss_newton import lm_polish
from .losses import LOSSES, stream_seed as _seed, window_loss
from .checkpoint import load_training_state, save
from .model import Surrogate
from .polish import _polish_windows, _valid_error, lbfgs_polish

__all__ = ["fit"]

SCHEDULES = (None, "none", "cosine", "plateau")
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


def _check(model: Surrogate, train: WindowDataset, steps_max: int, loss: str, schedule: str | None) -> None:
    if not isinstance(model, Surrogate):
        raise SurrogateError(f"fit trains a pdesurrogate.Surrogate, not {type(model).__name__}")
    if not isinstance(train, WindowDataset):
        raise SurrogateError("train must be a pdesurrogate.WindowDataset (e.g. WindowDataset('train.h5', unroll=5))")
    if loss not in LOSSES:
        raise SurrogateError(f"unknown loss {loss!r}; choose mse or relative")
    if schedule not in SCHEDULES:
        raise SurrogateError(f"unknown schedule {schedule!r}; choose cosine, plateau or none")
    if steps_max > train.unroll:
        raise SurrogateError(f"the windows hold {train.unroll} steps, the curriculum asks for {steps_max}: "
                             f"build the WindowDataset with unroll={steps_max}")
    if abs(model.dt - train.dt) > 1e-9 * train.dt:
        raise SurrogateError(f"the model steps dt={model.dt:.6g}, the data dt={train.dt:.6g}: build the model "
                             "with dt=train.dt")
    fields = getattr(model.vector_field, "fields", None)
    if fields is not None and fields != len(train.fields):
        raise SurrogateError(f"the model has {fields} field(s), the data {len(train.fields)}")
    if model.config is not None and model.config.boundary != train.boundary:
        raise SurrogateError(f"the model pads {model.config.boundary}, the data is {train.boundary}")
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


@_with_tuned_malloc
def fit(model: Surrogate, train: WindowDataset, valid: WindowDataset | str | os.PathLike | None = None, *,
        epochs: int = 10, batch_size: int = 8, unroll: int | None = None, curriculum: Sequence[int] | None = None,
        loss: str = "mse", noise: float = 0.0, lr: float = 1e-3, weight_decay: float = 0.0,
        schedule: str | None = "cosine", clip: float | None = 1.0, lbfgs: int = 0, lbfgs_windows: int = 64,
        lbfgs_check: int = 25, lbfgs_precondition: bool = False, lm: int = 0, lm_windows: int = 32,
        patience: int | None = None,
        valid_steps: int | None = None, valid_trajectories: Sequence[int] | None = None,
        checkpoint: str | os.PathLike | None = None, resume: bool = False, device: str | torch.device = "auto",
        dtype: torch.dtype | None = None, seed: int = 0, progress: bool = True, log: bool | None = None,
        num_workers: int = 0, tune_malloc: bool = False):
    """Train ``model`` in place on the windows of ``train``; return the history (``xarray.Dataset``).

    Args:
        model: the surrogate (for example ``build_surrogate(..., init="stencil")``).
        train: a :class:`WindowDataset`.
        valid: a :class:`WindowDataset`, a datagen file or a dataset folder (its ``valid`` split)
            scored by :func:`pdesurrogate.evaluate`
            after every epoch (mean ``rel_l2`` at ``valid_steps``, default: every stored step).
        epochs: passes over the training windows (0: L-BFGS only, from the model as given).
        batch_size: windows per (global) batch.
        unroll: steps per window in the loss (default: the dataset's ``unroll``).
        curriculum: unroll lengths for equal shares of the epochs, e.g. ``[1, 3, 5]``.
        loss: ``mse`` or ``relative`` (see :func:`window_loss`).
        noise: input-noise level relative to each window's RMS (1e-3 is a good start).
        lr, weight_decay: Adam's.
        schedule: ``cosine`` (to lr/100 over the run), ``plateau`` (halve after 2 epochs without
            validation gain) or ``none``.
        clip: gradient-norm clipping (``None`` for none).
        lbfgs: L-BFGS iterations (strong Wolfe line search) after the Adam epochs, on
            ``lbfgs_windows`` windows at the longest unroll. With ``valid``, the validation error
            is measured every ``lbfgs_check`` iterations and the best state is kept (the Adam
            result when none is better): a lower window loss need not mean a lower rollout error.
        lbfgs_precondition: run L-BFGS on the parameters scaled by the square root of their
            Gauss-Newton diagonal (one step of the polish windows, estimated with random probes),
            so that weights of very different sizes move on one scale. Exact networks mix
            biases near 1e3 with kernel entries near 1e-4; from such a start, L-BFGS on long
            windows made no step without it.
        lm: Levenberg-Marquardt iterations at the end (after any L-BFGS), from the best state so
            far, on ``lm_windows`` full-grid windows at the longest unroll: the Gauss-Newton
            system of the windows' squared errors (``loss="relative"``: squared relative errors)
            with the exact Jacobian (one column per parameter; see
            :func:`pdesurrogate.step_jacobian`), solved in the variables scaled by its column
            norms. The Jacobian of the paper's network (511 parameters) takes 0.5 s per 100 x 100
            window on 2 cores; from the finite-difference stencils, where first-order methods
            stall on badly scaled weights, 15 iterations on 32 one-step windows reach what L-BFGS
            does not (``docs/benchmarks.md``). With ``valid`` the validation error is measured
            after every iteration and the best state kept.
        patience: stop after this many epochs without validation gain (``None``: never).
        valid_trajectories: trajectories of ``valid`` to score (default: all).
        checkpoint: folder for ``last.pt`` (after every epoch, with optimizer state; resumable)
            and ``best.pt`` (best validation error).
        resume: continue from ``checkpoint/last.pt`` when it exists.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        dtype: train in this dtype (the model is cast in place); default the model's.
        seed: seed of the window order, the noise and the crops.
        progress: a tqdm bar per epoch with the running loss.
        log: print one line per epoch (loss, validation error); default: as ``progress``.
        num_workers: DataLoader workers.
        tune_malloc: True: while ``fit`` runs, glibc's malloc keeps freed blocks of up to 32 MB
            for reuse instead of unmapping them or trimming the heap (see :func:`malloc_tuned`);
            about 1.15x the training throughput here (docs/benchmarks.md). Off by default: a
            library call leaves its caller's process as it found it; ``pdesurrogate train``
            turns it on in its own process.

    At the end the model holds the weights of the best validation error (the last ones without
    ``valid``). The history has one row per epoch: ``loss``, ``valid``, ``lr``, ``unroll``,
    ``seconds``; its attrs carry the L-BFGS outcome and why training stopped.
    """
    import xarray as xr

    curriculum = list(curriculum) if curriculum else [int(unroll or train.unroll)]
    if any(int(k) < 1 for k in curriculum):
        raise SurrogateError(f"curriculum {curriculum} must hold positive step counts")
    steps_max = max(int(k) for k in curriculum)
    _check(model, train, steps_max, loss, schedule)
    for name, v, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1), ("lbfgs", lbfgs, 0),
                         ("lbfgs_windows", lbfgs_windows, 1), ("lbfgs_check", lbfgs_check, 1), ("lm", lm, 0),
                         ("lm_windows", lm_windows, 1)):
        if not isinstance(v, int) or v < low:
            raise SurrogateError(f"{name}={v!r} must be an integer >= {low}")
    for name, v, low in (("num_workers", num_workers, 0), ("seed", seed, 0), ("patience", patience, 1),
                         ("valid_steps", valid_steps, 1)):
        if v is None and name in ("patience", "valid_steps"):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise SurrogateError(f"{name}={v!r} must be an integer >= {low}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip)
                             or clip <= 0):
        raise SurrogateError(f"clip={clip!r} must be a positive number (the largest gradient norm), or None for none")
    for name, v in (("lbfgs_precondition", lbfgs_precondition), ("tune_malloc", tune_malloc)):
        if not isinstance(v, bool):
            raise SurrogateError(f"{name}={v!r} must be true or false")
    if epochs == 0 and not lbfgs and not lm:
        raise SurrogateError("epochs=0 trains nothing: give epochs >= 1, lbfgs= or lm= iterations")
    if lm and train.crop is not None:
        raise SurrogateError("lm= needs full-grid windows: open the training data without crop=")
    for name, v in (("lr", lr), ("noise", noise), ("weight_decay", weight_decay)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise SurrogateError(f"{name}={v!r} must be a finite non-negative number")
    rank, world = _dist()
    dev = _device(device)
    if dtype is not None:
        model.to(dtype)
    model.to(dev)
    dtype = next(model.parameters()).dtype
    train.dtype = dtype
    schedule = None if schedule == "none" else schedule
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SurrogateError("the model has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    n_batches = math.ceil(len(train) / batch_size)
    if schedule == "cosine":
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * n_batches, eta_min=lr / 100)
    elif schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    else:
        sched = None
    if isinstance(valid, (str, os.PathLike)) and Path(valid).is_dir():
        from .source import open_source as _source

        valid = _source(valid, "valid").path  # a dataset folder: its valid split
    if valid is not None and valid_steps is None:
        from .source import open_source as _source

        valid_steps = _source(valid.path if isinstance(valid, WindowDataset) else valid).n_time - 1
    valid_src = valid.path if isinstance(valid, WindowDataset) else valid
    if isinstance(valid, WindowDataset) and valid_trajectories is None:
        valid_trajectories = valid.trajectories
    options = {"batch_size": batch_size, "unroll": steps_max, "curriculum": curriculum, "loss": loss,
               "noise": float(noise), "lr": float(lr), "schedule": schedule, "clip": clip, "seed": int(seed),
               "dtype": str(dtype), "weight_decay": float(weight_decay), "epochs": epochs, "lbfgs": int(lbfgs),
               "lm": int(lm), "model": model.config.to_dict() if model.config is not None else None,
               "data": _describe(train), "valid": {"source": _name(valid_src), "steps": valid_steps,
                                                   "trajectories": _ints(valid_trajectories)}}

    hist: dict[str, list] = {"loss": [], "valid": [], "lr": [], "unroll": [], "seconds": []}
    best, best_state, start, stale = math.inf, None, 0, 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and (ckpt / "last.pt").exists():
        state = load_training_state(ckpt / "last.pt", model)
        old = state["options"]
        diff = [k for k in _RESUME_KEYS if json.dumps(old.get(k), sort_keys=True) != json.dumps(options.get(k),
                                                                                                  sort_keys=True)]
        if diff:
            k = diff[0]
            raise SurrogateError(f"{ckpt / 'last.pt'} was written with other options ({', '.join(diff)}): "
                                 f"{k} {_differing(old.get(k), options.get(k))}; "
                                 "resume with the same options or start a new checkpoint folder")
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        hist = {k: list(v) for k, v in state["history"].items()}
        best, stale, start = float(state["best"]), int(state["stale"]), int(state["epoch"]) + 1
        best_state = state.get("best_state")
    elif resume and ckpt is None:
        raise SurrogateError("resume=True needs checkpoint= (the folder of last.pt)")

    from tqdm import tqdm  # not tqdm.auto: in notebooks it warns without ipywidgets

    stop_reason = "epochs" if start < epochs else "already complete (resumed after the last epoch)"
    if epochs == 0:
        stop_reason = "L-BFGS only" if lbfgs else "Levenberg-Marquardt only"
        if valid is not None:  # the starting point is the one to beat
            model.eval()
            best = _valid_error(model, valid_src, valid_steps, valid_trajectories, dev, dtype)
            best_state = {n: t.detach().cpu().clone() for n, t in model.state_dict().items()}
    for epoch in range(start, epochs):
        if stale and patience is not None and stale >= patience:
            stop_reason = f"no validation gain for {patience} epochs"
            break
        t0 = time.perf_counter()
        k = _phase(curriculum, epoch, epochs)
        train.set_epoch(epoch)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(_seed(seed, epoch, 0)))
        batches = [order[i: i + batch_size].tolist() for i in range(0, len(train), batch_size)]
        mine = [b[rank::world] for b in batches]
        loader = torch.utils.data.DataLoader(train, batch_sampler=[m for m in mine if m], num_workers=num_workers)
        it = iter(loader)
        total, count = 0.0, 0
        bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{epochs} k={k}", leave=False,
                   disable=not progress or rank != 0)
        model.train()
        for b, m in zip(batches, mine):
            windows = next(it).to(dev) if m else None
            opt.zero_grad(set_to_none=True)
            part = torch.zeros((), dtype=torch.float64, device=dev)
            if windows is not None:
                seeds = [_seed(seed, epoch, 2 + i) for i in m] if noise else None
                per = window_loss(model, windows[:, : k + 1], k, loss, noise, seeds, train.crop)
                # the global batch's mean: processes add their shares of the sum
                part = per.sum() / len(b)
                part.backward()
            _sync_grads(params)
            batch_loss = float(_allreduce(part.detach().to(torch.float64)))
            if not math.isfinite(batch_loss):
                raise SurrogateError(f"the loss became {batch_loss} in epoch {epoch + 1}: lower lr (now "
                                     f"{opt.param_groups[0]['lr']:.3g}), raise clip, or check the data")
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            if schedule == "cosine":
                sched.step()
            total += batch_loss * len(b)
            count += len(b)
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.3g}")
        bar.close()
        model.eval()
        v = _valid_error(model, valid_src, valid_steps, valid_trajectories, dev, dtype) if valid is not None else math.nan
        if schedule == "plateau":
            sched.step(v if valid is not None else total / count)
        for key, val in (("loss", total / count), ("valid", v), ("lr", opt.param_groups[0]["lr"]), ("unroll", k),
                         ("seconds", time.perf_counter() - t0)):
            hist[key].append(float(val))
        if valid is not None and v < best:
            best, stale = v, 0
            best_state = {n: t.detach().cpu().clone() for n, t in model.state_dict().items()}
            if ckpt is not None and rank == 0:
                save(model, ckpt / "best.pt", provenance=train.provenance)
        elif valid is not None:
            stale += 1
        if (progress if log is None else log) and rank == 0:
            tqdm.write(f"epoch {epoch + 1}/{epochs}  unroll {k}  loss {total / count:.4g}"
                       + (f"  valid rel_l2({valid_steps}) {v:.4g}" if valid is not None else ""))
        if ckpt is not None and rank == 0:
            save(model, ckpt / "last.pt", provenance=train.provenance, training={
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
                "epoch": epoch, "history": hist, "best": best, "stale": stale, "best_state": best_state,
                "options": options})

    attrs: dict[str, Any] = {"stopped": stop_reason}
    if lbfgs:
        attrs.update(lbfgs_polish(model, train, params, lbfgs, lbfgs_windows, lbfgs_check, lbfgs_precondition,
                             steps_max, loss, seed, dev,
                             valid_src, valid_steps, valid_trajectories, dtype, best_state, best))
        if attrs.get("lbfgs_kept"):
            best_state, best = None, attrs.get("lbfgs_valid", best)
    if lm:
        if best_state is not None:
            model.load_state_dict(best_state)
        pick, windows = _polish_windows(train, lm_windows, seed, dev)  # the first of the L-BFGS polish's
        cells = train[pick[0]][0].numel()
        valid_fn = ((lambda: _valid_error(model, valid_src, valid_steps, valid_trajectories, dev, dtype))
                    if valid_src is not None else (lambda: None))
        model.eval()
        # the model holds the best state so far, whose validation error is `best`
        attrs.update(lm_polish(model, windows, len(pick) * steps_max * (cells if loss == "mse" else 1), params, lm,
                               steps_max, loss, valid_fn, best if valid_src is not None else None, _allreduce))
        best_state = None
        if attrs["lm_kept"] and valid_src is not None:
            best = attrs["lm_valid"]
    if best_state is not None:
        model.load_state_dict(best_state)
    ds = xr.Dataset({k: ("epoch", np.asarray(v, dtype=float)) for k, v in hist.items()},
                    coords={"epoch": np.arange(1, len(hist["loss"]) + 1)},
                    attrs={**attrs, "options": json.dumps(options), "best_valid": best})
    model.info = {**model.info, "trained": {"epochs": len(hist["loss"]), "best_valid": best,
                                            "valid_steps": valid_steps, **options}}
    if ckpt is not None and rank == 0:
        save(model, ckpt / "final.pt", provenance=train.provenance)
    return ds
