"""The a-posteriori error bound (any stepper), its per-step budget, and scoring models that are not
Surrogates."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import datagen
import pdesurrogate as ps
from datagen import Grid, catalogue

ANCHORS = Path(__file__).resolve().parents[1].parent / "shared" / "anchors" / "predicting-pixel-data"
PAPER_DT = 0.24 * 0.01 ** 2 / 0.01
G32 = Grid((32, 32))


def _make(folder: Path, name: str, **kw) -> Path:
    cfg = datagen.GenerationConfig(**{"pde": "fisher", "split": "test", "seed": 5, "grid": G32.to_dict(), **kw})
    return datagen.generate(cfg, folder / f"{name}.h5")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bound")
    return {
        "fisher": _make(d, "fisher", n_trajectories=3, steps=40, dt=PAPER_DT),
        "heat": _make(d, "heat", pde="heat", n_trajectories=2, steps=40, dt=PAPER_DT),
        "allen_cahn": _make(d, "ac", pde="allen_cahn", n_trajectories=2, steps=40, dt=0.1),
        "gray_scott": _make(d, "gs", pde="gray_scott", n_trajectories=2, steps=10),
    }


def _perturbed(net, scale=1e-3, seed=0):
    out = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return out


class PlainCNN(torch.nn.Module):
    """An outside model: a residual two-layer CNN that is no Surrogate."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), torch.nn.Tanh(),
                                        torch.nn.Conv2d(4, 1, 3, padding=1, padding_mode="circular"))
        with torch.no_grad():
            self.body[2].weight.mul_(1e-3)
            self.body[2].bias.zero_()

    def forward(self, u):
        return u + self.body(u)


def _holds(rep):
    tot, bnd = rep.total.values, rep.bound.values
    assert np.all(np.isfinite(bnd))
    assert np.all(bnd >= tot * (1 - 1e-9)), f"bound below the true error at {np.argwhere(bnd < tot)[:3]}"


def _fisher_exact(dtype=torch.float64):
    return ps.exact_surrogate(catalogue.fisher(), G32, PAPER_DT, substeps=3, dtype=dtype)


@pytest.mark.parametrize("steps", [40, pytest.param(200, marks=pytest.mark.slow)])
def test_bound_holds_for_exact_perturbed_trained_and_outside_fisher_models(files, steps):
    exact = _fisher_exact()
    trained = ps.build_surrogate(hidden=10, kernel_size=5, powers=(2,), substeps=3, dt=PAPER_DT,
                                 spacing=G32.spacing, init="stencil", dtype=torch.float64)
    ps.learn(trained, files["fisher"], None, ps.Recipe(lbfgs=5, windows=8), log=None)  # the default recipe, short
    models = {"exact": exact, "perturbed": _perturbed(exact), "trained": trained, "outside": PlainCNN()}
    for name, m in models.items():
        rep = ps.error_bound(m, files["fisher"], steps=steps, trajectories=[0, 1])
        _holds(rep)
        assert rep.attrs["bound_status"] == "certified", name
    # sharp where the model is good: the exact scheme's network within 3x at step 40
    rep = ps.error_bound(exact, files["fisher"], steps=40)
    ratio = (rep.bound / rep.total).sel(step=40)
    assert float(ratio.max()) < 3.0


@pytest.mark.parametrize("pde", ["heat", "allen_cahn"])
@pytest.mark.parametrize("steps", [40, pytest.param(200, marks=pytest.mark.slow)])
def test_bound_holds_for_exact_heat_and_allen_cahn_networks(files, pde, steps):
    prov = datagen.read_provenance(files[pde])
    spec = datagen.PDE.from_dict(prov["pde"])
    dt = float(prov["config"]["dt"])
    net = ps.exact_surrogate(spec, G32, dt, substeps=3, dtype=torch.float64)
    rep = ps.error_bound(net, files[pde], steps=steps)
    _holds(rep)
    assert rep.attrs["bound_status"] == "certified"


@pytest.mark.slow
@pytest.mark.skipif(not (ANCHORS / "FisherNoNoise.pt").exists(), reason="published weights not present")
def test_bound_holds_for_the_published_fisher_network(tmp_path):
    f = _make(tmp_path, "paper", grid=Grid((100, 100)).to_dict(), n_trajectories=2, steps=40)
    net = ps.load_published(ANCHORS / "FisherNoNoise.pt", dtype=torch.float64)
    for steps in (40, 200):
        _holds(ps.error_bound(net, f, steps=steps))


def test_budget_adds_up_and_names_its_parts(files):
    rep = ps.error_bound(_perturbed(_fisher_exact(), scale=3e-2), files["fisher"], steps=40, witness=_fisher_exact())
    parts = rep.bound_approximation + rep.bound_optimisation + rep.bound_reference
    assert float(abs(parts - rep.bound).max()) <= 1e-12 * float(rep.bound.max())
    assert rep.attrs["witness"] == "given"
    assert float(abs(rep.bound_optimisation).max()) > 1e-3  # the perturbation shows in its share
    # a model that is its own witness has nothing left to optimise: that share is zero
    exact = _fisher_exact()
    own = ps.error_bound(exact, files["fisher"], steps=40, witness=exact)
    assert float(abs(own.bound_optimisation).max()) == 0.0
    np.testing.assert_allclose(own.bound_approximation + own.bound_reference, own.bound, rtol=1e-12)


def test_budget_of_a_network_better_than_its_witness_has_a_negative_optimisation_share(files):
    """The exact network measured against a much worse witness (its vector field halved): the
    model's defect is smaller than the witness's at every step, so that share is negative."""
    exact = _fisher_exact()
    worse = copy.deepcopy(exact)
    with torch.no_grad():
        worse.vector_field.conv2.weight.mul_(0.5)
        worse.vector_field.conv2.bias.mul_(0.5)
    rep = ps.error_bound(exact, files["fisher"], steps=40, witness=worse)
    assert float(rep.bound_optimisation.max()) < 0
    assert float((rep.bound_approximation - rep.bound).min()) > 0


def test_a_model_that_blows_up_gets_an_infinite_bound_not_a_crash(files):
    net = _fisher_exact()
    with torch.no_grad():
        net.vector_field.conv1.weight.mul_(30.0)  # stencils 30x too strong: far beyond Euler's stability
    rep = ps.error_bound(net, files["fisher"], steps=40, witness=False)
    bad = ~np.isfinite(rep.total.values)
    assert bad.any()
    assert np.all(np.isposinf(rep.bound.values[bad]))
    ok = ~bad
    assert np.all(rep.bound.values[ok] >= rep.total.values[ok])


def test_systems_get_an_estimate_and_say_so(files):
    prov = datagen.read_provenance(files["gray_scott"])
    spec = datagen.PDE.from_dict(prov["pde"])
    net = ps.exact_surrogate(spec, G32, float(prov["config"]["dt"]), substeps=3, dtype=torch.float64)
    rep = ps.error_bound(net, files["gray_scott"], steps=10)
    assert rep.attrs["bound_status"] == "estimate"
    assert "system" in rep.attrs["bound_note"]
    assert np.all(np.isfinite(rep.bound.values))


def test_predictions_array_gives_the_same_bound_and_scores_as_the_model(files):
    m = _perturbed(_fisher_exact())
    ref = datagen.open_dataset(files["fisher"])
    u0 = torch.as_tensor(np.stack([ref["u"].values[:, 0]], axis=1), dtype=torch.float64)
    states = [u0]
    with torch.no_grad():
        for _ in range(10):
            states.append(m(states[-1]))
    pred = torch.stack(states, 1).numpy()  # (trajectory, time, field, x, y)
    a = ps.error_bound(m, files["fisher"], steps=10, witness=False)
    b = ps.error_bound(pred, files["fisher"], steps=10)
    np.testing.assert_allclose(b.bound.values, a.bound.values, rtol=1e-12)
    ea, eb = ps.evaluate(m, files["fisher"], steps=10), ps.evaluate(pred, files["fisher"], steps=10)
    np.testing.assert_allclose(eb.rel_l2.values, ea.rel_l2.values, rtol=1e-12)
    with pytest.raises(ps.SurrogateError, match="hold 10 steps"):
        ps.evaluate(pred, files["fisher"], steps=20)
    with pytest.raises(ps.SurrogateError, match="do not fit"):
        ps.evaluate(pred[:, :, :, :16], files["fisher"], steps=5)


def test_outside_models_and_callables_are_scored_and_bad_ones_refused_in_one_line(files):
    rep = ps.evaluate(PlainCNN(), files["fisher"], steps=5)
    assert rep.attrs["model_kind"] == "PlainCNN" and np.all(np.isfinite(rep.rel_l2.values))
    persistence = ps.evaluate(lambda u: u, files["fisher"], steps=5)
    first = datagen.open_dataset(files["fisher"])["u"].values
    want = np.linalg.norm((first[:, 5] - first[:, 0]).reshape(3, -1), axis=1) / np.linalg.norm(
        first[:, 5].reshape(3, -1), axis=1)
    np.testing.assert_allclose(persistence.rel_l2.sel(step=5).values, want, rtol=1e-6)
    with pytest.raises(ps.SurrogateError, match="must return the next state"):
        ps.evaluate(lambda u: u[:, :, :8], files["fisher"], steps=2)
    with pytest.raises(ps.SurrogateError, match="cannot score"):
        ps.evaluate("not a model", files["fisher"], steps=2)


def test_bound_refuses_data_without_a_solver(tmp_path, files):
    arr = datagen.open_dataset(files["fisher"])["u"].values[:, :, None]
    with pytest.raises(ps.SurrogateError, match="no datagen provenance"):
        ps.error_bound(_fisher_exact(), arr, steps=5)


def test_cli_split_writes_the_budget_and_evaluate_scores_predictions(files, tmp_path, capsys):
    from pdesurrogate.cli import main

    ps.save(_fisher_exact(), tmp_path / "exact.pt")
    assert main(["split", str(tmp_path / "exact.pt"), str(files["fisher"]), "--steps", "5", "--horizons", "1,5",
                 "--no-lipschitz", "--plots", str(tmp_path / "plots"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "error bound (certified" in out and "bound_optimisation" in out
    assert (tmp_path / "plots" / "budget.png").stat().st_size > 1000
    u = datagen.open_dataset(files["fisher"])["u"].values[:, :6, None]
    np.save(tmp_path / "pred.npy", u)  # the reference itself: zero error, a bound of round-off size
    assert main(["evaluate", str(tmp_path / "pred.npy"), str(files["fisher"]), "--steps", "5", "--bound", "-q"]) == 0
    assert "error bound" in capsys.readouterr().out
    # one-line refusals: pickled objects, a split of predictions
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["evaluate", str(tmp_path / "obj.npy"), str(files["fisher"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable .npy array" in err[0]
    assert main(["split", str(tmp_path / "pred.npy"), str(files["fisher"])]) == 2
    assert "can be scored by `pdesurrogate evaluate`" in capsys.readouterr().err
