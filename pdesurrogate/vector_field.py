"""``ConvVectorField``: F(U) = K2 * sigma(K1 * U + b1) + b2, the right-hand side as a network."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import passes
from .activations import PowerReLU
from .stencil_conv import StencilConv2d, _correlator, _weight_grad_direct

__all__ = ["ConvVectorField"]


# at most this many windows per pass of _PeriodicField: a few windows' hidden layers stay in
# cache between the correlations that produce and consume them (benchmarks/train.py)
FUSED_CHUNK = 4


def _zero_margin(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x`` with its outer ``m`` cells on each side set to zero, in place."""
    x[..., :m, :].zero_()
    x[..., -m:, :].zero_()
    x[..., :, :m].zero_()
    x[..., :, -m:].zero_()
    return x


class _PeriodicField(torch.autograd.Function):
    """``K2 * relu(K1 * u + b1)^p + b2`` on a periodic grid, forward and backward by hand.

    The hidden layer is computed on the grid widened by a margin ``m``, the larger of the two
    kernel radii ``r1``, ``r2``: ``u`` is padded once by ``r1 + m`` (one field, cheap) and both
    correlations are valid, so no hidden-channel tensor is ever padded; ``relu(z)`` and its power
    are kept for the backward pass. That pass takes K2's adjoint on the same widened grid (``g``
    padded by ``m + r2``), so the hidden gradient arrives with the margin K1's adjoint needs. The
    weight gradients sum over the interior only: K1's by zeroing the hidden gradient's margin
    once the input gradient is taken, K2's against ``g`` padded with zeros. Many-to-few weight
    gradients run as few-to-many ones with the roles swapped (see ``stencil_conv._weight_grad``).
    ``chunk`` windows go through at a time, so that a chunk's hidden layer is still in cache
    when the next correlation reads it. About 1.1x the training speed of the layer-by-layer
    modules (benchmarks/train.py).
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                b2: torch.Tensor | None, power: int, r1: int, r2: int, chunk: int) -> torch.Tensor:
        m = max(r1, r2)
        up = F.pad(u, (r1 + m,) * 4, mode="circular")
        k1, k2 = _correlator(w1, b1), _correlator(w2, b2)
        ys, saved = [], []
        for i in range(0, u.shape[0], chunk):
            a = k1(up[i:i + chunk]).clamp_min_(0)
            h = a if power == 1 else (a * a if power == 2 else a ** power)
            saved += [a, h]
            ys.append(_crop(k2(h), m - r2))
        ctx.save_for_backward(up, w1, w2, *saved)
        ctx.power, ctx.radii, ctx.chunk, ctx.biases = power, (r1, r2), chunk, (b1 is not None, b2 is not None)
        return ys[0].contiguous() if len(ys) == 1 else torch.cat(ys)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        up, w1, w2, *saved = ctx.saved_tensors
        p, (r1, r2), chunk = ctx.power, ctx.radii, ctx.chunk
        m = max(r1, r2)
        need_u, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        need_b1, need_b2 = need_b1 and ctx.biases[0], need_b2 and ctx.biases[1]
        g = g.contiguous()
        gp = F.pad(g, (m + r2,) * 4, mode="circular")
        # the activation's derivative is p a^(p-1): its factor p rides on K2's adjoint kernel
        adj1, adj2 = _correlator(w1.flip(-2, -1).transpose(0, 1)), _correlator(w2.flip(-2, -1).transpose(0, 1) * p)
        gus, gw1s, gb1s, gw2s = [], [], [], []
        for i, a, h in zip(range(0, g.shape[0], chunk), saved[::2], saved[1::2]):
            if need_u or need_w1 or need_b1:
                gz = adj2(gp[i:i + chunk])  # on the widened grid, like a
                gz.mul_(a > 0 if p == 1 else (a if p == 2 else a ** (p - 1)))
                if need_u:
                    gus.append(_crop(adj1(gz), m - r1))
                _zero_margin(gz, m)
                if need_w1 or need_b1:
                    dw, db = torch.ops.aten.convolution_backward(
                        gz, up[i:i + chunk], w1, [w1.shape[0]] if need_b1 else None, (1, 1), (0, 0), (1, 1), False,
                        (0, 0), 1, (False, need_w1, need_b1))[1:]
                    gw1s.append(dw)
                    gb1s.append(db)
            if need_w2:
                # sum_x g(x) h(x + d) over the interior x is sum_y h(y) g0(y - d) over the widened
                # grid, with g0 = g padded by zeros: no margin of h to clear
                g0 = F.pad(g[i:i + chunk], (m + r2,) * 4)
                gw2s.append(_weight_grad_direct(g0, h, w2.transpose(0, 1).shape))
        gu = (gus[0].contiguous() if len(gus) == 1 else torch.cat(gus)) if need_u else None
        gw1 = sum(gw1s[1:], gw1s[0]) if need_w1 else None
        gb1 = sum(gb1s[1:], gb1s[0]) if need_b1 else None
        gw2 = sum(gw2s[1:], gw2s[0]).flip(-2, -1).transpose(0, 1) if need_w2 else None
        gb2 = g.sum(dim=(0, 2, 3)) if need_b2 else None
        return gu, gw1, gb1, gw2, gb2, None, None, None, None


def _crop(x: torch.Tensor, e: int) -> torch.Tensor:
    """``x`` less ``e`` cells on each side (a view)."""
    return x[..., e:x.shape[-2] - e, e:x.shape[-1] - e] if e else x


class ConvVectorField(nn.Module):
    """Two convolutions around a power-of-ReLU activation.

    Args:
        n_fields: input and output channels (the PDE's fields).
        hidden: hidden channels.
        kernel_size: width of K1 (odd).
        powers: one activation power per hidden channel, or a shorter tuple repeated to fill them.
        boundary: padding rule of both convolutions.
        bias1, bias2: biases b1 and b2.
        kernel_size2: width of K2 (default ``kernel_size``; 1 makes K2 pointwise).
        boundary_value: Dirichlet wall value(s) of the fields.
    """

    def __init__(self, n_fields: int, hidden: int, kernel_size: int = 5, powers: Sequence[int] | int = (1,),
                 boundary: str = "periodic", bias1: bool = True, bias2: bool = True, kernel_size2: int | None = None,
                 boundary_value: float | Sequence[float] = 0.0) -> None:
        super().__init__()
        ps = [int(powers)] if isinstance(powers, int) else [int(p) for p in powers]
        ps = (ps * (hidden // len(ps) + 1))[:hidden]
        self.n_fields, self.hidden = n_fields, hidden
        self.conv1 = StencilConv2d(n_fields, hidden, kernel_size, boundary, bias1, boundary_value)
        self.act = PowerReLU(ps)
        # hidden channels have no wall data: they are continued as the field would be with value 0
        self.conv2 = StencilConv2d(hidden, n_fields, kernel_size2 or kernel_size, boundary, bias2, 0.0)

    @property
    def fusable(self) -> bool:
        """Whether CPU evaluations take the fused periodic path (:class:`_PeriodicField`): periodic,
        K1 and K2 wider than 1, one activation power."""
        c1, c2 = self.conv1, self.conv2
        return (passes.fused_field() and c1.kernel_size > 1 and c2.kernel_size > 1
                and c1.pad.boundary == c2.pad.boundary == "periodic" and len(self.act._groups) == 1)

    def _fused_margin(self, u: torch.Tensor) -> int | None:
        """The widened grid's margin where :class:`_PeriodicField` applies to ``u``, else None."""
        c1, c2 = self.conv1, self.conv2
        m = max(c1.kernel_size, c2.kernel_size) // 2
        if (self.fusable and u.device.type == "cpu" and u.dim() == 4 and not (c1.valid or c2.valid)
                and 2 * m <= min(u.shape[-2:]) and u.shape[1] == self.n_fields):
            return m
        return None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """F(U) for ``U (batch, fields, x, y)``."""
        if self._fused_margin(u) is not None:
            c1, c2 = self.conv1, self.conv2
            return _PeriodicField.apply(u, c1.kernel, c1.bias_value, c2.kernel, c2.bias_value, self.act.powers[0],
                                        c1.kernel_size // 2, c2.kernel_size // 2, FUSED_CHUNK)
        return self.conv2(self.act(self.conv1(u)))
