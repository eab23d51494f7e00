"""The published baseline networks next to the exact network and the reference solver.

"Predictions based on pixel data" (Celledoni, Jackaman, Murari, Owren; arXiv 2305.00723)
published trained weights for Fisher and heat (the authors' repository, MIT licence; here read from
a folder given by --published, the PDESURROGATE_PUBLISHED environment variable, or
../shared/anchors/predicting-pixel-data beside this repository). On 30
seeded initial conditions of the paper's sin*cos family (k in 5..8 for Fisher, 5..7 for heat),
this script rolls out 40 steps of dt = 0.24 dx^2/a on the 100 x 100 periodic grid with:

* the published network (loaded through pdesurrogate.load_published),
* the exact network of the forward-Euler five-point scheme with the same 3 substeps
  (pdesurrogate.exact_surrogate), which the published architecture can represent exactly,

and reports the relative L2 error against an accurate solution of the PDE (datagen's reference
path, spectral ETDRK4) at steps 1, 10 and 40 (median and max over the 30 trajectories, and the
mean at step 40).

    python benchmarks/anchors.py [--published DIR]

Prints a table and writes benchmarks/results/anchors.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

_HERE = str(Path(__file__).resolve().parent)
sys.path = [p for p in sys.path if p not in ("", _HERE)]
import datagen  # noqa: E402
import pdesurrogate as ps  # noqa: E402

sys.path.append(_HERE)
from _common import machine, table, write_json  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "predicting-pixel-data"
N_TRAJ, STEPS, HORIZONS = 30, 40, (1, 10, 40)


def rel_errors(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per trajectory and step: ||pred - ref|| / ||ref|| over the grid."""
    d = (pred - ref).reshape(pred.shape[0], pred.shape[1], -1)
    r = ref.reshape(ref.shape[0], ref.shape[1], -1)
    return np.linalg.norm(d, axis=-1) / np.linalg.norm(r, axis=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--published", default=os.environ.get("PDESURROGATE_PUBLISHED", str(DEFAULT)),
                    help="folder with FisherNoNoise.pt, HeatNoNoise.pt, ... (default: $PDESURROGATE_PUBLISHED or "
                         "../shared/anchors/predicting-pixel-data)")
    ANCHORS = Path(ap.parse_args().published)
    if not ANCHORS.exists():
        sys.exit(f"published weights not found at {ANCHORS}: pass --published DIR or set PDESURROGATE_PUBLISHED")
    torch.set_grad_enabled(False)
    grid = datagen.Grid((100, 100))
    rows = []
    cases = (("fisher", 8, ("FisherNoNoise", "FisherNoise")), ("heat", 7, ("HeatNoNoise", "HeatNoise")))
    for pde_name, kmax, files in cases:
        pde = datagen.catalogue.make_pde(pde_name)
        dt = 0.24 * grid.dx ** 2 / 0.01
        sampler = datagen.initial.SinCos(5, kmax)
        u0 = np.stack([sampler.sample(grid, 1, np.random.default_rng(1000 + i)) for i in range(N_TRAJ)])
        ref = datagen.ETDRK4(datagen.SemiDiscrete(pde, grid, method="spectral"), dt, 2).rollout(u0, STEPS)
        models = {f: ps.load_published(ANCHORS / f"{f}.pt", dtype=torch.float64) for f in files}
        models["exact FD network (Euler x3, 5-point)"] = ps.exact_surrogate(pde, grid, dt, substeps=3)
        for label, model in models.items():
            pred = model.rollout(torch.from_numpy(u0), STEPS).numpy()
            err = rel_errors(pred, ref)
            row = {"pde": pde_name, "model": label}
            for h in HORIZONS:
                row[f"median@{h}"] = float(np.median(err[:, h]))
                row[f"max@{h}"] = float(err[:, h].max())
            row["mean@40"] = float(err[:, STEPS].mean())
            rows.append(row)
            print(f"  {pde_name:<7} {label:<40} " + "  ".join(f"@{h}: {row[f'median@{h}']:.3e}" for h in HORIZONS),
                  flush=True)
    cols = [("pde", "pde", "s"), ("model", "model", "s")]
    for h in HORIZONS:
        cols += [(f"median@{h}", f"median err @{h}", ".3g"), (f"max@{h}", f"max err @{h}", ".3g")]
    cols.append(("mean@40", "mean err @40", ".3g"))
    print()
    print(table(rows, cols))
    path = write_json("anchors", {"machine": machine(), "rows": rows,
                                  "setting": {"trajectories": N_TRAJ, "steps": STEPS, "seeds": "1000..1029"}})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
