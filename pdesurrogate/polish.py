"""L-BFGS polish of a trained surrogate on one-step windows (with Gauss-Newton diagonal
preconditioning on request), validated as it goes: the second-order step after Adam."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from typing import Any, Callable

import torch

from .distributed import allreduce as _allreduce, rank_world as _dist, sync_grads as _sync_grads
from .errors import SurrogateError
from .evaluation import rollout_error
from .losses import stream_seed as _seed, window_loss
from .model import Surrogate

__all__ = ["lbfgs_polish"]


def _valid_error(model: Surrogate, valid: Any, steps: int, trajectories, device, dtype) -> float:
    return rollout_error(model, valid, steps, trajectories, device, dtype)


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
                 on_check: Callable[[int, float, float], None] | None = None,
                 extra: Callable[[], torch.Tensor] | None = None) -> dict[str, Any]:
    """L-BFGS on ``n_windows`` windows of ``train`` (see ``fit(lbfgs=...)``); ``on_check(i, loss, valid)``
    hears of every validation check; ``extra()`` (a scalar with a graph, on the scale of one
    window's loss) is added to the windows' mean loss."""
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
        if extra is not None and _dist()[0] == 0:  # once, not once per process
            val = extra() / scale[0]
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
