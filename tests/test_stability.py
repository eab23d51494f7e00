"""Settings that cannot work are said before stepping; blow-ups are counted, never averaged."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import datagen
import pdesurrogate as ps
from datagen import Grid, catalogue
from pdesurrogate.stability import step_stability

G32 = Grid((32, 32))
DT32 = 0.24 * G32.dx ** 2 / 0.01


def test_euler_limit_of_the_fisher_network_matches_the_hand_computation():
    """Euler on a_x + a_y five-point diffusion is stable for h <= 2 / (8 a / dx^2 + r) at u = 1
    (f' = -1 there): at dt = 0.96 dx^2 / a one substep is not, and the check asks for four."""
    dt = 0.96 * G32.dx ** 2 / 0.01
    net = ps.exact_surrogate(catalogue.fisher(), G32, dt, substeps=1, dtype=torch.float64)
    st = step_stability(net, [[-1.0], [0.0], [1.0]], G32.shape)
    lam = -8 * 0.01 / G32.dx ** 2 - 1.0
    assert not st.stable and st.amplification == pytest.approx(abs(1 + dt * lam), rel=1e-6)
    need = int(np.ceil(dt * abs(lam) / 2))
    assert st.needed == need == 4
    ok = ps.exact_surrogate(catalogue.fisher(), G32, dt, substeps=need, dtype=torch.float64)
    assert step_stability(ok, [[-1.0], [0.0], [1.0]], G32.shape).stable
    # Fisher's own growth at negative states is allowed, not flagged
    small = ps.exact_surrogate(catalogue.fisher(), G32, DT32, substeps=3, dtype=torch.float64)
    st = step_stability(small, [[-1.0]], G32.shape)
    assert st.stable and st.allowed > 1.0


@pytest.fixture(scope="module")
def maze(tmp_path_factory):
    cfg = datagen.GenerationConfig(pde="gray_scott", scenario="maze", steps=12, n_trajectories=2, split="test",
                                   seed=0)
    return datagen.generate(cfg, tmp_path_factory.mktemp("maze") / "maze.h5")


def test_gray_scott_maze_with_three_substeps_warns_before_stepping_and_counts_blow_ups(maze):
    prov = datagen.read_provenance(maze)
    spec, grid = datagen.PDE.from_dict(prov["pde"]), datagen.Grid.from_dict(prov["config"]["grid"])
    net = ps.exact_surrogate(spec, grid, float(prov["config"]["dt"]), substeps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = ps.evaluate(net, maze, steps=12)
    msgs = [str(w.message) for w in caught if issubclass(w.category, ps.StabilityWarning)]
    assert len(msgs) == 1 and "cannot step dt=20 stably" in msgs[0] and "substeps would be stable" in msgs[0]
    assert rep.attrs["step_stable"] == 0 and rep.attrs["stable_substeps"] > 3
    assert rep.attrs["non_finite_trajectories"] == 2 and rep.attrs["first_non_finite_step"] >= 1
    table = ps.summarize(rep, [1, 12], metrics=["rel_l2"])
    assert int(table.loc[("rel_l2", 12), "non_finite"]) == 2  # counted, never averaged into a number
    # with the substeps the check names, it runs and stays finite
    fixed = ps.exact_surrogate(spec, grid, float(prov["config"]["dt"]), substeps=rep.attrs["stable_substeps"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.StabilityWarning)
        ok = ps.evaluate(fixed, maze, steps=12)
    assert ok.attrs["non_finite_trajectories"] == 0


def test_split_marks_an_unstable_witness(tmp_path):
    dt = 0.96 * G32.dx ** 2 / 0.01
    f = datagen.generate(datagen.GenerationConfig(pde="fisher", split="test", seed=0, n_trajectories=2, steps=5,
                                                  grid=G32.to_dict(), dt=dt), tmp_path / "f.h5")
    model = ps.build_surrogate(hidden=10, kernel_size=5, powers=(2,), substeps=1, dt=dt, spacing=G32.spacing,
                               init="stencil")
    ckpt = ps.save(model, tmp_path / "m.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sp = ps.error_split(model, f, steps=5, lipschitz=False)
    assert sp.attrs["witness_stable"] == 0
    assert any("unstable at the data's dt" in str(w.message) for w in caught)
    assert json.loads(sp.attrs["members"]) == ["model"]
    assert "unstable" in ps.split_verdict(sp)
    exe = Path(sys.executable).with_name("pdesurrogate")
    p = subprocess.run([str(exe), "split", str(ckpt), str(f), "--steps", "5", "--horizons", "5", "--no-lipschitz",
                        "--no-bound", "-q"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "UNSTABLE at the data's dt" in p.stdout
    assert "pdesurrogate: warning:" in p.stderr and "Traceback" not in p.stderr and "/" not in p.stderr.split(
        "warning:")[1].split("\n")[0].replace("dt=", "").replace("u_n = u_0", "")
