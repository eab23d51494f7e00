"""``pdesurrogate`` command line: ``train | evaluate | split | identify``, thin wrappers over the API.

Every failure caused by the input prints one line ``pdesurrogate: error: ...`` and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from datagen.errors import DatagenError

from .errors import SurrogateError

EPILOG = """examples:
  pdesurrogate train data/fisher --out runs/fisher
  pdesurrogate train data/fisher --config run.toml --out runs/fisher --resume
  torchrun --nproc-per-node 2 -m pdesurrogate train data/fisher --config run.toml --out runs/fisher
  pdesurrogate evaluate runs/fisher/model.pt data/fisher --steps 40
  pdesurrogate evaluate FisherNoNoise.pt data/fisher --published --out report.nc --plots plots/
  pdesurrogate split runs/fisher/model.pt data/fisher --split train --steps 40 --plots plots/
  pdesurrogate evaluate predictions.npy data/fisher --steps 40 --bound   # any model's (trajectory, time, field, x, y)
  pdesurrogate identify runs/fisher data/fisher"""


TRAIN_EPILOG = """configuration (TOML; every key optional):
  [data]   unroll = 3, stride = 1, crop = 0 (S > 0: S x S patches with the receptive halo),
           valid = "valid", test = "test" (split names in DATA; "" for none)
  [model]  any build_surrogate option: hidden = 10, kernel_size = 5, powers = [2], substeps = 3,
           integrator = "euler", init = "stencil", constraint = "moments", ... (dt, spacing,
           boundary and fields come from the data)
  [recipe] the default recipe's options: start = "identify", lbfgs = 200, windows = 64, check = 10,
           anchor = 100.0, precondition = true, adapt_substeps = true, lm = 0, margin = 1.25,
           loss = "mse", valid_steps, seed (pdesurrogate.Recipe)
  [fit]    any fit option (the adam recipe; pdesurrogate.FitOptions): epochs = 10, batch_size = 4,
           curriculum (default 1, 2, ..., unroll), loss = "mse", noise = 1e-3, lr = 1e-3,
           schedule = "cosine", clip = 1.0, lbfgs = 0, lm = 0, patience, ... (lm = N:
           Levenberg-Marquardt at the end; full grids, best with --float64)

examples:
  pdesurrogate train data/fisher --out runs/fisher               # the default recipe
  pdesurrogate train data/fisher --out runs/adam --epochs 20     # Adam"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise SurrogateError(f"{message} (see `{self.prog} --help`)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint written by pdesurrogate.save, a published state_dict with --published, "
                   "or (evaluate) a .npy array of any model's predictions (trajectory, time, field, x, y)")
    p.add_argument("data", help="datagen dataset folder (or one of its files) with the reference trajectories")
    p.add_argument("--split", default="test", help="split of a dataset folder to score (default test)")
    p.add_argument("--published", action="store_true", help="MODEL is a published state_dict (FisherNoNoise.pt, ...)")
    p.add_argument("--steps", type=int, default=40, help="horizon in saved steps (default 40; longer than the "
                   "file is extended by its own solver)")
    p.add_argument("--trajectories", type=int, help="score only the first N trajectories")
    p.add_argument("--batch-size", type=int, default=32, help="trajectories per batch (default 32)")
    p.add_argument("--float64", action="store_true", help="roll out in float64")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--horizons", default="1,10,20,40", help="steps shown in the table (default 1,10,20,40)")
    p.add_argument("--out", help="write the full report as netCDF (needs scipy or netCDF4) or .csv")
    p.add_argument("--plots", help="folder for figures (needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = _Parser(prog="pdesurrogate", description="Evaluate surrogates of PDE time steps against their reference.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from .version import __version__

    p.add_argument("--version", action="version", version=f"pdesurrogate {__version__}")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    sub.required = True
    e = sub.add_parser("evaluate", help="rollout errors per step (mse, max error, relative L2, The Well's and "
                       "APEBench's metrics)", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(e)
    e.add_argument("--bound", action="store_true", help="also the a-posteriori error bound (needs datagen data)")
    s = sub.add_parser("split", help="approximation / optimisation error split, the error bound and its budget",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(s)
    s.add_argument("--no-lipschitz", action="store_true", help="skip the network's Lipschitz estimate")
    s.add_argument("--no-bound", action="store_true", help="skip the error bound and its per-step budget")
    i = sub.add_parser("identify", help="read a trained vector field as a PDE (sparse polynomial fit on DATA's frames)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("model", help="checkpoint (a run's model.pt) or a run folder")
    i.add_argument("data", help="datagen dataset folder (or one of its files): the probe states")
    i.add_argument("--split", default="train", help="split of a dataset folder to probe on (default train)")
    i.add_argument("--degree", type=int, help="highest degree of a term (default: the largest activation power, >= 2)")
    i.add_argument("--threshold", type=float, default=1e-3,
                   help="drop terms below this share of the field's RMS (default 1e-3)")
    i.add_argument("--read", choices=("flow", "field"), default="flow",
                   help="flow: the equation the model's steps follow (default); field: the vector field its "
                        "integrator steps (with Euler substeps it carries the modified equation's terms)")
    t = sub.add_parser("train", help="train a surrogate on DATA's train split, validate on valid, score test",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("data", help="dataset folder written by `datagen generate` (its train split, and valid / test "
                   "when present), or one training file")
    t.add_argument("--recipe", choices=("default", "adam"), help="default: start from the PDE read from the data, "
                   "then anchored L-BFGS (float64, CPU); adam: fit's epochs (chosen when --epochs, [fit], --device or "
                   "--float64 is given)")
    t.add_argument("--config", help="TOML file with [data], [model] and [recipe] or [fit] tables (see below)")
    t.add_argument("--out", default="runs/surrogate", help="folder for checkpoints and model.pt (default runs/surrogate)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (refused without it)")
    t.add_argument("--epochs", type=int, help="override [fit] epochs")
    t.add_argument("--seed", type=int, help="override [fit] seed")
    t.add_argument("--device", help="override [fit] device (auto, cpu, cuda)")
    t.add_argument("--float64", action="store_true", help="train in float64")
    t.add_argument("--steps", type=int, default=40, help="horizon of the final test evaluation (default 40)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    return p


def _load(a: argparse.Namespace):
    import torch

    from .checkpoint import load
    from .published import load_published

    dtype = torch.float64 if a.float64 else None
    if str(a.model).endswith(".npy"):
        if a.cmd != "evaluate":
            raise SurrogateError(f"{a.cmd} needs a network of the stencil class; predictions ({a.model}) can be "
                                 "scored by `pdesurrogate evaluate`")
        return _predictions(a.model)
    if a.published:
        return load_published(a.model, dtype=dtype or torch.float32)
    return load(a.model, dtype=dtype)


def _predictions(path: str):
    """A ``.npy`` array of predictions, memory-mapped (nothing allocated from its header), no pickles."""
    import numpy as np

    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise SurrogateError(f"{path}: no such file") from None
    except (ValueError, OSError) as exc:
        raise SurrogateError(f"{path} is not a readable .npy array ({exc})") from None
    if arr.ndim != 5 or not np.issubdtype(arr.dtype, np.floating):
        raise SurrogateError(f"{path} holds a {arr.dtype} array of shape {arr.shape}; predictions are floating point "
                             "(trajectory, time, field, x, y)")
    return arr


def _horizons(text: str, steps: int) -> list[int]:
    try:
        hs = sorted({int(h) for h in text.split(",") if h.strip()})
    except ValueError:
        raise SurrogateError(f"--horizons {text!r} must be integers like 1,10,40") from None
    hs = [h for h in hs if 1 <= h <= steps]
    return hs or [steps]


def _write(report, path: str) -> None:
    from datagen.safeio import atomic_path

    out = Path(path)
    if out.suffix not in (".csv", ".nc", ".netcdf", ".cdf"):
        raise SurrogateError(f"--out {path!r}: use a .nc or .csv file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if out.suffix == ".csv":
            report.to_dataframe().to_csv(tmp)
        else:
            report.to_netcdf(tmp)


def cmd(a: argparse.Namespace) -> int:
    """Run ``evaluate`` or ``split`` and print the table."""
    import pandas as pd
    import torch

    from . import bound as bound_mod
    from . import evaluation
    from . import split as split_mod

    model = _load(a)
    traj = range(a.trajectories) if a.trajectories else None
    dtype = torch.float64 if a.float64 else None
    common = dict(steps=a.steps, trajectories=traj, batch_size=a.batch_size, device=a.device, dtype=dtype,
                  progress=not a.quiet and sys.stderr.isatty(), split=a.split)
    hs = _horizons(a.horizons, a.steps)
    bound = None
    if a.cmd == "evaluate":
        report = evaluation.evaluate(model, a.data, baselines=True, **common)
        shown = [m for m in ("rel_l2", "persistence_rel_l2", "fd_network_rel_l2", "vrmse", "pearson", "max_error")
                 if m in report]
        table = evaluation.summarize(report, hs, metrics=shown)
        print(f"model {a.model} ({report.attrs['model_kind']}) on {report.attrs['data']}, "
              f"{report.sizes['trajectory']} trajectories; persistence is u_n = u_0, the FD network the class's "
              "finite-difference scheme")
        print(evaluation.relative_to(report))
        if report.attrs.get("non_finite_trajectories"):
            print(f"{report.attrs['non_finite_trajectories']} trajectories blew up (first at step "
                  f"{report.attrs['first_non_finite_step']}): counted in non_finite, not averaged")
        if a.bound:
            bound = bound_mod.error_bound(model, a.data, witness=False, **common)
    else:
        report = split_mod.error_split(model, a.data, lipschitz=not a.no_lipschitz, **common)
        keys = [k for k in ("total", "approximation_bound", "optimisation_lower_bound", "witness_error", "witness_gap",
                            "propagated_estimate", "lipschitz") if k in report]
        table = report[keys].sel(step=hs).mean("trajectory").to_dataframe()[keys]
        unstable = "" if report.attrs.get("witness_stable", 1) else "; UNSTABLE at the data's dt: its columns mean nothing"
        print(f"witness: {report.attrs['witness']} ({'in' if report.attrs['witness_in_class'] else 'NOT in'} the "
              f"model's class; {report.attrs['witness_hidden']} hidden channels{unstable})")
        print("means over trajectories, relative to the reference norm:")
        if not a.no_bound:
            bound = bound_mod.error_bound(model, a.data, **common)
    with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
        print(table.to_string())
        if a.cmd == "split":
            print(split_mod.split_verdict(report))
            base = evaluation.evaluate(model, a.data, baselines=True, **common).sel(step=a.steps).mean("trajectory")
            fd = f"; the finite-difference network {float(base['fd_network_rel_l2']):.4g}" if (
                "fd_network_rel_l2" in base) else ""
            print(f"beside the baselines at step {a.steps}: this model {float(base['rel_l2']):.4g}; persistence "
                  f"(u_n = u_0) {float(base['persistence_rel_l2']):.4g}{fd}")
        if bound is not None:
            keys = [k for k in ("total", "bound", "bound_approximation", "bound_optimisation", "bound_reference")
                    if k in bound]
            print(f"\nerror bound ({bound.attrs['bound_note']}); means over "
                  "trajectories, relative to the reference norm:")
            print(bound[keys].sel(step=hs).mean("trajectory").to_dataframe()[keys].to_string())
    if a.out:
        _write(report, a.out)
        print(f"wrote {a.out}")
    if a.plots:
        from . import plotting

        folder = Path(a.plots)
        folder.mkdir(parents=True, exist_ok=True)
        if a.cmd == "evaluate":
            paths = [plotting.save(plotting.plot_error_curves(report), folder / "errors.png")]
        else:
            paths = [plotting.save(plotting.plot_error_split(report), folder / "split.png")]
        if bound is not None:
            paths.append(plotting.save(plotting.plot_budget(bound), folder / "budget.png"))
        for p in paths:
            print(f"wrote {p}")
    return 0


def identify_cmd(a: argparse.Namespace) -> int:
    """Run ``pdesurrogate identify`` and print the learned equation beside the data's."""
    import torch

    from .identify import identify
    from .checkpoint import load

    path = Path(a.model)
    model = load(path / "model.pt" if path.is_dir() else path, dtype=torch.float64)
    print(identify(model, a.data, degree=a.degree, threshold=a.threshold, split=a.split, read=a.read))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pdesurrogate`` console script."""
    from datagen.cliutil import run_cli

    return run_cli("pdesurrogate", lambda: _run(argv), errors=(SurrogateError, DatagenError),
                   extra={ImportError: lambda exc: f"{exc.name or exc} is needed for this; pip install "
                                                   "'pdesurrogate[plot]'"})


def _run(argv: Sequence[str] | None) -> int:
    a = build_parser().parse_args(argv)
    if a.cmd == "train":
        from .train_cli import train_cmd

        return train_cmd(a)
    if a.cmd == "identify":
        return identify_cmd(a)
    return cmd(a)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
