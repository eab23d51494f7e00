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
from .inspect_cli import cmd_info, cmd_validate, one_file

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
                  progress=not a.quiet, sync=a.sync)
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
        if not a.quiet:
            _hint_if_static(path)
    return 0


def _hint_if_static(path, threshold: float = 0.01) -> None:
    """A one-line hint on stderr when the saved frames hardly change over the horizon."""
    from .validation import frame_change

    change = frame_change(path)
    if change is not None and change < threshold:
        print(f"hint: {path}: the fields change by {100 * change:.2g} % of their size over the saved horizon; "
              "for dynamics to learn, raise --dt or --steps (or --ic-param offset=/amplitude= to start nearer "
              "the dynamics)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datagen`` console script."""
    from .cliutil import run_cli

    return run_cli("datagen", lambda: _run(argv), interrupted="; rerun with --resume to continue")


def _run(argv: Sequence[str] | None) -> int:
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
            print(plot_frames(one_file(a.file, a.split), a.out, a.trajectory, times))
        except (KeyError, TypeError) as exc:
            raise DatagenError(f"{a.file}: its provenance is incomplete or malformed ({type(exc).__name__}: "
                               f"{exc}); `datagen validate` says more") from None
        return 0
    return cmd_validate(a.file, a.deep, a.samples)
