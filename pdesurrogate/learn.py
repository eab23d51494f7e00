"""The default recipe: train the paper's class from data alone.

``learn(model, train, valid)`` needs no PDE and no witness: the grid, ``dt`` and the boundary of
the data are all it reads. Two phases, each scored by the validation rollout:

1. **Start from the data** (:func:`data_start`). K1 holds sign pairs ``+d, -d`` of the
   finite-difference stencils (``init="stencil"``). Each channel's shift is set to ``margin``
   times the largest ``|z_c|`` its stencil produces on the training inputs, so every channel
   works where ``relu^2(b + z)`` and ``relu^2(b - z)`` together span ``{1, z, z^2}``. Given K1 and
   the shifts, the vector field is linear in K2's centre taps and ``b2``: they are the linear
   least-squares fit of the time derivative read from the data (central differences, with the
   correction that makes Euler substeps of the field follow the flow), variable projection.
2. **L-BFGS on one-step windows** over all weights (then, optionally, Levenberg-Marquardt with
   the exact Jacobian), from that start.

After every check the validation rollout error decides, and the model ends in the best validated
state (never worse than its start); a rollout that blows up is reported in one line.
Measured on Fisher (docs/benchmarks.md): K2's off-centre taps fitted by least squares as well
made every rollout blow up (smooth data do not see the high wavenumbers they amplify), and
Levenberg-Marquardt steps from the data start moved the validation error up and down by 3x from
one iteration to the next, where L-BFGS descends steadily.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from datagen.progress import eta_text

from .data import WindowDataset
from .errors import SurrogateError
from .evaluation import rollout_error
from .gauss_newton import lm_polish
from .checkpoint import save
from .model import Surrogate, build_surrogate
from .polish import lbfgs_polish
from .vector_field import ConvVectorField

__all__ = ["Recipe", "learn", "train", "data_start"]

# the paper's class for Fisher: 10 hidden channels of power 2, 5 x 5 kernels, Euler x 3
MODEL_DEFAULTS: dict[str, Any] = {"hidden": 10, "kernel_size": 5, "powers": (2,), "substeps": 3, "init": "stencil"}
# frame pairs the least-squares start reads at most (seeded draw): bounds its memory
START_PAIRS = 256
# how often, and up to how many substeps, the recipe retries a start its substeps cannot step
ADAPT_TRIES, MAX_ADAPTED = 4, 96
MAX_WINDOWS = 4096


@dataclass(frozen=True)
class Recipe:
    """Options of the default recipe, one set of defaults for Python, the TOML ``[recipe]`` table
    and the CLI.

    Args:
        margin: channel shifts as a multiple of the largest ``|z_c|`` on the training inputs.
        lbfgs: L-BFGS iterations (strong Wolfe line search) on ``windows`` one-step windows,
            validated every ``check`` iterations.
        lm: Levenberg-Marquardt iterations afterwards on ``lm_windows`` one-step windows (0: none).
        valid_steps: horizon of the validation rollout (default: every stored step).
        loss: ``mse`` or ``relative`` (see :func:`pdesurrogate.window_loss`).
        seed: seed of the window draws.
        start: ``least-squares`` (K1 stencils with shifts from the data, K2's centre taps fitted)
            or ``identify``: read a PDE from the data (:func:`pdesurrogate.identify_data`, sparse
            regression) and start from the class's modified-equation network of it; it keeps the
            growth of constant states that zero-mean data barely show (falls back to
            least-squares when that network is not in the class).
        anchor: weight of the penalty that holds the model's step at ``anchor_states`` constant
            states (spanning the training data's range) to the start's, during L-BFGS; 0: none.
            Zero-mean data hardly constrain wavenumber zero, which governs a solution that decays
            to its mean after the trained horizon.
        precondition: L-BFGS on the weights scaled by their Gauss-Newton diagonal (needed from the
            identified start, whose biases near 1e3 sit beside K2 entries near 1e-4).
        adapt_substeps: when the start's linearised field cannot be stepped stably at the data's
            ``dt`` by the model's substeps, take the fewest that can (one line says so) and start
            again.
    """

    margin: float = 1.25
    lbfgs: int = 200
    windows: int = 64
    check: int = 10
    lm: int = 0
    lm_windows: int = 16
    valid_steps: int | None = None
    loss: str = "mse"
    seed: int = 0
    start: str = "identify"
    anchor: float = 100.0
    anchor_states: int = 8
    precondition: bool = True
    adapt_substeps: bool = True

    def __post_init__(self) -> None:
        if self.loss not in ("mse", "relative"):
            raise SurrogateError(f"loss={self.loss!r}: choose mse or relative")
        if self.start not in ("least-squares", "identify"):
            raise SurrogateError(f"start={self.start!r}: choose least-squares or identify")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not (
                math.isfinite(self.margin) and self.margin > 1):
            raise SurrogateError(f"margin={self.margin!r} must be a number above 1 (the shift over the largest |z|)")
        for flag in ("precondition", "adapt_substeps"):
            if not isinstance(getattr(self, flag), bool):
                raise SurrogateError(f"{flag}={getattr(self, flag)!r} must be true or false")
        if isinstance(self.anchor, bool) or not isinstance(self.anchor, (int, float)) or not (
                math.isfinite(self.anchor) and 0 <= self.anchor <= 1e12):
            raise SurrogateError(f"anchor={self.anchor!r} must be a finite number >= 0 (0: no anchor)")
        for name, low, high in (("lbfgs", 0, 100_000), ("windows", 1, MAX_WINDOWS), ("check", 1, 100_000),
                                ("lm", 0, 1000), ("lm_windows", 1, MAX_WINDOWS), ("seed", 0, 2 ** 63 - 1),
                                ("anchor_states", 1, 256),
                                ("valid_steps", 1, 100_000)):
            v = getattr(self, name)
            if v is None and name == "valid_steps":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise SurrogateError(f"{name}={v!r} must be an integer from {low} to {high}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        """A recipe from a plain dict (a TOML table), refusing unknown keys."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise SurrogateError(f"unknown recipe option(s) {sorted(unknown)}; allowed: "
                                 f"{', '.join(f.name for f in fields(cls))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def _draw(n: int, k: int, seed: int, stream: int) -> list[int]:
    """``k`` of ``range(n)`` (seeded, sorted), all of them when ``k >= n``."""
    if k >= n:
        return list(range(n))
    g = np.random.default_rng([int(seed), int(stream)])
    return sorted(int(i) for i in g.choice(n, size=k, replace=False))


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
    line) when the data hold fewer than five frames or that network is not in the class."""
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
    witness, meta = default_witness(model, found.pde, train.grid)
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


def learn(model: Surrogate, train: WindowDataset | str | os.PathLike, valid: Any = None,
          recipe: Recipe | Mapping[str, Any] | None = None, *, checkpoint: str | os.PathLike | None = None,
          log: Callable[[str], None] | None = print):
    """Train ``model`` in place by the default recipe; return the history (``xarray.Dataset``).

    Args:
        model: a surrogate of the paper's class (``build_surrogate(..., init="stencil")``); it is
            trained in float64.
        train: a :class:`WindowDataset`, a dataset folder (its ``train`` split) or a file.
        valid: a dataset folder (its ``valid`` split), a file or an array scored by
            :func:`pdesurrogate.evaluate` after every iteration; ``None`` keeps the last state.
        recipe: a :class:`Recipe` or a dict of its options.
        checkpoint: folder for ``best.pt`` (after every phase).
        log: called with one line per iteration and per phase (``None``: silent).

    The history has one row per iteration (phase ``start``, ``one-step``, ``multi-step``) with
    the window loss (mean squared error per cell and step) and the validation error; its
    attrs say what was kept and why training stopped.
    """
    import xarray as xr

    rc = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe or {})
    if not isinstance(model, Surrogate):
        raise SurrogateError(f"learn trains a pdesurrogate.Surrogate, not {type(model).__name__}")
    _field_of(model)
    if not isinstance(train, WindowDataset):
        train = WindowDataset(train, unroll=1)
    if abs(model.dt - train.dt) > 1e-9 * train.dt:
        raise SurrogateError(f"the model steps dt={model.dt:.6g}, the data dt={train.dt:.6g}: build the model "
                             "with dt=train.dt")
    if model.vector_field.n_fields != len(train.fields):
        raise SurrogateError(f"the model has {model.vector_field.n_fields} field(s), the data {len(train.fields)}")
    if train.crop is not None:
        raise SurrogateError("the default recipe trains on full-grid windows: open the data without crop=")
    if isinstance(valid, (str, os.PathLike)) and Path(valid).is_dir():
        from datagen.store import dataset_files

        valid = dataset_files(valid).get("valid")
    say = log or (lambda line: None)
    model.to(device="cpu", dtype=torch.float64)
    valid_steps = rc.valid_steps
    if valid is not None and valid_steps is None:
        from .source import open_source as _source

        valid_steps = _source(valid).n_time - 1

    def score() -> float | None:
        return rollout_error(model, valid, valid_steps) if valid is not None else None

    rows: list[tuple[str, int, float, float]] = []
    t0 = time.perf_counter()
    frames = _frames(train, START_PAIRS, rc.seed)
    fit = _start(model, train, frames, rc, say)
    v0 = score()
    with torch.no_grad():
        loss0 = float(((model(frames[:16, 0]) - frames[:16, 1]) ** 2).mean())
    rows.append(("start", 0, loss0, math.nan if v0 is None else v0))
    what = "least-squares" if rc.start == "least-squares" and "identified" not in fit else "identified PDE's fit"
    say(f"start from the data: {what} residual {', '.join(f'{v:.3g}' for k, v in fit.items() if k != 'identified')}"
        + (f"; valid rel_l2({valid_steps}) {v0:.4g}" if v0 is not None else ""))
    best = v0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    params = [p for p in model.parameters() if p.requires_grad]
    blown: list[str] = []

    def record(name: str, total: int) -> Callable[[int, float, float | None], None]:
        began = time.perf_counter()

        def hear(it: int, loss: float, v: float | None) -> None:
            rows.append((name, it, loss, math.nan if v is None else v))
            if v is not None and not math.isfinite(v):
                blown.append(f"{name} iteration {it}")
            say(f"{name} {it}/{total}: loss {loss:.4g}" + (f"  valid rel_l2({valid_steps}) {v:.4g}" if v is not None
                                                             else "")
                + f"  ({eta_text(it, total, time.perf_counter() - began)})")
        return hear

    extra = _anchor(model, frames, rc) if rc.anchor > 0 else None
    if rc.lbfgs:
        one = _with_unroll(train, 1)
        one.dtype = torch.float64
        out = lbfgs_polish(model, one, params, rc.lbfgs, rc.windows, rc.check, rc.precondition, 1, rc.loss, rc.seed,
                           torch.device("cpu"), valid, valid_steps, None, torch.float64, None,
                           math.inf if best is None else best, on_check=record("L-BFGS", rc.lbfgs), extra=extra)
        if valid is not None and out["lbfgs_kept"]:
            best = out["lbfgs_valid"]
        if ckpt is not None:
            save(model, ckpt / "best.pt", provenance=train.provenance)
    if rc.lm:
        one = _with_unroll(train, 1)
        wins = [torch.as_tensor(one.window(i), dtype=torch.float64) for i in _draw(len(one), rc.lm_windows, rc.seed, 2)]
        norm = len(wins) * (wins[0][0].numel() if rc.loss == "mse" else 1)
        out = lm_polish(model, wins, norm, params, rc.lm, 1, rc.loss, score, best, lambda t: t,
                        on_iteration=record("Levenberg-Marquardt", rc.lm))
        if valid is not None and out["lm_kept"]:
            best = out["lm_valid"]
        if ckpt is not None:
            save(model, ckpt / "best.pt", provenance=train.provenance)
    if blown:
        say(f"the validation rollout blew up ({blown[0]}); kept the best state (valid rel_l2 {best:.4g})")
    phase, iteration, loss, vals = zip(*rows)
    hist = xr.Dataset({"loss": ("iteration", np.asarray(loss)), "valid": ("iteration", np.asarray(vals))},
                      coords={"phase": ("iteration", list(phase)), "step": ("iteration", list(iteration))},
                      attrs={"recipe": "default", "best_valid": math.nan if best is None else best,
                             "valid_steps": valid_steps or 0, "seconds": time.perf_counter() - t0,
                             "blew_up": blown[0] if blown else ""})
    model.info = {**model.info, "trained": {"recipe": "default", **rc.to_dict(), "best_valid": hist.attrs["best_valid"],
                                            "valid_steps": valid_steps}}
    return hist


def train(data: str | os.PathLike, recipe: Recipe | Mapping[str, Any] | None = None, *,
          log: Callable[[str], None] | None = print, **model_options: Any) -> tuple[Surrogate, Any]:
    """Build the paper's class on ``data``'s grid and train it by the default recipe.

    Args:
        data: a dataset folder (``train`` split, validated on ``valid`` when there is one) or a
            file.
        recipe: :class:`Recipe` options.
        model_options: :class:`SurrogateConfig` options over the defaults (hidden 10, 5 x 5
            kernels, power 2, Euler x 3, stencil init).

    Returns ``(model, history)``.
    """
    ds = WindowDataset(data, unroll=1)
    model = build_surrogate(**{**MODEL_DEFAULTS, **model_options}, **_from_data(ds), dtype=torch.float64)
    valid = data if Path(data).is_dir() else None
    if valid is not None:
        from datagen.store import dataset_files

        if "valid" not in dataset_files(data):
            valid = None
    return model, learn(model, ds, valid, recipe, log=log)


def _from_data(ds: WindowDataset) -> dict[str, Any]:
    """What a model takes from its data: step, grid spacing, boundary, field count."""
    return {"dt": ds.dt, "spacing": ds.spacing, "boundary": ds.boundary, "boundary_value": ds.grid.boundary_value,
            "n_fields": len(ds.fields)}

