"""``pdesurrogate train``: a TOML run description -> WindowDataset, build_surrogate, fit, evaluate.

Under ``torchrun`` (``WORLD_SIZE`` set) the process group is initialised here (NCCL on CUDA,
gloo otherwise) and :func:`pdesurrogate.fit` splits every batch across the processes; only rank
0 writes files and prints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from datagen.errors import DatagenError
from datagen.safeio import output_lock, write_atomic

from .errors import SurrogateError

DATA_KEYS = {"unroll": 3, "stride": 1, "crop": 0, "valid": "valid", "test": "test"}
MODEL_DEFAULTS = {"hidden": 10, "kernel_size": 5, "powers": [2], "substeps": 3, "init": "stencil"}
FROM_DATA = ("dt", "spacing", "boundary", "boundary_value", "n_fields")


def read_config(path: str | None) -> dict[str, dict[str, Any]]:
    """The run's ``data``, ``model`` and ``fit`` tables, defaults filled in and keys checked."""
    import tomllib

    from .fit_options import FitOptions
    from .model import SurrogateConfig

    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise SurrogateError(f"--config {path}: no such file")
        try:
            raw = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SurrogateError(f"--config {path} is not valid TOML ({exc})") from None
    unknown = set(raw) - {"data", "model", "fit", "recipe"}
    if unknown:
        raise SurrogateError(f"--config {path}: unknown table(s) {sorted(unknown)}; use [data], [model], [recipe], "
                             "[fit]")
    model_keys = set(SurrogateConfig.__dataclass_fields__) - set(FROM_DATA)
    fit_keys = set(FitOptions.names()) - {"progress", "log"}
    from .recipe import Recipe

    out: dict[str, Any] = {"given": set(raw)}
    for table, allowed, defaults in (("data", set(DATA_KEYS), DATA_KEYS), ("model", model_keys, MODEL_DEFAULTS),
                                     ("fit", fit_keys, {}),
                                     ("recipe", set(Recipe.__dataclass_fields__), {})):
        given = raw.get(table, {})
        if not isinstance(given, dict):
            raise SurrogateError(f"--config {path}: [{table}] must be a table")
        bad = set(given) - allowed
        if bad:
            hint = " (taken from the data)" if bad & set(FROM_DATA) else ""
            raise SurrogateError(f"--config {path}: unknown [{table}] key(s) {sorted(bad)}{hint}; "
                                 f"allowed: {', '.join(sorted(allowed))}")
        out[table] = {**defaults, **given}
    return out


def _rmdir_quietly(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _split_file(data: Path, name: str) -> Path | None:
    """Split ``name`` of a dataset folder, or None when it is not there (or not asked for)."""
    from datagen.store import dataset_files

    return dataset_files(data).get(name) if name else None


def train_cmd(a: argparse.Namespace) -> int:
    """Run ``pdesurrogate train``."""
    import torch

    from .data import WindowDataset, receptive_halo
    from .fit_options import FitOptions
    from .model import build_surrogate

    cfg = read_config(a.config)
    cfg["recipe_name"] = recipe = _recipe_name(a, cfg["given"])
    if recipe == "default":
        if a.seed is not None:
            cfg["recipe"]["seed"] = a.seed
        from .recipe import Recipe

        Recipe.from_dict(cfg["recipe"])  # options checked before any file is touched
    for key in ("epochs", "seed", "device"):
        if getattr(a, key) is not None:
            cfg["fit"][key] = getattr(a, key)
    if a.float64:
        cfg["fit"]["dtype"] = "float64"
    try:  # the one set of defaults and checks, before any file is touched
        fit_options = FitOptions.from_dict(cfg["fit"], "[fit]")
    except SurrogateError as exc:
        raise SurrogateError(f"[fit] {exc}") from None
    data = Path(a.data)
    if data.is_dir():
        try:
            train_file = _split_file(data, "train")
        except DatagenError as exc:
            raise SurrogateError(str(exc)) from None
        if train_file is None:
            raise SurrogateError(f"{data} has no train split; generate one with `datagen generate ... --splits "
                                 f"train=64,valid=16,test=16 --out {data}`")
        valid_file, test_file = _split_file(data, cfg["data"]["valid"]), _split_file(data, cfg["data"]["test"])
    elif data.is_file():
        train_file, valid_file, test_file = data, None, None
    else:
        raise SurrogateError(f"{data}: no such folder or file")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            if "device" not in cfg["fit"]:
                fit_options = fit_options.replace(device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    cfg["fit_options"] = fit_options

    d = cfg["data"]
    probe = WindowDataset(train_file, unroll=int(d["unroll"]), stride=int(d["stride"]))
    mcfg = {**cfg["model"], "dt": probe.dt, "spacing": probe.spacing, "boundary": probe.boundary,
            "boundary_value": probe.grid.boundary_value, "n_fields": len(probe.fields)}
    model = build_surrogate(**mcfg, dtype=torch.float64 if recipe == "default" else None)
    steps_max = max(fit_options.steps(probe.unroll))
    train = probe
    if d["crop"]:
        train = WindowDataset(train_file, unroll=int(d["unroll"]), stride=int(d["stride"]), crop=int(d["crop"]),
                              halo=receptive_halo(model, steps_max), seed=fit_options.seed)
    out = Path(a.out)
    fresh = not out.exists()
    if rank != 0:
        return _train(a, cfg, model, train, probe, out, fresh, rank, train_file, valid_file, test_file, d, mcfg)
    if a.resume and a.overwrite:
        raise SurrogateError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SurrogateError(f"cannot write to {out}: {exc.strerror or exc}; choose another --out") from None
    # one training per run folder: a second one would overwrite the first one's checkpoints
    try:
        with output_lock(out / RUN_LOCK, out):
            _claim(out, a.resume, a.overwrite)
            return _train(a, cfg, model, train, probe, out, fresh, rank, train_file, valid_file, test_file, d, mcfg)
    except (SurrogateError, DatagenError):
        if fresh:
            _rmdir_quietly(out)  # refused before any checkpoint: no empty run folder is left behind
        raise


def _recipe_name(a: argparse.Namespace, given: set[str]) -> str:
    """``default`` (data start + L-BFGS, :func:`pdesurrogate.learn`) or ``adam`` (:func:`pdesurrogate.fit`):
    as asked, else ``adam`` when one of Adam's options (``--epochs``, ``[fit]``, ``--device``,
    ``--float64``) is given."""
    adam_options = [name for name, on in (("--epochs", a.epochs is not None), ("[fit]", "fit" in given),
                                          ("--device", a.device is not None), ("--float64", a.float64)) if on]
    name = a.recipe or ("adam" if adam_options else "default")
    if name == "default":
        if adam_options:
            raise SurrogateError(f"{adam_options[0]} configures the adam recipe; the default recipe takes a [recipe] "
                                 "table (it runs on the CPU in float64): pass --recipe adam, or drop it")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SurrogateError("the default recipe runs in one process; use --recipe adam under torchrun")
    elif "recipe" in given:
        raise SurrogateError("[recipe] configures the default recipe, not adam: use [fit] for adam")
    return name


RUN_LOCK = ".pdesurrogate.lock"
RUN_FILES = ("model.pt", "last.pt", "best.pt", "run.json")


def _claim(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that holds another run unless ``resume`` continues it or ``overwrite``
    replaces it (its run files are removed first, so nothing of the old run is resumed)."""
    held = [name for name in RUN_FILES if os.path.lexists(out / name)]
    if not held or resume:
        return
    if not overwrite:
        what = "a finished run" if "model.pt" in held else "an interrupted run"
        hint = "" if "model.pt" in held else "pass --resume to continue it, "
        raise SurrogateError(f"{out} holds {what} ({', '.join(held)}); {hint}pass --overwrite to replace it, or "
                             "choose another --out")
    for name in held:
        (out / name).unlink()


def _train(a, cfg, model, train, probe, out: Path, fresh: bool, rank: int, train_file, valid_file, test_file, d,
           mcfg) -> int:
    """The training itself, the final weights and the test report (rank 0 writes and prints)."""
    from . import evaluation
    from . import split as split_mod
    from .checkpoint import save
    from .training import fit

    if rank == 0:
        resolved = {"data": {**d, "path": str(train_file)}, "model": mcfg, "recipe": cfg["recipe_name"]}
        if cfg["recipe_name"] == "default":
            resolved["options"] = cfg["recipe"]
        else:
            resolved["fit"] = {k: (str(v) if k == "dtype" and v is not None else v)
                               for k, v in asdict(cfg["fit_options"]).items() if k not in ("progress", "log")}
        write_atomic(out / "run.json", json.dumps(resolved, indent=2, default=str) + "\n")
        print(f"training on {train_file} ({len(train)} windows, recipe {cfg['recipe_name']}), "
              f"validating on {valid_file or 'nothing'}; checkpoints in {out}", flush=True)
    progress = not a.quiet  # a bar on a terminal, a line every few seconds elsewhere
    try:
        if cfg["recipe_name"] == "default":
            from .learn import learn

            hist = learn(model, train, valid_file, cfg["recipe"], checkpoint=out,
                         log=None if a.quiet else (lambda line: print(line, flush=True)))
        else:
            # the CLI owns its process: it may tune the allocator, which the library leaves alone
            hist = fit(model, train, valid_file, cfg["fit_options"].replace(progress=progress, log=not a.quiet),
                       checkpoint=out, resume=a.resume, tune_malloc=True)
    except SurrogateError:
        # refused before any checkpoint: leave no run folder behind that holds only its description
        if rank == 0 and fresh and {p.name for p in out.iterdir()} <= {"run.json", RUN_LOCK}:
            (out / "run.json").unlink(missing_ok=True)  # the folder goes once its lock is released
        raise
    if rank != 0:
        return 0
    path = save(model, out / "model.pt", provenance=probe.provenance)
    if cfg["recipe_name"] == "default":
        print(f"wrote {path} (best validation rel_l2 {hist.attrs['best_valid']:.4g}, "
              f"{hist.attrs['seconds']:.0f} s)")
    else:
        print(f"wrote {path} (epochs {len(hist.epoch)}, best validation rel_l2 {hist.attrs['best_valid']:.4g}; "
              f"stopped: {hist.attrs['stopped']})")
    if test_file is not None:
        import pandas as pd

        hs = sorted({h for h in (1, 10, a.steps) if 1 <= h <= a.steps})
        rep = evaluation.evaluate(model, test_file, steps=a.steps, baselines=True)
        table = evaluation.summarize(rep, hs).loc["rel_l2"]
        shown = [m for m in ("rel_l2", "persistence_rel_l2", "fd_network_rel_l2") if m in rep]
        beside = evaluation.summarize(rep, hs, metrics=shown)["mean"].unstack("metric")[shown]
        beside.columns = [{"rel_l2": "this model", "persistence_rel_l2": "persistence",
                           "fd_network_rel_l2": "FD network"}[c] for c in shown]
        keys = ["total", "approximation_bound", "optimisation_lower_bound", "witness_error", "witness_gap"]
        with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
            print(f"\nrelative L2 error on {test_file} (over {rep.sizes['trajectory']} trajectories):")
            print(table.to_string())
            print("\nmeans beside the baselines (persistence u_n = u_0; the finite-difference network of the class):")
            print(beside.to_string())
            print(evaluation.relative_to(rep))
            if probe.pde is not None:  # the split needs the PDE for its witness
                split = split_mod.error_split(model, test_file, steps=a.steps)
                print(f"\nerror split (witness: {split.attrs['witness']}), means over trajectories:")
                print(split[keys].sel(step=hs).mean("trajectory").to_dataframe()[keys].to_string())
                print(split_mod.split_verdict(split))
        fd = rep["fd_network_rel_l2"].sel(step=a.steps).mean() if "fd_network_rel_l2" in rep else None
        line = _against_fd(None if fd is None else float(fd), a.steps, float(table.loc[a.steps, "mean"]))
        if line:
            print(line)
    from .identify import identify

    print(f"\nwhat the network learned: the equation its steps follow on {train_file.name} (pdesurrogate identify):")
    print(identify(model, probe, read="flow"))
    return 0


def _against_fd(ref: float | None, steps: int, mine: float) -> str | None:
    """One line setting ``mine`` (test rel_l2 at ``steps``) beside ``ref``, the finite-difference
    network of the model's class (the baseline ``evaluate`` already scored; None without one)."""
    if ref is None:
        return None
    ratio = ref / mine if mine > 0 else math.inf
    how = f"{ratio:.3g}x lower" if ratio >= 1 else f"{1 / ratio:.3g}x higher"
    return (f"\nthe finite-difference network of the same class (built from the PDE, untrained) has rel_l2({steps}) "
            f"{ref:.4g}; this model {mine:.4g}, {how}")
