"""Levenberg-Marquardt on unrolled windows: the exact Jacobian of the model's steps.

A network started from finite-difference stencils must learn corrections about 1e-4 of its main
terms, beside biases near 1e3: first-order methods (Adam, and L-BFGS with a diagonal
preconditioner) stall on that conditioning. Levenberg-Marquardt solves the Gauss-Newton system
of the window residuals exactly, in the variables scaled by the Jacobian's column norms, so the
scale of a parameter does not matter. The Jacobian has one column per parameter (511 for the
paper's network) and one row per predicted cell.

For the paper's class (a :class:`ConvVectorField` with periodic convolutions and Euler substeps)
:func:`step_jacobian` propagates all parameter tangents through the substeps together, with the
direct terms of each layer written out (a kernel entry's derivative is a shifted copy of the
layer's input); other models fall back to forward-mode automatic differentiation, one tangent at
a time (exact, much slower).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .errors import SurrogateError
from .model import Surrogate
from .vector_field import ConvVectorField

__all__ = ["step_jacobian"]

# tangents propagated together: bounds the (tangents, hidden, x, y) intermediates to 2 MiB in
# float64. Small enough to stay in cache and below glibc's mmap threshold: 0.52 s per 100 x 100
# window of the paper's network against 2.2 s with 2 ** 24 (benchmarks/train.py's machine)
_CHUNK_ELEMENTS = 2 ** 18


def _fast_path(model: Surrogate, params: list[torch.Tensor]) -> bool:
    vf = getattr(model, "vector_field", None)
    if model.integrator != "euler" or not isinstance(vf, ConvVectorField):
        return False
    convs = (vf.conv1, vf.conv2)
    if any(c.pad.boundary != "periodic" or c.valid or parametrize.is_parametrized(c) for c in convs):
        return False
    expected = [t for c in convs for t in (c.weight, c.bias) if t is not None]
    return len(expected) == len(params) and all(a is b for a, b in zip(expected, params))


def _padded(x: torch.Tensor, r: int) -> torch.Tensor:
    return F.pad(x, (r, r, r, r), mode="circular") if r else x


def _shift(xp: torch.Tensor, s: int, k: int, H: int, W: int) -> torch.Tensor:
    # cell (x, y) of the result holds x[x + i - r, y + j - r], the value kernel entry s = (i, j) multiplies
    i, j = divmod(s, k)
    return xp[..., i: i + H, j: j + W]


def _correlate_padded(ap: torch.Tensor, K: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``conv2d(ap, K)`` for an already padded ``ap (n, C, H + 2r, W + 2r)`` and ``K (O, C, k, k)``.

    One matrix product over the channels for all kernel entries, then shifted sums: torch's CPU
    float64 convolution runs the paper's 10 -> 1 case about 6x slower.
    """
    n, C = ap.shape[:2]
    O, _, k, _ = K.shape
    Hp, Wp = ap.shape[-2:]
    G = torch.matmul(K.permute(0, 2, 3, 1).reshape(O * k * k, C), ap.reshape(n, C, Hp * Wp))
    G = G.view(n, O, k * k, Hp, Wp)
    out = _shift(G[:, :, 0], 0, k, H, W).clone()
    for s in range(1, k * k):
        out += _shift(G[:, :, s], s, k, H, W)
    return out


def _fast_jacobian(model: Surrogate, u: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    vf = model.vector_field
    c1, c2 = vf.conv1, vf.conv2
    K1, b1, K2, b2 = c1.kernel, c1.bias_value, c2.kernel, c2.bias_value
    dt = u.dtype
    s1, s2 = c1.kernel_scale.to(dt), c2.kernel_scale.to(dt)
    C, Fi, k1, _ = K1.shape
    Fo, _, k2, _ = K2.shape
    r1, r2 = k1 // 2, k2 // 2
    B, _, H, W = u.shape
    # hidden-layer tangents live on the grid widened by K2's radius, so that K2 needs no padding
    Hh, Wh = H + 2 * r2, W + 2 * r2
    pw = torch.tensor(vf.act.powers, dtype=dt, device=u.device).view(1, -1, 1, 1)
    h = model.dt / model.substeps
    # the forward pass once: the state (padded by both radii), the activation and its slope
    states, acts, slopes, outs = [], [], [], []
    x = u
    for sub in range(steps * model.substeps):
        z = F.conv2d(_padded(x, r1), K1, b1)
        zp = z.clamp(min=0)
        a = zp ** pw
        states.append(_padded(x, r1 + r2))
        acts.append(_padded(a, r2))
        slopes.append(_padded(torch.where(z > 0, pw * zp ** (pw - 1), 0.0), r2))  # relu^1: 0 below zero, not 0^0
        x = x + h * F.conv2d(acts[-1], K2, b2)
        if (sub + 1) % model.substeps == 0:
            outs.append(x)
    n1, nb1 = C * Fi * k1 * k1, C if b1 is not None else 0
    n2, nb2 = Fo * C * k2 * k2, Fo if b2 is not None else 0
    P = n1 + nb1 + n2 + nb2
    J = torch.empty(steps, P, B, Fo, H, W, dtype=dt, device=u.device)
    chunk = max(1, _CHUNK_ELEMENTS // (B * C * Hh * Wh))
    for p0 in range(0, P, chunk):
        p1 = min(P, p0 + chunk)
        n = p1 - p0
        T = None
        for sub in range(steps * model.substeps):
            if T is None:
                Zd = torch.zeros(n, B, C, Hh, Wh, dtype=dt, device=u.device)
            else:
                Zd = F.conv2d(_padded(T.reshape(n * B, Fi, H, W), r1 + r2), K1).view(n, B, C, Hh, Wh)
            xp = states[sub]
            for p in range(max(p0, 0), min(p1, n1)):  # K1[c, f, s] adds its shifted input to channel c
                c, rest = divmod(p, Fi * k1 * k1)
                f, s = divmod(rest, k1 * k1)
                Zd[p - p0, :, c] += s1[c, f] * _shift(xp[:, f], s, k1, Hh, Wh)
            for p in range(max(p0, n1), min(p1, n1 + nb1)):
                c = p - n1
                Zd[p - p0, :, c] += c1.bias_scale[c].to(dt)
            Zd *= slopes[sub]
            Fd = _correlate_padded(Zd.view(n * B, C, Hh, Wh), K2, H, W).view(n, B, Fo, H, W)
            del Zd
            ap = acts[sub]
            o = n1 + nb1
            for p in range(max(p0, o), min(p1, o + n2)):  # K2[f, c, s] adds its shifted activation to field f
                f, rest = divmod(p - o, C * k2 * k2)
                c, s = divmod(rest, k2 * k2)
                Fd[p - p0, :, f] += s2[f, c] * _shift(ap[:, c], s, k2, H, W)
            for p in range(max(p0, o + n2), p1):
                f = p - o - n2
                Fd[p - p0, :, f] += c2.bias_scale[f].to(dt)
            T = h * Fd if T is None else T + h * Fd
            if (sub + 1) % model.substeps == 0:
                J[(sub + 1) // model.substeps - 1, p0:p1] = T
    return J, torch.stack(outs)


def _autodiff_jacobian(model: Surrogate, u: torch.Tensor, steps: int,
                       params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.func import functional_call, jvp

    from .passes import library_passes

    named = dict(model.named_parameters())
    names = [next(k for k, v in named.items() if v is p) for p in params]
    vals = tuple(p.detach() for p in params)

    def roll(*v):
        out, x = [], u
        with torch.enable_grad():
            for _ in range(steps):
                x = functional_call(model, dict(zip(names, v)), (x,))
                out.append(x)
        return torch.stack(out)

    # the periodic convolution's custom backward has no forward-mode rule: plain autograd here
    with library_passes():
        with torch.no_grad():
            outs = roll(*vals).detach()
        cols = []
        for i, v in enumerate(vals):
            for e in range(v.numel()):
                t = tuple(torch.zeros_like(w) for w in vals)
                t[i].view(-1)[e] = 1
                cols.append(jvp(roll, vals, t)[1].detach())
    return torch.stack(cols, 1), outs


def step_jacobian(model: Surrogate, u: torch.Tensor, steps: int = 1,
                  params: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Jacobian of ``steps`` model steps from ``u`` with respect to the parameters.

    Args:
        model: the surrogate.
        u: ``(batch, fields, x, y)``.
        steps: how many steps to roll out.
        params: the parameters to differentiate by (default: the trainable ones, in
            ``model.parameters()`` order).

    Returns:
        ``(J, out)``: ``J (steps, P, batch, fields, x, y)`` with ``P`` the parameters' entries in
        order, and the rollout ``out (steps, batch, fields, x, y)``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SurrogateError(f"steps={steps!r} must be a positive integer")
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not params:
        raise SurrogateError("the model has no trainable parameters to differentiate by")
    if u.dim() != 4 or u.dtype != params[0].dtype:
        raise SurrogateError(f"u of shape {tuple(u.shape)} and dtype {str(u.dtype)[6:]} must be (batch, fields, x, y) "
                             f"in the model's dtype ({str(params[0].dtype)[6:]})")
    with torch.no_grad():
        if _fast_path(model, params):
            return _fast_jacobian(model, u, steps)
    return _autodiff_jacobian(model, u, steps, params)


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def _set_flat(params, v: torch.Tensor) -> None:
    i = 0
    with torch.no_grad():
        for p in params:
            p.copy_(v[i: i + p.numel()].view_as(p))
            i += p.numel()


def lm_polish(model: Surrogate, windows: Sequence[torch.Tensor] | None, norm: float, params: list[torch.Tensor],
              iterations: int, steps: int, loss: str, valid, start_valid: float | None,
              allreduce, on_iteration: Callable[[int, float, float | None], None] | None = None) -> dict[str, Any]:
    """Levenberg-Marquardt on ``windows`` (this process's share, each ``(>= steps + 1, fields, x, y)``);
    see ``fit(lm=...)``. ``on_iteration(i, loss, valid)`` hears of every accepted step.

    ``norm`` turns the summed squared error of all processes' windows into
    the reported loss. ``valid()`` returns the validation error (``None`` without validation
    data); the best state by it is kept, or the start when none beats it (without validation:
    the last step).
    """
    dev = params[0].device
    P = sum(p.numel() for p in params)

    def weights(w: torch.Tensor) -> torch.Tensor:
        # squared error per step; "relative" divides by the squared norm of the reference
        if loss == "mse":
            return torch.ones(steps, dtype=torch.float64, device=dev)
        ref = w[1: steps + 1].flatten(1).to(torch.float64)
        return 1.0 / ref.pow(2).sum(1).clamp(min=torch.finfo(torch.float64).tiny)

    def squares(w: torch.Tensor) -> torch.Tensor:
        x, c = w[0:1], []
        for j in range(steps):
            x = model(x)
            c.append((x - w[j + 1: j + 2]).to(torch.float64).pow(2).sum())
        return (torch.stack(c) * weights(w)).sum()

    def cost() -> float:
        total = torch.zeros((), dtype=torch.float64, device=dev)
        with torch.no_grad():
            for w in windows if windows is not None else ():
                total += squares(w)
        return float(allreduce(total))

    def system() -> tuple[torch.Tensor, torch.Tensor, float]:
        A = torch.zeros(P, P, dtype=torch.float64, device=dev)
        g = torch.zeros(P, dtype=torch.float64, device=dev)
        c = torch.zeros((), dtype=torch.float64, device=dev)
        for w in windows if windows is not None else ():
            J, out = step_jacobian(model, w[0:1], steps, params)
            for j, wt in enumerate(weights(w)):
                Jj = J[j].reshape(P, -1).to(torch.float64)
                r = (out[j] - w[j + 1: j + 2]).flatten().to(torch.float64)
                A += wt * (Jj @ Jj.T)
                g += wt * (Jj @ r)
                c += wt * (r @ r)
        return allreduce(A), allreduce(g), float(allreduce(c))

    start = _flat(params)
    first = cost()
    if not math.isfinite(first):
        raise SurrogateError("the Levenberg-Marquardt windows' loss is not finite at the start: the model's rollout "
                             "overflows; train with Adam first or start from a stable model")
    best_v, best_p, curve = (start_valid if start_valid is not None else math.inf), start.clone(), []
    lam, nu, current, done = 1e-3, 2.0, first, 0
    t0 = time.perf_counter()
    for it in range(iterations):
        if current == 0:
            break
        A, g, current = system()
        d = A.diagonal().sqrt()
        positive = d[d > 0]
        if not len(positive):
            break
        d = torch.where(d > 0, d, positive.median() * 1e-3)
        ev, V = torch.linalg.eigh(A / d[:, None] / d[None, :])
        ev = ev.clamp(min=0)
        proj = V.T @ (g / d)
        theta = _flat(params)
        accepted = False
        for _ in range(16):
            step = -(V @ (proj / (ev + lam))) / d
            predicted = -float(2 * g @ step + step @ A @ step)
            _set_flat(params, theta + step)
            new = cost()
            rho = (current - new) / predicted if predicted > 0 and math.isfinite(new) else -1.0
            if rho > 0:
                lam *= max(1 / 3, 1 - (2 * rho - 1) ** 3)
                nu, current, accepted = 2.0, new, True
                break
            lam, nu = lam * nu, nu * 2
        if not accepted:
            _set_flat(params, theta)
            break
        done = it + 1
        v = valid()
        if on_iteration is not None:
            on_iteration(done, current / norm, v)
        if v is not None:
            curve.append(v)
            if math.isfinite(v) and v < best_v:
                best_v, best_p = v, _flat(params)
        else:
            best_p = _flat(params)
    _set_flat(params, best_p)
    kept = not torch.equal(best_p, start)
    return {"lm_iterations": done, "lm_loss_before": first / norm, "lm_loss_after": cost() / norm,
            "lm_kept": int(kept), "lm_valid": best_v, "lm_valid_curve": json.dumps(curve),
            "lm_seconds": time.perf_counter() - t0}
