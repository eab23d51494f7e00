"""The default recipe (``pdesurrogate.learn``): sign-paired stencil channels, the least-squares
start from the data, L-BFGS with validation, and ``pdesurrogate train`` without options."""

import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

import datagen
import pdesurrogate as ps
from datagen import Grid

DT = 0.0024


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    common = {"pde": "fisher", "steps": 10, "grid": Grid((32, 32)).to_dict(), "dt": DT}
    for split, n in (("train", 8), ("valid", 3), ("test", 4)):
        (root / "data" / split).mkdir(parents=True)
        datagen.generate(datagen.GenerationConfig(**common, split=split, n_trajectories=n, seed=0),
                         root / "data" / split / "fisher.hdf5")
    return root


def _channels(model):
    c1, c2 = model.vector_field.conv1, model.vector_field.conv2
    return [torch.cat([c1.kernel[c].flatten(), c1.bias_value[c:c + 1], c2.kernel[:, c].flatten()]).detach()
            for c in range(model.vector_field.hidden)]


@pytest.mark.parametrize("hidden", [10, 14])
def test_no_two_stencil_channels_are_equal_and_pairs_carry_opposite_stencils(hidden):
    m = ps.build_surrogate(hidden=hidden, kernel_size=5, init="stencil", spacing=(0.01, 0.01), dt=DT,
                           dtype=torch.float64)
    c1 = m.vector_field.conv1
    for i, j in combinations(range(hidden), 2):
        same_kernel = torch.equal(c1.kernel[i], c1.kernel[j])
        assert not (same_kernel and torch.equal(c1.bias_value[i], c1.bias_value[j])), (i, j)
    for k in range(hidden // 2):  # channel 2k sees +d, channel 2k+1 sees -d
        assert torch.equal(c1.kernel[2 * k], -c1.kernel[2 * k + 1])


def test_training_separates_the_channels(folder):
    m = ps.build_surrogate(hidden=10, kernel_size=5, powers=(2,), substeps=3, init="stencil", dt=DT,
                           spacing=(1 / 32, 1 / 32), dtype=torch.float64)
    ps.learn(m, folder / "data" / "train" / "fisher.hdf5", folder, {"lbfgs": 5, "windows": 4, "check": 5}, log=None)
    chans = _channels(m)
    for i, j in combinations(range(10), 2):
        assert float((chans[i] - chans[j]).abs().max()) > 1e-8, (i, j)
    # and every channel's K2 weights moved away from zero: all ten take part
    assert all(float(c.abs()[-25:].max()) > 0 for c in chans)


def test_data_start_recovers_a_network_that_made_the_data_to_round_off():
    """Frames made by one Euler step of a network with K2 centre taps: the forward difference is
    its field exactly, so the least-squares start must return its K2 and b2."""
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(0, 2 * np.pi, 25)[:-1]
    u0 = torch.stack([torch.sin(a * x)[:, None] * torch.cos(b * x)[None, :] * c
                      for a, b, c in ((1, 2, 0.8), (2, 1, 0.5), (3, 1, 0.3), (1, 3, 0.9), (2, 2, 0.6))])[:, None]
    u0 = u0.double()
    kw = dict(hidden=10, kernel_size=5, kernel_size2=5, powers=(2,), substeps=1, init="stencil", dt=0.01,
              spacing=(0.25, 0.25), dtype=torch.float64)
    truth = ps.build_surrogate(**kw)
    ps.data_start(truth, torch.stack([u0, u0], 1))  # its shifts, as the start will set them
    with torch.no_grad():
        c2 = truth.vector_field.conv2
        c2.weight[0, :, 2, 2] = torch.randn(10, generator=g, dtype=torch.float64)
        c2.bias.copy_(torch.randn(1, generator=g, dtype=torch.float64))
        u1 = truth(u0)
    model = ps.build_surrogate(**kw)
    resid = ps.data_start(model, torch.stack([u0, u1], 1))
    assert resid["field 0"] < 1e-10
    np.testing.assert_allclose(model.vector_field.conv2.kernel.detach(), c2.kernel.detach(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(model.vector_field.conv2.bias_value.detach(), c2.bias_value.detach(), rtol=1e-8)


def test_the_central_start_with_the_euler_correction_beats_the_forward_difference(folder):
    ds = ps.WindowDataset(folder, unroll=2, dtype=torch.float64)
    w = torch.stack([ds[i] for i in range(len(ds))])
    errs = []
    for frames in (w[:, :2], w):
        m = ps.build_surrogate(hidden=10, kernel_size=5, powers=(2,), substeps=3, init="stencil", dt=ds.dt,
                               spacing=ds.spacing, dtype=torch.float64)
        ps.data_start(m, frames)
        errs.append(ps.rollout_error(m, folder / "data" / "test" / "fisher.hdf5", 10))
    # 1.8x here, where the 32 x 32 grid's own error weighs in; 30x on the paper's 100 x 100 grid
    assert errs[1] < errs[0] / 1.5, errs


def test_the_default_recipe_beats_the_finite_difference_network_and_its_start(folder):
    test = folder / "data" / "test" / "fisher.hdf5"
    model, hist = ps.train(folder, {"lbfgs": 40, "windows": 16, "check": 10}, log=None)
    ds = ps.WindowDataset(folder)
    fd = ps.exact_surrogate(ds.pde, ds.grid, ds.dt, substeps=3, accuracy=2, powers=(2,), truncate=False,
                            dtype=torch.float64)
    mine, theirs = ps.rollout_error(model, test, 10), ps.rollout_error(fd, test, 10)
    assert mine < theirs / 3, (mine, theirs)
    start = float(hist.valid[0])
    assert hist.attrs["best_valid"] < start and list(hist.phase.values[:2]) == ["start", "L-BFGS"]
    # the model holds the best validated state
    assert ps.rollout_error(model, folder / "data" / "valid" / "fisher.hdf5", 10) == pytest.approx(
        hist.attrs["best_valid"], rel=1e-12)


def test_progress_lines_for_lbfgs_and_levenberg_marquardt_without_a_terminal(folder):
    lines = []
    ps.train(folder, {"lbfgs": 4, "windows": 4, "check": 2, "lm": 2, "lm_windows": 2}, log=lines.append)
    assert any(line.startswith("L-BFGS 2/4") for line in lines) and any(line.startswith("L-BFGS 4/4") for line in lines)
    assert any(line.startswith("Levenberg-Marquardt 1/2") for line in lines), lines
    assert any(line.startswith("Levenberg-Marquardt 2/2") for line in lines), lines
    assert all("elapsed" in line and "left" in line for line in lines if line.startswith(("L-BFGS", "Levenberg")))


def test_the_default_recipe_is_reproducible(folder):
    a, _ = ps.train(folder, {"lbfgs": 10, "windows": 8, "check": 5}, log=None)
    b, _ = ps.train(folder, {"lbfgs": 10, "windows": 8, "check": 5}, log=None)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


@pytest.mark.parametrize("opts, match", [({"margin": 1.0}, "margin=1.0"), ({"lbfgs": -1}, "lbfgs=-1"),
                                         ({"windows": 0}, "windows=0"), ({"loss": "l1"}, "loss='l1'"),
                                         ({"seed": True}, "seed=True"), ({"speed": 1}, "unknown recipe option"),
                                         ({"margin": float("nan")}, "margin=nan")])
def test_recipe_options_are_checked(opts, match):
    with pytest.raises(ps.SurrogateError, match=match):
        ps.Recipe.from_dict(opts)


def _cli(*args):
    exe = Path(sys.executable).with_name("pdesurrogate")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)


def _one_line(p, match):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], p.stderr


def test_cli_trains_by_the_default_recipe_and_compares_with_the_fd_network(folder, tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text("[recipe]\nlbfgs = 20\nwindows = 8\n")
    p = _cli("train", folder, "--out", tmp_path / "run", "--config", cfg, "--steps", "10")
    assert p.returncode == 0, p.stderr
    assert "recipe default" in p.stdout and "L-BFGS 20/20" in p.stdout
    assert "finite-difference network of the same class" in p.stdout and "x lower" in p.stdout
    assert "learned: u_t = " in p.stdout and "data:    u_t = 0.01*(u_xx + u_yy) + u - u^2" in p.stdout
    assert "persistence" in p.stdout and "FD network" in p.stdout and "rel_l2 = ||pred - ref|| / ||ref||" in p.stdout
    row = p.stdout.split("\n10 ")[-1].split()  # the split table's row at step 10
    total, bound, witness = float(row[0]), float(row[1]), float(row[3])  # total, approximation_bound, ..., witness_error
    beats = "better member of the class than any construction" in p.stdout
    assert beats == (total < witness), p.stdout
    assert bound <= min(total, witness)  # the best member per trajectory, then the mean
    q = _cli("identify", tmp_path / "run", folder)
    assert q.returncode == 0 and q.stdout.startswith("learned: u_t = "), q.stderr
    m = ps.load(tmp_path / "run" / "model.pt", dtype=torch.float64)
    assert m.info["trained"]["recipe"] == "default"
    _one_line(_cli("train", folder, "--out", tmp_path / "r2", "--recipe", "default", "--epochs", "2"),
              "--epochs configures the adam recipe")
    _one_line(_cli("train", folder, "--out", tmp_path / "r2", "--recipe", "adam", "--config", cfg),
              "[recipe] configures the default recipe")
    cfg.write_text("[recipe]\nmargin = 0.5\n")
    _one_line(_cli("train", folder, "--out", tmp_path / "r2", "--config", cfg), "margin=0.5")
    assert not (tmp_path / "r2").exists()


def _strip(src, dst):
    """A copy of dataset folder ``src`` whose files hold The Well's layout only (no provenance,
    no datagen attributes): what another solver would write."""
    import shutil

    import h5py

    for f in sorted(Path(src).glob("data/*/*.hdf5")):
        out = Path(dst) / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out)
        with h5py.File(out, "r+") as h:
            for key in [k for k in h.attrs if k == "provenance" or k.startswith("datagen")]:
                del h.attrs[key]
    return Path(dst)


def test_plain_well_files_train_to_the_same_weights_as_with_provenance(folder, tmp_path):
    plain = _strip(folder, tmp_path / "plain")
    ds = ps.WindowDataset(plain)
    assert ds.pde is None and ds.provenance is None
    assert ds.dt == DT and ds.spacing == (1 / 32, 1 / 32) and ds.boundary == "periodic"
    opts = {"lbfgs": 10, "windows": 8, "check": 5}
    a, ha = ps.train(folder, opts, log=None)
    b, hb = ps.train(plain, opts, log=None)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n
    # evaluation works against the stored frames, and says so beyond them
    test = plain / "data" / "test" / "fisher.hdf5"
    assert ps.rollout_error(b, test, 10) == ps.rollout_error(a, folder / "data" / "test" / "fisher.hdf5", 10)
    with pytest.raises(ps.SurrogateError, match="no provenance to extend it"):
        ps.rollout_error(b, test, 11)
    p = _cli("train", plain, "--out", tmp_path / "run", "--steps", "10", "--config", _toml(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "relative L2 error" in p.stdout and "learned: u_t" in p.stdout and "\ndata:    u_t" not in p.stdout


def _toml(tmp_path):
    cfg = tmp_path / "quick.toml"
    cfg.write_text("[recipe]\nlbfgs = 5\nwindows = 4\n")
    return cfg


def test_a_well_file_with_a_boundary_no_surrogate_pads_is_refused_in_one_line(folder, tmp_path):
    import h5py

    plain = _strip(folder, tmp_path / "plain")
    f = plain / "data" / "train" / "fisher.hdf5"
    with h5py.File(f, "r+") as h:
        for g in h["boundary_conditions"].values():
            g.attrs["bc_type"] = "OPEN"
    with pytest.raises(ps.SurrogateError, match="boundary 'open'"):
        ps.WindowDataset(f)
    _one_line(_cli("train", plain, "--out", tmp_path / "r"), "boundary 'open'")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_load_keeps_the_checkpoints_precision_unless_asked(dtype, tmp_path):
    m = ps.build_surrogate(hidden=4, kernel_size=3, init="stencil", dt=DT, dtype=dtype)
    with torch.no_grad():
        m.vector_field.conv2.weight.normal_(generator=torch.Generator().manual_seed(0))
    back = ps.load(ps.save(m, tmp_path / "m.pt"))
    assert next(back.parameters()).dtype == dtype
    u = torch.rand(2, 1, 8, 8, dtype=dtype)
    assert torch.equal(back(u), m(u))
    assert next(ps.load(tmp_path / "m.pt", dtype=torch.float32).parameters()).dtype == torch.float32


def test_a_blown_up_validation_rollout_is_reported_and_the_start_kept(folder, monkeypatch):
    import pdesurrogate.polish as training  # the L-BFGS polish lives here

    start, _ = ps.train(folder, {"lbfgs": 0}, log=None)
    monkeypatch.setattr(training, "_valid_error", lambda *a, **k: float("nan"))  # every check "blows up"
    lines = []
    model, hist = ps.train(folder, {"lbfgs": 10, "windows": 4, "check": 5}, log=lines.append)
    assert sum("blew up" in line for line in lines) == 1 and "L-BFGS iteration 5" in lines[-1], lines
    assert hist.attrs["blew_up"] == "L-BFGS iteration 5"
    for (n, x), (_, y) in zip(model.state_dict().items(), start.state_dict().items()):
        assert torch.equal(x, y), n  # the best validated state is the start


def test_the_anchor_holds_how_the_model_steps_constant_states(folder):
    test = folder / "data" / "test" / "fisher.hdf5"
    opts = {"start": "identify", "precondition": True, "lbfgs": 40, "windows": 8, "check": 10}
    free, _ = ps.train(folder, {**opts, "anchor": 0.0}, log=None)
    held, hist = ps.train(folder, {**opts, "anchor": 1.0}, log=None)
    g_free, g_held = ps.constant_state_growth(free, test), ps.constant_state_growth(held, test)
    worst_free, worst_held = max(map(abs, g_free.values())), max(map(abs, g_held.values()))
    assert worst_held < worst_free / 10 and worst_held < 0.05, (g_free, g_held)
    assert list(hist.phase.values[:2]) == ["start", "L-BFGS"]


def test_a_step_the_models_substeps_cannot_take_stably_gets_more_substeps(tmp_path):
    dt = 0.03  # 64 x 64, a = 0.01: Euler needs h <= dx^2 / (4 a) = 0.0061 per substep, 3 substeps give 0.01
    for split, n in (("train", 4), ("valid", 2)):
        (tmp_path / "data" / split).mkdir(parents=True)
        datagen.generate(datagen.GenerationConfig(pde="fisher", steps=12, grid=Grid((64, 64)).to_dict(), dt=dt,
                                                  initial={"name": "sincos", "k_min": 1, "k_max": 2},
                                                  split=split, n_trajectories=n, seed=1),
                         tmp_path / "data" / split / "fisher.hdf5")
    lines = []
    model, _ = ps.train(tmp_path, {"lbfgs": 0, "start": "identify"}, log=lines.append)
    assert model.substeps >= 4 and model.config.substeps == model.substeps
    assert any(f"taking {model.substeps} substeps" in line for line in lines), lines
    assert ps.rollout_error(model, tmp_path / "data" / "valid" / "fisher.hdf5", 12) < 0.05
    kept, _ = ps.train(tmp_path, {"lbfgs": 0, "start": "identify", "adapt_substeps": False}, log=None)
    assert kept.substeps == 3


def test_an_identified_equation_that_explains_little_falls_back_to_least_squares(tmp_path):
    for split, n in (("train", 3), ("valid", 1)):  # too few, too short, too coarse to read a PDE from
        (tmp_path / "data" / split).mkdir(parents=True)
        datagen.generate(datagen.GenerationConfig(pde="fisher", steps=6, grid=Grid((24, 24)).to_dict(), split=split,
                                                  n_trajectories=n, seed=0), tmp_path / "data" / split / "fisher.hdf5")
    lines = []
    model, hist = ps.train(tmp_path, {"lbfgs": 2, "check": 1}, log=lines.append)
    assert any("starting by least squares" in line for line in lines), lines
    assert np.isfinite(hist.attrs["best_valid"])
