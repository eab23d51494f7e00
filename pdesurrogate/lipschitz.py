"""Spectral norm of a step's Jacobian (power iteration: forward differences for ``J v``,
reverse mode for ``J^T w``), and its tracking along a trajectory."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .batching import norm as _norm
from .model import Surrogate

__all__ = ["lipschitz_estimate", "TRACK"]


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


