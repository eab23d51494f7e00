"""The default recipe on PDEs other than Fisher, beside the finite-difference network of its class.

For each case a small dataset (train / valid / test trajectories, the test split saved to the
far horizon by the same solver), the default recipe (``ps.train``: the paper's class, from the
data alone), and on the same test trajectories: persistence (``u_n = u_0``), the untrained
finite-difference network of the class (when the PDE's FD scheme is in it) and the published
weights where they exist (heat). Cases:

* ``heat``: the heat equation in the paper's setting (100^2, dt = 0.24 dx^2 / a);
* ``allen_cahn``: its ``coarsening`` scenario;
* ``gray_scott``: the ``spots`` scenario (two fields);
* ``brusselator``: a PDE typed as text (``u_t = Du Lap u + A - (B + 1) u + u^2 v; v_t = Dv Lap v + B u - u^2 v``).

    python benchmarks/recipes.py [--cases heat,allen_cahn,gray_scott,brusselator] [--train 16] [--test 8]
                                 [--horizon 200] [--lbfgs 200] [--grid N]

Prints rE (mean relative L2 over the test trajectories) at steps 1, 10, 40 and the horizon, and
writes benchmarks/results/recipes.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

_HERE = str(Path(__file__).resolve().parent)
sys.path = [p for p in sys.path if p not in ("", _HERE)]
import datagen  # noqa: E402
import pdesurrogate as ps  # noqa: E402

sys.path.append(_HERE)
from _common import machine, table, write_json  # noqa: E402

DEFAULT_PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "predicting-pixel-data"
BRUSSELATOR = ("u_t = Du*(u_xx + u_yy) + A - (B + 1)*u + u**2*v; v_t = Dv*(v_xx + v_yy) + B*u - u**2*v")


def config(case: str, steps: int | None, seed: int, grid: int | None) -> datagen.GenerationConfig:
    """The generation config of ``case`` with ``steps`` saved steps (``None``: the scenario's)."""
    g = {"shape": [grid, grid]} if grid else {}
    if case == "brusselator":
        spec = datagen.parse_pde(BRUSSELATOR, params={"Du": 0.002, "Dv": 0.001, "A": 1.0, "B": 3.0},
                                 name="brusselator").to_dict()
        return datagen.GenerationConfig(pde="brusselator", spec=spec, steps=steps or 40, seed=seed,
                                        grid={"shape": [grid or 64, grid or 64]},
                                        initial={"name": "fourier", "amplitude": 0.2, "offset": 1.0})
    scenario = {"heat": None, "allen_cahn": "coarsening", "gray_scott": "spots"}[case]
    return datagen.GenerationConfig(pde=case, scenario=scenario, steps=steps, seed=seed, grid=g)


def run_case(case: str, folder: Path, a: argparse.Namespace, published: Path) -> list[dict]:
    base = config(case, None, a.seed, a.grid)
    steps = base.resolve().steps
    datagen.generate_splits(base, {"train": a.train, "valid": 4}, folder / case, overwrite=True)
    far = max(a.horizon, 40, steps)
    fcfg = config(case, far, a.seed, a.grid)
    if case != "brusselator":  # the scenario's step, saved to the far horizon
        fcfg = datagen.GenerationConfig(**{**fcfg.to_dict(), "dt": base.resolve().dt})
    datagen.generate_splits(fcfg, {"test": a.test}, folder / f"{case}-far", overwrite=True)
    test = datagen.store.dataset_file(folder / f"{case}-far", "test")
    hs = [h for h in (1, 10, 40, a.horizon) if 0 < h <= far]
    rows = []

    def add(name: str, model, seconds=None, note=""):
        rep = ps.evaluate(model, test, steps=max(hs), baselines=name == "default recipe")
        row = {"case": case, "model": name, "train_s": seconds, "note": note}
        for h in hs:
            row[f"rE@{h}"] = float(rep["rel_l2"].sel(step=h).mean())
        rows.append(row)
        if "persistence_rel_l2" in rep:
            rows.append({"case": case, "model": "persistence", **{f"rE@{h}": float(
                rep["persistence_rel_l2"].sel(step=h).mean()) for h in hs}})
        if "fd_network_rel_l2" in rep:
            rows.append({"case": case, "model": "FD network of the class", "note": "untrained", **{
                f"rE@{h}": float(rep["fd_network_rel_l2"].sel(step=h).mean()) for h in hs}})
        print(f"  {name}: " + ", ".join(f"rE({h}) {row[f'rE@{h}']:.3g}" for h in hs), flush=True)

    t0 = time.perf_counter()
    model, hist = ps.train(folder / case, {"lbfgs": a.lbfgs}, log=None)
    add("default recipe", model, time.perf_counter() - t0, f"best valid {hist.attrs['best_valid']:.3g}")
    if case == "heat" and (published / "HeatNoNoise.pt").exists():
        add("published HeatNoNoise", ps.load_published(published / "HeatNoNoise.pt"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="heat,allen_cahn,gray_scott,brusselator")
    ap.add_argument("--train", type=int, default=16, help="training trajectories (default 16)")
    ap.add_argument("--test", type=int, default=8, help="test trajectories (default 8)")
    ap.add_argument("--horizon", type=int, default=200, help="far horizon (default 200)")
    ap.add_argument("--lbfgs", type=int, default=200, help="the recipe's L-BFGS iterations (default 200)")
    ap.add_argument("--grid", type=int, default=None, help="grid points per side (default: the scenario's)")
    ap.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    ap.add_argument("--published", default=os.environ.get("PDESURROGATE_PUBLISHED", str(DEFAULT_PUBLISHED)))
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases.split(","):
            print(f"{case}:", flush=True)
            rows += run_case(case.strip(), Path(tmp), a, Path(a.published))
    hs = sorted({h for r in rows for h in (int(k[3:]) for k in r if k.startswith("rE@"))})
    cols = [("case", "case", "s"), ("model", "model", "s"), *((f"rE@{h}", f"rE({h})", ".3g") for h in hs),
            ("train_s", "train s", ".0f"), ("note", "note", "s")]
    for r in rows:
        for h in hs:
            if not math.isfinite(r.get(f"rE@{h}", 0.0)):
                r[f"rE@{h}"] = float("inf")
    where = f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{a.test} test trajectories, means; {where}, torch {torch.__version__}")
    print(table(rows, cols))
    print(f"wrote {write_json('recipes', {'machine': machine(), 'args': vars(a), 'rows': rows})}")


if __name__ == "__main__":
    main()
