"""Convolutions whose kernels are finite-difference stencils, with boundary-aware padding.

:class:`StencilConv2d` is a 2-D cross-correlation (as in torch) whose kernels can be set to
``datagen``'s stencils (the same numbers) and constrained through
``torch.nn.utils.parametrize``:

* ``frozen``: the kernel does not train;
* ``moments``: kernel = stencil + a learned part in the null space of the moment conditions of
  its derivative up to a chosen accuracy, so it stays a consistent derivative approximation;
* ``zero_sum``: every kernel sums to zero (on a periodic grid its output then sums to zero).

:class:`BoundaryPad` adds the same ghost cells as :meth:`datagen.Grid.pad`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from datagen.grid import BOUNDARIES
from datagen.stencils import kernel2d

from . import passes
from .errors import SurrogateError

__all__ = ["BoundaryPad", "StencilConv2d", "MomentConstraint", "ZeroSum", "moment_matrix"]


class BoundaryPad(nn.Module):
    """Ghost cells of ``radius`` on x and y, by the grid's rule (see :class:`datagen.Grid`).

    Args:
        boundary: ``periodic``, ``dirichlet`` or ``neumann``.
        radius: ghost cells per side.
        value: Dirichlet wall value, one number or one per channel.
    """

    def __init__(self, boundary: str, radius: int, value: float | Sequence[float] = 0.0) -> None:
        super().__init__()
        if boundary not in BOUNDARIES:
            raise SurrogateError(f"unknown boundary {boundary!r}; choose one of {', '.join(BOUNDARIES)}")
        self.boundary, self.radius = boundary, int(radius)
        v = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        self.register_buffer("value", v, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad the last two axes of ``x (batch, channel, x, y)``."""
        R = self.radius
        if R == 0:
            return x
        if self.boundary == "periodic":
            if R > min(x.shape[-2:]):
                raise SurrogateError(f"grid {tuple(x.shape[-2:])} is smaller than the kernel radius {R}")
            return F.pad(x, (R, R, R, R), mode="circular")
        if self.boundary == "neumann":
            return _even(_even(x, R, -2), R, -1)
        g = self.value.to(x.dtype).to(x.device)
        g = g.view(1, -1, 1, 1) if g.numel() > 1 else g.view(())
        return _odd(_odd(x, R, -2, g), R, -1, g)

    def extra_repr(self) -> str:
        return f"{self.boundary}, radius={self.radius}"


def _even(x: torch.Tensor, R: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    idx = torch.cat([torch.arange(R - 1, -1, -1), torch.arange(n), torch.arange(n - 1, n - 1 - R, -1)])
    return x.index_select(dim, idx.clamp(0, n - 1).to(x.device))


def _odd(x: torch.Tensor, R: int, dim: int, g: torch.Tensor) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = 1
    if g.dim():
        wall = torch.broadcast_to(g, x.shape).narrow(dim, 0, 1)
    else:
        wall = torch.full(shape, float(g), dtype=x.dtype, device=x.device)
    ext = torch.cat([wall, x, wall], dim=dim)  # wall nodes at both ends
    if R == 1:
        return ext
    n = ext.shape[dim]
    left = 2 * wall - ext.narrow(dim, 1, R - 1).flip(dim)
    right = 2 * wall - ext.narrow(dim, n - R, R - 1).flip(dim)
    return torch.cat([left, ext, right], dim=dim)


def moment_matrix(size: int, max_degree: int, spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Rows ``sum K[a, b] (a dx)^i (b dy)^j / (i! j!)`` for ``i + j <= max_degree`` (K flattened)."""
    r = size // 2
    a = np.arange(-r, r + 1) * spacing[0]
    b = np.arange(-r, r + 1) * spacing[1]
    rows = []
    for i in range(max_degree + 1):
        for j in range(max_degree + 1 - i):
            rows.append(np.outer(a ** i / math.factorial(i), b ** j / math.factorial(j)).ravel())
    return np.array(rows)


class MomentConstraint(nn.Module):
    """``K = base + N theta``: each kernel keeps the moments of its base stencil up to a degree.

    ``N`` (per kernel) spans the null space of the moment conditions of total degree
    ``<= max_degree``; the original (trained) tensor is ``theta``, shape ``(out, in, r)``.
    ``base`` and ``N`` are kept in float64 outside the module's buffers, so that casting the
    model (``.float()``, ``.double()``) never rounds them: they follow from the config.
    """

    def __init__(self, base: torch.Tensor, max_degree: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        out_c, in_c, k, _ = base.shape
        max_degree = np.broadcast_to(np.asarray(max_degree), (out_c, in_c))
        spaces = {}
        for d in np.unique(max_degree):
            A = moment_matrix(k, int(d), spacing)
            # scale columns so that the null space is well conditioned whatever the spacing
            spaces[int(d)] = scipy.linalg.null_space(A / np.abs(A).max(axis=1, keepdims=True))
        r = max(s.shape[1] for s in spaces.values())
        if r == 0:
            raise SurrogateError(f"a {k}x{k} kernel has no freedom left at moment degree {int(max_degree.max())}")
        N = np.zeros((out_c, in_c, k * k, r))
        for o in range(out_c):
            for i in range(in_c):
                s = spaces[int(max_degree[o, i])]
                N[o, i, :, : s.shape[1]] = s
        self.base = base.detach().to(torch.float64).clone()
        self.N = torch.as_tensor(N, dtype=torch.float64)
        self.max_degree = max_degree.copy()

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        """Kernel from the free coordinates."""
        N, base = self.N.to(theta.device, theta.dtype), self.base.to(theta.device, theta.dtype)
        return base + torch.einsum("oikr,oir->oik", N, theta).reshape(base.shape)

    def right_inverse(self, K: torch.Tensor) -> torch.Tensor:
        """Free coordinates of the projection of ``K`` onto the constrained set."""
        N, base = self.N.to(K.device, K.dtype), self.base.to(K.device, K.dtype)
        return torch.einsum("oikr,oik->oir", N, (K - base).reshape(K.shape[0], K.shape[1], -1))


class ZeroSum(nn.Module):
    """Each kernel minus its mean: kernels sum to zero."""

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        """Project onto zero-sum kernels."""
        return W - W.mean(dim=(-2, -1), keepdim=True)

    def right_inverse(self, W: torch.Tensor) -> torch.Tensor:
        """Store the projected kernel."""
        return W - W.mean(dim=(-2, -1), keepdim=True)




def _correlator(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The valid correlation with ``weight`` (+ ``bias``) as a function of the padded input, its
    kernels arranged once; many-to-few channels on CPU as per-channel (depthwise) correlations
    summed.

    On CPU torch 2.13 correlates 10 channels into 1 about 2.3x slower than the same work as ten
    depthwise correlations and a sum (1->10, the other direction, is fast either way).
    """
    out_c, in_c = weight.shape[:2]
    if weight.device.type != "cpu" or out_c * 4 > in_c:
        return lambda xp: F.conv2d(xp, weight, bias)
    k = weight.shape[-1]
    w = weight.transpose(0, 1).reshape(in_c * out_c, 1, k, k)
    b = None if bias is None else torch.cat([bias, bias.new_zeros((in_c - 1) * out_c)])  # added once, by channel 0

    def correlate(xp: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(xp, w, b, groups=in_c)
        return y.view(y.shape[0], in_c, out_c, *y.shape[-2:]).sum(1)
    return correlate


def _correlate(xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Valid correlation of the padded ``xp`` (see :func:`_correlator`)."""
    return _correlator(weight, bias)(xp)


def _weight_grad_fft(x: torch.Tensor, g: torch.Tensor, R: int) -> torch.Tensor:
    """``dW[o, i, a, b] = sum_n sum_x g[n, o](x) u[n, i](x + (a, b) - R)`` (periodic) by FFTs."""
    H, W = x.shape[-2:]
    X, G = torch.fft.rfft2(x), torch.fft.rfft2(g)
    C = torch.fft.irfft2(torch.einsum("noab,niab->oiab", G.conj(), X), s=(H, W))
    idx_x = torch.arange(-R, R + 1, device=x.device) % H
    idx_y = torch.arange(-R, R + 1, device=x.device) % W
    return C[:, :, idx_x][:, :, :, idx_y]


def _weight_grad_direct(xp: torch.Tensor, g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """torch's weight gradient of the valid correlation of the padded ``xp`` giving ``g``."""
    return torch.ops.aten.convolution_backward(g, xp, g.new_empty(shape), None, (1, 1), (0, 0), (1, 1), False,
                                               (0, 0), 1, (False, True, False))[1]


def _weight_grad(x: torch.Tensor, g: torch.Tensor, gp: torch.Tensor, weight: torch.Tensor, R: int) -> torch.Tensor:
    """Weight gradient of the periodic correlation of ``x`` with ``weight`` giving ``g`` (``gp``:
    ``g`` padded circularly by ``R``).

    On CPU torch runs the many-to-few case (the paper's K2: 10 -> 1) about 3.5x slower than
    few-to-many. Substituting ``x -> x - (a, b) + R`` turns it into a few-to-many weight gradient
    with the roles of ``x`` and ``g`` swapped and the kernel flipped, which costs the same as
    K1's: 0.49 ms against 1.0 ms for FFTs and 2.9 ms for torch's own at 100^2, batch 8, float32
    (benchmarks/train.py), and off by 4.4e-6 of the largest entry against float64 (torch's own:
    1.4e-5; FFTs: 2.6e-7). In float64 the FFT route is the faster one (1.9 ms against 2.3 ms).
    """
    out_c, in_c = weight.shape[:2]
    if x.device.type != "cpu" or in_c <= 4 * out_c:
        return _weight_grad_direct(F.pad(x, (R, R, R, R), mode="circular"), g, weight.shape)
    if x.dtype == torch.float64:
        return _weight_grad_fft(x, g, R)
    swapped = _weight_grad_direct(gp, x, weight.transpose(0, 1).shape)
    return swapped.flip(-2, -1).transpose(0, 1)


class _PeriodicConv(torch.autograd.Function):
    """Circular padding and correlation, with the input gradient as a forward correlation.

    The adjoint of a periodic correlation with ``W`` is the periodic correlation with ``W``
    flipped in space and transposed in channels. On CPU torch's ``convolution_backward`` for the
    input runs 1.5-6x slower than that forward call (benchmarks/evaluate.py, 100^2, 5x5), and
    every input gradient (the Lipschitz estimate, training) pays it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, radius: int) -> torch.Tensor:
        R = radius
        xp = F.pad(x, (R, R, R, R), mode="circular")
        ctx.radius = R
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return _correlate(xp, weight, bias)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight = ctx.saved_tensors
        R = ctx.radius
        g = g.contiguous()
        gx = gw = gb = None
        gp = F.pad(g, (R, R, R, R), mode="circular")
        if ctx.needs_input_grad[0]:
            gx = _correlate(gp, weight.flip(-2, -1).transpose(0, 1))
        if ctx.needs_input_grad[1]:
            gw = _weight_grad(x, g, gp, weight, R)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(dim=(0, 2, 3))
        return gx, gw, gb, None


class StencilConv2d(nn.Module):
    """2-D convolution (cross-correlation) with boundary padding and stencil initialisation.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: odd kernel width.
        boundary: padding rule; ``periodic`` pads circularly.
        bias: learnable bias per output channel.
        boundary_value: Dirichlet wall value(s) of the input channels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, boundary: str = "periodic",
                 bias: bool = True, boundary_value: float | Sequence[float] = 0.0) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise SurrogateError(f"kernel_size={kernel_size} must be odd (a centred stencil)")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # fixed physical factor per kernel (1 / dx^p dy^q of its derivative): the weights stay in
        # grid units, O(1) at any resolution; kept in float64 whatever the module's dtype
        self.register_buffer("kernel_scale", torch.ones(out_channels, in_channels, dtype=torch.float64))
        self.register_buffer("bias_scale", torch.ones(out_channels, dtype=torch.float64))
        self.pad = BoundaryPad(boundary, kernel_size // 2, boundary_value)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.orders: dict[tuple[int, int], tuple[tuple[int, int], int]] = {}
        self.exact_kernels: dict[tuple[int, int], np.ndarray] = {}  # float64 stencils for constraints
        self.constraint: str | None = None
        self.valid = False  # True: no padding, the output shrinks by the radius (cropped training)

    def _apply(self, fn, recurse: bool = True):
        scales = {k: self._buffers[k] for k in ("kernel_scale", "bias_scale")}
        super()._apply(fn, recurse)
        for k, v in scales.items():
            self._buffers[k] = v.to(device=self._buffers[k].device, dtype=torch.float64)
        return self

    @property
    def bias_value(self) -> torch.Tensor | None:
        """The physical bias: the stored bias times its fixed scale."""
        b = self.bias
        return None if b is None else b * self.bias_scale.to(b.dtype)

    @property
    def kernel(self) -> torch.Tensor:
        """The physical kernel: the weight (grid units) times each kernel's fixed scale."""
        w = self.weight
        return w * self.kernel_scale.to(w.dtype)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad by the boundary rule and correlate."""
        W, b = self.kernel, self.bias_value
        if self.valid:
            return F.conv2d(x, W, b)
        if self.kernel_size == 1 and x.dtype == torch.float32:
            # torch 2.13's CPU float32 1x1 convolution runs about 20x slower than this
            # channel contraction (benchmarks/rollout.py); float64 is faster as a convolution
            y = torch.einsum("oc,bcxy->boxy", W[:, :, 0, 0], x)
            return y if b is None else y + b.view(1, -1, 1, 1)
        if self.pad.boundary == "periodic" and self.pad.radius and passes.adjoint_input_grad():
            if self.pad.radius > min(x.shape[-2:]):
                raise SurrogateError(f"grid {tuple(x.shape[-2:])} is smaller than the kernel radius {self.pad.radius}")
            return _PeriodicConv.apply(x, W, b, self.pad.radius)
        return F.conv2d(self.pad(x), W, b)

    @torch.no_grad()
    def set_kernel(self, out_channel: int, in_channel: int, kernel: np.ndarray, scale: float = 1.0) -> None:
        """Set one physical kernel as ``weight = kernel / scale`` with the fixed factor ``scale``."""
        if parametrize.is_parametrized(self, "weight"):
            raise SurrogateError("set kernels before adding a constraint")
        self.kernel_scale[out_channel, in_channel] = float(scale)
        self.weight[out_channel, in_channel] = torch.as_tensor(np.asarray(kernel) / scale, dtype=self.weight.dtype)

    @torch.no_grad()
    def set_stencil(self, out_channel: int, in_channel: int, order: tuple[int, int], accuracy: int = 2,
                    spacing: tuple[float, float] = (1.0, 1.0), scale: float = 1.0) -> None:
        """Set one kernel to ``scale`` times ``datagen``'s stencil of ``d^i/dx^i d^j/dy^j``.

        The weight holds the stencil of a unit grid (grid units); the factor ``dx^-i dy^-j`` is
        the kernel's fixed ``kernel_scale``.
        """
        if parametrize.is_parametrized(self, "weight"):
            raise SurrogateError("set stencils before adding a constraint")
        k = kernel2d(tuple(order), accuracy, (1.0, 1.0), self.kernel_size if self.kernel_size >= 3 else None)
        if k.shape[0] > self.kernel_size:
            raise SurrogateError(
                f"the stencil of order {order} at accuracy {accuracy} needs a {k.shape[0]}x{k.shape[0]} kernel"
            )
        self.weight[out_channel, in_channel] = torch.as_tensor(scale * k, dtype=self.weight.dtype)
        self.kernel_scale[out_channel, in_channel] = 1.0 / (spacing[0] ** order[0] * spacing[1] ** order[1])
        self.orders[(out_channel, in_channel)] = (tuple(order), accuracy)
        self.exact_kernels[(out_channel, in_channel)] = scale * k

    def constrain(self, kind: str, accuracy: int | None = None,
                  spacing: tuple[float, float] = (1.0, 1.0)) -> "StencilConv2d":
        """Add a constraint: ``frozen``, ``moments`` (needs every kernel set by :meth:`set_stencil`;
        keeps moments up to degree ``|order| + accuracy - 1``) or ``zero_sum``.

        Moments are those of the stored weight, in grid units (``spacing`` (1, 1)); a positive
        factor per kernel keeps them, so the physical kernel keeps its moments too.
        """
        if kind == "frozen":
            self.weight.requires_grad_(False)
        elif kind == "zero_sum":
            parametrize.register_parametrization(self, "weight", ZeroSum())
        elif kind == "moments":
            deg = np.zeros((self.out_channels, self.in_channels), int)
            for o in range(self.out_channels):
                for i in range(self.in_channels):
                    if (o, i) not in self.orders:
                        raise SurrogateError(f"kernel ({o}, {i}) has no stencil; call set_stencil before 'moments'")
                    order, acc = self.orders[(o, i)]
                    deg[o, i] = sum(order) + (accuracy if accuracy is not None else acc) - 1
            base = self.weight.detach().to(torch.float64).clone()
            for (o, i), k in self.exact_kernels.items():
                base[o, i] = torch.as_tensor(k)
            parametrize.register_parametrization(self, "weight", MomentConstraint(base, deg, spacing))
        else:
            raise SurrogateError(f"unknown constraint {kind!r}; choose frozen, moments or zero_sum")
        self.constraint = kind
        return self

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"bias={self.bias is not None}, constraint={self.constraint}")
