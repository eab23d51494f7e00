"""HDF5 datasets in The Well's data format, with provenance: writer, folder layout, statistics
and reader (the validator is :mod:`datagen.validation`).

Layout (attributes marked @)::

    /  @dataset_name @grid_type="cartesian" @n_spatial_dims=2 @n_trajectories
       @simulation_parameters=[names] @<name>=value ...  @provenance=<JSON>  @datagen_format=1
    /dimensions          @spatial_dims=["x","y"];  time (T,), x (nx,), y (ny,)  float32
    /boundary_conditions /x_<kind>, /y_<kind>: @associated_dims @associated_fields @bc_type
                         @condition; mask bool(n), values float32
    /scalars             @field_names=[parameters]; one float32 dataset per parameter
    /t0_fields           @field_names=[fields]; <field> float32 (n_traj, T, nx, ny),
                         chunked one (trajectory, time) frame per chunk
    /t1_fields, /t2_fields  (empty: scalar fields only)

``provenance`` holds the resolved generation config, the PDE spec and package versions, which is
enough to regenerate the file byte for byte (``datagen generate --from FILE``).

A dataset folder follows The Well's layout: ``OUT/data/<split>/<name>.hdf5``, one file per split,
and ``OUT/stats.yaml`` with the normalisation statistics of the training split (see
:func:`write_stats`). Every reader here takes the folder (with a split) or one file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import DatagenError
from .limits import loads_bounded
from .safeio import atomic_path, write_atomic
from .metadata import COMPRESSIONS, DatasetMetadata

__all__ = ["write_dataset", "create_layout", "write_frames", "read_provenance", "open_dataset", "FORMAT_VERSION",
           "dataset_file", "dataset_files", "split_path", "write_stats",
           "read_stats", "compute_stats"]

FORMAT_VERSION = 1


def _h5():
    import h5py

    return h5py


def write_dataset(path: str | os.PathLike, batches: Iterable[np.ndarray], *,
                  meta: DatasetMetadata | Mapping[str, Any], provenance: Mapping[str, Any],
                  compression: str = "none") -> Path:
    """Write trajectories to ``path`` atomically (a temporary name renamed on success).

    Args:
        path: final file name.
        batches: arrays ``(b, T, field, nx, ny)``, streamed to disk in order.
        meta: a :class:`~datagen.metadata.DatasetMetadata`, or its dict form: ``dataset_name``,
            ``fields``, ``parameters`` (dict), ``n_trajectories``, ``time``, ``x``, ``y`` (float64
            arrays) and ``boundary`` (grid dict).
        provenance: the JSON-able record stored with the data (``config``, ``pde``, ...).
        compression: ``"none"`` (default), ``"gzip"`` or ``"lzf"``.
    """
    h5py = _h5()
    meta = DatasetMetadata.from_mapping(meta)
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        dsets = create_layout(f, meta, compression)
        n_traj = meta.n_trajectories
        start = 0
        for batch in batches:
            b = batch.shape[0]
            if start + b > n_traj:
                raise DatagenError(f"batch of shape {batch.shape} does not fit the dataset layout")
            write_frames(dsets, start, batch)
            start += b
        if start != n_traj:
            raise DatagenError(f"only {start} of {n_traj} trajectories were provided")
        f.attrs["provenance"] = json.dumps(dict(provenance), sort_keys=True)
    return path


def create_layout(f, meta: DatasetMetadata | Mapping[str, Any], compression: str = "none",
                  preallocate: bool = False) -> list:
    """Everything of a dataset but its frames and provenance, in the open file ``f``; returns
    the field datasets ``(n_traj, T, nx, ny)``. With ``preallocate`` (uncompressed only) every
    chunk is allocated now, so that frames can be written in any order into fixed places."""
    h5py = _h5()
    if compression not in COMPRESSIONS:
        raise DatagenError(f"unknown compression {compression!r}; choose one of {COMPRESSIONS}")
    meta = DatasetMetadata.from_mapping(meta)
    fields, params = list(meta.fields), dict(meta.parameters)
    n_traj, T = meta.n_trajectories, len(meta.time)
    nx, ny = len(meta.x), len(meta.y)
    f.attrs["dataset_name"] = meta.dataset_name
    f.attrs["grid_type"] = "cartesian"
    f.attrs["n_spatial_dims"] = 2
    f.attrs["n_trajectories"] = n_traj
    from .parse import RESERVED_NAMES

    clash = [k for k in params if k in RESERVED_NAMES or k.startswith("datagen_") or k in fields]
    if clash:
        raise DatagenError(f"parameter name {clash[0]!r} would overwrite a stored attribute or field; rename it")
    f.attrs["simulation_parameters"] = list(params)
    for k, v in params.items():
        f.attrs[k] = float(v)
    f.attrs["datagen_format"] = FORMAT_VERSION

    dims = f.create_group("dimensions")
    dims.attrs["spatial_dims"] = ["x", "y"]
    t = dims.create_dataset("time", data=np.asarray(meta.time, np.float32))
    t.attrs["sample_varying"] = False
    for name in ("x", "y"):
        d = dims.create_dataset(name, data=np.asarray(getattr(meta, name), np.float32))
        d.attrs["sample_varying"] = False
        d.attrs["time_varying"] = False

    bcs = f.create_group("boundary_conditions")
    grid = meta.grid
    kind = grid["boundary"]
    bv = grid.get("boundary_value", 0.0)
    for name, n in (("x", nx), ("y", ny)):
        g = bcs.create_group(f"{name}_{kind}")
        g.attrs["associated_dims"] = [name]
        g.attrs["associated_fields"] = [] if kind == "periodic" else fields
        g.attrs["bc_type"] = "periodic" if kind == "periodic" else "wall"
        g.attrs["condition"] = kind
        g.attrs["sample_varying"] = False
        g.attrs["time_varying"] = False
        mask = np.zeros(n, bool)
        mask[[0, -1]] = True
        g.create_dataset("mask", data=mask)
        wall = float(bv[0]) if isinstance(bv, list) else float(bv)
        g.create_dataset("values", data=np.full(2, wall if kind == "dirichlet" else 0.0, np.float32))

    sc = f.create_group("scalars")
    sc.attrs["field_names"] = list(params)
    for k, v in params.items():
        d = sc.create_dataset(k, data=np.float32(v))
        d.attrs["sample_varying"] = False
        d.attrs["time_varying"] = False

    t0 = f.create_group("t0_fields")
    t0.attrs["field_names"] = fields
    kw: dict[str, Any] = {} if compression == "none" else {"compression": compression}
    if preallocate and compression == "none":
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        kw["dcpl"] = dcpl
    dsets = []
    for name in fields:
        # fletcher32: a flipped bit is a read error, not a silently wrong value
        d = t0.create_dataset(name, shape=(n_traj, T, nx, ny), dtype=np.float32,
                              chunks=(1, 1, nx, ny), fletcher32=True, **kw)
        d.attrs["dim_varying"] = [True, True]
        d.attrs["sample_varying"] = True
        d.attrs["time_varying"] = True
        dsets.append(d)
    for name in ("t1_fields", "t2_fields"):
        f.create_group(name).attrs["field_names"] = []
    return dsets


def write_frames(dsets: list, start: int, batch: np.ndarray) -> None:
    """Trajectories ``start..start+b-1`` of ``batch (b, T, field, nx, ny)`` into the field datasets."""
    if batch.shape[2] != len(dsets) or batch.shape[1:2] + batch.shape[3:] != dsets[0].shape[1:]:
        raise DatagenError(f"batch of shape {batch.shape} does not fit the dataset layout")
    for k, d in enumerate(dsets):
        d[start:start + batch.shape[0]] = batch[:, :, k].astype(np.float32, copy=False)


# -- The Well's folder layout ----------------------------------------------------------------
STATS_FILE = "stats.yaml"
STAT_KEYS = ("mean", "std", "rms", "mean_delta", "std_delta", "rms_delta")


def split_path(root: str | os.PathLike, split: str, name: str) -> Path:
    """Where split ``split`` of dataset ``name`` lives in a dataset folder: ``root/data/split/name.hdf5``."""
    return Path(root) / "data" / split / f"{name}.hdf5"


def dataset_files(path: str | os.PathLike) -> dict[str, Path]:
    """``{split: file}`` of a dataset folder (The Well's ``data/<split>/*.hdf5``), in the order
    train, valid, test, then others by name; ``{stem: path}`` for a single file."""
    p = Path(path)
    if not p.exists():
        raise DatagenError(f"{p}: no such file or folder")
    if not p.is_dir():
        return {p.stem: p}
    found: dict[str, list[Path]] = {}
    data = p / "data"
    if data.is_dir():
        for sub in sorted(data.iterdir()):
            if sub.is_dir():
                files = sorted(f for f in sub.iterdir() if f.suffix in (".hdf5", ".h5") and f.is_file()
                               and not f.name.startswith("."))
                if files:
                    found[sub.name] = files
    many = {k: v for k, v in found.items() if len(v) > 1}
    if many:
        k, v = next(iter(many.items()))
        raise DatagenError(f"{p}: split {k!r} holds several files ({', '.join(f.name for f in v)}); pass one file")
    order = {"train": 0, "valid": 1, "test": 2}
    return {k: found[k][0] for k in sorted(found, key=lambda k: (order.get(k, 3), k))}


def dataset_file(path: str | os.PathLike, split: str | None = None) -> Path:
    """The file of ``split`` in a dataset folder, or ``path`` itself when it is a file.

    ``split=None`` takes a folder's only split; a folder with several needs one named.
    """
    p = Path(path)
    if not p.is_dir():
        return next(iter(dataset_files(p).values()))  # the file itself, or "no such file or folder"
    files = dataset_files(p)
    if not files:
        old = sorted(f.name for f in p.glob("*.h5"))
        hint = f"; {old[0]} at its top is a single file: pass it itself" if old else ""
        raise DatagenError(f"{p} holds no dataset (expected data/<split>/<name>.hdf5, as `datagen generate` "
                           f"writes){hint}")
    if split is None:
        if len(files) > 1:
            raise DatagenError(f"{p} holds the splits {', '.join(files)}: name one (split=..., --split)")
        return next(iter(files.values()))
    if split not in files:
        raise DatagenError(f"{p} has no split {split!r}; it holds {', '.join(files)}")
    return files[split]


def compute_stats(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """The Well's normalisation statistics of one file: per field ``mean``, ``std``, ``rms`` of the
    values and ``mean_delta``, ``std_delta``, ``rms_delta`` of the differences of consecutive frames
    (population moments over every trajectory, frame and cell, accumulated in float64)."""
    with _open(path) as f:
        names = [str(n) for n in f["t0_fields"].attrs["field_names"]]
        out: dict[str, dict[str, float]] = {k: {} for k in STAT_KEYS}
        for name in names:
            d = f["t0_fields"][name]
            # moments about a shift (the first frame's mean): no cancellation in std
            shift = float(np.mean(d[0, 0], dtype=np.float64)) if d.shape[0] else 0.0
            acc = np.zeros(6)  # n, sum, sum sq (values); n, sum, sum sq (deltas); all about their shift
            for i in range(d.shape[0]):
                u = d[i].astype(np.float64)
                v = u - shift
                du = np.diff(u, axis=0)
                acc += (v.size, v.sum(), np.square(v).sum(), du.size, du.sum(), np.square(du).sum())
            for key, (n, s1, s2), c in (("", acc[:3], shift), ("_delta", acc[3:], 0.0)):
                n = max(n, 1.0)
                mean = s1 / n
                var = max(s2 / n - mean * mean, 0.0)
                out["mean" + key][name] = float(mean + c)
                out["std" + key][name] = float(math.sqrt(var))
                # rms of the values themselves, from moments about the shift
                out["rms" + key][name] = float(math.sqrt(max(var + (mean + c) ** 2, 0.0)))
    return out


def stats_source(files: dict[str, Path], split: str = "train") -> str:
    """The split the statistics come from: ``split`` when present, else the first by name."""
    return split if split in files else sorted(files)[0]


def write_stats(root: str | os.PathLike, split: str = "train") -> Path:
    """Write ``root/stats.yaml`` (The Well's normalisation file) from split ``split`` of the folder
    (from the first split by name when it has no ``split``), atomically."""
    import yaml

    root = Path(root)
    files = dataset_files(root)
    if not files:
        raise DatagenError(f"{root} holds no dataset to compute normalisation statistics from")
    source = stats_source(files, split)
    stats = compute_stats(files[source])
    text = (f"# normalisation statistics of split {source!r} ({files[source].name}), written by datagen\n"
            + yaml.safe_dump(stats, sort_keys=False))
    return write_atomic(root / STATS_FILE, text)


def read_stats(root: str | os.PathLike) -> dict[str, dict[str, float]]:
    """The statistics of ``root/stats.yaml``."""
    import yaml

    p = Path(root) / STATS_FILE
    if not p.is_file():
        raise DatagenError(f"{p}: no such file; `datagen generate` writes it beside data/")
    try:
        stats = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise DatagenError(f"{p} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(stats, dict) or not all(isinstance(stats.get(k), dict) for k in STAT_KEYS):
        raise DatagenError(f"{p} lacks some of the statistics {', '.join(STAT_KEYS)}")
    return stats


# -- reading -----------------------------------------------------------------------------
def _open(path: str | os.PathLike):
    h5py = _h5()
    p = Path(path)
    if not p.exists():
        raise DatagenError(f"{p}: no such file")
    if p.is_dir():
        p = dataset_file(p)
    try:
        return h5py.File(p, "r")
    except OSError:
        raise DatagenError(f"{p} is not a readable HDF5 file (corrupt, truncated or another format)") from None


def read_provenance(path: str | os.PathLike, split: str | None = None) -> dict[str, Any]:
    """The provenance dict stored in a dataset file, or in split ``split`` of a dataset folder
    (raises for files that are not datagen datasets)."""
    path = dataset_file(path, split)
    with _open(path) as f:
        return _provenance(f, path)


def _provenance(f, path) -> dict[str, Any]:
    if "provenance" not in f.attrs or "t0_fields" not in f:
        raise DatagenError(
            f"{path} is an HDF5 file but not a datagen dataset (no provenance / t0_fields); "
            "was it written by `datagen generate`?"
        )
    text = f.attrs["provenance"]
    if not isinstance(text, (str, bytes)):
        raise DatagenError(f"{path}: its provenance attribute is not JSON text")
    prov = loads_bounded(text, f"{path}: its provenance")
    if not isinstance(prov, dict):
        raise DatagenError(f"{path}: its provenance is not a JSON object")
    return prov


def open_dataset(path: str | os.PathLike, lazy: bool = False, split: str | None = None):
    """The dataset as an :class:`xarray.Dataset` with dims ``trajectory, time, x, y``.

    ``path`` is a file or a dataset folder; a folder with several splits needs ``split``.

    Coordinates are the exact float64 grid and times from the provenance; one data variable per
    field; attributes carry the PDE expression, parameters and the provenance JSON. With
    ``lazy=True`` the fields are dask arrays read on demand (needs the ``[dask]`` extra) and the
    file stays open while they are in use.
    """
    import xarray as xr

    from .grid import Grid
    from .pde import PDE

    path = dataset_file(path, split)
    f = _open(path)
    try:
        prov = _provenance(f, path)
        grid = Grid.from_dict(prov["config"]["grid"])
        pde = PDE.from_dict(prov["pde"])
        T = f["dimensions/time"].shape[0]
        time = prov["config"]["dt"] * np.arange(T)
        data_vars = {}
        for name in pde.fields:
            d = f[f"t0_fields/{name}"]
            if lazy:
                import dask.array as da

                arr = da.from_array(d, chunks=(1, T, *grid.shape))
            else:
                arr = d[...]
            data_vars[name] = (("trajectory", "time", "x", "y"), arr)
        attrs = {"dataset_name": f.attrs["dataset_name"], "pde": pde.expression(),
                 "provenance": f.attrs["provenance"],
                 **{k: float(v) for k, v in pde.parameters.items()}}
        ds = xr.Dataset(data_vars, coords={"trajectory": np.arange(f.attrs["n_trajectories"]),
                                           "time": time, "x": grid.x, "y": grid.y}, attrs=attrs)
    except (KeyError, TypeError, ValueError) as exc:
        if not lazy:
            f.close()
        if isinstance(exc, DatagenError):
            raise
        raise DatagenError(f"{path} is damaged or was edited: {type(exc).__name__}: {str(exc).strip(chr(34))} "
                           "(`datagen validate` says more)") from None
    except OSError as exc:
        if not lazy:
            f.close()
        raise DatagenError(f"{path}: reading failed ({exc}); a checksum error means bit rot or tampering") from None
    finally:
        if not lazy:
            f.close()
    return ds
