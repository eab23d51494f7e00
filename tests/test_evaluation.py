"""Rollout evaluation, the error split, witnesses, modified equations and the evaluate/split CLI."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import datagen
import pdesurrogate as ps
from conftest import observed_order
from datagen import Grid, catalogue

ANCHORS = Path(__file__).resolve().parents[1].parent / "shared" / "anchors" / "predicting-pixel-data"
PAPER_DT = 0.24 * 0.01 ** 2 / 0.01


def _make(folder: Path, name: str, **kw) -> Path:
    cfg = datagen.GenerationConfig(**{"pde": "fisher", "split": "test", "seed": 5, **kw})
    return datagen.generate(cfg, folder / f"{name}.h5")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    return {
        # the paper's setting, accurate reference (spectral ETDRK4)
        "paper": _make(d, "paper", n_trajectories=4, steps=40),
        # the scheme the exact network reproduces
        "scheme": _make(d, "scheme", n_trajectories=3, steps=40, integrator="euler", substeps=3, method="fd",
                        accuracy=2, grid=Grid((32, 32)).to_dict(), dt=PAPER_DT),
        "small": _make(d, "small", n_trajectories=3, steps=10, grid=Grid((32, 32)).to_dict(), dt=PAPER_DT),
    }


def _logistic_error(pde_for_h, u0: float, hs):
    def pointwise(pde, u):
        return sum(t.coeff * u ** t.degree for t in pde.rhs[0] if all(d.total_order == 0 for d in t.factors))

    exact = [u0 * np.exp(h) / (1 - u0 + u0 * np.exp(h)) for h in hs]
    return [abs(u0 + h * pointwise(pde_for_h(h), u0) - e) for h, e in zip(hs, exact)]


def test_modified_equation_raises_the_local_order_for_the_logistic_ode():
    hs = [0.1, 0.05, 0.025, 0.0125]
    euler = observed_order(_logistic_error(lambda h: catalogue.fisher(), 0.3, hs), hs)
    mod1 = observed_order(_logistic_error(lambda h: datagen.modified_equation(catalogue.fisher(), h, 1), 0.3, hs), hs)
    mod2 = observed_order(_logistic_error(lambda h: datagen.modified_equation(catalogue.fisher(), h, 2), 0.3, hs), hs)
    assert abs(euler - 2) < 0.1 and abs(mod1 - 3) < 0.1 and abs(mod2 - 4) < 0.1


def test_modified_fisher_has_the_hand_derived_terms():
    h, a = 0.1, 0.01
    m = datagen.modified_equation(catalogue.fisher(a=a), h)
    terms = {t.monomial(): t.coeff for t in m.rhs[0]}
    assert terms["u"] == pytest.approx(1 + h / 2)
    assert terms["u_xx"] == pytest.approx(a + h * a)
    assert terms["u_xxxx"] == pytest.approx(h / 2 * a * a) and terms["u_xxyy"] == pytest.approx(h * a * a)
    assert terms["u^2"] == pytest.approx(-1 - 3 * h / 2)
    assert terms["u*u_xx"] == pytest.approx(-2 * h * a) and terms["u_x^2"] == pytest.approx(-h * a)
    assert terms["u^3"] == pytest.approx(h)
    with pytest.raises(datagen.DatagenError):
        datagen.modified_equation(catalogue.fisher(), float("nan"))


@pytest.mark.parametrize("name", ["heat", "advection", "fisher", "burgers"])
@pytest.mark.parametrize("boundary", ["periodic", "neumann", "dirichlet"])
def test_relu_squared_network_equals_the_mixed_power_one(name, boundary, rng):
    g = Grid((12, 10), boundary=boundary, boundary_value=0.5)
    pde = catalogue.make_pde(name)
    ref = ps.exact_surrogate(pde, g, 1e-4)
    sq = ps.exact_surrogate(pde, g, 1e-4, powers=(2,))
    assert set(sq.vector_field.act.powers) == {2}
    u = torch.as_tensor(10 * rng.uniform(-1, 1, (3, 1, 12, 10)))
    with torch.no_grad():
        a, b = ref.vector_field(u), sq.vector_field(u)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-10


def test_relu_squared_refuses_cubic_terms_unless_truncated():
    g = Grid((8, 8))
    with pytest.raises(ps.SurrogateError, match="truncate"):
        ps.exact_surrogate(catalogue.allen_cahn(), g, 1e-3, powers=(2,))
    net = ps.exact_surrogate(catalogue.allen_cahn(), g, 1e-3, powers=(2,), truncate=True)
    assert net.info["dropped"] and not net.info["exact"]


def test_paper_witness_fits_the_paper_class():
    g = Grid((100, 100))
    net = ps.build_surrogate(n_fields=1, hidden=10, kernel_size=5, powers=(2,), substeps=3, dt=PAPER_DT)
    w, meta = ps.default_witness(net, catalogue.fisher(), g)
    assert meta["witness"].startswith("modified equation") and meta["witness_in_class"]
    assert w.vector_field.hidden <= 10 and meta["witness_truncated"]
    small = ps.build_surrogate(n_fields=1, hidden=4, kernel_size=3, powers=(2,), substeps=3, dt=PAPER_DT)
    _, meta = ps.default_witness(small, catalogue.fisher(), g)
    assert not meta["witness_in_class"]


def test_metrics_equal_a_hand_computation(rng):
    ref = rng.normal(size=(2, 4, 1, 4, 4))  # 2 trajectories, 3 steps, 4x4
    ident = ps.build_surrogate(n_fields=1, hidden=2, kernel_size=3, init="zeros", dt=1.0, seed=None).double()
    rep = ps.evaluate(ident, ref, device="cpu")  # F = 0: every prediction is frame 0
    assert rep.sizes == {"trajectory": 2, "step": 3}
    for i in range(2):
        for n in (1, 2, 3):
            d = ref[i, 0] - ref[i, n]
            assert rep.mse.values[i, n - 1] == pytest.approx(np.mean(d ** 2), rel=1e-12)
            assert rep.max_error.values[i, n - 1] == pytest.approx(np.abs(d).max(), rel=1e-12)
            assert rep.rel_l2.values[i, n - 1] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(ref[i, n]), rel=1e-12)
    table = ps.summarize(rep, [1, 3])
    assert table.loc[("rel_l2", 3), "mean"] == pytest.approx(rep.rel_l2.sel(step=3).mean().item())
    assert table.loc[("max_error", 1), "max"] == pytest.approx(rep.max_error.sel(step=1).max().item())


def test_two_fields_get_per_field_metrics(rng):
    ref = rng.normal(size=(2, 3, 2, 5, 5))
    ident = ps.build_surrogate(n_fields=2, hidden=2, kernel_size=3, init="zeros", seed=None).double()
    rep = ps.evaluate(ident, ref, device="cpu")
    d = ref[1, 0, 1] - ref[1, 2, 1]
    assert rep.field_mse.values[1, 1, 1] == pytest.approx(np.mean(d ** 2))


def test_exact_network_reproduces_the_scheme_file(files):
    g = Grid((32, 32))
    net = ps.exact_surrogate(catalogue.fisher(), g, PAPER_DT, substeps=3)
    rep = ps.evaluate(net, files["scheme"], steps=40, dtype=torch.float64)
    assert float(rep.rel_l2.max()) < 1e-6


def test_split_of_the_exact_network_on_the_accurate_file(files):
    g = Grid((100, 100))
    net = ps.exact_surrogate(catalogue.fisher(), g, PAPER_DT, substeps=3)
    sp = ps.error_split(net, files["paper"], steps=40, witness=net, lipschitz=False)
    assert float(sp.witness_gap.max()) < 1e-10
    np.testing.assert_allclose(sp.witness_error, sp.total, rtol=1e-9)
    r40 = float(ps.evaluate(net, files["paper"], steps=40).rel_l2.sel(step=40).mean())
    assert 4e-3 < r40 < 3e-2
    assert float(sp.total.sel(step=40).mean()) == pytest.approx(r40, rel=1e-6)
    # the default witness of this network's class is the same scheme
    auto = ps.error_split(net, files["paper"], steps=5, lipschitz=False)
    assert auto.attrs["witness_in_class"] == 1 and float(auto.witness_gap.max()) < 1e-10


def test_modified_equation_witness_beats_the_scheme(files):
    g = Grid((100, 100))
    fd = ps.exact_surrogate(catalogue.fisher(), g, PAPER_DT, substeps=3, powers=(2,))
    mod = ps.exact_surrogate(catalogue.fisher(), g, PAPER_DT, substeps=3, powers=(2,), modified_equation=1,
                             accuracy="max", kernel_size=5, k2_derivatives=True, truncate=True)
    assert mod.vector_field.hidden == 10
    r_fd = float(ps.evaluate(fd, files["paper"], steps=40).rel_l2.sel(step=40).mean())
    r_mod = float(ps.evaluate(mod, files["paper"], steps=40).rel_l2.sel(step=40).mean())
    assert r_mod < r_fd / 2 and r_mod < 2e-3, (r_fd, r_mod)


def test_split_inequalities_for_a_perturbed_exact_network(files):
    g = Grid((32, 32))
    exact = ps.exact_surrogate(catalogue.fisher(), g, PAPER_DT, substeps=3)
    net = copy.deepcopy(exact)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = net.vector_field.conv1.weight
        w.mul_(1 + 1e-3 * torch.randn(w.shape, generator=gen, dtype=w.dtype))
    sp = ps.error_split(net, files["small"], steps=10, witness=exact, lipschitz=5)
    tot, app, opt = sp.total.values, sp.witness_error.values, sp.witness_gap.values
    assert np.all(tot <= app + opt + 1e-12)
    np.testing.assert_array_equal(sp.approximation_bound.values, np.minimum(tot, app))
    np.testing.assert_allclose(sp.optimisation_lower_bound.values, tot - np.minimum(tot, app))
    # on the scheme's own data the witness is exact, the perturbed network worse: the witness
    # attains the bound on the class's approximation error
    on_scheme = ps.error_split(net, files["scheme"], steps=10, witness=exact, lipschitz=False)
    assert on_scheme.attrs["approximation_bound_attained_by"] == on_scheme.attrs["witness"]
    assert on_scheme.attrs["model_is_best_known"] == 0
    assert float(on_scheme.optimisation_lower_bound.sel(step=10).min()) > 0
    assert np.all(sp.propagated_estimate.values >= tot * (1 - 1e-9))
    assert np.all(sp.lipschitz.values > 0.9)
    assert float(opt.min()) > 1e-6  # the perturbation shows


def test_split_of_a_network_better_than_its_witness_names_the_network_as_the_bound(files):
    """A network better than its witness (the exact network judged against a perturbed copy) is
    itself the best member known: the approximation bound is its own total, the optimisation
    bound zero, and the parts' names say bound."""
    g = Grid((32, 32))
    exact = ps.exact_surrogate(catalogue.fisher(), g, PAPER_DT, substeps=3)
    worse = copy.deepcopy(exact)
    with torch.no_grad():
        worse.vector_field.conv2.weight.mul_(0.9)
    sp = ps.error_split(exact, files["small"], steps=10, witness=worse, lipschitz=False)
    np.testing.assert_array_equal(sp.approximation_bound.values, sp.total.values)
    assert float(abs(sp.optimisation_lower_bound).max()) == 0.0
    assert sp.attrs["approximation_bound_attained_by"] == "model" and sp.attrs["model_is_best_known"] == 1
    assert "approximation" not in sp and "optimisation" not in sp  # no part named as if it were known exactly
    assert "better member of the class than any construction" in ps.split_verdict(sp)
    # another trained member handed in tightens the bound when it is better still
    sp2 = ps.error_split(worse, files["small"], steps=10, witness=worse, lipschitz=False, others={"exact": exact})
    assert sp2.attrs["approximation_bound_attained_by"] == "exact"
    assert float(sp2.optimisation_lower_bound.sel(step=10).min()) > 0


def test_power_iteration_matches_the_dense_spectral_norm(rng):
    g = Grid((8, 8))
    dt = 0.2 * g.dx ** 2 / 0.01
    net = ps.exact_surrogate(catalogue.heat(0.01), g, dt, substeps=3)
    u = torch.as_tensor(rng.normal(size=(1, 1, 8, 8)))
    J = torch.autograd.functional.jacobian(lambda x: net(x.view(1, 1, 8, 8)).flatten(), u.flatten())
    exact = float(torch.linalg.matrix_norm(J, ord=2))
    est, _ = ps.lipschitz_estimate(net, u, iterations=60)
    assert float(est[0]) == pytest.approx(exact, rel=1e-3)
    assert float(est[0]) <= exact * (1 + 1e-6)


def test_solve_reproduces_a_file_and_evaluate_extends_it(files):
    ds = datagen.open_dataset(files["small"])
    stored = ds["u"].values  # (traj, time, x, y)
    again = datagen.solve(datagen.read_provenance(files["small"]), stored[:, 0, None], 10)
    assert np.abs(again[:, :, 0] - stored).max() < 2e-7 * np.abs(stored).max()
    net = ps.exact_surrogate(catalogue.fisher(), Grid((32, 32)), PAPER_DT, substeps=3)
    short = ps.evaluate(net, files["small"], steps=10, dtype=torch.float64)
    long = ps.evaluate(net, files["small"], steps=20, dtype=torch.float64)
    assert long.sizes["step"] == 20
    np.testing.assert_allclose(long.rel_l2.sel(step=slice(1, 10)), short.rel_l2, rtol=1e-12)
    assert np.all(np.isfinite(long.rel_l2.values)) and float(long.rel_l2.sel(step=20).min()) > 0


def test_mismatches_are_one_line_errors(files, tmp_path):
    g = Grid((32, 32))
    good = ps.exact_surrogate(catalogue.fisher(), g, PAPER_DT, substeps=3)
    with pytest.raises(ps.SurrogateError, match=r"dt=0\.0048.*dt=0\.0024"):
        ps.evaluate(ps.exact_surrogate(catalogue.fisher(), g, 2 * PAPER_DT), files["small"])
    with pytest.raises(ps.SurrogateError, match=r"\(16, 16\).*\(32, 32\)"):
        ps.evaluate(ps.exact_surrogate(catalogue.fisher(), Grid((16, 16)), PAPER_DT), files["small"])
    with pytest.raises(ps.SurrogateError, match="neumann.*periodic"):
        ps.evaluate(ps.exact_surrogate(catalogue.fisher(), Grid((32, 32), boundary="neumann"), PAPER_DT), files["small"])
    two = ps.exact_surrogate(catalogue.gray_scott(), g, PAPER_DT)
    with pytest.raises(ps.SurrogateError, match="2 field.*1"):
        ps.evaluate(two, files["small"])
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ps.SurrogateError, match="not a readable"):
        ps.evaluate(good, junk)
    with pytest.raises(ps.SurrogateError, match="steps"):
        ps.evaluate(good, files["small"], steps=0)
    with pytest.raises(ps.SurrogateError, match="provenance"):
        ps.evaluate(good, np.zeros((1, 3, 1, 32, 32)), steps=5)
    assert next(good.parameters()).dtype == torch.float64
    ps.evaluate(good, files["small"], steps=2, dtype=torch.float32)
    assert next(good.parameters()).dtype == torch.float64  # the caller's model is not cast


def _cli(*args, cwd=None):
    exe = Path(sys.executable).with_name("pdesurrogate")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_cli_evaluate_and_split(files, tmp_path):
    g = Grid((32, 32))
    net = ps.exact_surrogate(catalogue.fisher(), g, PAPER_DT, substeps=3)
    ckpt = ps.save(net, tmp_path / "net.pt")
    r = _cli("evaluate", ckpt, files["small"], "--steps", "10", "--horizons", "1,10", "--out", tmp_path / "r.csv")
    assert r.returncode == 0, r.stderr
    assert "rel_l2" in r.stdout and (tmp_path / "r.csv").exists()
    r = _cli("split", ckpt, files["small"], "--steps", "4", "--horizons", "1,4", "--no-lipschitz")
    assert r.returncode == 0, r.stderr
    assert "approximation_bound" in r.stdout and "witness" in r.stdout and "optimisation error is at least" in r.stdout
    bad = _cli("evaluate", tmp_path / "missing.pt", files["small"])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    other = ps.save(ps.exact_surrogate(catalogue.fisher(), g, 2 * PAPER_DT), tmp_path / "other.pt")
    bad = _cli("split", other, files["small"], "--steps", "2")
    assert bad.returncode == 2 and "dt=" in bad.stderr and "Traceback" not in bad.stderr
    assert _cli("--help").returncode == 0 and "example" in _cli("evaluate", "--help").stdout


def test_plots_are_written(files, tmp_path):
    pytest.importorskip("matplotlib")
    from pdesurrogate import plotting

    net = ps.exact_surrogate(catalogue.fisher(), Grid((32, 32)), PAPER_DT, substeps=3, powers=(2,))
    rep = ps.evaluate(net, files["small"], steps=4)
    sp = ps.error_split(net, files["small"], steps=4, lipschitz=2)
    ds = datagen.open_dataset(files["small"])
    truth = ds["u"].values[0, :5, None]
    with torch.no_grad():
        pred = net.rollout(torch.as_tensor(truth[0][None]).double(), 4)[0]
    paths = [plotting.save(plotting.plot_error_curves(rep), tmp_path / "e.png"),
             plotting.save(plotting.plot_error_split(sp), tmp_path / "s.png"),
             plotting.save(plotting.plot_panels(truth, pred, [0, 4]), tmp_path / "p.png"),
             plotting.save(plotting.plot_kernels(net), tmp_path / "k.png")]
    pytest.importorskip("PIL")
    paths.append(plotting.animate_rollout(truth, pred, tmp_path / "a.gif"))
    for p in paths:
        assert p.stat().st_size > 1000


@pytest.mark.skipif(not (ANCHORS / "FisherNoNoise.pt").exists(), reason="published weights not beside the repo")
def test_published_fisher_scores_like_the_paper(tmp_path):
    path = _make(tmp_path, "pub", n_trajectories=16, steps=40, seed=21)
    net = ps.load_published(ANCHORS / "FisherNoNoise.pt")
    r40 = float(ps.evaluate(net, path, steps=40).rel_l2.sel(step=40).mean())
    assert 0.05 < r40 < 0.3


def test_tracked_lipschitz_approaches_the_dense_norm_from_below(tmp_path, rng):
    """lipschitz=True (half a power iteration per step) on a linear heat surrogate, whose Jacobian
    is the same at every frame: every estimate is a lower bound and the last is near the norm."""
    g = Grid((8, 8))
    dt = 0.2 * g.dx ** 2 / 0.01
    path = datagen.generate(datagen.GenerationConfig(pde="heat", split="test", n_trajectories=2, steps=30, seed=1,
                                                     grid=g.to_dict(), dt=dt), tmp_path / "heat.h5")
    net = ps.exact_surrogate(catalogue.heat(0.01), g, dt, substeps=3)
    J = torch.autograd.functional.jacobian(lambda x: net(x.view(1, 1, 8, 8)).flatten(),
                                           torch.zeros(64, dtype=torch.float64))
    exact = float(torch.linalg.matrix_norm(J, ord=2))
    sp = ps.error_split(net, path, steps=30, witness=net, lipschitz=True)
    lip = sp.lipschitz.values
    assert np.all(lip <= exact * (1 + 1e-6))
    assert np.all(lip[:, -1] >= exact * (1 - 1e-3)), (lip[:, -1], exact)
    assert sp.attrs["lipschitz_iterations"] == 0.5


def test_benchmarks_take_the_published_folder_as_an_argument(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in __import__("os").environ.items() if k != "PDESURROGATE_PUBLISHED"}
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "anchors.py"), "--published", str(tmp_path / "none")],
                       capture_output=True, text=True, env=env)
    assert p.returncode != 0 and f"published weights not found at {tmp_path / 'none'}" in p.stderr
    env["PDESURROGATE_PUBLISHED"] = str(tmp_path / "elsewhere")
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "anchors.py")], capture_output=True, text=True,
                       env=env)
    assert p.returncode != 0 and "elsewhere" in p.stderr


def test_panels_give_each_step_its_own_colour_scale_unless_shared():
    pytest.importorskip("matplotlib")
    from pdesurrogate import plotting

    t = np.linspace(0, 1, 16)
    frame = np.sin(2 * np.pi * t)[:, None] * np.cos(2 * np.pi * t)[None, :]
    truth = np.stack([frame, 0.01 * frame])[:, None]  # a field that decays 100x
    pred = truth * 1.01
    fig = plotting.plot_panels(truth, pred, [0, 1])
    top = fig.axes[:2]  # the truth row: step 0, step 1
    assert top[0].images[0].get_clim()[1] == pytest.approx(1.01 * frame.max())
    assert top[1].images[0].get_clim()[1] == pytest.approx(0.0101 * frame.max())
    assert "1.0e-02 of max|u|" in fig.axes[5].get_title()  # the error relative to its own frame
    shared = plotting.plot_panels(truth, pred, [0, 1], scale="shared")
    assert shared.axes[0].images[0].get_clim() == shared.axes[1].images[0].get_clim()
    with pytest.raises(ps.SurrogateError, match="per_step or shared"):
        plotting.plot_panels(truth, pred, [0, 1], scale="log")


def test_constant_state_growth_reads_how_a_model_steps_constant_states(files):
    from pdesurrogate.evaluation import constant_state_growth

    net = ps.exact_surrogate(catalogue.fisher(), Grid((32, 32)), PAPER_DT, substeps=3, powers=(2,),
                             dtype=torch.float64)
    g = constant_state_growth(net, files["small"])
    assert set(g) == {0.25, 0.5, 0.75} and max(abs(v) for v in g.values()) < 1e-3  # Euler x 3 on the logistic ODE
    with torch.no_grad():
        net.vector_field.conv2.weight.mul_(1.05)  # every increment 5 % larger
        net.vector_field.conv2.bias.mul_(1.05)
    g = constant_state_growth(net, files["small"])
    assert all(abs(v - 0.05) < 2e-3 for v in g.values()), g
    with pytest.raises(ps.SurrogateError, match="not stored predictions"):
        constant_state_growth(np.zeros((3, 11, 1, 32, 32)), files["small"])
