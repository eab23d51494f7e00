"""``datagen info`` and ``datagen validate``: what a dataset (file or folder) holds, and whether it
is sound."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import DatagenError

__all__ = ["cmd_info", "cmd_validate", "one_file"]


def cmd_info(path: str) -> int:
    """Print a dataset summary: each split of a folder, or one file."""
    from .store import STATS_FILE, dataset_files

    files = dataset_files(path)
    if Path(path).is_dir():
        if not files:
            raise DatagenError(f"{path} holds no dataset (expected data/<split>/<name>.hdf5)")
        stats = "present" if (Path(path) / STATS_FILE).is_file() else "MISSING"
        print(f"{path}: dataset folder, splits {', '.join(files)}; {STATS_FILE} {stats}")
    for f in files.values():
        try:
            _info(str(f))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, DatagenError):
                raise
            raise DatagenError(f"{f}: its provenance is incomplete or malformed ({type(exc).__name__}: {exc}); "
                               "`datagen validate` says more") from None
    return 0


def _info(path: str) -> int:
    from .pde import PDE
    from .store import read_provenance
    from .validation import validate

    prov = read_provenance(path)
    rep = validate(path)
    cfg = prov["config"]
    pde = PDE.from_dict(prov["pde"])
    size = Path(path).stat().st_size
    print(f"{path}: {size / 1e6:.3g} MB, datagen format, written by datagen {prov['versions'].get('datagen')}")
    print(f"  pde:        {cfg['pde']}  ({', '.join(f'{k}={v:g}' for k, v in pde.parameters.items())})")
    for line in pde.expression().splitlines():
        print(f"              {line}")
    g = cfg["grid"]
    print(f"  grid:       {g['shape'][0]} x {g['shape'][1]} on {g['extent'][0]:g} x {g['extent'][1]:g}, {g['boundary']}")
    print(f"  time:       {cfg['steps'] + 1} frames, dt = {cfg['dt']:.6g}, t_end = {cfg['steps'] * cfg['dt']:.6g}")
    ref = prov.get("reference_error")
    used = sorted(set(ref["substeps"])) if ref else [cfg["substeps"]]
    # the substeps actually taken per saved step: the error control refines the configured count
    steps_text = "/".join(map(str, used)) + (f" substeps per saved step (configured {cfg['substeps']}, refined to meet "
                                             "the tolerance)" if used != [cfg["substeps"]] else " substeps per saved step")
    solver = f"{cfg['integrator']}, {steps_text}, space {cfg['method']}"
    if cfg["method"] == "fd":
        solver += f" accuracy {cfg['accuracy']}"
    print(f"  solver:     {solver}")
    if ref:
        print(f"  error:      worst estimated {ref['worst']:.2g} (trajectory {ref['worst_trajectory']}; tolerance "
              f"{ref['tolerance']:.2g})")
    print(f"  initial:    {json.dumps(cfg['initial'])}")
    print(f"  split:      {cfg['split']}, {cfg['n_trajectories']} trajectories, seed {cfg['seed']}")
    for k, (lo, hi) in rep.facts.get("ranges", {}).items():
        print(f"  range {k}:    [{lo:.6g}, {hi:.6g}]")
    print(f"  verdict:    {rep.verdict()}")
    for m in rep.errors:
        print(f"    error: {m}")
    for m in rep.warnings:
        print(f"    warning: {m}")
    return 0


def cmd_validate(path: str, deep: bool = False, samples: int = 2) -> int:
    """Validate a dataset (each split of a folder and its stats.yaml, or one file); exit 1 when invalid."""
    from .store import dataset_files
    from .validation import validate

    if samples < 1:
        raise DatagenError(f"--samples {samples} must be at least 1")
    files = dataset_files(path)
    if not files:
        raise DatagenError(f"{path} holds no dataset (expected data/<split>/<name>.hdf5)")
    ok = True
    for f in files.values():
        rep = validate(f, deep=samples if deep else 0)
        if deep and "deep_checked" in rep.facts:
            print(f"{f}: regenerated trajectories {rep.facts['deep_checked']}: "
                  + ("byte-identical" if not rep.errors else "DIFFERENT"))
        for m in rep.errors:
            print(f"error: {m}")
        for m in rep.warnings:
            print(f"warning: {m}")
        print(f"{f}: {rep.verdict()}")
        ok &= rep.ok
    if Path(path).is_dir():
        problem = _splits_problem(files)
        if problem:
            print(f"error: {problem}")
            ok = False
        problem = _stats_problem(Path(path))
        print(f"{Path(path) / 'stats.yaml'}: {problem or 'ok'}")
        ok &= problem is None
    return 0 if ok else 1


def _splits_problem(files: dict) -> str | None:
    """How the splits of one folder disagree on their configuration (a folder is one dataset), or None."""
    from .store import read_provenance

    configs = {}
    for split, f in files.items():
        try:
            cfg = read_provenance(f)["config"]
            configs[split] = {k: v for k, v in cfg.items() if k not in ("split", "n_trajectories")}
        except (DatagenError, KeyError, TypeError):
            continue  # the file's own validation reports it
    if len(configs) < 2:
        return None
    (first, ref), *rest = configs.items()
    for split, cfg in rest:
        keys = sorted(k for k in set(ref) | set(cfg) if ref.get(k) != cfg.get(k))
        if keys:
            k = keys[0]
            return (f"splits {first!r} and {split!r} come from different configurations ({k}={ref.get(k)!r} against "
                    f"{k}={cfg.get(k)!r}); a folder is one dataset: regenerate the odd split")
    return None


def _stats_problem(root: Path) -> str | None:
    """What is wrong with a folder's stats.yaml (missing, malformed, not the data's), or None."""
    from .store import compute_stats, dataset_files, read_stats, stats_source

    try:
        stored = read_stats(root)
    except DatagenError as exc:
        return f"invalid: {exc}"
    files = dataset_files(root)
    source = stats_source(files)
    fresh = compute_stats(files[source])
    for key, per_field in fresh.items():
        for name, value in per_field.items():
            got = stored[key].get(name)
            if not isinstance(got, (int, float)) or not math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-12):
                return (f"invalid: {key} of {name!r} is {got!r}, the {source} split gives {value:.9g}; "
                        "regenerate it with `datagen generate --resume` on the same options")
    return None


def one_file(path: str, split: str | None) -> str:
    """A folder's split (train by default), or the file itself."""
    from .store import dataset_file, dataset_files

    if Path(path).is_dir() and split is None:
        files = dataset_files(path)
        split = "train" if "train" in files else None
    return str(dataset_file(path, split))
