"""``datagen`` command line: ``list | generate | info | validate | plot``.

Every failure caused by the input prints one line ``datagen: error: ...`` and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

from . import catalogue
from .errors import DatagenError

EPILOG = "example: datagen generate fisher --out data/fisher --splits train=64,test=16 --steps 40 --seed 0"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise DatagenError(f"{message} (see `{self.prog} --help`)")


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            if not part:
                continue
            if "=" not in part:
                raise DatagenError(f"{what} {part!r} must look like name=value")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _ints(text: str, what: str, n: int = 2) -> tuple[int, ...]:
    parts = text.replace("x", ",").split(",")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise DatagenError(f"{what} {text!r} must be {n} integers like 100,100") from None
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n or min(vals) <= 0:
        raise DatagenError(f"{what} {text!r} must be {n} positive integers like 100,100")
    return vals


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise DatagenError(f"{what} {text!r} must be numbers separated by commas") from None
    if not all(math.isfinite(v) for v in vals):
        raise DatagenError(f"{what} {text!r} must be finite numbers")
    return vals


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = _Parser(prog="datagen", description="Method-of-lines datasets for reaction-diffusion PDEs.", epilog=EPILOG)
    from .version import __version__

    p.add_argument("--version", action="version", version=f"datagen {__version__}")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    sub.required = True
    sub.add_parser("list", help="the PDE catalogue with parameters and defaults")

    g = sub.add_parser("generate", help="solve and write HDF5 datasets", epilog=EPILOG)
    g.add_argument("pde", nargs="?", help="catalogue name (see `datagen list`)")
    g.add_argument("--pde", dest="pde_text", help="your own PDE as text instead, e.g. \"u_t = 0.01*(u_xx + u_yy) + "
                   "u - u**2\" (one equation per field, separated by ';'; parameters by --param)")
    g.add_argument("--field", action="append", help="field order of --pde (repeatable; default: as the equations)")
    g.add_argument("--name", default="custom", help="dataset name of a --pde run (default custom)")
    g.add_argument("--out", required=True, help="output folder, in The Well's layout: data/<split>/<name>.hdf5 per "
                   "split and stats.yaml")
    g.add_argument("--from", dest="from_file", help="regenerate a dataset (folder or file) from its own provenance "
                   "(with --out, "
                   "--workers, --scheduler, --resume, --overwrite, --quiet, and --splits to make other splits of the "
                   "same configuration; every other option is refused)")
    g.add_argument("--splits", default=None, help="split=count pairs (default train=64,test=16)")
    g.add_argument("--scenario", help="a named setting of the PDE (see `datagen list`; default: its first)")
    g.add_argument("--steps", type=int, help="saved steps after the initial state (default: the scenario's)")
    g.add_argument("--seed", type=int, default=0, help="root seed; each trajectory draws from (seed, split, index)")
    g.add_argument("--param", action="append", help="PDE parameter, e.g. a=0.02 (repeatable)")
    g.add_argument("--grid", help="grid points nx,ny (default: the scenario's, e.g. 100,100)")
    g.add_argument("--extent", help="domain lengths Lx,Ly (default: the scenario's, e.g. 1,1)")
    g.add_argument("--boundary", help="periodic | dirichlet | neumann (default: the scenario's)")
    g.add_argument("--boundary-value", help="Dirichlet wall value(s), one per field (default 0)")
    g.add_argument("--dt", type=float, help="saved time step (default: the scenario's)")
    g.add_argument("--dt-factor", type=float, help="dt as a multiple of the PDE time scale, e.g. 0.24 for 0.24 dx^2/a")
    g.add_argument("--integrator", default="reference", help="reference | euler | rk4 | etdrk4 | bdf | radau | rk45")
    g.add_argument("--substeps", default="1", help="internal steps per saved step, or auto")
    g.add_argument("--method", choices=["fd", "spectral"], help="space discretisation (default: by integrator)")
    g.add_argument("--accuracy", type=int, help="finite-difference order 2, 4, 6 or 8 (default 2; 4 on the "
                   "reference path with walls; not for spectral methods)")
    g.add_argument("--ic", help="initial-condition sampler (default: the catalogue's)")
    g.add_argument("--ic-param", action="append", help="sampler parameter, e.g. k_max=6 (repeatable)")
    g.add_argument("--batch-size", type=int, default=32, help="trajectories solved together (default 32)")
    g.add_argument("--compression", default="none", help="none | gzip | lzf")
    g.add_argument("--backend", default="numpy", help="numpy | numba (compiled finite differences)")
    g.add_argument("--workers", type=int, default=1, help="local worker processes")
    g.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://127.0.0.1:8786")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g.add_argument("--no-sync", dest="sync", action="store_false",
                   help="skip the fsync before a finished file takes its name (faster; for scratch output: a power "
                        "cut can then leave a truncated file, which `datagen validate` reports)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")
    g.add_argument("-v", "--verbose", action="store_true", help="also print the resolved configuration")

    i = sub.add_parser("info", help="what a dataset holds, how it was made, sanity verdict")
    i.add_argument("file", help="a dataset folder or file written by `datagen generate`")
    v = sub.add_parser("validate", help="check schema and physical sanity; exit 1 if invalid")
    v.add_argument("file", help="a dataset folder or file written by `datagen generate`")
    v.add_argument("--deep", action="store_true", help="also regenerate random trajectories from the provenance "
                   "and require byte-identical data")
    v.add_argument("--samples", type=int, default=2, help="trajectories regenerated by --deep (default 2)")
    pl = sub.add_parser("plot", help="picture of one trajectory (needs matplotlib)")
    pl.add_argument("file", help="a dataset folder or file written by `datagen generate`")
    pl.add_argument("--out", required=True, help="image file, e.g. plots/fisher.png")
    pl.add_argument("--split", help="which split of a dataset folder (default train)")
    pl.add_argument("--trajectory", type=int, default=0, help="which trajectory (default 0)")
    pl.add_argument("--times", help="saved-step indices, e.g. 0,20,40 (default: first, middle, last)")
    return p


def cmd_list() -> int:
    """Print the catalogue with each entry's scenarios (the first is the default)."""
    for name, e in catalogue.CATALOGUE.items():
        pde = e.factory()
        params = ", ".join(f"{k}={v:g}" for k, v in e.defaults.items())
        print(f"{name}: {e.description}")
        print(f"  parameters: {params}")
        for line in pde.expression().splitlines():
            print(f"  {line}")
        print("  scenarios (--scenario; the first is the default):")
        for sc in e.scenarios:
            print(f"    {sc.name}: {sc.description}")
    return 0


# generation options that --from takes from the provenance instead
FROM_CONFLICTS = ("pde_text", "field", "scenario", "steps", "seed", "param", "grid", "extent", "boundary",
                  "boundary_value", "dt", "dt_factor", "integrator", "substeps", "method", "accuracy", "ic", "ic_param",
                  "batch_size", "compression", "backend")


def _split_counts(text: str) -> dict[str, int]:
    """``train=64,test=16`` -> ``{"train": 64, "test": 16}``, names checked, no duplicates."""
    from .generate import check_split_name

    splits: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise DatagenError(f"split {part!r} must look like name=count, e.g. train=64")
        k, v = (x.strip() for x in part.split("=", 1))
        check_split_name(k)
        if k in splits:
            raise DatagenError(f"split {k!r} is given twice in --splits {text!r}")
        try:
            splits[k] = int(v)
        except ValueError:
            raise DatagenError(f"split {k}={v!r}: the count must be an integer") from None
        if splits[k] < 1:
            raise DatagenError(f"split {k}={v}: the count must be positive")
    return splits


def cmd_generate(a: argparse.Namespace) -> int:
    """Generate the requested splits."""
    from .generate import GenerationConfig, generate_splits
    from .store import read_provenance

    kwargs = dict(workers=a.workers, scheduler=a.scheduler, resume=a.resume, overwrite=a.overwrite,
                  progress=not a.quiet and sys.stderr.isatty(), sync=a.sync)
    if a.from_file:
        defaults = build_parser().parse_args(["generate", "--out", "."])
        given = [f"--{k.replace('_', '-')}" for k in FROM_CONFLICTS if getattr(a, k) != getattr(defaults, k)]
        if a.pde:
            given.insert(0, f"the PDE name {a.pde!r}")
        if given:
            raise DatagenError(f"--from regenerates {a.from_file} from its provenance: {', '.join(given)} would be "
                               "ignored; drop them, or generate anew without --from")
        from .store import dataset_files

        sources = dataset_files(a.from_file)
        configs = {}
        for split, path in sources.items():
            try:
                configs[split] = GenerationConfig.from_dict(read_provenance(path)["config"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise DatagenError(f"{path}: its provenance has no usable config ({type(exc).__name__}: {exc}); "
                                   "it cannot be regenerated") from None
        if not configs:
            raise DatagenError(f"{a.from_file} holds no dataset to regenerate")
        if a.splits is not None:
            for path in generate_splits(next(iter(configs.values())), _split_counts(a.splits), a.out, **kwargs):
                print(path)
            return 0
        for cfg in configs.values():
            for path in generate_splits(cfg, {cfg.split: cfg.n_trajectories}, a.out, **kwargs):
                print(path)
        return 0
    spec = None
    if a.pde_text:
        if a.pde:
            raise DatagenError(f"give either a catalogue name ({a.pde!r}) or --pde TEXT, not both")
        from .parse import parse_pde

        try:
            values = {k: float(v) for k, v in _pairs(a.param, "--param").items()}
        except ValueError:
            raise DatagenError(f"--param values must be numbers, got {a.param}") from None
        from .generate import check_split_name

        check_split_name(a.name)  # it names the dataset
        spec = parse_pde(a.pde_text, fields=a.field, params=values, name=a.name).to_dict()
    elif not a.pde:
        raise DatagenError("name a PDE (see `datagen list`), pass --pde TEXT, or --from FILE")
    else:
        catalogue.get(a.pde)
    splits = _split_counts(a.splits or "train=64,test=16")
    if a.accuracy is not None and a.accuracy not in (2, 4, 6, 8):
        raise DatagenError(f"--accuracy {a.accuracy} must be a finite-difference order 2, 4, 6 or 8")
    grid: dict = {}
    if a.grid is not None:
        grid["shape"] = list(_ints(a.grid, "--grid"))
    if a.extent is not None:
        grid["extent"] = list(_floats(a.extent, "--extent"))
    if a.boundary is not None:
        grid["boundary"] = a.boundary
    if a.boundary_value is not None:
        bv = _floats(a.boundary_value, "--boundary-value")
        grid["boundary_value"] = bv[0] if len(bv) == 1 else list(bv)
    if a.scenario is not None and spec is not None:
        raise DatagenError("--scenario names a setting of a catalogue PDE; a --pde run takes its options directly")
    initial = None
    if a.ic or a.ic_param:
        if spec is None:
            entry = catalogue.get(a.pde)
            base = dict(entry.scenario(a.scenario).initial or entry.initial)
        else:
            base = {"name": "fourier"}
        name = a.ic or base["name"]
        # the user's parameters go over the catalogue's defaults for its own sampler
        initial = {**(base if name == base["name"] else {}), "name": name, **_pairs(a.ic_param, "--ic-param")}
    cfg = GenerationConfig(pde=a.pde or a.name, params=_pairs(a.param, "--param") if spec is None else {},
                           spec=spec, grid=grid, steps=a.steps, dt=a.dt,
                           dt_factor=a.dt_factor, integrator=a.integrator, substeps=a.substeps, method=a.method,
                           accuracy=a.accuracy, initial=initial, seed=a.seed, batch_size=a.batch_size,
                           compression=a.compression, backend=a.backend, scenario=a.scenario)
    if a.verbose:
        resolved = cfg.resolve().to_dict()
        print("resolved configuration: " + json.dumps({k: v for k, v in resolved.items() if k != "split"},
                                                      sort_keys=True), file=sys.stderr)
    for path in generate_splits(cfg, splits, a.out, **kwargs):
        print(path)
    return 0


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
    solver = f"{cfg['integrator']} ({cfg['substeps']} substeps), space {cfg['method']}"
    if cfg["method"] == "fd":
        solver += f" accuracy {cfg['accuracy']}"
    print(f"  solver:     {solver}")
    ref = prov.get("reference_error")
    if ref:
        used = sorted(set(ref["substeps"]))
        print(f"  error:      worst estimated {ref['worst']:.2g} (trajectory {ref['worst_trajectory']}; tolerance "
              f"{ref['tolerance']:.2g}), substeps used {', '.join(map(str, used))}")
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


def _one_file(path: str, split: str | None) -> str:
    """A folder's split (train by default), or the file itself."""
    from .store import dataset_file, dataset_files

    if Path(path).is_dir() and split is None:
        files = dataset_files(path)
        split = "train" if "train" in files else None
    return str(dataset_file(path, split))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datagen`` console script."""
    try:
        a = build_parser().parse_args(argv)
        if not getattr(a, "quiet", False):
            import logging

            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("datagen: %(message)s"))
            logger = logging.getLogger("datagen")
            if not logger.handlers:
                logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        if a.cmd == "list":
            return cmd_list()
        if a.cmd == "generate":
            return cmd_generate(a)
        if a.cmd == "info":
            return cmd_info(a.file)
        if a.cmd == "plot":
            from .plotting import plot_frames

            times = None
            if a.times:
                vals = _floats(a.times, "--times")
                if any(v != int(v) for v in vals):
                    raise DatagenError(f"--times {a.times!r} takes saved-step indices (integers) like 0,20,40")
                times = [int(v) for v in vals]
            if not Path(a.out).suffix:
                raise DatagenError(f"--out {a.out!r} needs an image file name with an extension, e.g. plots/fisher.png")
            try:
                print(plot_frames(_one_file(a.file, a.split), a.out, a.trajectory, times))
            except (KeyError, TypeError) as exc:
                raise DatagenError(f"{a.file}: its provenance is incomplete or malformed ({type(exc).__name__}: "
                                   f"{exc}); `datagen validate` says more") from None
            return 0
        return cmd_validate(a.file, a.deep, a.samples)
    except DatagenError as exc:
        print(f"datagen: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `datagen list | head`
        return 0
    except KeyboardInterrupt:
        print("datagen: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"datagen: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
