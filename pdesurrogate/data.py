"""Training windows ``(u0, u1, ..., uk)`` from a ``datagen`` dataset.

:class:`WindowDataset` indexes every run of ``unroll + 1`` consecutive frames of every trajectory
(``stride`` frames apart). Files that fit in memory are read once; larger ones are read lazily,
with one h5py handle per process (opened on first use, so DataLoader workers each get their own).

With ``crop=S`` a window is an ``S x S`` target patch plus a halo of ``halo`` cells around it
(the network's receptive field over the unrolled steps, see :func:`receptive_halo`), cut with
periodic wrap-around. Stepped with unpadded ("valid") convolutions, every target cell then sees
exactly what it sees on the full grid, at a fraction of the cost.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import SurrogateError

__all__ = ["WindowDataset", "receptive_halo"]

# files up to this size are read into memory by in_memory="auto"
IN_MEMORY_BYTES = 2 * 1024 ** 3


def receptive_halo(model, unroll: int) -> int:
    """Cells a target cell depends on around it after ``unroll`` steps of ``model``:
    ``unroll x substeps x stages x (r1 + r2)``."""
    from .integrators import STAGES

    if model.integrator not in STAGES:
        raise SurrogateError(f"the {model.integrator} integrator couples the whole grid: train it on the full grid")
    vf = model.vector_field
    r = vf.conv1.kernel_size // 2 + vf.conv2.kernel_size // 2
    return int(unroll) * model.substeps * STAGES[model.integrator] * r


class WindowDataset(torch.utils.data.Dataset):
    """Windows of ``unroll + 1`` consecutive frames of a datagen HDF5 file.

    Args:
        path: a dataset folder written by ``datagen generate`` (read at ``split``) or one of its files.
        unroll: target steps per window (the window holds ``unroll + 1`` frames).
        stride: frames between the starts of consecutive windows of one trajectory.
        fields: field names to read (default: all, in the PDE's order).
        in_memory: ``True``, ``False`` or ``"auto"`` (files up to 2 GiB).
        dtype: tensor dtype of the windows.
        trajectories: trajectory indices to use (default: all).
        crop: side ``S`` of a random square target patch (periodic grids), or ``None``.
        halo: cells added around the patch (see :func:`receptive_halo`); needed with ``crop``.
        seed: seed of the crop positions; each (epoch, index) gets its own, so any worker
            layout gives the same crops (call :meth:`set_epoch` each epoch).
        split: the split of a dataset folder (default ``"train"``).

    Item ``i`` is a tensor ``(unroll + 1, fields, x, y)``: frame 0 is the input, frames
    ``1..unroll`` the targets. ``dt``, ``spacing``, ``boundary``, ``pde``, ``grid`` and
    ``provenance`` come from the file.
    """

    def __init__(self, path: str | os.PathLike, unroll: int = 1, stride: int = 1, fields: Sequence[str] | None = None,
                 in_memory: bool | str = "auto", dtype: torch.dtype = torch.float32,
                 trajectories: Sequence[int] | None = None, crop: int | None = None, halo: int = 0,
                 seed: int = 0, split: str = "train") -> None:
        from .source import open_source as _source

        src = _source(path, split)
        if src.path is None or src.grid is None or src.dt is None:
            raise SurrogateError(f"{path}: WindowDataset reads HDF5 files in The Well's layout")
        for name, v in (("unroll", unroll), ("stride", stride)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise SurrogateError(f"{name}={v!r} must be a positive integer")
        if unroll + 1 > src.n_time:
            raise SurrogateError(f"{path} holds {src.n_time - 1} steps per trajectory; unroll={unroll} needs "
                                 f"{unroll}: lower unroll or generate longer trajectories (--steps)")
        self.path, self.unroll, self.stride, self.dtype = Path(src.path), int(unroll), int(stride), dtype
        self.provenance = src.provenance
        self.pde, self.grid = src.pde, src.grid
        self.dt = float(src.dt)
        self.spacing = tuple(float(s) for s in self.grid.spacing)
        self.boundary = self.grid.boundary
        all_fields = tuple(src.fields)
        self.fields = tuple(fields) if fields is not None else all_fields
        bad = [f for f in self.fields if f not in all_fields]
        if bad:
            raise SurrogateError(f"{path} has fields {list(all_fields)}, not {bad}")
        idx = np.arange(src.n_traj) if trajectories is None else np.asarray(trajectories, dtype=int)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= src.n_traj:
            raise SurrogateError(f"trajectories must lie in 0..{src.n_traj - 1}")
        self.trajectories = idx
        self.n_time = src.n_time
        starts = np.arange(0, src.n_time - self.unroll, self.stride)
        self._index = np.array([(t, s) for t in range(idx.size) for s in starts], dtype=np.int64)
        if crop is not None:
            if self.boundary != "periodic":
                raise SurrogateError("crop= cuts patches with periodic wrap-around: it needs a periodic grid "
                                     f"(this one is {self.boundary}); train on the full grid")
            if not (isinstance(crop, (int, np.integer)) and 1 <= crop <= min(self.grid.shape)):
                raise SurrogateError(f"crop={crop!r} must be an integer in 1..{min(self.grid.shape)}")
            if crop + 2 * halo > 2 * min(self.grid.shape):
                raise SurrogateError(f"crop {crop} with halo {halo} is larger than the grid {self.grid.shape} allows; "
                                     "use a smaller crop or train on the full grid")
        self.crop, self.halo, self.seed, self.epoch = crop, int(halo), int(seed), 0
        nbytes = idx.size * src.n_time * len(self.fields) * int(np.prod(self.grid.shape)) * 4
        if in_memory == "auto":
            in_memory = nbytes <= IN_MEMORY_BYTES
        self._array: np.ndarray | None = self._read_all() if in_memory else None
        self._file: Any = None
        self._pid: int | None = None

    # -- reading ---------------------------------------------------------------------------------
    def _read_all(self) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as f:
            lo, hi = int(self.trajectories.min()), int(self.trajectories.max()) + 1
            parts = [f["t0_fields"][name][lo:hi] for name in self.fields]
        return np.ascontiguousarray(np.stack(parts, axis=2)[self.trajectories - lo])

    def _h5(self):
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None  # h5py handles do not cross processes
        return state

    def __len__(self) -> int:
        return len(self._index)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of ``epoch`` (deterministic in ``seed``, ``epoch`` and the index)."""
        self.epoch = int(epoch)

    def window(self, i: int) -> np.ndarray:
        """Window ``i`` as float32 numpy ``(unroll + 1, fields, x, y)``, uncropped."""
        t, s = self._index[i]
        sl = slice(int(s), int(s) + self.unroll + 1)
        if self._array is not None:
            return self._array[t, sl]
        f = self._h5()
        traj = int(self.trajectories[t])
        return np.stack([f["t0_fields"][name][traj, sl] for name in self.fields], axis=1)

    def crop_origin(self, i: int) -> tuple[int, int]:
        """Top-left cell of item ``i``'s target patch in this epoch."""
        g = np.random.default_rng([self.seed, self.epoch, int(i)])
        return int(g.integers(self.grid.shape[0])), int(g.integers(self.grid.shape[1]))

    def __getitem__(self, i: int) -> torch.Tensor:
        w = self.window(i)
        if self.crop is not None:
            ox, oy = self.crop_origin(i)
            n = self.crop + 2 * self.halo
            rows = (ox - self.halo + np.arange(n)) % self.grid.shape[0]
            cols = (oy - self.halo + np.arange(n)) % self.grid.shape[1]
            w = w[:, :, rows][:, :, :, cols]
        return torch.as_tensor(np.ascontiguousarray(w), dtype=self.dtype)

    def __repr__(self) -> str:
        extra = f", crop={self.crop}, halo={self.halo}" if self.crop else ""
        return (f"WindowDataset({str(self.path)!r}, unroll={self.unroll}, stride={self.stride}, windows={len(self)}, "
                f"fields={list(self.fields)}, in_memory={self._array is not None}{extra})")
