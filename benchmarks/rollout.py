"""Rollout throughput of the paper-sized surrogate next to datagen's explicit solver.

The network of "Predictions based on pixel data" (1 -> 10 -> 1 channels, 5x5 kernels, relu^2,
3 Euler substeps per step; the published Fisher weights when ../shared/anchors is present) rolls
out 40 steps on 100^2 and 256^2 periodic grids with batch 32, in float32 and float64; beside it
the exact network of Fisher's forward-Euler scheme (4 hidden channels, 3x3) and datagen's
forward-Euler five-point solver of that same scheme (numpy and numba backends). Throughput is
grid cells x steps per second (median of 3; the networks are timed over 10 steps and their
time is quoted per 40).

    python benchmarks/rollout.py [--quick]

Prints a table and writes benchmarks/results/rollout.json. The torch rows run once more in a
child process with glibc's malloc told to keep its large blocks
(MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_), which matters on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

# benchmarks/datagen.py shares the package's name: import the package, then the helpers
_HERE = str(Path(__file__).resolve().parent)
sys.path = [p for p in sys.path if p not in ("", _HERE)]
import datagen  # noqa: E402
import pdesurrogate as ps  # noqa: E402

sys.path.append(_HERE)
from _common import machine, median_time, table, write_json  # noqa: E402

STEPS, BATCH, A = 40, 32, 0.01
TORCH_STEPS = 10  # the networks are slow on CPU: time 10 steps and report the same per-step rate
ANCHOR = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "predicting-pixel-data" / "FisherNoNoise.pt"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def paper_network() -> tuple[ps.Surrogate, str]:
    if ANCHOR.exists():
        return ps.load_published(ANCHOR), "published FisherNoNoise weights"
    return ps.build_surrogate(n_fields=1, hidden=10, kernel_size=5, powers=(2,), integrator="euler", substeps=3,
                              dt=0.0024, seed=0), "random weights (anchors not found)"


def initial(n: int) -> np.ndarray:
    g = datagen.Grid((n, n))
    return np.stack([datagen.initial.SinCos().sample(g, 1, np.random.default_rng(i)) for i in range(BATCH)])


def torch_rows(sizes: list[int], label_suffix: str = "") -> list[dict]:
    rows = []
    net, what = paper_network()
    for n in sizes:
        g = datagen.Grid((n, n))
        dt = 0.24 * g.dx ** 2 / A
        u0 = initial(n)
        exact = ps.exact_surrogate(datagen.catalogue.fisher(A), g, dt, substeps=3)
        for dtype in (torch.float32, torch.float64):
            x = torch.from_numpy(u0).to(dtype)
            for label, model in ((f"paper network 1-10-1 5x5 ({what})", net), ("exact Fisher network 1-4-1 3x3", exact)):
                m = model.to(dtype)

                def run(steps=TORCH_STEPS):
                    with torch.inference_mode():
                        u = x
                        for _ in range(steps):
                            u = m(u)
                    return u

                run(1)  # warm-up: first allocations
                t = median_time(run, repeats=3, warmup=0, budget=60.0)
                rows.append({"grid": n, "case": label + label_suffix, "dtype": str(dtype).replace("torch.", ""),
                             "seconds": t * STEPS / TORCH_STEPS, "cell_steps_per_s": BATCH * n * n * TORCH_STEPS / t,
                             "torch_threads": torch.get_num_threads()})
                print(f"  {n}^2 {rows[-1]['dtype']:<8} {rows[-1]['case']:<70} {rows[-1]['seconds']:8.3f} s  "
                      f"{rows[-1]['cell_steps_per_s']:.3g} cell-steps/s", flush=True)
    return rows


def solver_rows(sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        g = datagen.Grid((n, n))
        dt = 0.24 * g.dx ** 2 / A
        u0 = initial(n)
        for backend in ("numpy", "numba"):
            step = datagen.Euler(datagen.SemiDiscrete(datagen.catalogue.fisher(A), g, backend=backend), dt, 3)

            def run():
                u = u0
                for _ in range(STEPS):
                    u = step.step(u)
                return u

            t = median_time(run, repeats=3)
            rows.append({"grid": n, "case": f"datagen euler fd2 x3 ({backend})", "dtype": "float64", "seconds": t,
                         "cell_steps_per_s": BATCH * n * n * STEPS / t})
            print(f"  {n}^2 float64  {rows[-1]['case']:<70} {t:8.3f} s  {rows[-1]['cell_steps_per_s']:.3g} cell-steps/s",
                  flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100^2 only")
    ap.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [100] if args.quick else [100, 256]
    if args.torch_only:
        print(json.dumps(torch_rows(sizes, " [malloc tuned]")))
        return
    info = machine()
    info["torch"] = torch.__version__
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({torch.get_num_threads()} threads)")
    rows = solver_rows(sizes) + torch_rows(sizes)
    cmd = [sys.executable, __file__, "--torch-only"] + (["--quick"] if args.quick else [])
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV})
    if p.returncode == 0:
        for line in p.stdout.splitlines():
            if line.startswith("  "):
                print(line)
        rows += json.loads(p.stdout.strip().splitlines()[-1])
    else:
        print("malloc-tuned run failed:", p.stderr.strip().splitlines()[-1:])
    ref = {r["grid"]: r["cell_steps_per_s"] for r in rows if r["case"] == "datagen euler fd2 x3 (numba)"}
    for r in rows:
        r["vs_numba_solver"] = r["cell_steps_per_s"] / ref[r["grid"]] if r["grid"] in ref else None
    print()
    print(table(rows, [("grid", "grid", "d"), ("case", "model", "s"), ("dtype", "dtype", "s"),
                       ("seconds", "40 steps, s (median)", ".3f"), ("cell_steps_per_s", "cell-steps/s", ".3g"),
                       ("vs_numba_solver", "x numba solver", ".3f")]))
    path = write_json("rollout", {"machine": info, "rows": rows, "setting": {"steps": STEPS, "batch": BATCH}})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
