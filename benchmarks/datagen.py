"""Benchmark of datagen's solvers on the paper's Fisher setting, with py-pde side by side.

For 100^2 and 256^2 periodic grids, 32 trajectories of the sin*cos family, 40 saved steps of
dt = 0.24 dx^2 / a (stepped without storing frames; the dataset timings below include storage):
wall time (median), cell-steps per second and relative L2 error at step 40
against a converged reference (spectral ETDRK4 with 2 substeps per saved step), for each
integrator and accuracy. py-pde (a benchmark-only dependency) solves the identical forward-Euler
five-point scheme with a reused compiled stepper. Then a whole 256-trajectory 100^2 dataset is
written to HDF5 by each tool, each in a fresh process so that compile time counts.

    python benchmarks/datagen.py [--quick] [--end-to-end] [--exponax]

``--end-to-end`` runs only the pipeline comparison: ``datagen generate`` (forward Euler x3,
FD2, float64 solve, float32 HDF5) against a plain numpy script solving all trajectories at
once with ``np.roll`` and writing with h5py, same initial conditions, data compared value by
value, and the fraction of the memory-bandwidth bound each reaches. ``--exponax`` runs only
the spectral reference (ETDRK4, one substep, float64) against exponax's ``FisherKPP(order=4)``
under ``jit(vmap(rollout))`` on the same 256 initial states, both scored against a converged
reference (needs the ``bench`` extra: jax and exponax).

Prints a table and writes benchmarks/results/datagen.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

# This script shares its name with the package it measures: import the package, not itself.
_HERE = str(Path(__file__).resolve().parent)
sys.path = [p for p in sys.path if p not in ("", _HERE)]
from datagen import ETDRK4, Grid, ScipyIVP, SemiDiscrete, catalogue
from datagen.generate import trajectory_rng
from datagen.initial import SinCos
from datagen.integrators import make_integrator

sys.path.append(_HERE)
from _common import machine, median_time, table, write_json  # noqa: E402

A, STEPS, BATCH = 0.01, 40, 32


def initial(n: int, batch: int) -> np.ndarray:
    g = Grid((n, n))
    return np.stack([SinCos(5, 8).sample(g, 1, trajectory_rng(0, "bench", i)) for i in range(batch)])


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


CASES = [
    # label, integrator, method, accuracy, substeps, backend
    ("euler fd2 x1 (py-pde's scheme)", "euler", "fd", 2, 1, "numpy"),
    ("euler fd2 x1 (py-pde's scheme)", "euler", "fd", 2, 1, "numba"),
    ("euler fd2 x3 (the paper's network)", "euler", "fd", 2, 3, "numpy"),
    ("euler fd2 x3 (the paper's network)", "euler", "fd", 2, 3, "numba"),
    ("rk4 fd2", "rk4", "fd", 2, "auto", "numpy"),
    ("rk4 fd4", "rk4", "fd", 4, "auto", "numpy"),
    ("rk4 fd4", "rk4", "fd", 4, "auto", "numba"),
    ("rk4 fd6", "rk4", "fd", 6, "auto", "numpy"),
    ("etdrk4 fd2", "etdrk4", "fd", 2, 1, "numpy"),
    ("etdrk4 fd4", "etdrk4", "fd", 4, 1, "numpy"),
    ("rk4 spectral", "rk4", "spectral", 0, "auto", "numpy"),
    ("etdrk4 spectral x1 (default reference)", "etdrk4", "spectral", 0, 1, "numpy"),
    ("bdf fd4 (rtol 1e-8)", "bdf", "fd", 4, 1, "numpy"),
]


def py_pde_stepper(n: int, dt: float):
    import pde

    grid = pde.CartesianGrid([[0, 1], [0, 1]], [n, n], periodic=True)
    eq = pde.PDE({"u": "a*laplace(u) + u - u**2"}, consts={"a": A})
    state = pde.ScalarField(grid, np.zeros((n, n)))
    t = time.perf_counter()
    stepper = pde.solvers.EulerSolver(eq, backend="numba", adaptive=False).make_stepper(state, dt=dt)
    stepper(state, 0.0, dt)  # first call finishes the compile
    return pde, grid, stepper, time.perf_counter() - t


def bench_grid(n: int, quick: bool) -> list[dict]:
    g = Grid((n, n))
    dt = 0.24 * g.dx ** 2 / A
    u0 = initial(n, BATCH)
    ref = ETDRK4(SemiDiscrete(catalogue.fisher(A), g, method="spectral"), dt, 2).rollout(u0, STEPS)[:, -1]
    rows = []
    euler_ref = None
    for label, integ, method, acc, sub, backend in CASES:
        if quick and backend == "numba" and "x3" in label:
            continue
        batch = 2 if integ == "bdf" else BATCH
        if integ == "bdf" and n > 100:
            continue
        sd = SemiDiscrete(catalogue.fisher(A), g, accuracy=acc or 2, method=method, backend=backend)
        stepper = (ScipyIVP(sd, dt, "BDF", rtol=1e-8, atol=1e-10) if integ == "bdf"
                   else make_integrator(integ, sd, dt, sub))
        x = u0[:batch]
        out = {}

        def run():
            if integ == "bdf":
                out["u"] = stepper.rollout(x, STEPS)[:, -1]
                return
            u = x  # step without storing frames, as py-pde's stepper does below
            for _ in range(STEPS):
                u = stepper.step(u)
            out["u"] = u

        t = median_time(run, repeats=1 if integ == "bdf" else 3)
        row = {"grid": n, "case": label, "backend": backend, "substeps": getattr(stepper, "substeps", None),
               "trajectories": batch, "seconds": t, "cell_steps_per_s": batch * n * n * STEPS / t,
               "rel_l2_step40": rel(out["u"], ref[:batch])}
        if label.startswith("euler fd2 x1") and backend == "numpy":
            euler_ref = out["u"]
        rows.append(row)
        print(f"  {n}^2 {label:<42} {backend:<6} {t:8.3f} s  {row['cell_steps_per_s']:.3g} cell-steps/s  "
              f"err {row['rel_l2_step40']:.2e}", flush=True)
    try:
        pde, pgrid, stepper, compile_s = py_pde_stepper(n, dt)
    except ImportError:
        print("  py-pde not installed: pip install -e '.[bench]'")
        return rows
    res = np.empty_like(u0[:, 0])

    def run_pp():
        for i in range(BATCH):
            st = pde.ScalarField(pgrid, u0[i, 0].copy())
            stepper(st, 0.0, STEPS * dt)
            res[i] = st.data

    t = median_time(run_pp, repeats=3)
    rows.append({"grid": n, "case": "py-pde euler (reused stepper)", "backend": "py-pde numba", "substeps": 1,
                 "trajectories": BATCH, "seconds": t, "cell_steps_per_s": BATCH * n * n * STEPS / t,
                 "rel_l2_step40": rel(res, ref[:, 0]), "compile_seconds": compile_s,
                 "max_diff_vs_datagen_euler": float(np.abs(res - euler_ref[:, 0]).max())})
    print(f"  {n}^2 py-pde euler (reused stepper) {t:8.3f} s, compile {compile_s:.1f} s, "
          f"|py-pde - datagen| = {rows[-1]['max_diff_vs_datagen_euler']:.1e}", flush=True)
    return rows


DATASET_OURS = """
import time, sys
t = time.perf_counter()
from datagen import GenerationConfig, generate
cfg = GenerationConfig(n_trajectories={n}, batch_size=32, integrator="{integ}", substeps={sub!r}, method="{method}",
                       accuracy=2 if "{method}" == "fd" else None, backend="{backend}", split="bench")
generate(cfg, sys.argv[1], overwrite=True, workers={workers}, sync={sync})
print(time.perf_counter() - t)
"""

DATASET_PYPDE = """
import time, sys
t = time.perf_counter()
import numpy as np, h5py, pde
from datagen import Grid
from datagen.generate import trajectory_rng
from datagen.initial import SinCos
n, steps, N = 100, 40, {n}
dt = 0.24 * 0.01 ** 2 / 0.01
grid = pde.CartesianGrid([[0, 1], [0, 1]], [n, n], periodic=True)
eq = pde.PDE({{"u": "a*laplace(u) + u - u**2"}}, consts={{"a": 0.01}})
state = pde.ScalarField(grid, np.zeros((n, n)))
stepper = pde.solvers.EulerSolver(eq, backend="numba", adaptive=False).make_stepper(state, dt=dt)
g = Grid((n, n))
with h5py.File(sys.argv[1], "w") as f:
    d = f.create_dataset("u", (N, steps + 1, n, n), np.float32, chunks=(1, 1, n, n))
    for i in range(N):
        st = pde.ScalarField(grid, SinCos(5, 8).sample(g, 1, trajectory_rng(0, "bench", i))[0])
        traj = np.empty((steps + 1, n, n), np.float32)
        traj[0] = st.data
        for k in range(steps):
            stepper(st, k * dt, (k + 1) * dt)
            traj[k + 1] = st.data
        d[i] = traj
print(time.perf_counter() - t)
"""


def bench_dataset(n_traj: int, tmp: str) -> list[dict]:
    rows = []
    runs = [("datagen euler fd2 (numba)", DATASET_OURS.format(n=n_traj, integ="euler", sub=1, method="fd", backend="numba",
                                                                 workers=1, sync=True)),
            ("datagen euler fd2 (numpy)", DATASET_OURS.format(n=n_traj, integ="euler", sub=1, method="fd", backend="numpy",
                                                              workers=1, sync=True)),
            ("datagen default reference (spectral etdrk4)",
             DATASET_OURS.format(n=n_traj, integ="reference", sub=1, method="spectral", backend="numpy", workers=1,
                                 sync=True)),
            ("py-pde euler (compile + reused stepper)", DATASET_PYPDE.format(n=n_traj))]
    for label, code in runs:
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), f"{tmp}/{len(rows)}.h5"],
                           capture_output=True, text=True, cwd=tmp)
        if p.returncode != 0:
            print(f"  {label}: failed: {p.stderr.strip().splitlines()[-1]}")
            continue
        t = float(p.stdout.strip().splitlines()[-1])
        rows.append({"case": label, "trajectories": n_traj, "seconds": t})
        print(f"  dataset of {n_traj} x 41 frames at 100^2, {label:<45} {t:7.2f} s", flush=True)
    return rows


PLAIN_SCRIPT = """
import time, sys
t = time.perf_counter()
import numpy as np, h5py
from datagen import Grid
from datagen.generate import trajectory_rng
from datagen.initial import SinCos
n, steps, N, sub = 100, 40, {n}, 3
a = 0.01
dx = 1.0 / n
dt = 0.24 * dx * dx / a
h = dt / sub
g = Grid((n, n))
u = np.stack([SinCos(5, 8).sample(g, 1, trajectory_rng(0, "bench", i))[0] for i in range(N)])
out = np.empty((N, steps + 1, n, n), np.float32)
out[:, 0] = u
for k in range(steps):
    for _ in range(sub):
        lap = (np.roll(u, 1, -2) + np.roll(u, -1, -2) + np.roll(u, 1, -1) + np.roll(u, -1, -1) - 4 * u) / (dx * dx)
        u = u + h * (a * lap + u - u * u)
    out[:, k + 1] = u
with h5py.File(sys.argv[1], "w") as f:
    f.create_dataset("u", data=out, chunks=(1, 1, n, n))
print(time.perf_counter() - t)
"""


def bandwidth() -> float:
    """Bytes per second of a large float64 copy (read + write), median of 5."""
    a, b = np.ones(2 ** 27 // 8 * 4), np.empty(2 ** 27 // 8 * 4)
    t = median_time(lambda: np.copyto(b, a), repeats=5)
    return 2 * a.nbytes / t


def bench_end_to_end(n_traj: int, tmp: str) -> list[dict]:
    """datagen generate against the plain script; fraction of the bandwidth bound."""
    import h5py

    bw = bandwidth()
    cells, substeps, steps = n_traj * 100 * 100, 3, 40
    # the least traffic: each substep reads and writes the float64 state once; frames written once as float32
    bound = (cells * steps * substeps * 16 + cells * (steps + 1) * 4) / bw
    runs = [("plain numpy script (all at once, h5py)", PLAIN_SCRIPT.format(n=n_traj))]
    # sync=False skips only the fsync before the rename, which the script does not do either
    for backend, workers, sync in (("numpy", 1, True), ("numba", 1, True), ("numba", 1, False), ("numpy", 2, True)):
        runs.append((f"datagen generate ({backend}, {workers} worker{'s' * (workers > 1)}{'' if sync else ', no sync'})",
                     DATASET_OURS.format(n=n_traj, integ="euler", sub=substeps, method="fd", backend=backend,
                                         workers=workers, sync=sync)))
    # peak resident memory of the process (VmHWM: ru_maxrss would carry this benchmark's own peak
    # over the exec) and of its largest child (writer, workers), in kB
    rss = ("\nimport resource, re\nhwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
           "print(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    rows: list[dict] = []
    ref = None
    for k, (label, code) in enumerate(runs):
        path = f"{tmp}/e2e{k}.h5"
        times, peaks = [], []
        for _ in range(3):
            # each run writes a new file: replacing the last run's 420 MB costs 0.1-0.25 s on ext4
            # (freeing its blocks, and a forced write-back on rename over it), which is not generation
            Path(path).unlink(missing_ok=True)
            p = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + rss, path], capture_output=True,
                               text=True, cwd=tmp)
            if p.returncode != 0:
                print(f"  {label}: failed: {p.stderr.strip().splitlines()[-1]}")
                break
            *_, t_line, rss_line = p.stdout.strip().splitlines()
            times.append(float(t_line))
            peaks.append(max(int(v) for v in rss_line.split()) / 1024)
        if not times:
            continue
        with h5py.File(path, "r") as f:
            data = f["u"][...] if "u" in f else f["t0_fields/u"][...]
        if ref is None:
            ref = data
        t = float(np.median(times))
        rows.append({"case": label, "trajectories": n_traj, "seconds": t, "speed_vs_script": None,
                     "peak_mib": max(peaks),
                     "bandwidth_fraction": bound / t, "identical_bytes": bool(np.array_equal(data, ref)),
                     "max_abs_diff_vs_script": float(np.abs(data.astype(np.float64) - ref).max())})
        print(f"  {label:<42} {t:6.2f} s  {100 * bound / t:5.1f} % of the bandwidth bound  "
              f"max |diff| vs script {rows[-1]['max_abs_diff_vs_script']:.1e}  peak {max(peaks):.0f} MiB", flush=True)
    for r in rows:
        r["speed_vs_script"] = rows[0]["seconds"] / r["seconds"]
    # flat in the number of trajectories: the same run with four times as many
    big = DATASET_OURS.format(n=4 * n_traj, integ="euler", sub=substeps, method="fd", backend="numpy", workers=1,
                              sync=True)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(big) + rss, f"{tmp}/big.h5"], capture_output=True,
                       text=True, cwd=tmp)
    if p.returncode == 0:
        *_, t_line, rss_line = p.stdout.strip().splitlines()
        peak = max(int(v) for v in rss_line.split()) / 1024
        rows.append({"case": f"datagen generate (numpy, 1 worker), {4 * n_traj} trajectories", "trajectories":
                     4 * n_traj, "seconds": float(t_line), "peak_mib": peak})
        print(f"  {rows[-1]['case']:<42} {float(t_line):6.2f} s  peak {peak:.0f} MiB", flush=True)
    print(f"  (bandwidth {bw / 1e9:.1f} GB/s for a large copy; bound {bound:.3f} s)")
    return rows


def bench_exponax(n_traj: int = 256) -> list[dict]:
    """datagen's spectral ETDRK4 against exponax's, same states, same error."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import exponax as ex
    import jax.numpy as jnp

    n, dt = 100, 0.24 * (1 / 100) ** 2 / A
    u0 = initial(n, n_traj)
    sd = SemiDiscrete(catalogue.fisher(a=A), Grid((n, n)), method="spectral")
    ref = ETDRK4(sd, dt, 4).rollout(u0, STEPS)[:, -1]

    def errors(last):
        e = np.linalg.norm((last - ref).reshape(n_traj, -1), axis=1) / np.linalg.norm(ref.reshape(n_traj, -1), axis=1)
        return float(np.median(e)), float(e.max())

    rows = []
    st = ETDRK4(sd, dt, 1)
    for batch in (32, n_traj):
        def ours():
            return np.concatenate([st.rollout(u0[k:k + batch], STEPS)[:, -1] for k in range(0, n_traj, batch)])
        t = median_time(ours, repeats=3)
        rows.append({"case": f"datagen ETDRK4 x1, batches of {batch}", "seconds": t,
                     **dict(zip(("median_error", "max_error"), errors(ours())))})
    stepper = ex.stepper.reaction.FisherKPP(2, 1.0, n, dt, diffusivity=A, reactivity=1.0, order=4,
                                            dealiasing_fraction=1.0)  # datagen does not dealias either
    roll = jax.jit(jax.vmap(ex.rollout(stepper, STEPS, include_init=False)))
    for batch in (32, n_traj):
        chunks = [jnp.asarray(u0[k:k + batch]) for k in range(0, n_traj, batch)]
        t0 = time.perf_counter()
        roll(chunks[0]).block_until_ready()
        compile_s = time.perf_counter() - t0

        def theirs():
            return np.concatenate([np.asarray(roll(c).block_until_ready())[:, -1] for c in chunks])
        t = median_time(theirs, repeats=3)
        rows.append({"case": f"exponax FisherKPP order 4, jit(vmap), batches of {batch}", "seconds": t,
                     "compile_seconds": compile_s, **dict(zip(("median_error", "max_error"), errors(theirs())))})
    for r in rows:
        print(f"  {r['case']:<52} {r['seconds']:6.2f} s  error median {r['median_error']:.2e} max "
              f"{r['max_error']:.2e}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100^2 only, fewer cases, 64-trajectory dataset")
    ap.add_argument("--end-to-end", action="store_true", help="only the pipeline against the plain numpy script")
    ap.add_argument("--exponax", action="store_true", help="only the spectral reference against exponax (needs jax)")
    args = ap.parse_args()
    import tempfile

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, python {info['python']}, numpy {info['numpy']}")
    if args.exponax:
        rows = bench_exponax()
        print()
        print(table(rows, [("case", "256 paper-family states, 40 steps, 100^2, float64", "s"),
                           ("seconds", "wall s (median of 3)", ".2f"), ("median_error", "median rel. err", ".2e"),
                           ("max_error", "max rel. err", ".2e")]))
        print(f"\nwrote {write_json('datagen_exponax', {'machine': info, 'rows': rows})}")
        return
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            e2e = bench_end_to_end(256, tmp)
        print()
        print(table(e2e, [("case", "256 Fisher trajectories, Euler x3 FD2, 100^2, 40 steps", "s"),
                          ("seconds", "wall s (median of 3)", ".2f"), ("speed_vs_script", "speed vs script", ".2f"),
                          ("bandwidth_fraction", "of bandwidth bound", ".1%"),
                          ("max_abs_diff_vs_script", "max |diff|", ".1e"), ("peak_mib", "peak MiB", ".0f")]))
        print(f"\nwrote {write_json('datagen_end_to_end', {'machine': info, 'rows': e2e})}")
        return
    rows = []
    for n in ([100] if args.quick else [100, 256]):
        rows += bench_grid(n, args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        ds = bench_dataset(64 if args.quick else 256, tmp)
    cols = [("grid", "grid", "d"), ("case", "integrator / space", "s"), ("backend", "backend", "s"),
            ("substeps", "substeps", ""), ("seconds", "wall s (median)", ".3f"),
            ("cell_steps_per_s", "cell-steps/s", ".3g"), ("rel_l2_step40", "rel. L2 err @40", ".2e")]
    print()
    print(table(rows, cols))
    print()
    print(table(ds, [("case", "whole dataset written to HDF5", "s"), ("trajectories", "trajectories", "d"),
                     ("seconds", "wall s (incl. compile)", ".2f")]))
    path = write_json("datagen", {"machine": info, "solvers": rows, "dataset": ds,
                                  "setting": {"a": A, "steps": STEPS, "batch": BATCH, "dt": "0.24 dx^2 / a"}})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
