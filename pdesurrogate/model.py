"""``Surrogate``: a vector-field network composed with an integrator into one time-step map.

``build_surrogate(**config)`` makes one from plain values; :mod:`pdesurrogate.checkpoint` stores
and reads it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from datagen.limits import MAX_DEGREE, MAX_FIELDS, MAX_SUBSTEPS

from .errors import SurrogateError
from .integrators import INTEGRATORS, STEP_FUNCTIONS, projected_euler, sample_norm
from .vector_field import ConvVectorField

__all__ = ["Surrogate", "SurrogateConfig", "build_surrogate", "STENCIL_INIT_ORDERS"]

CHECKPOINT_FORMAT = "pdesurrogate.checkpoint"
CHECKPOINT_VERSION = 1
# bounds on what a config (a checkpoint's, a TOML file's) may ask for, checked before allocating
MAX_HIDDEN = 1024
MAX_KERNEL = 31
# derivatives given to hidden channels by init="stencil", in turn, each to a sign pair of
# channels: the Laplacian's parts first, so that six channels already span Fisher's right-hand side
STENCIL_INIT_ORDERS = ((0, 0), (2, 0), (0, 2), (1, 0), (0, 1), (1, 1))


@dataclass(frozen=True)
class SurrogateConfig:
    """Everything that defines a surrogate's architecture and time stepping.

    Args:
        n_fields: number of PDE fields (input = output channels).
        hidden: hidden channels.
        kernel_size, kernel_size2: widths of K1 and K2 (K2 defaults to K1's).
        powers: activation power per hidden channel (repeated to fill ``hidden``).
        bias1, bias2: biases of K1 and K2.
        integrator: ``euler``, ``heun``, ``rk4`` or ``projected_euler``.
        substeps: integrator steps per time step ``dt``.
        dt: the time step one call advances.
        boundary, boundary_value: padding rule (periodic, dirichlet, neumann) and wall values.
        init: ``random`` (PyTorch default), ``stencil`` (K1 channels in sign pairs ``+d, -d`` of
            the finite-difference stencils of ``STENCIL_INIT_ORDERS``, K2 zero, so the surrogate
            starts as the identity) or ``zeros``.
        accuracy, spacing: stencil accuracy and grid spacing used by ``init="stencil"``.
        constraint: ``None``, ``frozen`` or ``moments`` on K1 (``moments`` needs ``init="stencil"``).
        mass_preserving: zero-sum K2 and no b2, so that sum(F(U)) = 0 on periodic grids.
        seed: seed of the random initialisation.
    """

    n_fields: int = 1
    hidden: int = 10
    kernel_size: int = 5
    kernel_size2: int | None = None
    powers: tuple[int, ...] = (2,)
    bias1: bool = True
    bias2: bool = True
    integrator: str = "euler"
    substeps: int = 1
    dt: float = 1.0
    boundary: str = "periodic"
    boundary_value: float | tuple[float, ...] = 0.0
    init: str = "random"
    accuracy: int = 2
    spacing: tuple[float, float] = (1.0, 1.0)
    constraint: str | None = None
    mass_preserving: bool = False
    seed: int | None = 0

    def __post_init__(self) -> None:
        powers = self.powers if isinstance(self.powers, (list, tuple)) else (self.powers,)
        if len(powers) > MAX_HIDDEN:
            raise SurrogateError(f"powers has {len(powers)} entries, more than the {MAX_HIDDEN} hidden channels allowed")
        try:
            object.__setattr__(self, "powers", tuple(int(p) for p in powers))
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        except (TypeError, ValueError, OverflowError):
            raise SurrogateError(f"powers={self.powers!r} must be integers and spacing={self.spacing!r} two "
                                 "numbers") from None
        if not self.powers or any(not 1 <= p <= MAX_DEGREE for p in self.powers):
            raise SurrogateError(f"powers={list(self.powers)} must be integers from 1 to {MAX_DEGREE} (the activation "
                                 "relu(x)**p)")
        if isinstance(self.boundary_value, list):
            object.__setattr__(self, "boundary_value", tuple(self.boundary_value))
        if self.integrator not in INTEGRATORS:
            raise SurrogateError(f"unknown integrator {self.integrator!r}; choose one of {', '.join(INTEGRATORS)}")
        for name, most in (("n_fields", MAX_FIELDS), ("hidden", MAX_HIDDEN), ("substeps", MAX_SUBSTEPS),
                           ("kernel_size", MAX_KERNEL), ("kernel_size2", MAX_KERNEL)):
            v = getattr(self, name)
            if v is None and name == "kernel_size2":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SurrogateError(f"{name}={v!r} must be a positive integer")
            if v > most:
                raise SurrogateError(f"{name}={v} is above the limit {most}")
        if not (isinstance(self.dt, (int, float)) and math.isfinite(self.dt) and self.dt > 0):
            raise SurrogateError(f"dt={self.dt!r} must be a positive finite number")
        if self.init not in ("random", "stencil", "zeros"):
            raise SurrogateError(f"unknown init {self.init!r}; choose random, stencil or zeros")
        if self.constraint not in (None, "frozen", "moments"):
            raise SurrogateError(f"unknown constraint {self.constraint!r}; choose frozen or moments")
        if self.constraint == "moments" and self.init != "stencil":
            raise SurrogateError("constraint='moments' keeps stencil moments: it needs init='stencil'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        d = asdict(self)
        d["powers"], d["spacing"] = list(self.powers), list(self.spacing)
        if isinstance(self.boundary_value, tuple):
            d["boundary_value"] = list(self.boundary_value)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SurrogateConfig":
        """Inverse of :meth:`to_dict`, refusing unknown keys (``fields``, the field count's name in
        older checkpoints, is read as ``n_fields``)."""
        if "fields" in d and "n_fields" not in d and isinstance(d["fields"], int):
            d = {("n_fields" if k == "fields" else k): v for k, v in d.items()}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise SurrogateError(f"unknown surrogate option(s) {sorted(unknown)}")
        return cls(**d)


class Surrogate(nn.Module):
    """One time step ``dt`` of a vector-field network: ``substeps`` integrator steps of ``dt/substeps``.

    Args:
        vector_field: module mapping ``(batch, fields, x, y)`` to the same shape.
        integrator: name in :data:`pdesurrogate.integrators.INTEGRATORS`.
        substeps: integrator steps per call.
        dt: time advanced per call.
        config: the config it was built from (kept for checkpoints).
    """

    def __init__(self, vector_field: nn.Module, integrator: str = "euler", substeps: int = 1, dt: float = 1.0,
                 config: SurrogateConfig | None = None) -> None:
        super().__init__()
        if integrator not in INTEGRATORS:
            raise SurrogateError(f"unknown integrator {integrator!r}; choose one of {', '.join(INTEGRATORS)}")
        if int(substeps) < 1:
            raise SurrogateError(f"substeps={substeps!r} must be a positive integer")
        self.vector_field, self.integrator, self.substeps, self.dt = vector_field, integrator, int(substeps), float(dt)
        self.config = config
        self.info: dict[str, Any] = {}
        self.provenance: dict[str, Any] = {}

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Advance ``u (batch, fields, x, y)`` by ``dt``."""
        if u.dim() != 4:
            raise SurrogateError(f"input of shape {tuple(u.shape)} must be (batch, fields, x, y)")
        p = next(self.vector_field.parameters(), None)
        if p is not None and u.dtype != p.dtype:
            raise SurrogateError(f"the input is {str(u.dtype)[6:]} and the model {str(p.dtype)[6:]}: convert one "
                                 f"(model.to(torch.{str(u.dtype)[6:]}) or u.to(torch.{str(p.dtype)[6:]}))")
        fields = getattr(self.vector_field, "n_fields", None)
        if fields is not None and u.shape[1] != fields:
            raise SurrogateError(f"the input has {u.shape[1]} channel(s) and the model {fields} field(s): "
                                 "pass (batch, fields, x, y)")
        h = self.dt / self.substeps
        step = STEP_FUNCTIONS[self.integrator]
        if self.integrator == "projected_euler":
            norm = sample_norm(u)
            for _ in range(self.substeps):
                u = projected_euler(self.vector_field, u, h, norm)
            return u
        for _ in range(self.substeps):
            u = step(self.vector_field, u, h)
        return u

    @contextmanager
    def unpadded(self):
        """Within this block the convolutions do not pad: each step returns the grid less its
        receptive halo, the cells whose values need no boundary data (cropped training)."""
        from .stencil_conv import StencilConv2d

        if self.integrator == "projected_euler":
            raise SurrogateError("projected_euler normalises over the whole grid: train it on the full grid")
        convs = [m for m in self.modules() if isinstance(m, StencilConv2d)]
        try:
            for m in convs:
                m.valid = True
            yield self
        finally:
            for m in convs:
                m.valid = False

    def rollout(self, u0: torch.Tensor, n_steps: int) -> torch.Tensor:
        """``(batch, n_steps + 1, fields, x, y)``: ``u0`` and ``n_steps`` steps after it."""
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 0:
            raise SurrogateError(f"n_steps={n_steps!r} must be a non-negative integer")
        out = [u0]
        u = u0
        for _ in range(n_steps):
            u = self(u)
            out.append(u)
        return torch.stack(out, dim=1)

    def with_integrator(self, integrator: str | None = None, substeps: int | None = None) -> "Surrogate":
        """The same vector field (shared, not copied) under another integrator or substep count.

        The network is read as a continuous vector field F: changing the integrator or the number
        of substeps keeps ``dt`` and changes only how F is integrated over it.
        """
        cfg = self.config
        integrator = integrator if integrator is not None else self.integrator
        substeps = substeps if substeps is not None else self.substeps
        if cfg is not None:
            cfg = SurrogateConfig.from_dict({**cfg.to_dict(), "integrator": integrator, "substeps": substeps})
        s = Surrogate(self.vector_field, integrator, substeps, self.dt, cfg)
        s.info = dict(self.info)
        return s


def build_surrogate(config: SurrogateConfig | Mapping[str, Any] | None = None, *, dtype: torch.dtype | None = None,
                    **kwargs: Any) -> Surrogate:
    """A :class:`Surrogate` from a config, a plain dict, or keyword arguments, in ``dtype``
    (default: torch's default, float32).

    With ``init="stencil"`` every K1 kernel stores the stencil of a unit grid and carries the
    fixed factor ``dx^-p dy^-q`` of its derivative, so the weights are O(1) at any resolution
    and one learning rate fits all.
    """
    if isinstance(config, SurrogateConfig):
        cfg = SurrogateConfig.from_dict({**config.to_dict(), **kwargs})
    else:
        cfg = SurrogateConfig.from_dict({**dict(config or {}), **kwargs})
    with torch.random.fork_rng() if cfg.seed is not None else nullcontext():
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        vf = ConvVectorField(cfg.n_fields, cfg.hidden, cfg.kernel_size, cfg.powers, cfg.boundary, cfg.bias1,
                             cfg.bias2 and not cfg.mass_preserving, cfg.kernel_size2, cfg.boundary_value)
    if cfg.init == "zeros":
        with torch.no_grad():
            for p in vf.parameters():
                p.zero_()
    elif cfg.init == "stencil":
        _stencil_init(vf, cfg)
    if cfg.constraint is not None:
        vf.conv1.constrain(cfg.constraint)
    if cfg.mass_preserving:
        if cfg.boundary != "periodic":
            raise SurrogateError("mass preservation by zero-sum kernels needs a periodic boundary")
        vf.conv2.constrain("zero_sum")
    model = Surrogate(vf, cfg.integrator, cfg.substeps, cfg.dt, cfg)
    return model.to(dtype) if dtype is not None else model


@torch.no_grad()
def _stencil_init(vf: ConvVectorField, cfg: SurrogateConfig) -> None:
    conv1 = vf.conv1
    conv1.weight.zero_()
    from datagen.stencils import stencil_radius

    def fits(o: tuple[int, int]) -> bool:
        return (stencil_radius(max(o), cfg.accuracy) if max(o) else 0) <= cfg.kernel_size // 2

    orders = [o for o in STENCIL_INIT_ORDERS if fits(o)]
    shifts = torch.ones(cfg.hidden, dtype=torch.float64)
    for c in range(cfg.hidden):
        # channels 2k and 2k+1 see +d and -d of one derivative d: with a shift b > |z|,
        # relu^2(b + z) and relu^2(b - z) span {1, z, z^2}, so the pair gives K2 the derivative, its
        # square and a constant; no two channels are equal, so their gradients differ from the start
        slot, sign = c // 2, (1.0 if c % 2 == 0 else -1.0)
        f = slot % cfg.n_fields
        turn, k = divmod(slot // cfg.n_fields, len(orders))
        conv1.set_stencil(c, f, orders[k], cfg.accuracy, cfg.spacing, scale=sign)
        shifts[c] = 1.0 + turn  # a second round of the same derivatives at another shift
        for g in range(cfg.n_fields):  # record the other (zero) kernels as order (0, 0) times 0
            if g != f:
                conv1.orders[(c, g)] = ((0, 0), cfg.accuracy)
    if conv1.bias is not None:
        conv1.bias.zero_()
    vf.conv2.weight.zero_()
    if vf.conv2.bias is not None:
        vf.conv2.bias.zero_()
    # grid units throughout: channel c computes s_c (z_c + b_c) with z_c the unit-grid stencil's
    # output and s_c = dx^-i dy^-j; relu^p is homogeneous, so K2 carrying 1 / (dt s_c^p) makes
    # dt F a sum of O(1) weights times sigma(z_c + b_c): the same numbers at any resolution and dt
    s1 = conv1.kernel_scale.max(dim=1).values
    conv1.bias_scale.copy_(s1)
    powers = vf.act.powers if hasattr(vf.act, "powers") else [1] * cfg.hidden
    p = torch.as_tensor([float(q) for q in powers], dtype=torch.float64)
    if conv1.bias is not None:
        # channels start shifted by one grid unit: relu(z + 1)^p = 1 + p z + ... while z > -1, so
        # K2 sees linear features of every stencil from the first step (at zero shift relu^p
        # gives K2 only z^p or a one-sided z, and linear terms such as a Lap u are learned slowly)
        conv1.bias.copy_(shifts.to(conv1.bias.dtype))
    vf.conv2.kernel_scale.copy_((1.0 / (cfg.dt * s1 ** p)).expand_as(vf.conv2.kernel_scale))
    vf.conv2.bias_scale.fill_(1.0 / cfg.dt)


# -- checkpoints -----------------------------------------------------------------------------
