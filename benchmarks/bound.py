"""How tight the a-posteriori error bound is, and what it costs.

On Fisher data in the paper's setting (100 x 100 periodic grid, a = 0.01, dt = 0.24 dx^2 / a,
sin-cos initial data, accurate spectral reference), for the published FisherNoNoise network (when
the anchors folder is present), a trained network (``--model``, e.g. the README main job's
``runs/fisher/model.pt``) and the finite-difference network of the class, prints per network the
ratio bound / true error at steps 40 and 200 over the test trajectories (median and worst), the
bound's status, and the time of the bound against the bare rollout (``evaluate``) on the same
trajectories, measured one after the other in this run.

    python benchmarks/bound.py [--data data/fisher] [--model runs/fisher/model.pt] [--trajectories 8]

Writes benchmarks/results/bound.json.
"""

from __future__ import annotations

import argparse
import sys
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

ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "predicting-pixel-data"
HORIZONS = (40, 200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="dataset folder (default: a new paper-setting Fisher set)")
    ap.add_argument("--model", default=None, help="a trained checkpoint to include")
    ap.add_argument("--trajectories", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    if a.data is None:
        import tempfile

        folder = Path(tempfile.mkdtemp()) / "fisher"
        cfg = datagen.GenerationConfig(pde="fisher", steps=40, seed=0)
        datagen.generate_splits(cfg, {"test": a.trajectories}, folder)
        a.data = str(folder)
    test = datagen.store.dataset_file(a.data, "test")
    prov = datagen.read_provenance(test)
    pde, grid = datagen.PDE.from_dict(prov["pde"]), datagen.Grid.from_dict(prov["config"]["grid"])
    dt = float(prov["config"]["dt"])
    models = {}
    if (ANCHORS / "FisherNoNoise.pt").exists():
        models["published FisherNoNoise"] = ps.load_published(ANCHORS / "FisherNoNoise.pt", dtype=torch.float64)
    if a.model:
        models[f"trained ({a.model})"] = ps.load(a.model)
    models["finite-difference network"] = ps.exact_surrogate(pde, grid, dt, substeps=3, dtype=torch.float64)
    traj = list(range(min(a.trajectories, datagen.open_dataset(test).sizes["trajectory"])))
    rows = []
    for name, m in models.items():
        t0 = time.perf_counter()
        ps.evaluate(m, test, steps=a.steps, trajectories=traj)
        t_roll = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep = ps.error_bound(m, test, steps=a.steps, trajectories=traj)
        t_bound = time.perf_counter() - t0
        row = {"model": name, "status": rep.attrs["bound_status"], "rollout_s": t_roll, "bound_s": t_bound,
               "cost_ratio": t_bound / t_roll}
        for h in HORIZONS:
            if h <= a.steps:
                r = (rep.bound / rep.total).sel(step=h).values
                row[f"true@{h}"] = float(np.median(rep.total.sel(step=h).values))
                row[f"median@{h}"], row[f"worst@{h}"] = float(np.median(r)), float(np.max(r))
                row[f"holds@{h}"] = bool(np.all(rep.bound.sel(step=slice(1, h)) >= rep.total.sel(step=slice(1, h))))
        rows.append(row)
        print(f"{name}: done ({t_bound:.1f} s)", flush=True)
    cols = [("model", "model", "s"), ("status", "status", "s")]
    for h in HORIZONS:
        if h <= a.steps:
            cols += [(f"true@{h}", f"true rE({h}) median", ".3g"), (f"median@{h}", f"bound/true {h} median", ".3g"),
                     (f"worst@{h}", "worst", ".3g"), (f"holds@{h}", "holds", "")]
    cols += [("rollout_s", "rollout s", ".1f"), ("bound_s", "bound s", ".1f"), ("cost_ratio", "bound/rollout", ".1f")]
    print(table(rows, cols))
    path = write_json("bound", {"machine": machine(), "data": str(test), "trajectories": len(traj), "steps": a.steps,
                                "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
