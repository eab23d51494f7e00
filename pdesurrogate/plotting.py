"""Figures of evaluations (needs matplotlib: the ``[plot]`` extra; GIFs also need Pillow).

Fields are drawn with x to the right and y up, as ``datagen plot`` does (``U[i, j] = u(x_i, y_j)``).
Every function returns a matplotlib ``Figure`` (or the written path); :func:`save` writes one
atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from datagen.safeio import atomic_path

from .errors import SurrogateError

__all__ = ["plot_error_curves", "plot_error_split", "plot_panels", "plot_kernels", "animate_rollout", "save"]


def _plt():
    try:
        import matplotlib

        if not os.environ.get("MPLBACKEND"):
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SurrogateError("plotting needs matplotlib: pip install 'pdesurrogate[plot]'") from None
    return plt


def _band(ax, steps: np.ndarray, values: np.ndarray, label: str, color=None, **line_kw) -> None:
    """Median over trajectories with a 10-90 % band."""
    med = np.nanmedian(values, axis=0)
    lo, hi = np.nanpercentile(values, 10, axis=0), np.nanpercentile(values, 90, axis=0)
    (line,) = ax.plot(steps, med, label=label, color=color, **line_kw)
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)


def plot_error_curves(report, metrics: Sequence[str] = ("rel_l2", "max_error", "mse")):
    """Error against step on a log axis: median and 10-90 % band over trajectories, one panel per metric."""
    plt = _plt()
    metrics = [m for m in metrics if m in report]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False, layout="constrained")
    steps = report["step"].values
    for ax, m in zip(axes[0], metrics):
        _band(ax, steps, report[m].values, m)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(report[m].attrs.get("long_name", m), fontsize=9)
    return fig


def plot_error_split(split):
    """Total error, the bounds on its approximation and optimisation parts, the witness's error and
    the Lipschitz-propagated estimate against step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    steps = split["step"].values
    styles = {"approximation_bound": {"color": "C1", "linewidth": 3}, "optimisation_lower_bound": {"color": "C2"},
              "witness_error": {"color": "C4", "linestyle": ":"}, "propagated_estimate": {"color": "C3"},
              "total": {"color": "k", "linestyle": "--"}}
    for k, kw in styles.items():  # total last and dashed: it often lies on top of one of its parts
        if k in split:
            _band(ax, steps, split[k].values, k.replace("_", " "), **kw)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("relative L2 error")
    witness = split.attrs.get("witness", "witness")
    note = "" if split.attrs.get("witness_in_class", 1) else " (not in the model's class)"
    ax.set_title(f"error split; witness: {witness}{note}", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def plot_budget(bound):
    """The error bound's per-step budget: its approximation, optimisation and reference shares
    stacked over steps (means over trajectories; a negative optimisation share, where the model
    beats the witness, is drawn below zero), with the bound and the true error on top."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    steps = bound["step"].values
    mean = {k: bound[k].mean("trajectory").values for k in bound.data_vars if bound[k].dims == ("trajectory", "step")}
    if "bound_approximation" in mean:
        pos = np.zeros_like(steps, dtype=float)
        neg = np.zeros_like(steps, dtype=float)
        for k, color in (("bound_approximation", "C1"), ("bound_optimisation", "C2"), ("bound_reference", "C7")):
            v = mean[k]
            up, down = np.clip(v, 0, None), np.clip(v, None, 0)
            ax.fill_between(steps, pos, pos + up, color=color, alpha=0.5, lw=0,
                            label=k.replace("bound_", "") + " share")
            if np.any(down < 0):
                ax.fill_between(steps, neg + down, neg, color=color, alpha=0.25, lw=0, hatch="//")
            pos, neg = pos + up, neg + down
    ax.plot(steps, mean["bound"], color="C3", lw=2, label=f"bound ({bound.attrs.get('bound_status', '')})")
    ax.plot(steps, mean["total"], color="k", ls="--", label="true error")
    ax.axhline(0.0, color="0.5", lw=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("relative L2 error (mean over trajectories)")
    ax.set_title(f"error budget; witness: {bound.attrs.get('witness', 'none')}", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def _draw(ax, frame: np.ndarray, extent, vmin=None, vmax=None, cmap="viridis"):
    return ax.imshow(np.asarray(frame).T, origin="lower", extent=extent, vmin=vmin, vmax=vmax, cmap=cmap)


def plot_panels(truth: np.ndarray, prediction: np.ndarray, steps: Sequence[int], extent=(0.0, 1.0, 0.0, 1.0),
                field: int = 0, scale: str = "per_step"):
    """Truth / prediction / error panels of one trajectory at the chosen steps.

    Args:
        truth, prediction: ``(time, field, x, y)`` arrays (or tensors) of one trajectory.
        steps: time indices to show (columns).
        extent: ``(x0, x1, y0, y1)`` of the domain.
        field: which field.
        scale: ``per_step`` (each column its own colour scale, so that the later frames of a
            decaying field do not look flat; each error panel titled with its largest error
            relative to that frame's largest value) or ``shared`` (one scale for all columns).
    """
    if scale not in ("per_step", "shared"):
        raise SurrogateError(f"scale={scale!r}: choose per_step or shared")
    plt = _plt()
    T = np.asarray(truth.detach().cpu() if isinstance(truth, torch.Tensor) else truth)[:, field]
    P = np.asarray(prediction.detach().cpu() if isinstance(prediction, torch.Tensor) else prediction)[:, field]
    steps = list(steps)
    if any(not 0 <= s < min(len(T), len(P)) for s in steps):
        raise SurrogateError(f"steps {steps} must lie in 0..{min(len(T), len(P)) - 1}")
    fig, axes = plt.subplots(3, len(steps), figsize=(2.8 * len(steps) + 1.0, 8.0), squeeze=False, layout="constrained")
    err = P[steps] - T[steps]
    shared = (float(min(T[steps].min(), P[steps].min())), float(max(T[steps].max(), P[steps].max())),
              float(np.abs(err).max()) or 1.0)
    for c, s in enumerate(steps):
        lo, hi, emax = shared if scale == "shared" else (
            float(min(T[s].min(), P[s].min())), float(max(T[s].max(), P[s].max())), float(np.abs(err[c]).max()) or 1.0)
        for r, (name, frame) in enumerate((("truth", T[s]), ("prediction", P[s]))):
            im = _draw(axes[r, c], frame, extent, lo, hi)
            axes[r, c].set_title(f"{name}, step {s}", fontsize=9)
        im_e = _draw(axes[2, c], err[c], extent, -emax, emax, cmap="RdBu_r")
        size = float(np.abs(T[s]).max()) or 1.0
        axes[2, c].set_title(f"error, step {s}\nmax {np.abs(err[c]).max():.2g} ({np.abs(err[c]).max() / size:.1e} "
                             "of max|u|)", fontsize=8)
        axes[2, c].set_xlabel("x")
        if scale == "per_step":
            fig.colorbar(im, ax=list(axes[:2, c]), shrink=0.7, location="bottom")
            fig.colorbar(im_e, ax=axes[2, c], shrink=0.7, location="bottom")
    for r in range(3):
        axes[r, 0].set_ylabel("y")
    if scale == "shared":
        fig.colorbar(im, ax=list(axes[:2].ravel()), shrink=0.8)
        fig.colorbar(im_e, ax=list(axes[2]), shrink=0.8)
    return fig


def plot_kernels(model, accuracy: int = 2, orders: Sequence[tuple[int, int]] = ((0, 0), (1, 0), (0, 1), (2, 0),
                                                                                    (1, 1), (0, 2))):
    """Each learned K1 kernel (top) next to the finite-difference stencil it is closest to (bottom).

    "Closest" is by :func:`pdesurrogate.stencil_distance` after scaling the stencil by the
    least-squares factor, so a kernel that is 3 times a Laplacian matches the Laplacian.
    """
    from .diagnostics import fd_stencil, stencil_distance

    plt = _plt()
    conv = model.vector_field.conv1
    W = conv.kernel.detach().cpu().to(torch.float64).numpy()[:, 0]
    size = W.shape[-1]
    spacing = tuple(model.config.spacing) if model.config is not None else (1.0, 1.0)
    refs = {}
    for o in orders:
        try:
            refs[o] = fd_stencil(o, size, accuracy, spacing)
        except Exception:
            continue
    fig, axes = plt.subplots(2, W.shape[0], figsize=(1.8 * W.shape[0] + 0.5, 4.0), squeeze=False, layout="constrained")
    for c, k in enumerate(W):
        best, best_d, best_s = None, np.inf, 0.0
        for o, ref in refs.items():
            s = float((k * ref).sum() / (ref * ref).sum())
            d = stencil_distance(k, s * ref) if s != 0 else np.inf
            if d < best_d:
                best, best_d, best_s = o, d, s
        vmax = float(np.abs(k).max()) or 1.0
        axes[0, c].imshow(k.T, origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        axes[0, c].set_title(f"K1[{c}]", fontsize=8)
        if best is not None:
            axes[1, c].imshow((best_s * refs[best]).T, origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            axes[1, c].set_title(f"{best_s:.2g} D{best}\nrel. dist {best_d:.2g}", fontsize=7)
        for r in range(2):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    return fig


def animate_rollout(truth: np.ndarray, prediction: np.ndarray, out: str | os.PathLike, field: int = 0,
                    extent=(0.0, 1.0, 0.0, 1.0), fps: int = 8) -> Path:
    """Write a GIF of truth, prediction and error side by side (matplotlib's Pillow writer)."""
    plt = _plt()
    from matplotlib.animation import FuncAnimation, PillowWriter

    T = np.asarray(truth.detach().cpu() if isinstance(truth, torch.Tensor) else truth)[:, field]
    P = np.asarray(prediction.detach().cpu() if isinstance(prediction, torch.Tensor) else prediction)[:, field]
    n = min(len(T), len(P))
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.2), layout="constrained")
    lo, hi = float(min(T.min(), P.min())), float(max(T.max(), P.max()))
    emax = float(np.abs(P[:n] - T[:n]).max()) or 1.0
    ims = [_draw(axes[0], T[0], extent, lo, hi), _draw(axes[1], P[0], extent, lo, hi),
           _draw(axes[2], P[0] - T[0], extent, -emax, emax, cmap="RdBu_r")]
    for ax, name in zip(axes, ("truth", "prediction", "error")):
        ax.set_title(name)

    def frame(k: int) -> list[Any]:
        ims[0].set_data(T[k].T)
        ims[1].set_data(P[k].T)
        ims[2].set_data((P[k] - T[k]).T)
        fig.suptitle(f"step {k}")
        return ims

    anim = FuncAnimation(fig, frame, frames=n, blit=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out, suffix=".gif") as tmp:
            anim.save(tmp, writer=PillowWriter(fps=fps))
    finally:
        plt.close(fig)
    return out


def save(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and close it."""
    plt = _plt()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out, suffix=out.suffix) as tmp:
            fig.savefig(tmp, dpi=dpi)
    except ValueError as exc:
        raise SurrogateError(f"cannot write {out}: {exc}") from None
    finally:
        plt.close(fig)
    return out
