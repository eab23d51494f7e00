"""Grid-unit kernels, training windows, crops with halos, fit, checkpoints and resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import datagen
import pdesurrogate as ps
import pdesurrogate.training as training
from datagen import Grid, catalogue

PAPER_DT = 0.0024
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    g = Grid((32, 32)).to_dict()
    common = {"pde": "fisher", "steps": 10, "grid": g, "dt": PAPER_DT}
    train = datagen.generate(datagen.GenerationConfig(**common, split="train", n_trajectories=8, seed=0),
                             d / "train.h5")
    valid = datagen.generate(datagen.GenerationConfig(**common, split="valid", n_trajectories=4, seed=0),
                             d / "valid.h5")
    return {"train": train, "valid": valid}


def _paper_model(ds, **kw):
    opts = {"hidden": 10, "kernel_size": 5, "powers": (2,), "substeps": 3, "init": "stencil", "dt": ds.dt,
            "spacing": ds.spacing, "boundary": ds.boundary}
    return ps.build_surrogate(**{**opts, **kw})


def test_stencil_kernels_are_stored_in_grid_units():
    m = ps.build_surrogate(hidden=6, kernel_size=5, init="stencil", spacing=(0.01, 0.01), dt=1e-3)
    conv = m.vector_field.conv1
    assert float(conv.weight.detach().abs().max()) <= 2.0  # the unit-grid Laplacian's centre is -2
    lap = conv.kernel[2, 0].detach().double().numpy()  # channel 2 holds +d^2/dx^2 (sign pairs)
    np.testing.assert_allclose(lap, ps.fd_stencil((2, 0), 5, 2, (0.01, 0.01)), rtol=1e-6)
    assert conv.kernel_scale.dtype == torch.float64
    m.float()
    assert conv.kernel_scale.dtype == torch.float64  # casting the model never rounds the scales


def test_build_surrogate_takes_a_dtype_and_checks_inputs():
    m = ps.build_surrogate(hidden=4, kernel_size=3, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    with pytest.raises(ps.SurrogateError, match="input is float32 and the model float64"):
        m(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ps.SurrogateError, match="2 channel.*1 field"):
        m(torch.zeros(1, 2, 8, 8, dtype=torch.float64))
    e = ps.exact_surrogate(catalogue.fisher(), Grid((8, 8)), 1e-3, dtype=torch.float32)
    assert next(e.parameters()).dtype == torch.float32


def test_exact_network_survives_a_checkpoint(tmp_path):
    g = Grid((16, 16))
    net = ps.exact_surrogate(catalogue.fisher(), g, PAPER_DT, substeps=3, powers=(2,), modified_equation=1,
                             accuracy="max", kernel_size=5, truncate=True)
    u = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    back = ps.load(ps.save(net, tmp_path / "e.pt"), dtype=torch.float64)
    assert torch.equal(net(u), back(u))


def test_window_dataset_reads_windows_and_metadata(data):
    ds = ps.WindowDataset(data["train"], unroll=3, stride=2)
    assert ds.dt == pytest.approx(PAPER_DT) and ds.boundary == "periodic" and ds.spacing == (1 / 32, 1 / 32)
    assert len(ds) == 8 * len(range(0, 11 - 3, 2))
    w = ds[5]  # trajectory 1, start 2 (4 windows per trajectory)
    ref = datagen.open_dataset(data["train"])["u"].values[1, 2:6]
    np.testing.assert_array_equal(w[:, 0].numpy(), ref)
    lazy = ps.WindowDataset(data["train"], unroll=3, stride=2, in_memory=False)
    assert torch.equal(lazy[5], w)
    with pytest.raises(ps.SurrogateError, match="holds 10 steps"):
        ps.WindowDataset(data["train"], unroll=11)


def test_a_cropped_step_equals_the_full_grid_step_on_its_cells(data):
    model = _paper_model(ps.WindowDataset(data["train"], unroll=2), dtype=torch.float64, seed=3, init="random")
    halo = ps.receptive_halo(model, 2)
    assert halo == 2 * 3 * (2 + 2)
    full = ps.WindowDataset(data["train"], unroll=2, dtype=torch.float64)
    crop = ps.WindowDataset(data["train"], unroll=2, dtype=torch.float64, crop=6, halo=halo, seed=4)
    i = 7
    ox, oy = crop.crop_origin(i)
    with torch.no_grad():
        ref = model.rollout(full[i][None, 0], 2)[0]
        with model.unpadded():
            u = crop[i][None, 0]
            for _ in range(2):
                u = model(u)
    rows, cols = (ox + np.arange(6)) % 32, (oy + np.arange(6)) % 32
    expect = ref[2][:, rows][:, :, cols]
    assert u.shape[-2:] == (6, 6)
    torch.testing.assert_close(u[0], expect, rtol=0, atol=1e-12)


def test_training_from_stencils_at_the_physical_spacing_reduces_the_error_tenfold(data):
    train = ps.WindowDataset(data["train"], unroll=5)
    model = _paper_model(train)
    before = float(ps.evaluate(model, data["valid"], steps=5).rel_l2.sel(step=5).mean())
    hist = ps.fit(model, train, data["valid"], epochs=20, curriculum=[1, 3, 5], lr=1e-3, valid_steps=5,
                  progress=False)
    assert np.all(np.isfinite(hist.loss.values))
    after = float(ps.evaluate(model, data["valid"], steps=5).rel_l2.sel(step=5).mean())
    assert after == pytest.approx(hist.attrs["best_valid"], rel=1e-6)  # the best weights are kept
    assert after < before / 10, (before, after)


def _run(data, folder, interrupt_after=None, **kw):
    train = ps.WindowDataset(data["train"], unroll=3, dtype=torch.float64)
    model = _paper_model(train, dtype=torch.float64)
    return model, ps.fit(model, train, data["valid"], epochs=4, batch_size=8, curriculum=[1, 3], noise=1e-3,
                         valid_steps=3, checkpoint=folder, progress=False, **kw)


def test_resume_reaches_the_weights_of_an_uninterrupted_run(data, tmp_path, monkeypatch):
    ref, hist = _run(data, tmp_path / "a")
    real_save, calls = training.save, []

    def save_then_die(model, path, **kw):
        out = real_save(model, path, **kw)
        calls.append(Path(path).name)
        if calls.count("last.pt") == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(training, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path / "b")
    monkeypatch.setattr(training, "save", real_save)
    resumed, hist2 = _run(data, tmp_path / "b", resume=True)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=k)
    np.testing.assert_allclose(hist.loss.values, hist2.loss.values, rtol=1e-12)
    with pytest.raises(ps.SurrogateError, match="other options"):
        _run(data, tmp_path / "b", resume=True, lr=2e-3)


def test_fit_refuses_mismatched_models_and_options(data):
    train = ps.WindowDataset(data["train"], unroll=2)
    with pytest.raises(ps.SurrogateError, match="dt="):
        ps.fit(ps.build_surrogate(dt=1.0), train, progress=False)
    with pytest.raises(ps.SurrogateError, match="unroll=5"):
        ps.fit(_paper_model(train), train, curriculum=[1, 5], progress=False)
    with pytest.raises(ps.SurrogateError, match="halo of 24"):
        ps.fit(_paper_model(train), ps.WindowDataset(data["train"], unroll=2, crop=8, halo=3), progress=False)
    with pytest.raises(ps.SurrogateError, match="unknown loss"):
        ps.fit(_paper_model(train), train, loss="l1", progress=False)
    with pytest.raises(ps.SurrogateError, match=r"lbfgs_check=0 must be an integer >= 1"):
        ps.fit(_paper_model(train), train, lbfgs=5, lbfgs_check=0, progress=False)
    with pytest.raises(ps.SurrogateError, match=r"lbfgs=nan must be an integer >= 0"):
        ps.fit(_paper_model(train), train, lbfgs=float("nan"), progress=False)
    with pytest.raises(ps.SurrogateError, match=r"lbfgs_precondition='yes' must be true or false"):
        ps.fit(_paper_model(train), train, lbfgs=2, lbfgs_precondition="yes", progress=False)


def test_lbfgs_polish_is_kept_only_when_it_helps(data):
    train = ps.WindowDataset(data["train"], unroll=1, dtype=torch.float64)
    model = _paper_model(train, dtype=torch.float64)
    hist = ps.fit(model, train, data["valid"], epochs=2, valid_steps=3, lbfgs=10, lbfgs_windows=16, progress=False)
    assert hist.attrs["lbfgs_loss_after"] <= hist.attrs["lbfgs_loss_before"]
    final = float(ps.evaluate(model, data["valid"], steps=3).rel_l2.sel(step=3).mean())
    assert final <= float(np.nanmin(hist.valid.values)) * (1 + 1e-9)


def test_lbfgs_with_no_finite_validation_error_keeps_the_start(data, monkeypatch):
    import pdesurrogate.polish as tr  # the L-BFGS polish lives here

    train = ps.WindowDataset(data["train"], unroll=1, dtype=torch.float64)
    model = _paper_model(train, dtype=torch.float64)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(tr, "_valid_error", lambda *a, **k: float("nan"))
    hist = ps.fit(model, train, data["valid"], epochs=0, lbfgs=4, lbfgs_check=2, lbfgs_windows=8, valid_steps=2,
                  progress=False)
    assert hist.attrs["lbfgs_kept"] == 0 and json.loads(hist.attrs["lbfgs_valid_curve"]) != []
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    # after Adam epochs with no finite validation error either, L-BFGS's result is not taken
    hist = ps.fit(model, train, data["valid"], epochs=1, lbfgs=2, lbfgs_check=1, lbfgs_windows=8, valid_steps=2,
                  progress=False)
    assert hist.attrs["lbfgs_kept"] == 0


def test_lbfgs_steps_back_from_an_overflowing_trial_step(data, monkeypatch):
    import pdesurrogate.polish as tr  # the L-BFGS polish lives here

    train = ps.WindowDataset(data["train"], unroll=1, dtype=torch.float64)
    model = _paper_model(train, dtype=torch.float64)
    real, far = tr.window_loss, []
    theta0 = [p.detach().clone() for p in model.parameters()]

    def overflowing(m, *a, **k):  # rollouts "overflow" beyond a small distance from the start
        dist = sum(float((p.detach() - q).pow(2).sum()) for p, q in zip(m.parameters(), theta0)) ** 0.5
        far.append(dist > 1e-3)
        out = real(m, *a, **k)
        return out * float("inf") if far[-1] else out

    monkeypatch.setattr(tr, "window_loss", overflowing)
    hist = ps.fit(model, train, epochs=0, lbfgs=5, lbfgs_windows=8, progress=False)
    assert any(far) and all(torch.isfinite(p).all() for p in model.parameters())
    # the line search stepped back into the finite region and made progress there
    assert hist.attrs["lbfgs_kept"] == 1 and hist.attrs["lbfgs_loss_after"] < hist.attrs["lbfgs_loss_before"]
    monkeypatch.setattr(tr, "window_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    with pytest.raises(ps.SurrogateError, match="loss is not finite at the start"):
        ps.fit(model, train, epochs=0, lbfgs=5, lbfgs_windows=8, progress=False)


def test_gauss_newton_scales_match_the_jacobian_and_floor_unseen_parameters():
    torch.manual_seed(0)
    model = ps.build_surrogate(hidden=2, kernel_size=3, powers=(2,), substeps=2, dt=0.1, dtype=torch.float64)
    with torch.no_grad():
        model.vector_field.conv2.weight[:, 1] = 0.0  # channel 1 reaches the output nowhere
    windows = torch.rand(3, 2, 1, 6, 6, dtype=torch.float64)
    params = list(model.parameters())
    out = model(windows[:, 0]).flatten()
    rows = [torch.autograd.grad(o, params, retain_graph=True, allow_unused=True) for o in out]
    exact = [sum(r[k].pow(2) if r[k] is not None else 0.0 for r in rows) for k in range(len(params))]
    from pdesurrogate.polish import _gauss_newton_scales

    est = _gauss_newton_scales(model, windows, params, None, seed=0, probes=2000)
    seen = torch.cat([e.flatten() for e in exact]) > 0
    got = torch.cat([s.flatten() for s in est]).pow(2)
    want = torch.cat([e.flatten() for e in exact])
    assert torch.allclose(got[seen], want[seen], rtol=0.15)  # Hutchinson's estimate, 2000 probes
    floor = float(want[seen].sqrt().median()) * 1e-3
    k1 = model.vector_field.conv1.weight
    unseen = est[[p is k1 for p in params].index(True)][1]
    assert (~seen).sum() >= unseen.numel() and torch.allclose(unseen, torch.full_like(unseen, floor), rtol=0.2)


def test_preconditioned_lbfgs_trains_and_records_it(data):
    train = ps.WindowDataset(data["train"], unroll=5, dtype=torch.float64)
    w = ps.exact_surrogate(catalogue.fisher(), train.grid, train.dt, substeps=3, powers=(2,), dtype=torch.float64)
    model = ps.embed(w, _paper_model(train, dtype=torch.float64))
    start = float(ps.evaluate(model, data["valid"], steps=5).rel_l2.sel(step=5).mean())
    hist = ps.fit(model, train, data["valid"], epochs=0, lbfgs=6, lbfgs_check=3, lbfgs_windows=8, valid_steps=5,
                  loss="relative", lbfgs_precondition=True, progress=False)
    after = float(ps.evaluate(model, data["valid"], steps=5).rel_l2.sel(step=5).mean())
    assert hist.attrs["lbfgs_preconditioned"] == 1 and hist.attrs["lbfgs_kept"] == 1
    # the model holds the kept state (the closure maps the scaled variables back to it)
    assert after == pytest.approx(hist.attrs["lbfgs_valid"], rel=1e-12) and after < 0.5 * start
    assert hist.attrs["lbfgs_loss_after"] < hist.attrs["lbfgs_loss_before"]


def test_cropped_training_runs_and_learns(data):
    probe = _paper_model(ps.WindowDataset(data["train"], unroll=1))
    halo = ps.receptive_halo(probe, 1)
    train = ps.WindowDataset(data["train"], unroll=1, crop=8, halo=halo)
    model = _paper_model(train)
    before = float(ps.evaluate(model, data["valid"], steps=1).rel_l2.mean())
    ps.fit(model, train, epochs=8, progress=False)
    after = float(ps.evaluate(model, data["valid"], steps=1).rel_l2.mean())
    assert after < before / 3, (before, after)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(data, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(f"""
import json, os, sys, torch, torch.distributed as dist
import pdesurrogate as ps
if "WORLD_SIZE" in os.environ:
    dist.init_process_group("gloo")
torch.set_num_threads(1)
train = ps.WindowDataset({str(data['train'])!r}, unroll=2, dtype=torch.float64)
model = ps.build_surrogate(hidden=10, kernel_size=5, powers=(2,), substeps=3, init="stencil", dt=train.dt,
                           spacing=train.spacing, dtype=torch.float64)
h = ps.fit(model, train, epochs=2, batch_size=6, curriculum=[1, 2], noise=1e-3, progress=False)
# Levenberg-Marquardt: the Gauss-Newton system summed across processes
lm = ps.fit(model, train, epochs=0, lm=2, lm_windows=4, progress=False)
if int(os.environ.get("RANK", 0)) == 0:
    json.dump(list(h.loss.values) + [lm.attrs["lm_loss_before"], lm.attrs["lm_loss_after"]], open(sys.argv[1], "w"))
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], check=True, env=env)
    import socket

    with socket.socket() as s:  # a free port: a fixed one can still be held by an earlier run
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(port), str(script), str(tmp_path / "two.json")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    np.testing.assert_allclose(two, one, rtol=1e-6)


def _cli(*args, cwd=None):
    exe = Path(sys.executable).with_name("pdesurrogate")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def _one_line(p, match):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pdesurrogate: error: ") and match in lines[0], p.stderr


def test_cli_train_from_a_toml_file_and_resume(data, tmp_path):
    folder = tmp_path / "d"
    for name, src in (("train", "train"), ("valid", "valid"), ("test", "valid")):
        (folder / "data" / name).mkdir(parents=True)
        (folder / "data" / name / "fisher.hdf5").symlink_to(data[src])
    cfg = tmp_path / "run.toml"
    cfg.write_text('[data]\nunroll = 2\n\n[model]\nhidden = 6\nkernel_size = 3\n\n'
                   '[fit]\nepochs = 2\ncurriculum = [1, 2]\nbatch_size = 16\n')
    p = _cli("train", folder, "--config", cfg, "--out", tmp_path / "run", "--steps", "4")
    assert p.returncode == 0, p.stderr
    assert "epoch 2/2" in p.stdout and "error split" in p.stdout and "relative L2" in p.stdout
    model = ps.load(tmp_path / "run" / "model.pt")
    assert model.vector_field.hidden == 6 and model.dt == pytest.approx(PAPER_DT)
    # the run's options are FitOptions' defaults with the table's values: one set of defaults
    written = json.loads((tmp_path / "run" / "run.json").read_text())["fit"]
    expected = ps.FitOptions(epochs=2, curriculum=[1, 2], batch_size=16)
    assert written == {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(expected).items()
                       if k not in ("progress", "log")}
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["best.pt", "last.pt", "model.pt"]
    # resuming a finished run trains nothing and says so; other options are refused
    p = _cli("train", folder, "--config", cfg, "--out", tmp_path / "run", "--resume", "--steps", "4")
    assert p.returncode == 0, p.stderr
    assert "already complete" in p.stdout and "epoch 1/2" not in p.stdout
    _one_line(_cli("train", folder, "--config", cfg, "--out", tmp_path / "run", "--resume", "--epochs", "3"),
              "other options (epochs)")


def test_cli_train_errors_are_one_line(data, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\ndt = 0.1\n")
    _one_line(_cli("train", data["train"], "--config", bad), "taken from the data")
    bad.write_text("[fit\n")
    _one_line(_cli("train", data["train"], "--config", bad), "not valid TOML")
    _one_line(_cli("train", tmp_path / "nothing"), "no such folder or file")
    _one_line(_cli("train", tmp_path), "has no train split")
    bad.write_text("[fit]\nlr = -1.0\n")
    _one_line(_cli("train", data["train"], "--config", bad, "--out", tmp_path / "r"), "lr=-1.0")
    bad.write_text('[fit]\nlbfgs = 2\nlbfgs_precondition = "yes"\n')
    _one_line(_cli("train", data["train"], "--config", bad, "--out", tmp_path / "r"), "must be true or false")
    bad.write_text("[fit]\nlm = -1\n")
    _one_line(_cli("train", data["train"], "--config", bad, "--out", tmp_path / "r"), "lm=-1 must be an integer >= 0")
    assert not (tmp_path / "r").exists()  # an option refused by fit leaves no run folder


def test_embed_copies_a_witness_exactly_and_lbfgs_can_start_from_it(data):
    one = ps.WindowDataset(data["train"], unroll=1, dtype=torch.float64)
    w = ps.exact_surrogate(catalogue.fisher(), one.grid, one.dt, substeps=3, powers=(2,), modified_equation=1,
                           accuracy="max", kernel_size=5, k2_derivatives=True, truncate=True, dtype=torch.float64)
    model = ps.embed(w, _paper_model(one, dtype=torch.float64))
    u = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    from pdesurrogate.passes import library_passes

    with library_passes(adjoint=True):  # layer by layer the zero-padded kernels give the same bytes
        assert torch.equal(model(u), w(u))
    with torch.no_grad():  # the fused field (the witness's 3x3 K2 is not fused) sums in another order
        torch.testing.assert_close(model(u), w(u), rtol=1e-13, atol=0)
    start = float(ps.evaluate(model, data["valid"], steps=5).rel_l2.sel(step=5).mean())
    hist = ps.fit(model, one, data["valid"], epochs=0, lbfgs=6, lbfgs_check=2, lbfgs_windows=16, valid_steps=5,
                  progress=False)
    after = float(ps.evaluate(model, data["valid"], steps=5).rel_l2.sel(step=5).mean())
    assert hist.attrs["stopped"] == "L-BFGS only" and after <= start * (1 + 1e-9)
    # validation every 2 iterations; the state kept is the best one seen
    curve = json.loads(hist.attrs["lbfgs_valid_curve"])
    assert len(curve) == 3 and hist.attrs["lbfgs_kept"] == 1
    assert after == pytest.approx(min(curve), rel=1e-12) and hist.attrs["lbfgs_valid"] == min(curve)
    with pytest.raises(ps.SurrogateError, match="not in the target's class"):
        ps.embed(w, ps.build_surrogate(hidden=4, kernel_size=5, powers=(2,), substeps=3, dt=one.dt))
    with pytest.raises(ps.SurrogateError, match="epochs=0 trains nothing"):
        ps.fit(model, one, epochs=0, progress=False)


def _perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("kernel_size2", [5, 1])
def test_step_jacobian_matches_forward_mode_autodiff(kernel_size2):
    from pdesurrogate.gauss_newton import _autodiff_jacobian, _fast_jacobian

    model = _perturbed(ps.build_surrogate(hidden=3, kernel_size=5, kernel_size2=kernel_size2, powers=(2, 1),
                                          substeps=2, init="stencil", dt=1e-3, spacing=(0.05, 0.05),
                                          dtype=torch.float64))
    u = torch.rand(2, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fast, out = _fast_jacobian(model, u, 2)
    auto, out_auto = _autodiff_jacobian(model, u, 2, list(model.parameters()))
    assert fast.shape == auto.shape == (2, sum(p.numel() for p in model.parameters()), 2, 1, 12, 12)
    # the relu^1 channel's slope is zero below zero: a 0^0 = 1 there shows up as an O(1) difference
    assert torch.allclose(fast, auto, rtol=0, atol=1e-14 * float(auto.abs().max()))
    with torch.no_grad():
        assert torch.allclose(out[1], model(model(u)), atol=1e-13) and torch.allclose(out, out_auto, atol=1e-13)


def test_step_jacobian_of_other_integrators_is_the_derivative():
    model = _perturbed(ps.build_surrogate(hidden=2, kernel_size=3, powers=(2,), substeps=2, integrator="heun",
                                          dt=1e-2, dtype=torch.float64))
    u = torch.rand(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    J, _ = ps.step_jacobian(model, u)
    params = list(model.parameters())
    v = torch.randn(J.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    base = torch.cat([p.detach().flatten() for p in params])
    from pdesurrogate.gauss_newton import _set_flat

    eps, outs = 1e-6, []
    for sign in (1, -1):
        _set_flat(params, base + sign * eps * v)
        with torch.no_grad():
            outs.append(model(u))
    _set_flat(params, base)
    fd = (outs[0] - outs[1]) / (2 * eps)
    assert torch.allclose(torch.einsum("p,pbfxy->bfxy", v, J[0]), fd, rtol=1e-6, atol=1e-9)
    with pytest.raises(ps.SurrogateError, match="steps=0 must be a positive integer"):
        ps.step_jacobian(model, u, steps=0)
    with pytest.raises(ps.SurrogateError, match=r"in the model's dtype \(float64\)"):
        ps.step_jacobian(model, u.float())


def test_levenberg_marquardt_from_the_fd_stencils_beats_lbfgs(data):
    one = ps.WindowDataset(data["train"], unroll=1, dtype=torch.float64)
    w = ps.exact_surrogate(catalogue.fisher(), one.grid, one.dt, substeps=3, powers=(2,), dtype=torch.float64)
    start = ps.embed(w, _paper_model(one, dtype=torch.float64))
    lb = ps.embed(w, _paper_model(one, dtype=torch.float64))
    hist_lb = ps.fit(lb, one, epochs=0, lbfgs=20, lbfgs_windows=8, progress=False)
    hist = ps.fit(start, one, data["valid"], epochs=0, lm=4, lm_windows=8, valid_steps=5, progress=False)
    a = hist.attrs
    assert a["stopped"] == "Levenberg-Marquardt only" and a["lm_iterations"] == 4 and a["lm_kept"] == 1
    # the same windows (the polish picks them by the seed): LM's loss after 4 steps is 0.18 of L-BFGS's after 20
    assert a["lm_loss_before"] == pytest.approx(hist_lb.attrs["lbfgs_loss_before"], rel=1e-9)
    assert a["lm_loss_after"] < 0.5 * hist_lb.attrs["lbfgs_loss_after"], (a, hist_lb.attrs)
    curve = json.loads(a["lm_valid_curve"])
    after = float(ps.evaluate(start, data["valid"], steps=5).rel_l2.sel(step=5).mean())
    assert len(curve) == 4 and after == pytest.approx(min(curve), rel=1e-12) == a["lm_valid"]
    for bad, msg in (({"lm": -1}, "lm=-1 must be"), ({"lm": 2, "lm_windows": 0}, "lm_windows=0 must be")):
        with pytest.raises(ps.SurrogateError, match=msg):
            ps.fit(start, one, epochs=0, progress=False, **bad)
    # two-step windows, relative loss: the squared relative errors go down
    two = ps.WindowDataset(data["train"], unroll=2, dtype=torch.float64)
    rel = ps.fit(start, two, epochs=0, lm=2, lm_windows=4, loss="relative", progress=False).attrs
    assert rel["lm_iterations"] == 2 and rel["lm_loss_after"] < rel["lm_loss_before"]
    halo = ps.receptive_halo(start, 1)
    cropped = ps.WindowDataset(data["train"], unroll=1, crop=8, halo=halo, dtype=torch.float64)
    with pytest.raises(ps.SurrogateError, match="lm= needs full-grid windows"):
        ps.fit(start, cropped, epochs=0, lm=1, progress=False)
    with torch.no_grad():
        start.vector_field.conv2.bias.fill_(float("nan"))
    with pytest.raises(ps.SurrogateError, match="loss is not finite at the start"):
        ps.fit(start, one, epochs=0, lm=1, lm_windows=2, progress=False)


_MALLINFO = r"""
import ctypes, json, sys
import pdesurrogate as ps

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
with ps.malloc_tuned(sys.argv[1] == "on") as tuned:
    before = libc.mallinfo2().hblks
    block = libc.malloc(16 << 20)
    mapped = libc.mallinfo2().hblks - before
    libc.free(block)
print(json.dumps({"tuned": tuned, "mapped": mapped}))
"""


@pytest.mark.skipif(not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"), reason="glibc's mallopt")
@pytest.mark.parametrize("mode", ["on", "off"])
def test_malloc_tuning_serves_large_blocks_from_the_heap(mode):
    # a fresh process (glibc's adaptive threshold not yet raised): a 16 MB block is mapped on
    # its own by default and served from the heap within malloc_tuned
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", _MALLINFO, mode], capture_output=True, text=True, env=env, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == ({"tuned": True, "mapped": 0} if mode == "on" else {"tuned": False, "mapped": 1})
    tuned_env = subprocess.run([sys.executable, "-c", _MALLINFO, mode], capture_output=True, text=True, check=True,
                               env={**env, "MALLOC_TRIM_THRESHOLD_": "68719476736"})
    assert json.loads(tuned_env.stdout.strip().splitlines()[-1])["tuned"] is False  # the environment decides


def test_fit_refuses_a_non_boolean_tune_malloc(data):
    ds = ps.WindowDataset(data["train"], unroll=1)
    with pytest.raises(ps.SurrogateError, match="tune_malloc='yes' must be true or false"):
        ps.fit(_paper_model(ds), ds, epochs=1, tune_malloc="yes", progress=False)


def test_fit_options_hold_one_set_of_defaults_and_refuse_bad_values_in_one_line():
    o = ps.FitOptions()
    assert o.steps(3) == [1, 2, 3] and o.replace(unroll=2).steps(5) == [1, 2]
    assert o.replace(curriculum=[1, 3]).steps(5) == [1, 3]
    assert ps.FitOptions(dtype="float64").dtype is torch.float64
    for bad, match in (({"lr": -1.0}, "lr=-1.0"), ({"curriculum": [0, 1]}, "positive step counts"),
                       ({"epochs": 0}, "trains nothing"), ({"dtype": "float16"}, "float32 or float64"),
                       ({"nope": 1}, "unknown fit option")):
        with pytest.raises(ps.SurrogateError, match=match):
            ps.FitOptions.from_dict(bad)
