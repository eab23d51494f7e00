"""Dataset generation: sample initial conditions, solve in batches, write HDF5.

Work is split into batches of trajectories, solved in this process, in local worker processes
or on a Dask cluster. Each finished batch goes straight into its place in the output's final
HDF5 layout, written under a temporary name (see :mod:`datagen.writer`), so a killed run loses
at most the batches in flight and ``resume=True`` continues where it stopped. Because each
trajectory draws its initial condition from its own seed
(``SeedSequence(seed, spawn_key=(split, index))``) and every batch has a fixed place in the file,
an interrupted-and-resumed run produces the same bytes as an uninterrupted one, whatever the
number of workers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .config import _SPLIT_NAME, GenerationConfig, available_memory, check_split_name, trajectory_rng
from .errors import DatagenError
from .metadata import DatasetMetadata
from .grid import Grid
from .runner import progress_reporter, run_batches
from .safeio import output_lock, refuse_link
from .solver import MAX_REFINE, solve, solve_batch

log = logging.getLogger("datagen")

# the configuration, the solver and the runner live in their own modules; their public names stay
# importable from here
__all__ = ["GenerationConfig", "generate", "generate_splits", "solve", "solve_batch", "trajectory_rng",
           "check_split_name", "MAX_REFINE"]


def _versions() -> dict[str, str]:
    import ducc0
    import h5py
    import scipy

    from .version import __version__

    return {"datagen": __version__, "numpy": np.__version__, "scipy": scipy.__version__, "h5py": h5py.__version__,
            "ducc0": ducc0.__version__}


def generate(config: GenerationConfig, out: str | os.PathLike, *, workers: int = 1, scheduler: str | None = None,
             resume: bool = False, overwrite: bool = False,
             progress: Callable[[int, int], None] | bool = False, sync: bool = True) -> Path:
    """Generate one split into the HDF5 file ``out``; returns its path.

    Args:
        config: what to generate (resolved here).
        out: output file name (its folder is created).
        workers: local worker processes (1 solves in this process).
        scheduler: address of a Dask distributed scheduler to run the batches on instead.
        resume: continue an interrupted run of the same config.
        overwrite: replace an existing output (and discard an interrupted run's work).
        progress: ``True`` for a progress bar on stderr, or a callback ``(done, total)`` counting
            trajectories.
        sync: flush the finished file to disk (fsync) before it takes its name, so that a power
            cut never leaves a truncated file under the final name; ``False`` saves that wait
            (about 0.2 s per 400 MB here) where the output is scratch.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        if resume:
            return _finished(config, out)
        raise DatagenError(f"{out} exists; pass --overwrite to replace it")
    if workers < 1:
        raise DatagenError(f"workers={workers} must be at least 1")
    config = config.with_scenario()
    pde = config.make_pde()
    grid = Grid.from_dict(config.grid)
    _check_memory(config, pde.n_fields, grid, workers if not scheduler else 1)
    _check_space(out, pde.n_fields * grid.n_cells * 4 * (int(config.steps) + 1) * int(config.n_trajectories),
                 resume and not overwrite)
    cfg = config.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with _output_lock(out):
        if out.exists() and not overwrite:  # another run may have finished it meanwhile
            if resume:
                return _finished(config, out)
            raise DatagenError(f"{out} exists; pass --overwrite to replace it")
        return _generate_locked(cfg, out, pde, grid, workers, scheduler, resume, overwrite, progress, sync)


def _generate_locked(cfg: GenerationConfig, out: Path, pde, grid: Grid, workers: int, scheduler: str | None,
                     resume: bool, overwrite: bool, progress, sync: bool = True) -> Path:
    from .writer import IsolatedWriter

    cfg_json = json.dumps(cfg.to_dict(), sort_keys=True)
    bounds = [(s, min(s + cfg.batch_size, cfg.n_trajectories)) for s in range(0, cfg.n_trajectories, cfg.batch_size)]
    meta = DatasetMetadata.for_run(cfg, pde, grid)
    # local workers solve into shared slots: as many as can be in flight, plus the one being
    # written and the one just finished
    slots = min(2 * workers, len(bounds)) + 2 if workers > 1 and not scheduler else 2
    partial = IsolatedWriter(out, meta, cfg_json, bounds, cfg.compression, slots=slots, sync=sync)
    try:
        todo = partial.open(resume, overwrite)
    except OSError as exc:
        partial.close()
        text = exc.strerror or str(exc)
        if "ermission denied" in text:
            raise DatagenError(f"cannot write to {out.parent}: permission denied; choose another --out") from None
        raise DatagenError(f"writing {out} failed: {text}; nothing was written under that name "
                           "(free space if the disk is full, then rerun)") from None
    except BaseException:
        partial.close()
        raise

    report = progress_reporter(progress, cfg.n_trajectories, cfg.split)
    report(sum(b - a for k, (a, b) in enumerate(bounds) if k not in todo))

    def provenance(est: np.ndarray, used: np.ndarray) -> dict[str, Any]:
        prov: dict[str, Any] = {"config": cfg.to_dict(), "pde": pde.to_dict(), "expression": pde.expression(),
                                "versions": _versions()}
        if cfg.tolerance:
            prov["reference_error"] = {
                "tolerance": cfg.tolerance, "estimate": "step doubling at the last saved step, relative L2",
                "worst": float(np.max(est)), "worst_trajectory": int(np.argmax(est)),
                "per_trajectory": [float(x) for x in est], "substeps": [int(x) for x in used]}
        return prov

    try:
        for k, (arr, est, used) in run_batches(cfg_json, [bounds[k] for k in todo], todo, workers, scheduler,
                                               partial.buffer, partial):
            partial.write(k, arr, est, used)
            report(bounds[k][1] - bounds[k][0])
        partial.finish(provenance)
    except OSError as exc:
        partial.close()
        raise DatagenError(
            f"writing {out} failed: {exc.strerror or exc}; nothing was written under that name "
            "(free space if the disk is full, then rerun with --resume)"
        ) from None
    except BaseException as exc:
        # a run that fails on its input (a blow-up, a bad scheduler) would fail again: its partial
        # file must not block the corrected rerun; interruptions keep theirs for --resume
        if isinstance(exc, Exception) and not getattr(exc, "resumable", False):
            partial.discard()
        else:
            partial.close()
        raise
    finally:
        report(None)
    return out


def _output_lock(out: Path):
    """An exclusive OS lock on the file ``out`` for the whole run (see :func:`output_lock`)."""
    return output_lock(out.with_name(f".{out.name}.lock"), out)


def _finished(config: GenerationConfig, out: Path) -> Path:
    """``out`` when it is a finished run of ``config`` (``--resume`` keeps it), else an error."""
    from .store import read_provenance

    try:
        stored = read_provenance(out)["config"]
    except (DatagenError, KeyError, TypeError):
        raise DatagenError(f"{out} exists and is not a finished datagen run; pass --overwrite to replace it") from None
    if json.dumps(stored, sort_keys=True) != json.dumps(config.resolve().to_dict(), sort_keys=True):
        raise DatagenError(f"{out} exists with other options; pass --overwrite to replace it")
    log.info("%s is complete (same options); kept", out)
    return out


def _check_memory(cfg: GenerationConfig, n_fields: int, grid: Grid, workers: int) -> None:
    """Refuse before allocating when a batch cannot fit: each worker holds about ten float64
    states of stepper temporaries (and a second set of frames on the step-doubling reference
    path), and the writer shares two batches of frames with this process, or 2 x workers + 2
    with local workers, which solve into them."""
    frame = n_fields * grid.n_cells
    try:
        batch = min(int(cfg.batch_size), int(cfg.n_trajectories))
        slots = 2 * workers + 2 if workers > 1 else 2
        need = (workers * batch * frame * ((int(cfg.steps) + 1) * 8 + 10 * 8)
                + slots * batch * frame * (int(cfg.steps) + 1) * 4)
    except (TypeError, ValueError):
        return  # malformed counts: resolve() reports them
    avail = available_memory()
    if avail is not None and need > avail:
        raise DatagenError(
            f"solving needs about {need / 2**30:.3g} GiB ({workers} worker(s) x a batch of {batch} trajectories of "
            f"{int(cfg.steps) + 1} frames of {grid.shape[0]} x {grid.shape[1]}), more than the {avail / 2**30:.3g} "
            "GiB available: lower --batch-size or --workers, or use a smaller grid")


def _check_space(out: Path, dataset_bytes: int, resume: bool = False) -> None:
    """Refuse before any work when the disk cannot hold the file (with room for its metadata);
    on ``resume`` the interrupted run's file already holds its share of that space."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DatagenError(f"cannot write to {out.parent}: {folder} is not a folder")
    need, free = int(1.1 * dataset_bytes) + 2 ** 20, shutil.disk_usage(folder).free
    partial = out.with_name(f".{out.name}.tmp")
    if resume and partial.is_file() and not partial.is_symlink():
        need -= partial.stat().st_blocks * 512
    if need > free:
        raise DatagenError(
            f"not enough disk space in {folder}: the dataset needs about {need / 1e9:.3g} GB "
            f"but {free / 1e9:.3g} GB are free; free space or use fewer trajectories"
        )


FOLDER_LOCK = ".datagen.lock"


def _check_folder(out_dir: Path, splits: Mapping[str, int], mine: Mapping[str, Any]) -> None:
    """Refuse a folder that holds splits of another configuration (a folder is one dataset)."""
    from .store import dataset_files, read_provenance

    for split, path in dataset_files(out_dir).items():
        if split in splits:  # generate() keeps, replaces or refuses it itself
            continue
        try:
            theirs = {k: v for k, v in read_provenance(path)["config"].items() if k not in ("split", "n_trajectories")}
        except (DatagenError, KeyError, TypeError, AttributeError):
            theirs = None
        if theirs != mine:
            raise DatagenError(f"{out_dir} already holds split {split!r} made with other options ({path}); a "
                               "folder is one dataset: choose another --out, or remove that split")


def generate_splits(config: GenerationConfig, splits: Mapping[str, int], out_dir: str | os.PathLike,
                    **kwargs: Any) -> list[Path]:
    """Generate ``{split: n_trajectories}`` into a dataset folder in The Well's layout.

    Each split goes to ``out_dir/data/<split>/<name>.hdf5`` (same options otherwise), and
    ``out_dir/stats.yaml`` gets the normalisation statistics of the ``train`` split (or of the only
    split). Splits already in the folder must come from the same configuration (a folder is one
    dataset); ``kwargs`` go to :func:`generate`.
    """
    from .store import split_path, write_stats

    if not splits:
        raise DatagenError("no splits given; e.g. train=64,test=16")
    name = config.pde
    if not isinstance(name, str) or not _SPLIT_NAME.fullmatch(name):
        raise DatagenError(f"dataset name {name!r} must be letters, digits, '_' or '-' (it names the files "
                           "data/<split>/<name>.hdf5); pass another --name")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DatagenError(f"--out {out_dir} is a file; datasets are folders (data/<split>/<name>.hdf5)")
    mine = {k: v for k, v in config.resolve().to_dict().items() if k not in ("split", "n_trajectories")}
    if out_dir.is_dir() and not os.path.lexists(out_dir / FOLDER_LOCK):
        # early, before making folders; with a lock file present a live run may be mid-way, so
        # the check waits until the lock is ours (a second run must hear "another run", not a
        # half-written folder's differences)
        _check_folder(out_dir, splits, mine)
    for d in (out_dir / "data", *(out_dir / "data" / k for k in splits)):
        refuse_link(d, "dataset folder")
    paths: list[Path] = []
    made = [d for d in (out_dir, out_dir / "data", *(out_dir / "data" / k for k in splits)) if not d.exists()]
    try:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatagenError(f"cannot write to {out_dir}: {exc.strerror or exc}; choose another --out") from None
        # one run per folder: a second run (even with --overwrite) must not replace the splits of
        # a live one, or the folder would end with splits of two configurations
        with output_lock(out_dir / FOLDER_LOCK, out_dir):
            _check_folder(out_dir, splits, mine)
            for split, n in splits.items():
                cfg = GenerationConfig(**{**config.to_dict(), "split": split, "n_trajectories": n})
                paths.append(generate(cfg, split_path(out_dir, split, name), **kwargs))
            write_stats(out_dir)
    except BaseException:
        for d in reversed(made):  # folders this call made and left empty
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    return paths
