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

import ctypes
import functools
import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .data import WindowDataset, receptive_halo
from .errors import SurrogateError
from .devices import resolve_device as _device
from .evaluation import rollout_error
from .gauss_newton import lm_polish
from .model import Surrogate, load_training_state, save

__all__ = ["fit", "window_loss", "malloc_tuned", "lbfgs_polish", "LOSSES"]

LOSSES = ("mse", "relative")
SCHEDULES = (None, "none", "cosine", "plateau")
# options that must agree between a checkpoint and the run that resumes it
_RESUME_KEYS = ("epochs", "batch_size", "unroll", "curriculum", "loss", "noise", "lr", "schedule", "clip", "seed", "dtype",
                "weight_decay", "model", "data", "valid")


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


def _dist() -> tuple[int, int]:
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def _allreduce(t: torch.Tensor) -> torch.Tensor:
    if _dist()[1] > 1:
        torch.distributed.all_reduce(t)
    return t


def _sync_grads(params: Sequence[torch.nn.Parameter]) -> None:
    if _dist()[1] == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)


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


def _valid_error(model: Surrogate, valid: Any, steps: int, trajectories, device, dtype) -> float:
    return rollout_error(model, valid, steps, trajectories, device, dtype)


_MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_malloc_depth = 0


@contextmanager
def malloc_tuned(enabled: bool = True) -> Iterator[bool]:
    """Within this block glibc's malloc serves blocks of up to 32 MB from its heap and keeps the
    freed ones for reuse (yields True).

    torch frees and allocates the same few-MB temporaries many times per training iteration;
    glibc maps blocks above its (adaptive) threshold afresh and trims the heap's free top, paying
    page faults each time. This sets ``M_MMAP_THRESHOLD`` to 32 MB (glibc's ceiling, where its
    own adaptation ends) and ``M_TRIM_THRESHOLD`` to 2 GB with ``mallopt``. At the block's end
    the mmap threshold stays at 32 MB and the trim threshold goes to 64 MB, twice that, as
    glibc's adaptation would set them after freeing a 32 MB block, so the process returns its
    free memory again (glibc has no call that restores the adaptation). Yields False and
    changes nothing off glibc, when ``enabled`` is False, or where the environment sets malloc's
    thresholds itself (``MALLOC_*_``, ``GLIBC_TUNABLES``).
    """
    global _malloc_depth
    libc = None
    if enabled and not _malloc_depth and not any(k in os.environ for k in _MALLOC_VARS):
        try:
            if os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
                libc = ctypes.CDLL(None)
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (AttributeError, OSError, ValueError):
            libc = None
    if libc is None:
        yield bool(_malloc_depth)
        return
    _malloc_depth += 1
    try:
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
        yield bool(ok)
    finally:
        _malloc_depth -= 1
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)


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


def _gauss_newton_scales(model, windows, params, crop, seed, probes: int = 8) -> list[torch.Tensor]:
    """Square roots of the Gauss-Newton diagonal ``diag(J^T J)`` of one step over ``windows``.

    Hutchinson's estimate: ``E[(J^T v)^2]`` over Rademacher probes ``v`` (seeded). Entries are
    floored at 1e-3 of the median, so that parameters the windows hardly see keep a finite scale.
    """
    g = torch.Generator().manual_seed(_seed(seed, 10 ** 6, 1))
    acc = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    ctx = model.unpadded() if crop is not None else nullcontext()
    if windows is not None:
        for _ in range(probes):
            for chunk in windows.split(16):
                with ctx:
                    out = model(chunk[:, 0])
                v = (torch.randint(0, 2, out.shape, generator=g) * 2 - 1).to(out.dtype).to(out.device)
                for a, gr in zip(acc, torch.autograd.grad((out * v).sum(), params, allow_unused=True)):
                    if gr is not None:
                        a += gr.detach().to(torch.float64).pow(2)
    for a in acc:
        _allreduce(a)
    d = [(a / probes).sqrt() for a in acc]
    flat = torch.cat([x.flatten() for x in d])
    positive = flat[torch.isfinite(flat) & (flat > 0)]
    if not len(positive):
        return [torch.ones_like(p) for p in params]
    floor = float(positive.median()) * 1e-3
    return [torch.nan_to_num(x, nan=floor, posinf=floor).clamp(min=floor).to(p.dtype) for x, p in zip(d, params)]


def _seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1)[0])


# what the L-BFGS closure returns for an overflowing trial step: far above the loss scaled to 1,
# yet small enough that the line search's cubic interpolation stays finite in float32
_OVERFLOW = 1e10


def _polish_windows(train, n: int, seed: int, dev) -> tuple[list[int], torch.Tensor | None]:
    """The polish's ``n`` windows (seeded; a prefix of any larger draw) and this process's share."""
    rank, world = _dist()
    g = torch.Generator().manual_seed(_seed(seed, 10 ** 6, 0))
    pick = torch.randperm(len(train), generator=g)[:n].tolist()
    mine = pick[rank::world]
    return pick, (torch.stack([train[i] for i in mine]).to(dev) if mine else None)


def lbfgs_polish(model, train, params, iterations, n_windows, check, precondition, steps, loss, seed, dev, valid_src,
                 valid_steps, valid_trajectories, dtype, best_state, best,
                 on_check: Callable[[int, float, float], None] | None = None) -> dict[str, Any]:
    """L-BFGS on ``n_windows`` windows of ``train`` (see ``fit(lbfgs=...)``); ``on_check(i, loss, valid)``
    hears of every validation check."""
    pick, windows = _polish_windows(train, n_windows, seed, dev)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    check = check if valid_src is not None else iterations
    gn_scales = _gauss_newton_scales(model, windows, params, train.crop, seed) if precondition else None
    # with gn_scales, L-BFGS works on q = scale * p and the closure maps q back to the model
    leaves = [torch.nn.Parameter(p.detach() * s) for p, s in zip(params, gn_scales)] if gn_scales else params

    def to_model() -> None:
        if gn_scales:
            with torch.no_grad():
                for p, q, s in zip(params, leaves, gn_scales):
                    p.copy_(q / s)

    opt = torch.optim.LBFGS(leaves, lr=1.0, max_iter=min(check, iterations), history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15)

    scale, overflowed = [1.0], [False]

    def closure():
        to_model()
        for p in params:
            p.grad = None
        part = torch.zeros((), dtype=torch.float64, device=dev)
        if windows is not None:
            # the graph of a chunk holds chunk x steps states: long windows go a few at a time
            for chunk in windows.split(max(1, min(16, 64 // steps))):
                per = window_loss(model, chunk[:, : steps + 1], steps, loss, crop=train.crop)
                val = per.sum() / (len(pick) * scale[0])
                val.backward()
                part = part + val.detach().to(torch.float64)
        _sync_grads(params)
        total = _allreduce(part)
        overflowed[0] = not bool(torch.isfinite(total))
        if overflowed[0]:
            # a trial step whose rollout overflowed: a large finite value makes the line search
            # step back, where NaN would end in NaN weights
            for q in leaves:
                q.grad = torch.zeros_like(q)
            return torch.tensor(_OVERFLOW, dtype=dtype, device=dev)
        if gn_scales:
            for p, q, s in zip(params, leaves, gn_scales):
                q.grad = p.grad / s if p.grad is not None else torch.zeros_like(q)
        return total.to(dtype)

    first = float(closure())
    if overflowed[0]:
        raise SurrogateError("the L-BFGS windows' loss is not finite at the start: the model's rollout overflows; "
                             "train with Adam first or start from a stable model")
    # L-BFGS's first step is the gradient itself, and its tolerances are absolute: on the loss
    # as it comes (1e-9 near a good start) that step is too small to measure; scaled to 1 at the
    # start, the same iterations make progress
    if first > 0:
        scale[0] = first
    out: dict[str, Any] = {"lbfgs_iterations": iterations, "lbfgs_loss_before": first,
                           "lbfgs_preconditioned": int(bool(gn_scales))}
    if valid_src is not None:
        # the optimiser keeps its curvature history between the checks
        v_best, state, curve = math.inf, None, []
        out["lbfgs_loss_after"] = math.nan  # until a check finds a finite validation error
        for done in range(0, iterations, check):
            opt.param_groups[0]["max_iter"] = min(check, iterations - done)
            opt.step(closure)
            to_model()  # the line search may end at a point other than its last evaluation
            v = _valid_error(model, valid_src, valid_steps, valid_trajectories, dev, dtype)
            curve.append(v)
            loss_now = float(closure()) * scale[0]
            to_model()
            if on_check is not None:
                on_check(done + opt.param_groups[0]["max_iter"], loss_now, v)
            if math.isfinite(v) and v < v_best:
                v_best, state = v, {n: t.detach().clone() for n, t in model.state_dict().items()}
                out["lbfgs_loss_after"] = loss_now
        keep = state is not None and v_best <= best
        model.load_state_dict(state if keep else best_state if best_state is not None else before)
        out.update({"lbfgs_valid": v_best, "lbfgs_kept": int(keep), "lbfgs_valid_curve": json.dumps(curve)})
    else:
        opt.step(closure)
        last = float(closure()) * scale[0]  # also puts the final point into the model
        out["lbfgs_loss_after"] = last
        keep = math.isfinite(last) and last <= first
        out["lbfgs_kept"] = int(keep)
        if not keep:
            model.load_state_dict(before)
    return out
