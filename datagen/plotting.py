"""Pictures of datasets (needs matplotlib: the ``[plot]`` extra).

Fields are drawn with x to the right and y up, whatever the array order (``U[i, j] = u(x_i, y_j)``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DatagenError
from .safeio import atomic_path
from .grid import Grid
from .pde import PDE
from .store import _open, _provenance, dataset_file

__all__ = ["plot_frames", "draw_field"]


def draw_field(ax, frame: np.ndarray, extent: Sequence[float], vmin: float | None = None, vmax: float | None = None):
    """Draw ``frame[i, j] = u(x_i, y_j)`` on ``ax`` with x to the right and y up."""
    return ax.imshow(np.asarray(frame).T, origin="lower", extent=list(extent), vmin=vmin, vmax=vmax, cmap="viridis")


def plot_frames(path: str | os.PathLike, out: str | os.PathLike, trajectory: int = 0,
                times: Sequence[int] | None = None) -> Path:
    """Save a grid of panels (one row per field, one column per saved step) of one trajectory.

    Args:
        path: a datagen HDF5 file.
        out: the image file to write (format from its suffix, e.g. ``.png``).
        trajectory: which trajectory.
        times: saved-step indices (default: first, middle, last).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DatagenError("plotting needs matplotlib: pip install 'pdesurrogate[plot]'") from None
    # only the frames drawn are read (straight from HDF5: no dask, no whole-file load)
    path = dataset_file(path)
    with _open(path) as f:
        prov = _provenance(f, path)
        try:
            grid = Grid.from_dict(prov["config"]["grid"])
            pde = PDE.from_dict(prov["pde"])
            dt = float(prov["config"]["dt"])
            n_traj, n_time = int(f.attrs["n_trajectories"]), int(f["dimensions/time"].shape[0])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatagenError(f"{path} is damaged or was edited ({type(exc).__name__}); `datagen validate` says "
                               "more") from None
        if not 0 <= trajectory < n_traj:
            raise DatagenError(f"trajectory {trajectory} is out of range: the file holds {n_traj} (0..{n_traj - 1})")
        times = list(times) if times is not None else sorted({0, (n_time - 1) // 2, n_time - 1})
        bad = [t for t in times if not 0 <= t < n_time]
        if bad:
            raise DatagenError(f"time index {bad[0]} is out of range: the file holds {n_time} frames "
                               f"(0..{n_time - 1})")
        read = sorted(set(times))  # HDF5 selections must be increasing and unique
        where = [read.index(t) for t in times]
        fields = {name: np.asarray(f[f"t0_fields/{name}"][trajectory, read])[where] for name in pde.fields}
    x, y = grid.x, grid.y
    extent = [x[0], x[-1], y[0], y[-1]]
    fig, axes = plt.subplots(len(fields), len(times), figsize=(3.0 * len(times) + 1.0, 3.0 * len(fields) + 0.4),
                             squeeze=False, layout="constrained")
    for r, (name, frames) in enumerate(fields.items()):
        lo, hi = float(frames.min()), float(frames.max())
        for c, t in enumerate(times):
            ax = axes[r, c]
            im = draw_field(ax, frames[c], extent, lo, hi)
            ax.set_title(f"{name}, t = {dt * t:.4g}")
            ax.set_xlabel("x")
            if c == 0:
                ax.set_ylabel("y")
        fig.colorbar(im, ax=list(axes[r]), shrink=0.9)
    fig.suptitle(f"{pde.expression().splitlines()[0]}  (trajectory {trajectory})", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out, suffix=out.suffix) as tmp:
            fig.savefig(tmp, dpi=100)
    except ValueError as exc:
        raise DatagenError(f"cannot write {out}: {exc}") from None
    finally:
        plt.close(fig)
    return out
