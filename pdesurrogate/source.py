"""Reference trajectories to score against: a datagen dataset (folder or file), a plain
Well-format file, an ``xarray.Dataset`` or an array, read in float64 batches and extended by the
dataset's own solver beyond its stored steps; and the checks that a model fits them."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datagen.errors import DatagenError
from datagen.grid import Grid
from datagen.limits import loads_bounded
from datagen.pde import PDE

from .errors import SurrogateError

__all__ = ["Source", "open_source", "check_fits", "check_memory"]


@dataclass
class Source:
    """Reference trajectories from a file, an xarray.Dataset or an array, read in batches."""

    name: str
    n_traj: int
    n_time: int  # stored frames
    n_fields: int
    shape: tuple[int, int]
    dt: float | None
    provenance: dict[str, Any] | None
    array: np.ndarray | None = None
    path: Path | None = None
    fields: tuple[str, ...] = ()
    layout_grid: Grid | None = None  # from The Well's /dimensions when the file has no provenance

    @property
    def pde(self) -> PDE | None:
        return PDE.from_dict(self.provenance["pde"]) if self.provenance else None

    @property
    def grid(self) -> Grid | None:
        return Grid.from_dict(self.provenance["config"]["grid"]) if self.provenance else self.layout_grid

    def read(self, idx: np.ndarray, steps: int) -> np.ndarray:
        """Float64 ``(b, steps + 1, field, x, y)`` for trajectories ``idx``, extended by the solver."""
        stored = min(self.n_time, steps + 1)
        if self.array is not None:
            ref = np.asarray(self.array[idx, :stored], dtype=np.float64)
        else:
            import h5py

            with h5py.File(self.path, "r") as f:
                lo, hi = int(idx.min()), int(idx.max()) + 1
                parts = [f["t0_fields"][name][lo:hi, :stored] for name in self.fields]
            ref = np.stack(parts, axis=2)[idx - lo].astype(np.float64)
        self._check_finite(ref, idx)
        if steps + 1 > stored:
            if self.provenance is None:
                raise SurrogateError(
                    f"{self.name} holds {self.n_time - 1} steps and no provenance to extend it; ask for steps <= "
                    f"{self.n_time - 1}"
                )
            from datagen import solve

            more = solve(self.provenance, ref[:, -1], steps + 1 - stored)
            ref = np.concatenate([ref, more[:, 1:]], axis=1)
            self._check_finite(ref, idx)
        return ref

    def _check_finite(self, ref: np.ndarray, idx: np.ndarray) -> None:
        # never average a corrupt trajectory away: name it so that it can be left out or regenerated
        bad = ~np.isfinite(ref.reshape(ref.shape[0], ref.shape[1], -1)).all(axis=2)
        if bad.any():
            b, n = np.argwhere(bad)[0]
            raise SurrogateError(f"{self.name}: the reference of trajectory {int(idx[b])} is not finite at step "
                                 f"{int(n)} ({int(bad.sum())} frames in this batch); regenerate the data or leave that "
                                 "trajectory out (trajectories=...)")


def open_source(data: Any, split: str | None = None) -> Source:
    """What ``data`` holds; a dataset folder is read at ``split``."""
    if isinstance(data, (str, os.PathLike)):
        from datagen.store import dataset_file, read_provenance

        try:
            path = dataset_file(data, split if Path(data).is_dir() else None)
        except DatagenError as exc:
            raise SurrogateError(str(exc)) from None
        if not _has_provenance(path):
            return _well_source(path)
        try:
            prov = read_provenance(path)
            cfg, pde = prov["config"], PDE.from_dict(prov["pde"])
            grid = Grid.from_dict(cfg["grid"])
            import h5py

            with h5py.File(path, "r") as f:
                d = f["t0_fields"][pde.fields[0]]
                n_traj, n_time = int(d.shape[0]), int(d.shape[1])
                for name in pde.fields:
                    if f["t0_fields"][name].shape != (n_traj, n_time, *grid.shape):
                        raise SurrogateError(f"{path}: field {name!r} has shape {f['t0_fields'][name].shape}, "
                                             f"expected {(n_traj, n_time, *grid.shape)}")
        except DatagenError as exc:
            raise SurrogateError(str(exc)) from None
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise SurrogateError(f"{path} is not a readable datagen dataset ({type(exc).__name__}: {exc})") from None
        return Source(str(path), n_traj, n_time, pde.n_fields, grid.shape, float(cfg["dt"]), prov, path=path,
                       fields=pde.fields)
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        xr = None
    if xr is not None and isinstance(data, xr.Dataset):
        prov = loads_bounded(data.attrs["provenance"], "the dataset's provenance") if "provenance" in data.attrs else None
        names = PDE.from_dict(prov["pde"]).fields if prov else tuple(data.data_vars)
        arr = np.stack([data[n].transpose("trajectory", "time", "x", "y").values for n in names], axis=2)
        dt = float(prov["config"]["dt"]) if prov else None
        return Source("dataset", arr.shape[0], arr.shape[1], arr.shape[2], arr.shape[3:], dt, prov, array=arr,
                       fields=tuple(names))
    arr = np.asarray(data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data)
    if arr.ndim != 5:
        raise SurrogateError(f"reference array of shape {arr.shape} must be (trajectory, time, field, x, y)")
    return Source("array", arr.shape[0], arr.shape[1], arr.shape[2], arr.shape[3:], None, None, array=arr)


def _has_provenance(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "provenance" in f.attrs
    except OSError:
        raise SurrogateError(f"{path} is not a readable HDF5 file (corrupt, truncated or another format)") from None


def _well_source(path: Path) -> Source:
    """A Well-format file without datagen's provenance: its frames, step, grid and boundary."""
    import h5py

    from .wellfiles import read_layout

    with h5py.File(path, "r") as f:
        lay = read_layout(f, path)
    return Source(str(path), lay.n_traj, lay.n_time, len(lay.fields), lay.grid.shape, lay.dt, None, path=path,
                   fields=lay.fields, layout_grid=lay.grid)


def _model_fields(model: Any) -> int | None:
    return getattr(model.vector_field, "n_fields", None)


def check_fits(model: Any, src: Source) -> None:
    """One-line refusals for a model that does not fit the data."""
    nf = _model_fields(model)
    if nf is not None and nf != src.n_fields:
        raise SurrogateError(f"the model has {nf} field(s) but {src.name} has {src.n_fields}")
    if src.dt is not None and not math.isclose(model.dt, src.dt, rel_tol=1e-6):
        raise SurrogateError(f"the model steps dt={model.dt:.6g} but {src.name} is saved every dt={src.dt:.6g}; "
                             "evaluate on data of the model's time step")
    grid = src.grid
    cfg = model.config
    if grid is not None and cfg is not None and cfg.boundary != grid.boundary:
        raise SurrogateError(f"the model pads for a {cfg.boundary} boundary but {src.name} is {grid.boundary}")
    mg = model.info.get("grid") if isinstance(model.info, dict) else None
    if mg and tuple(mg.get("shape", src.shape)) != tuple(src.shape):
        raise SurrogateError(f"the model was built for a {tuple(mg['shape'])} grid but {src.name} is {tuple(src.shape)}")
    if grid is not None and mg and "extent" in mg and tuple(mg["extent"]) != tuple(grid.extent):
        raise SurrogateError(f"the model was built for extent {tuple(mg['extent'])} but {src.name} has {grid.extent}")
    if grid is not None and cfg is not None and cfg.init == "stencil" and not mg:
        if not np.allclose(cfg.spacing, grid.spacing, rtol=1e-9):
            raise SurrogateError(f"the model's stencils use spacing {cfg.spacing} but {src.name} has {grid.spacing}")


def check_memory(src: Source, steps: int, batch_size: int) -> None:
    """Refuse a horizon whose reference frames for one batch cannot fit (float64, with the
    solver's copy when the horizon is extended), before reading or solving anything."""
    from datagen.config import available_memory

    b = max(1, min(int(batch_size), src.n_traj))
    need = 3 * b * (steps + 1) * src.n_fields * int(np.prod(src.shape)) * 8
    avail = available_memory()
    if avail is not None and need > avail:
        raise SurrogateError(f"{steps} steps of a batch of {b} trajectories need about {need / 2**30:.3g} GiB of "
                             f"reference frames, more than the {avail / 2**30:.3g} GiB available: lower --steps or "
                             "--batch-size")


