"""Training throughput of the paper's network: window-steps per second, side by side.

One training iteration is ``window_loss`` over a batch of windows unrolled ``k`` steps, its
backward pass and an Adam step: the paper network (1 -> 10 -> 1 channels, 5x5 kernels, relu^2,
3 Euler substeps) at 100 x 100 on the default Fisher family, float32 unless named. Cases:

* ``eager, torch backward``: torch's own ``convolution_backward`` for every gradient;
* ``layer by layer``: periodic convolutions take their input gradient as a forward correlation
  with the adjoint kernel, many-to-few weight gradients run with the roles swapped;
* ``fused field`` (what ``fit`` uses on CPU): the whole vector field as one autograd function on
  the grid widened by K2's radius, in chunks of 4 windows (``vector_field._PeriodicField``);
  ``fit`` also runs inside ``ps.malloc_tuned`` (see the side-by-side table);
* ``torch.compile``: the same model compiled (compile time reported apart, not in the median);
* ``float64``: for scale;
* ``crop``: ``S x S`` targets with the receptive halo, stepped with unpadded convolutions (its
  windows are smaller: compare target cells per second).

A second table times, in isolation on inputs of the training shapes, each operation that one
vector-field evaluation costs layer by layer, and adds them up over the iteration's ``unroll x 3``
evaluations, set against the measured iteration and the 3x target.

    python benchmarks/train.py [--batch 8] [--unroll 5] [--quick] [--no-compile] [--device auto] [--rounds 3]

On CPU a last table runs the baseline and what ``fit`` does (the fused field with
``ps.malloc_tuned``) each in fresh processes, with and without the malloc variables below,
interleaved round by round (``--rounds 0`` skips it).

Prints a table of medians and ratios and writes benchmarks/results/train.json. Run with
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

_HERE = str(Path(__file__).resolve().parent)
sys.path = [p for p in sys.path if p not in ("", _HERE)]
import datagen  # noqa: E402
import pdesurrogate as ps  # noqa: E402
from pdesurrogate import stencil_conv  # noqa: E402
from pdesurrogate.passes import library_passes  # noqa: E402
from pdesurrogate.losses import window_loss  # noqa: E402

sys.path.append(_HERE)
from _common import machine, median_time, table, write_json  # noqa: E402


BASE = "eager, torch backward"
FIT = "fused field, malloc_tuned (what fit does)"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
PAIR_SECONDS = 12.0


def side_by_side(a: argparse.Namespace) -> list[dict]:
    """The baseline, the fused field with malloc untouched and what ``fit`` does (the fused field
    inside ``ps.malloc_tuned``), each in its own fresh process, started with and without the
    malloc variables (which act at process start only), interleaved round by round: on a shared
    machine the speed drifts, and a ratio of medians taken apart in time rides on that drift."""
    envs = {"default": {k: v for k, v in os.environ.items() if k not in MALLOC_ENV},
            "MALLOC_* variables": {**os.environ, **MALLOC_ENV}}
    cmd = [sys.executable, __file__, "--pair", str(PAIR_SECONDS), "--batch", str(a.batch), "--unroll", str(a.unroll)]
    cases = {BASE: "base", "fused field, malloc untouched": "fused", FIT: "fit"}
    runs = [(e, c) for e in envs for c in cases if not (e != "default" and cases[c] == "fused")]
    samples = {run: [] for run in runs}
    for _ in range(a.rounds):
        for e, c in runs:
            p = subprocess.run(cmd + ["--case", cases[c]], capture_output=True, text=True, env=envs[e])
            if p.returncode:
                raise SystemExit(f"side-by-side child failed: {p.stderr.strip().splitlines()[-1:]}")
            samples[(e, c)] += json.loads(p.stdout.strip().splitlines()[-1])
    base = statistics.median(samples[("default", BASE)])
    return [{"environment": e, "case": c, "seconds": statistics.median(v), "iterations": len(v),
             "speedup": base / statistics.median(v)} for (e, c), v in samples.items()]


def op_floor(batch: int, evaluations: int, repeats: int, dev: torch.device) -> list[dict]:
    """Median time of each operation of one paper-network evaluation (forward and backward) on
    the layer-by-layer path, at ``batch x 100 x 100``, float32, inputs of the training shapes."""
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(dev)

    R, C, n = 2, 10, 100
    u, g1 = rnd(batch, 1, n, n), rnd(batch, 1, n, n)
    h, gh = rnd(batch, C, n, n), rnd(batch, C, n, n)
    w1, w2 = rnd(C, 1, 5, 5), rnd(1, C, 5, 5)

    def pad(x):
        return F.pad(x, (R, R, R, R), mode="circular")

    def act_fwd_bwd():
        r = torch.relu(h)
        return r ** 2, gh * 2 * r

    ops = {
        "K1 forward (1 -> 10)": lambda: stencil_conv._correlate(pad(u), w1),
        "relu^2 and its derivative": act_fwd_bwd,
        "K2 forward (10 -> 1)": lambda: stencil_conv._correlate(pad(h), w2),
        "K2 input gradient (1 -> 10)": lambda: stencil_conv._correlate(pad(g1), w2.flip(-2, -1).transpose(0, 1)),
        "K2 weight gradient": lambda: stencil_conv._weight_grad(h, g1, pad(g1), w2, R),
        "K1 input gradient (10 -> 1)": lambda: stencil_conv._correlate(pad(gh), w1.flip(-2, -1).transpose(0, 1)),
        "K1 weight gradient": lambda: stencil_conv._weight_grad(u, gh, pad(gh), w1, R),
    }
    rows = []
    for name, fn in ops.items():
        t = median_time(fn, repeats=max(repeats, 15), warmup=2, budget=5)
        rows.append({"op": name, "ms": 1e3 * t, "per_iteration_ms": 1e3 * t * evaluations})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="windows per batch (default 8)")
    ap.add_argument("--unroll", type=int, default=5, help="unrolled steps (default 5)")
    ap.add_argument("--crop", type=int, default=24, help="target patch of the crop case (unroll 1; default 24)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compile takes a minute here)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    ap.add_argument("--rounds", type=int, default=3,
                    help="CPU: rounds of the side-by-side child processes, each environment once per round (default 3)")
    ap.add_argument("--pair", type=float, default=None, help=argparse.SUPPRESS)  # child: seconds of one case
    ap.add_argument("--case", default="fit", help=argparse.SUPPRESS)  # child: base | fused | fit
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if a.device == "auto" else a.device))
    repeats = 3 if a.quick else 7

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = datagen.GenerationConfig(pde="fisher", steps=max(a.unroll, 1) + 2, split="train",
                                       n_trajectories=a.batch, seed=3)
        path = datagen.generate(cfg, Path(tmp) / "train.h5")
        full = ps.WindowDataset(path, unroll=a.unroll)
        one = ps.WindowDataset(path, unroll=1)

        def build(dtype=torch.float32):
            return ps.build_surrogate(hidden=10, kernel_size=5, powers=(2,), substeps=3, init="stencil", dt=full.dt,
                                      spacing=full.spacing, boundary=full.boundary, dtype=dtype).to(dev)

        def batch(ds, dtype=torch.float32):
            return torch.stack([ds[i] for i in range(a.batch)]).to(dev, dtype)

        def iteration(model, windows, k, crop=None, fused=True, adjoint=True):
            opt = torch.optim.Adam(model.parameters(), lr=1e-6)

            def run():
                with library_passes(fused=fused, adjoint=adjoint):
                    opt.zero_grad()
                    window_loss(model, windows, k, crop=crop).mean().backward()
                    opt.step()
                    sync()
            return run

        if a.pair is not None:  # child process of side_by_side: one case, as fit would run it
            fused = a.case in ("fit", "fused")
            run = iteration(build(), batch(full), a.unroll, fused=fused, adjoint=fused)
            samples = []
            with ps.malloc_tuned(a.case == "fit"):
                run()
                end = time.perf_counter() + a.pair
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    run()
                    samples.append(time.perf_counter() - t)
            print(json.dumps(samples))
            return
        halo = ps.receptive_halo(build(), 1)
        cropped = ps.WindowDataset(path, unroll=1, crop=a.crop, halo=halo)
        cases = {}
        w32, w64 = batch(full), batch(full, torch.float64)
        cases[BASE] = (iteration(build(), w32, a.unroll, fused=False, adjoint=False), a.unroll, 100 * 100)
        cases["layer by layer"] = (iteration(build(), w32, a.unroll, fused=False), a.unroll, 100 * 100)
        cases["fused field"] = (iteration(build(), w32, a.unroll), a.unroll, 100 * 100)
        cases["float64"] = (iteration(build(torch.float64), w64, a.unroll), a.unroll, 100 * 100)
        cases["unroll 1"] = (iteration(build(), batch(one), 1), 1, 100 * 100)
        cases[f"crop {a.crop} + halo {halo}, unroll 1"] = (iteration(build(), batch(cropped), 1, crop=a.crop), 1,
                                                          a.crop * a.crop)
        compile_s = None
        if not a.no_compile:
            m = build()
            m.vector_field = torch.compile(m.vector_field)
            t0 = time.perf_counter()
            run = iteration(m, w32, a.unroll, fused=False)
            run()
            compile_s = time.perf_counter() - t0
            cases["torch.compile (layer by layer)"] = (run, a.unroll, 100 * 100)
        # one after another in one process: indicative; the side-by-side table is the comparison
        times = {name: median_time(fn, repeats=repeats, warmup=1, budget=30) for name, (fn, _, _) in cases.items()}
    base = times[BASE]
    rows = []
    for name, (_, k, cells) in cases.items():
        ws = a.batch * k / times[name]
        rows.append({"case": name, "seconds": times[name], "window_steps": ws, "cells": ws * cells,
                     "speedup": (a.batch * k * cells / times[name]) / (a.batch * a.unroll * 100 * 100 / base)})
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"paper network, batch {a.batch}, 100^2, {where}; one iteration = loss over k steps + backward + Adam")
    print(table(rows, [("case", "case", "s"), ("seconds", "median s / iteration", ".3f"),
                       ("window_steps", "window-steps/s", ".1f"), ("cells", "target cell-steps/s", ".3g"),
                       ("speedup", "x torch backward (cells)", ".2f")]))
    if compile_s is not None:
        print(f"torch.compile: first iteration (compile) {compile_s:.1f} s")
    floor = op_floor(a.batch, 3 * a.unroll, repeats, dev) if dev.type == "cpu" else []
    if floor:
        total = sum(r["per_iteration_ms"] for r in floor)
        floor.append({"op": "sum", "ms": total / (3 * a.unroll), "per_iteration_ms": total})
        print(f"\noperations of one evaluation in isolation (x {3 * a.unroll} evaluations per iteration):")
        print(table(floor, [("op", "operation", "s"), ("ms", "median ms", ".3f"),
                            ("per_iteration_ms", "ms per iteration", ".1f")]))
        print(f"measured iteration layer by layer {1e3 * times['layer by layer']:.1f} ms; 3x the torch-backward "
              f"baseline needs {1e3 * base / 3:.1f} ms")
    sides = side_by_side(a) if dev.type == "cpu" and a.rounds > 0 else []
    if sides:
        print(f"\nside by side, each case in its own fresh process, {a.rounds} rounds of {PAIR_SECONDS:.0f} s each, "
              "interleaved (medians over all iterations):")
        print(table(sides, [("environment", "environment", "s"), ("case", "case", "s"),
                            ("seconds", "median s / iteration", ".4f"), ("iterations", "iterations", "d"),
                            ("speedup", "x torch backward in the default environment", ".2f")]))
    env = {k: os.environ.get(k) for k in MALLOC_ENV}
    out = write_json("train", {"machine": machine(), "torch": torch.__version__, "device": where, "batch": a.batch,
                               "unroll": a.unroll, "env": env, "compile_seconds": compile_s, "rows": rows,
                               "op_floor": floor, "side_by_side": sides})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
