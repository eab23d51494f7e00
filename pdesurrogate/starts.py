"""Where the default recipe starts: the class's network of the PDE read from the data, or the
least-squares fit of the field's last layer; the constant-state anchor; more substeps when the
start cannot step the data's ``dt``."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from datagen.errors import DatagenError

from .data import WindowDataset
from .errors import SurrogateError
from .model import Surrogate
from .recipe import ADAPT_TRIES, MAX_ADAPTED, START_PAIRS, Recipe, _draw
from .vector_field import ConvVectorField

__all__ = ["data_start", "constant_states"]

# an identified PDE that leaves more of the data's time derivative unexplained (relative L2) is
# no start: the least-squares fit of the data is
IDENTIFY_RESIDUAL = 0.05


def _field_of(model: Surrogate) -> ConvVectorField:
    vf = model.vector_field
    if not isinstance(vf, ConvVectorField) or vf.conv1.bias is None:
        raise SurrogateError("the default recipe trains a ConvVectorField with a first-layer bias "
                             "(build_surrogate(..., init='stencil'))")
    return vf


@torch.no_grad()
def data_start(model: Surrogate, windows: torch.Tensor, margin: float = 1.25) -> dict[str, float]:
    """Set ``model``'s shifts from the data and its K2 centre taps and ``b2`` by least squares.

    Args:
        model: a surrogate with a :class:`ConvVectorField` (K1 as built, e.g. ``init="stencil"``).
        windows: consecutive frames ``(n, 3, fields, x, y)`` (or ``(n, 2, ...)`` when the data
            hold one step), ``dt`` apart.
        margin: each shift is ``margin * max |z_c|`` over the frames the fit reads.

    With three frames the target at the middle one is the central difference
    ``(u^{n+1} - u^{n-1}) / 2dt`` (the time derivative to ``O(dt^2)``) plus, for Euler substeps,
    ``(u^{n+1} - 2u^n + u^{n-1}) / (2 s dt)``: ``s`` Euler substeps of F advance
    ``u + dt F + (1 - 1/s) dt^2 F'F / 2``, the flow ``u + dt f + dt^2 f'f / 2``, so the F whose
    steps follow the flow carries ``dt f'f / 2s`` beside ``f`` (the modified equation, read
    from the data). With two frames it is the forward difference. Returns the least-squares
    fit's relative residual per field.
    """
    if windows.dim() != 5 or windows.shape[1] < 2:
        raise SurrogateError(f"data_start reads windows (n, 2 or 3, fields, x, y), not {tuple(windows.shape)}")
    vf = _field_of(model)
    dtype = vf.conv1.weight.dtype
    w = windows.to(dtype)
    if w.shape[1] >= 3:
        c = 1.0 / (2 * model.substeps) if model.integrator in ("euler", "projected_euler") else 0.0
        u0, target = w[:, 1], (w[:, 2] - w[:, 0]) / (2 * model.dt) + c * (w[:, 2] - 2 * w[:, 1] + w[:, 0]) / model.dt
    else:
        u0, target = w[:, 0], (w[:, 1] - w[:, 0]) / model.dt
    return _least_squares_start(model, u0, target, margin)


def _least_squares_start(model: Surrogate, u0: torch.Tensor, target: torch.Tensor, margin: float) -> dict[str, float]:
    vf = _field_of(model)
    c1, c2 = vf.conv1, vf.conv2
    dtype = c1.weight.dtype
    scale = c1.bias_scale.to(dtype).view(1, -1, 1, 1)
    c1.bias.zero_()
    zmax = torch.zeros(vf.hidden, dtype=torch.float64)
    for chunk in u0.split(16):
        zmax = torch.maximum(zmax, (c1(chunk) / scale).abs().amax(dim=(0, 2, 3)).to(torch.float64))
    if not bool(torch.isfinite(zmax).all()):
        raise SurrogateError("the training frames hold non-finite values: clean the data first")
    # a channel that sees nothing (a constant field) still gets a unit shift
    c1.bias.copy_((margin * torch.where(zmax > 0, zmax, torch.ones_like(zmax))).to(dtype))
    C, Fo = vf.hidden, vf.n_fields
    # normal equations accumulated over chunks: the features of all frames need not fit in memory
    AtA = torch.zeros(C + 1, C + 1, dtype=torch.float64)
    Atb = torch.zeros(C + 1, Fo, dtype=torch.float64)
    btb = torch.zeros(Fo, dtype=torch.float64)
    for a, b in zip(u0.split(16), target.split(16)):
        h = vf.act(c1(a)).to(torch.float64)
        A = torch.cat([h.permute(0, 2, 3, 1).reshape(-1, C), torch.ones(h[:, 0].numel(), 1, dtype=torch.float64)], 1)
        y = b.to(torch.float64).permute(0, 2, 3, 1).reshape(-1, Fo)
        AtA += A.T @ A
        Atb += A.T @ y
        btb += (y * y).sum(0)
    d = AtA.diagonal().sqrt().clamp(min=1e-300)
    # scaled, with a relative ridge of 1e-12: sign pairs of a channel that never leaves its
    # quadratic region are linearly dependent with the constant column
    M = AtA / d[:, None] / d[None, :]
    sol = torch.linalg.solve(M + 1e-12 * torch.eye(C + 1, dtype=torch.float64), Atb / d[:, None]) / d[:, None]
    r = c2.kernel_size // 2
    c2.weight.zero_()
    c2.weight[:, :, r, r] = (sol[:C].T / c2.kernel_scale.to(torch.float64)).to(dtype)
    if c2.bias is not None:
        c2.bias.copy_((sol[C] / c2.bias_scale.to(torch.float64)).to(dtype))
    resid = (btb - 2 * (sol * Atb).sum(0) + (sol * (AtA @ sol)).sum(0)).clamp(min=0)
    return {f"field {f}": float((resid[f] / btb[f].clamp(min=1e-300)).sqrt()) for f in range(Fo)}


def _with_unroll(train: WindowDataset, unroll: int) -> WindowDataset:
    """``train``'s trajectories cut into windows of ``unroll`` steps."""
    if train.unroll == unroll:
        return train
    return WindowDataset(train.path, unroll=unroll, stride=train.stride, fields=train.fields,
                         trajectories=train.trajectories)


def _frames(train: WindowDataset, k: int, seed: int) -> torch.Tensor:
    """``k`` windows of three frames (two when the data hold one step), seeded."""
    ds = _with_unroll(train, 2) if train.n_time >= 3 else train
    return torch.stack([torch.as_tensor(ds.window(i)[:3]) for i in _draw(len(ds), k, seed, 1)]).to(torch.float64)


def _identified_start(model: Surrogate, train: WindowDataset, rc: Recipe, say) -> dict[str, float] | None:
    """Start from the class's modified-equation network of the PDE read from the data; None (and a
    line) when the data hold fewer than five frames, the equation explains too little of them, or
    no network of the class holds it."""
    from .exact import embed
    from .identify import identify_data
    from .witness import default_witness

    if train.n_time < 5:
        say("start: identify needs five consecutive frames; starting by least squares")
        return None
    ds = _with_unroll(train, 4)
    frames = torch.stack([torch.as_tensor(ds.window(i)[:5]) for i in _draw(len(ds), START_PAIRS // 4, rc.seed, 3)])
    found = identify_data(frames.to(torch.float64), train.dt, train.spacing, fields=train.fields,
                          boundary=train.boundary)
    say(f"start: the data read as {found.text()} (relative residual "
        f"{', '.join(f'{v:.2g}' for v in found.residual.values())})")
    worst = max(found.residual.values(), default=0.0)
    if not worst <= IDENTIFY_RESIDUAL:
        say(f"start: that equation leaves {worst:.2g} of the time derivative unexplained (more than "
            f"{IDENTIFY_RESIDUAL:g}); starting by least squares")
        return None
    try:
        witness, meta = default_witness(model, found.pde, train.grid)
    except (DatagenError, SurrogateError) as exc:
        say(f"start: no network of the class holds that equation ({exc}); starting by least squares")
        return None
    if not meta["witness_in_class"]:
        say(f"start: its {meta['witness']} network is not in the model's class ({meta['witness_class_note']}); "
            "starting by least squares")
        return None
    embed(witness.to(torch.float64), model)
    return {**found.residual, "identified": 1.0}


def constant_states(frames: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` spatially constant states ``(n, fields, x, y)`` spanning the range of ``frames``
    ``(..., fields, x, y)``: evenly spaced for one field, a seeded draw in the box for several."""
    flat = frames.transpose(0, -3).reshape(frames.shape[-3], -1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    if frames.shape[-3] == 1:
        t = torch.linspace(0, 1, n, dtype=frames.dtype)[:, None]
    else:
        t = torch.as_tensor(np.random.default_rng([int(seed), 4]).random((n, frames.shape[-3])), dtype=frames.dtype)
    values = lo + t * (hi - lo)
    return values[:, :, None, None].expand(n, frames.shape[-3], *frames.shape[-2:]).contiguous()


def _anchor(model: Surrogate, frames: torch.Tensor, rc: Recipe) -> Callable[[], torch.Tensor]:
    """The penalty that holds the model's step at constant states to the start's.

    The training windows of zero-mean data hardly see wavenumber zero, and free training bends the
    network's symbol there (the drift after the trained horizon, docs/training.md); the start read
    from the data (``start="identify"``) steps constant states as the identified reaction does.
    The penalty is ``anchor`` times the mean squared step difference per cell, on the scale of one
    window's loss."""
    states = constant_states(frames[:, 0], rc.anchor_states, rc.seed)
    with torch.no_grad():
        target = model(states)

    def extra() -> torch.Tensor:
        return rc.anchor * ((model(states) - target) ** 2).mean()

    return extra


def _start(model: Surrogate, train: WindowDataset, frames: torch.Tensor, rc: Recipe, say) -> dict[str, float]:
    """The start read from the data; with ``rc.adapt_substeps``, on the fewest substeps that step the
    data's dt stably when the model's own cannot (decided from the start's linearised field)."""
    from .stability import probe_states, step_stability, warn_if_unstable

    for attempt in range(ADAPT_TRIES + 1):
        fit = _identified_start(model, train, rc, say) if rc.start == "identify" else None
        if fit is None:
            fit = data_start(model, frames, rc.margin)
        st = step_stability(model, probe_states(frames[:, 0].numpy()), tuple(frames.shape[-2:]))
        if st is None or st.stable or not rc.adapt_substeps or attempt == ADAPT_TRIES:
            break
        # the start depends on the substeps (the Euler correction, the modified equation): a
        # start rebuilt for more substeps can need fewer than the old start's analysis says
        more = min(max(st.needed or 0, 2 * model.substeps), MAX_ADAPTED)
        if more <= model.substeps:
            break
        say(f"start: {model.substeps} substep(s) cannot step dt={model.dt:.4g} stably (a mode grows by "
            f"{st.amplification:.4g} per substep); taking {more} substeps and starting again")
        _set_substeps(model, more)
    warn_if_unstable(model, frames[:, 0].numpy())
    return fit


def _set_substeps(model: Surrogate, substeps: int) -> None:
    from datagen.limits import MAX_SUBSTEPS

    from .model import SurrogateConfig

    model.substeps = min(int(substeps), MAX_SUBSTEPS)
    if model.config is not None:
        model.config = SurrogateConfig.from_dict({**model.config.to_dict(), "substeps": model.substeps})
