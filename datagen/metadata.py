"""``DatasetMetadata``: what a dataset file says about itself besides its frames and provenance.

One typed object for the three places that deal with it: generation builds it from the
resolved configuration (:meth:`DatasetMetadata.for_run`), the writer lays the file out from it,
and the validator reads it back from the file (:meth:`DatasetMetadata.read`) and compares it with
what the provenance implies (:meth:`DatasetMetadata.from_provenance`,
:meth:`DatasetMetadata.differences`), so an edited root attribute or coordinate is found by
the same code that wrote it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import DatagenError
from .limits import MAX_STEPS, MAX_TRAJECTORIES

COMPRESSIONS = ("none", "gzip", "lzf")  # HDF5 filters every h5py build has

__all__ = ["DatasetMetadata"]


@dataclass(frozen=True, eq=False)
class DatasetMetadata:
    """The layout-defining facts of one dataset file.

    Attributes:
        dataset_name: the PDE's name (The Well's ``dataset_name``).
        fields: field names, in the order of the state's field axis.
        parameters: the PDE's parameters (root attributes and ``scalars/``).
        n_trajectories: trajectories in the file.
        time: saved times, float64 (stored as float32 in ``dimensions/time``).
        x, y: node coordinates, float64 (stored as float32).
        grid: the grid's dict (shape, extent, boundary, boundary value), for the boundary groups.
    """

    dataset_name: str
    fields: tuple[str, ...]
    parameters: Mapping[str, float]
    n_trajectories: int
    time: np.ndarray
    x: np.ndarray
    y: np.ndarray
    grid: Mapping[str, Any]

    # -- making ------------------------------------------------------------------------------
    @classmethod
    def for_run(cls, config: Any, pde: Any, grid: Any) -> DatasetMetadata:
        """The metadata of a run of a resolved :class:`~datagen.GenerationConfig` (or its dict)
        with its PDE and :class:`~datagen.Grid`."""
        cfg = config if isinstance(config, Mapping) else config.to_dict()
        steps, n, dt = int(cfg["steps"]), int(cfg["n_trajectories"]), float(cfg["dt"])
        if not 1 <= steps <= MAX_STEPS or not 1 <= n <= MAX_TRAJECTORIES:
            raise DatagenError(f"steps={steps} and n_trajectories={n} must lie within the limits {MAX_STEPS} and "
                               f"{MAX_TRAJECTORIES}")
        if not (math.isfinite(dt) and 0 < dt and dt * steps < 1e30):
            raise DatagenError(f"dt={dt!r} must be a positive number whose horizon float32 can hold")
        return cls(dataset_name=str(cfg["pde"]), fields=tuple(pde.fields),
                   parameters={k: float(v) for k, v in pde.parameters.items()},
                   n_trajectories=int(cfg["n_trajectories"]),
                   time=float(cfg["dt"]) * np.arange(int(cfg["steps"]) + 1),
                   x=np.asarray(grid.x, np.float64), y=np.asarray(grid.y, np.float64), grid=dict(cfg["grid"]))

    @classmethod
    def from_provenance(cls, prov: Mapping[str, Any]) -> DatasetMetadata:
        """What a file with this provenance must say (raises ``DatagenError`` when the
        provenance cannot be rebuilt)."""
        from .grid import Grid
        from .pde import PDE

        try:
            cfg = prov["config"]
            return cls.for_run(cfg, PDE.from_dict(prov["pde"]), Grid.from_dict(cfg["grid"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatagenError(f"the provenance cannot be rebuilt ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_mapping(cls, meta: Mapping[str, Any] | DatasetMetadata) -> DatasetMetadata:
        """From the plain dict form (``boundary`` for the grid dict); an instance passes through."""
        if isinstance(meta, DatasetMetadata):
            return meta
        try:
            return cls(dataset_name=str(meta["dataset_name"]), fields=tuple(meta["fields"]),
                       parameters={k: float(v) for k, v in dict(meta["parameters"]).items()},
                       n_trajectories=int(meta["n_trajectories"]),
                       time=np.asarray(meta["time"], np.float64), x=np.asarray(meta["x"], np.float64),
                       y=np.asarray(meta["y"], np.float64), grid=dict(meta["boundary"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatagenError(f"incomplete dataset metadata ({type(exc).__name__}: {exc})") from None

    @classmethod
    def read(cls, f: Any) -> DatasetMetadata:
        """From an open file (h5py); raises ``KeyError`` for a missing piece. Coordinates come
        back at their stored float32 precision; the grid dict is not stored apart from the
        provenance and is left empty."""
        params = [str(k) for k in f.attrs["simulation_parameters"]]
        return cls(dataset_name=str(f.attrs["dataset_name"]),
                   fields=tuple(str(s) for s in f["t0_fields"].attrs["field_names"]),
                   parameters={k: float(f.attrs[k]) for k in params},
                   n_trajectories=int(f.attrs["n_trajectories"]),
                   time=np.asarray(f["dimensions/time"], np.float64), x=np.asarray(f["dimensions/x"], np.float64),
                   y=np.asarray(f["dimensions/y"], np.float64), grid={})

    # -- shapes ------------------------------------------------------------------------------
    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        """One trajectory's frames ``(time, field, x, y)``, as the solver makes them."""
        return (len(self.time), len(self.fields), len(self.x), len(self.y))

    @property
    def field_shape(self) -> tuple[int, int, int, int]:
        """One field dataset ``(trajectory, time, x, y)``, as stored."""
        return (self.n_trajectories, len(self.time), len(self.x), len(self.y))

    # -- comparing ---------------------------------------------------------------------------
    def differences(self, stored: DatasetMetadata) -> list[str]:
        """One line per way ``stored`` (read from a file) departs from this (expected) metadata;
        coordinates are compared at their stored float32 precision."""
        out = []
        if stored.dataset_name != self.dataset_name:
            out.append(f"dataset_name {stored.dataset_name!r} disagrees with the provenance ({self.dataset_name!r})")
        if stored.fields != self.fields:
            out.append(f"field_names {list(stored.fields)} disagree with the provenance ({list(self.fields)})")
        for k, v in self.parameters.items():
            if k not in stored.parameters:
                out.append(f"root attribute {k} is missing (the provenance has {v!r})")
            elif not np.isclose(stored.parameters[k], v, rtol=1e-12, atol=0):
                out.append(f"root attribute {k}={stored.parameters[k]!r} disagrees with the provenance ({v!r})")
        if stored.n_trajectories != self.n_trajectories:
            out.append(f"n_trajectories={stored.n_trajectories} disagrees with the provenance ({self.n_trajectories})")
        for name in ("time", "x", "y"):
            a, b = getattr(stored, name), getattr(self, name).astype(np.float32).astype(np.float64)
            if a.shape != b.shape or not np.array_equal(a, b):
                out.append(f"dimensions/{name} disagrees with the provenance's grid and time step")
        return out
