"""The Fisher and heat experiments of "Predictions based on pixel data" (arXiv 2305.00723), redone.

The paper's setting: 100 x 100 periodic unit square, a = 0.01, dt = 0.24 dx^2/a, sin-cos initial
data, 40 steps, 30 test trajectories; training data from datagen's accurate reference solver
(spectral ETDRK4). For each PDE, on the same test trajectories:

* the published weights (when the anchors folder is present);
* the paper's architecture trained from finite-difference stencils by Adam (``init="stencil"``,
  curriculum 1-2-3, float32): the paper's recipe;
* the finite-difference witness (the exact network of the Euler x 3 five-point scheme, in the
  paper's class), as is, polished by L-BFGS (float64, one-step windows), and trained from it by
  Levenberg-Marquardt (32 one-step windows, exact Jacobian): training that starts from the FD
  stencils with no hand-built corrections (``--long N`` adds the earlier route: N preconditioned
  L-BFGS iterations on 16 whole training trajectories after the L-BFGS polish);
* the modified-equation witness (``exact_surrogate(..., modified_equation=1)``, in the class), as
  is and polished by L-BFGS;
* the default recipe (``ps.train``, Fisher only: the heat architecture's two channels hold no
  derivative pair), which reads neither the PDE nor a witness; ``--earlier-default`` adds the
  recipe before the mean-mode fix (least-squares start, L-BFGS, no anchor) for before / after.

    python benchmarks/paper.py [--published DIR] [--pde fisher,heat] [--lbfgs 100] [--lm 15] [--long 0] [--epochs 10]
                               [--quick] [--default-only] [--earlier-default] [--horizon 200] [--seed 0]

Prints mse, max error and relative L2 (means over the test trajectories) at steps 1, 10, 20, 40
(with ``--horizon H``: also 80 and H, on the same test trajectories saved to H by the same solver)
and how each model steps constant states (``ps.constant_state_growth``: the relative error of the
increment in %, mean over 0.25, 0.5, 0.75), with each case's training time, and writes
benchmarks/results/paper.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

_HERE = str(Path(__file__).resolve().parent)
sys.path = [p for p in sys.path if p not in ("", _HERE)]
import datagen  # noqa: E402
import pdesurrogate as ps  # noqa: E402

sys.path.append(_HERE)
from _common import machine, table, write_json  # noqa: E402

DEFAULT_PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "predicting-pixel-data"
HORIZONS = (1, 10, 20, 40)
ARCH = {"fisher": dict(hidden=10, kernel_size=5, powers=(2,), substeps=3),
        "heat": dict(hidden=2, kernel_size=5, powers=(1,), substeps=3, bias2=False)}
PUBLISHED = {"fisher": "FisherNoNoise.pt", "heat": "HeatNoNoise.pt"}
# the default recipe before the mean-mode fix, for the before / after rows
EARLIER_DEFAULT = {"start": "least-squares", "anchor": 0.0, "precondition": False}


def scores(model, test, steps, far: int = 0) -> dict[str, float]:
    """Means over the test trajectories at the paper's horizons (and 80, ``far`` beyond them), and
    how the model steps constant states (relative error of the increment, in %, at 0.25 / 0.5 / 0.75)."""
    rep = ps.evaluate(model, test, steps=max(steps, far))
    hs = [h for h in (*HORIZONS, 80, far) if 0 < h <= max(steps, far)]
    out = {}
    for h in dict.fromkeys(hs):
        for k in ("mse", "max_error", "rel_l2"):
            out[f"{k}@{h}"] = float(rep[k].sel(step=h).mean())
    growth = ps.constant_state_growth(model, test)
    out["const_growth_%"] = float(np.mean(list(growth.values()))) * 100 if growth else float("nan")
    return out


def _outcome(hist, key: str = "lbfgs_kept") -> str:
    return "kept" if hist.attrs.get(key) else "rejected (validation got worse)"


def run_pde(name: str, folder: Path, a: argparse.Namespace, published: Path) -> list[dict]:
    steps = 40
    cfg = datagen.GenerationConfig(pde=name, steps=steps, seed=a.data_seed)
    n = {"train": a.train, "valid": 8, "test": a.test}
    datagen.generate_splits(cfg, n, folder / name, overwrite=True)
    train_f, valid_f, test_f = (datagen.store.dataset_file(folder / name, s) for s in ("train", "valid", "test"))
    if a.horizon > steps:  # the same test trajectories, saved to the far horizon by the same solver
        far_cfg = datagen.GenerationConfig(pde=name, steps=a.horizon, seed=a.data_seed)
        datagen.generate_splits(far_cfg, {"test": a.test}, folder / f"{name}-far", overwrite=True)
        test_f = datagen.store.dataset_file(folder / f"{name}-far", "test")
    train = ps.WindowDataset(train_f, unroll=3)
    pde, grid = train.pde, train.grid
    arch = {**ARCH[name], "dt": train.dt, "spacing": train.spacing, "boundary": train.boundary}
    rows = []

    def add(case, model, seconds=None, note=""):
        rows.append({"pde": name, "case": case, "train_s": seconds, "note": note,
                     **scores(model, test_f, steps, a.horizon)})
        print(f"  {case}: rel_l2@40 {rows[-1]['rel_l2@40']:.3g}" + (f" ({seconds:.0f} s)" if seconds else ""),
              flush=True)

    pub = published / PUBLISHED[name]
    if pub.exists() and not a.default_only:
        add(f"published {pub.stem}", ps.load_published(pub))
    if name == "fisher":
        recipes = {"default recipe (ps.train)" + (f" {a.recipe}" if a.recipe else ""): json.loads(a.recipe or "{}")}
        if a.earlier_default:
            recipes["earlier default (least-squares start, L-BFGS)"] = EARLIER_DEFAULT
        for case, recipe in recipes.items():
            t0 = time.perf_counter()
            model, hist = ps.train(folder / name, {**recipe, "seed": a.seed}, log=None)
            add(case, model, time.perf_counter() - t0, f"data only; seed {a.seed}; best valid "
                f"{hist.attrs['best_valid']:.3g}")
    if a.default_only:
        return rows
    model = ps.build_surrogate(**arch, init="stencil")
    t0 = time.perf_counter()
    ps.fit(model, train, valid_f, epochs=a.epochs, batch_size=4, curriculum=[1, 2, 3], noise=1e-3, progress=False)
    add("init=stencil + Adam (paper recipe)", model, time.perf_counter() - t0, f"{a.epochs} epochs, float32")

    one = ps.WindowDataset(train_f, unroll=1, dtype=torch.float64)
    powers = ARCH[name]["powers"]
    witnesses = {
        "FD witness": ps.exact_surrogate(pde, grid, train.dt, substeps=3, powers=powers, dtype=torch.float64),
        "modified-equation witness": ps.exact_surrogate(pde, grid, train.dt, substeps=3, powers=powers,
                                                        modified_equation=1, accuracy="max", kernel_size=5,
                                                        k2_derivatives=name == "fisher", truncate=True,
                                                        dtype=torch.float64),
    }
    for wname, w in witnesses.items():
        start = ps.embed(w, ps.build_surrogate(**arch, init="stencil", dtype=torch.float64))
        add(wname, start, note=f"{w.vector_field.hidden} of {arch['hidden']} channels")
        t0 = time.perf_counter()
        hist = ps.fit(start, one, valid_f, epochs=0, lbfgs=a.lbfgs, lbfgs_windows=64, progress=False)
        kept = _outcome(hist)
        polish_s = time.perf_counter() - t0
        add(f"{wname} + L-BFGS", start, polish_s, f"{a.lbfgs} iterations, 64 one-step windows, float64; {kept}")
        if wname == "FD witness" and a.lm:
            fd = ps.embed(w, ps.build_surrogate(**arch, init="stencil", dtype=torch.float64))
            t0 = time.perf_counter()
            hist = ps.fit(fd, one, valid_f, epochs=0, lm=a.lm, lm_windows=a.lm_windows, progress=False)
            kept = _outcome(hist, "lm_kept")
            add(f"{wname} + Levenberg-Marquardt", fd, time.perf_counter() - t0,
                f"{hist.attrs['lm_iterations']} iterations, {a.lm_windows} one-step windows, float64; {kept}")
        if wname == "FD witness" and a.long:
            # then the whole trajectories, on the score's own terms (relative error, all steps);
            # preconditioned, or L-BFGS takes no step from this start
            whole = ps.WindowDataset(train_f, unroll=steps, dtype=torch.float64)
            t0 = time.perf_counter()
            hist = ps.fit(start, whole, valid_f, epochs=0, lbfgs=a.long, lbfgs_windows=16, lbfgs_check=10,
                          loss="relative", lbfgs_precondition=True, progress=False)
            kept = _outcome(hist)
            add(f"{wname} + L-BFGS + whole trajectories", start, polish_s + time.perf_counter() - t0,
                f"then {a.long} preconditioned iterations on 16 whole {steps}-step trajectories, relative loss; {kept}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--published", default=os.environ.get("PDESURROGATE_PUBLISHED", str(DEFAULT_PUBLISHED)),
                    help="folder with the published weights (default ../shared/anchors/predicting-pixel-data)")
    ap.add_argument("--pde", default="fisher,heat", help="which experiments (default fisher,heat)")
    ap.add_argument("--train", type=int, default=64, help="training trajectories (default 64)")
    ap.add_argument("--test", type=int, default=30, help="test trajectories (default 30, as in the paper)")
    ap.add_argument("--epochs", type=int, default=10, help="Adam epochs of the paper recipe (default 10)")
    ap.add_argument("--lbfgs", type=int, default=100, help="L-BFGS iterations from each witness (default 100)")
    ap.add_argument("--lm", type=int, default=15,
                    help="Levenberg-Marquardt iterations from the FD witness (default 15; 0: skip)")
    ap.add_argument("--lm-windows", type=int, default=32, help="one-step windows of that phase (default 32)")
    ap.add_argument("--long", type=int, default=0,
                    help="L-BFGS iterations on whole trajectories after the FD start's polish (default 0: skip)")
    ap.add_argument("--quick", action="store_true",
                    help="8 training and 8 test trajectories, 2 epochs, 10 L-BFGS, 2 Levenberg-Marquardt on 4 windows")
    ap.add_argument("--default-only", action="store_true", help="only the default recipe's row")
    ap.add_argument("--horizon", type=int, default=0,
                    help="also score every row at steps 80 and this one (e.g. 200; the test split saved that far)")
    ap.add_argument("--recipe", default="", help='options over the default recipe, as JSON (e.g. \'{"anchor": 0}\')')
    ap.add_argument("--earlier-default", action="store_true",
                    help="also the earlier default recipe (least-squares start, L-BFGS, no anchor): before / after")
    ap.add_argument("--seed", type=int, default=0, help="the default recipe's seed (default 0)")
    ap.add_argument("--data-seed", type=int, default=2305, help="seed of the generated data (default 2305)")
    a = ap.parse_args()
    if a.quick:
        a.train, a.test, a.epochs, a.lbfgs, a.lm, a.lm_windows = 8, 8, 2, 10, 2, 4
    torch.set_num_threads(os.cpu_count() or 1)
    published = Path(a.published)
    if not published.exists():
        print(f"note: {published} not found; the published weights are skipped")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.pde.split(","):
            print(f"{name}:", flush=True)
            rows += run_pde(name.strip(), Path(tmp), a, published)
    cols = [("pde", "pde", "s"), ("case", "case", "s")]
    for h in (*HORIZONS, *((80, a.horizon) if a.horizon > 40 else ())):
        cols.append((f"rel_l2@{h}", f"rE({h})", ".3g"))
    cols.append(("const_growth_%", "const. growth %", "+.2f"))
    cols += [("mse@40", "mse(40)", ".2e"), ("max_error@40", "max(40)", ".2e"), ("train_s", "train s", ".0f"),
             ("note", "note", "s")]
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{a.test} test trajectories, means; training on {where}, torch {torch.__version__}")
    print(table(rows, cols))
    name = f"paper-default-{a.data_seed}-{a.seed}" if a.default_only else "paper"
    out = write_json(name, {"machine": machine(), "device": where, "torch": torch.__version__, "args": vars(a),
                            "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
