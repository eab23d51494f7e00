"""What the evaluator costs next to the bare rollout it scores.

The paper-sized network (published FisherNoNoise weights when the anchors folder is present, else
the same architecture with seeded random weights) on 30 trajectories of the default Fisher family
(100 x 100, 40 steps, one batch, float32), timed side by side in one process:

* ``rollout``: ``model.rollout(u0, 40)`` under ``torch.no_grad()`` (the floor);
* ``evaluate``: ``pdesurrogate.evaluate`` on the same file (reads the file, scores every step);
* ``error_split`` without and with the Lipschitz estimate (witness rollouts, local errors and the
  warm-started power iteration: the default half iteration per step, and ``lipschitz=1``).

    python benchmarks/evaluate.py [--published DIR] [--quick]

Prints a table of medians and ratios to the rollout and writes benchmarks/results/evaluate.json.
Run it with MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 in the
environment to keep glibc from returning torch's large temporaries (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

_HERE = str(Path(__file__).resolve().parent)
sys.path = [p for p in sys.path if p not in ("", _HERE)]
import datagen  # noqa: E402
import pdesurrogate as ps  # noqa: E402

sys.path.append(_HERE)
from _common import machine, median_time, table, write_json  # noqa: E402

DEFAULT_PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "predicting-pixel-data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--published", default=os.environ.get("PDESURROGATE_PUBLISHED", str(DEFAULT_PUBLISHED)),
                    help="folder with FisherNoNoise.pt (default ../shared/anchors/predicting-pixel-data)")
    ap.add_argument("--quick", action="store_true", help="8 trajectories, 10 steps")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    a = ap.parse_args()
    n_traj, steps = (8, 10) if a.quick else (30, 40)
    torch.set_num_threads(os.cpu_count() or 1)
    anchor = Path(a.published) / "FisherNoNoise.pt"
    if anchor.exists():
        net, what = ps.load_published(anchor), "published FisherNoNoise"
    else:
        net = ps.build_surrogate(n_fields=1, hidden=10, kernel_size=5, powers=(2,), substeps=3, dt=0.0024, seed=0)
        what = "paper architecture, random weights (anchors not found)"
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if a.device == "auto" else a.device))
    net = net.to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = datagen.GenerationConfig(pde="fisher", steps=steps, split="test", n_trajectories=n_traj, seed=11)
        path = datagen.generate(cfg, Path(tmp) / "test.h5")
        ds = datagen.open_dataset(path)
        u0 = torch.as_tensor(ds["u"].values[:, 0, None]).to(dev)

        def rollout():
            with torch.no_grad():
                net.rollout(u0, steps)
            sync()

        def run(fn, **kw):
            fn(net, path, steps=steps, batch_size=n_traj, device=dev, **kw)
            sync()

        cases = {
            "rollout": rollout,
            "evaluate": lambda: run(ps.evaluate),
            "error_split (no Lipschitz)": lambda: run(ps.error_split, lipschitz=False),
            "error_split (with Lipschitz)": lambda: run(ps.error_split),
            "error_split (lipschitz=1)": lambda: run(ps.error_split, lipschitz=1),
        }
        times = {k: median_time(f, repeats=3, warmup=1, budget=60) for k, f in cases.items()}
        split = ps.error_split(net, path, steps=steps, batch_size=n_traj, device=dev)
        rep = ps.evaluate(net, path, steps=steps, batch_size=n_traj, device=dev)
    rows = [{"case": k, "seconds": t, "ratio": t / times["rollout"]} for k, t in times.items()]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{what}; {n_traj} trajectories x {steps} steps at 100^2, float32, {where}")
    print(table(rows, [("case", "case", "s"), ("seconds", "median s", ".3f"), ("ratio", "x rollout", ".2f")]))
    last = {"rel_l2": float(rep.rel_l2.sel(step=steps).mean()),
            **{k: float(split[k].sel(step=steps).mean()) for k in ("total", "approximation_bound",
                                                                    "optimisation_lower_bound", "witness_error",
                                                                    "witness_gap", "propagated_estimate")},
            "witness": split.attrs["witness"]}
    print(f"step {steps}, means over trajectories: " + ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in last.items()))
    env = {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    out = write_json("evaluate", {"machine": machine(), "model": what, "trajectories": n_traj, "steps": steps,
                                  "torch": torch.__version__, "threads": torch.get_num_threads(), "device": where,
                                  "env": env,
                                  "rows": rows, "errors": last})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
