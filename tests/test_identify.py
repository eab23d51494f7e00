"""``identify`` reads a network's field as a PDE: exact networks give their PDE's coefficients
back to round-off, with nothing else."""

import numpy as np
import pytest
import torch

import pdesurrogate as ps
from datagen import Grid, catalogue, parse_pde

N = 24


def _probes(fields, n=12, seed=0, amplitude=1.0, offset=0.0):
    """Smooth periodic states: a few Fourier modes each."""
    g = np.random.default_rng(seed)
    x = np.arange(N) / N * 2 * np.pi
    out = np.zeros((n, fields, N, N))
    for i in range(n):
        for f in range(fields):
            for _ in range(4):
                k, l = g.integers(0, 4, 2)
                a, p, q = g.random(3)
                out[i, f] += amplitude * (a - 0.5) * np.sin(k * x[:, None] + 2 * np.pi * p) * np.cos(
                    l * x[None, :] + 2 * np.pi * q)
            out[i, f] += offset
    return torch.as_tensor(out)


def _coefficients(pde):
    return {(c, tuple(sorted(t.factors))): t.coeff for c, terms in enumerate(pde.rhs) for t in terms}


def _merged(pde):
    out = {}
    for k, v in _coefficients(pde).items():
        out[k] = out.get(k, 0.0) + v
    return out


BRUSSELATOR = parse_pde("u_t = Du*(u_xx + u_yy) + A - (B + 1)*u + u**2*v; v_t = Dv*(v_xx + v_yy) + B*u - u**2*v",
                        params={"Du": 0.002, "Dv": 0.001, "A": 1.0, "B": 3.0}, name="brusselator")


@pytest.mark.parametrize("pde, offset", [(catalogue.fisher(), 0.3), (catalogue.allen_cahn(), 0.0),
                                         (catalogue.gray_scott(), 0.5), (BRUSSELATOR, 1.0)])
def test_identify_returns_an_exact_networks_pde(pde, offset):
    grid = Grid((N, N), extent=(1.0, 1.0))
    net = ps.exact_surrogate(pde, grid, 1e-3, accuracy=2, dtype=torch.float64)
    found = ps.identify(net, _probes(pde.n_fields, offset=offset), spacing=grid.spacing)
    want, got = _merged(pde), _merged(found.pde)
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-8 * max(1.0, abs(v)), (k, got[k], v)
    # the residual comes from the normal equations: its floor is sqrt(machine epsilon)
    assert max(found.residual.values()) < 1e-6


def test_identify_prints_the_equation_beside_the_datas_and_refuses_bad_options():
    grid = Grid((N, N), extent=(1.0, 1.0))
    net = ps.exact_surrogate(catalogue.fisher(), grid, 1e-3, powers=(2,), dtype=torch.float64)
    found = ps.identify(net, _probes(1, offset=0.3), spacing=grid.spacing)
    assert found.text().startswith("u_t = ") and "u^2" in found.text()
    assert "learned: u_t" in str(found)
    with pytest.raises(ps.SurrogateError, match="threshold"):
        ps.identify(net, _probes(1), spacing=grid.spacing, threshold=2.0)
    with pytest.raises(ps.SurrogateError, match="degree"):
        ps.identify(net, _probes(1), spacing=grid.spacing, degree=9)
    with pytest.raises(ps.SurrogateError, match=r"must be \(n, fields, x, y\)"):
        ps.identify(net, _probes(1)[0], spacing=grid.spacing)


def _coeffs(pde):
    return {t.monomial(): t.coeff for t in pde.rhs[0]}


@pytest.fixture(scope="module")
def fisher_data(tmp_path_factory):
    import datagen

    d = tmp_path_factory.mktemp("idd")
    g = Grid((32, 32))
    common = {"pde": "fisher", "steps": 12, "grid": g.to_dict(), "dt": 0.0024}  # the paper's step
    for split, n in (("train", 6), ("valid", 2), ("test", 2)):
        (d / "data" / split).mkdir(parents=True)
        datagen.generate(datagen.GenerationConfig(**common, split=split, n_trajectories=n, seed=0),
                         d / "data" / split / "fisher.hdf5")
    return d


def test_identify_data_reads_fishers_coefficients_from_the_frames(fisher_data):
    ds = ps.WindowDataset(fisher_data, unroll=4, dtype=torch.float64)
    frames = torch.stack([torch.as_tensor(ds.window(i)) for i in range(len(ds))])
    found = ps.identify_data(frames, ds.dt, ds.spacing)
    c = _coeffs(found.pde)
    assert set(c) == {"u", "u^2", "u_xx", "u_yy"}, c
    assert c["u"] == pytest.approx(1.0, rel=1e-3) and c["u^2"] == pytest.approx(-1.0, rel=1e-3)
    assert c["u_xx"] == pytest.approx(0.01, rel=1e-3) and c["u_yy"] == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(ps.SurrogateError, match="five frames"):
        ps.identify_data(frames[:, :3], ds.dt, ds.spacing)


def test_the_identify_start_builds_the_class_network_of_the_pde_read_from_the_data(fisher_data):
    lines = []
    model, hist = ps.train(fisher_data, {"start": "identify", "lbfgs": 0}, log=lines.append)
    assert any(line.startswith("start: the data read as u_t = ") for line in lines), lines
    # the network is the class's modified-equation network of the identified PDE: against the
    # one built from the true PDE it differs only by the identification error
    ds = ps.WindowDataset(fisher_data, unroll=1)
    truth, _ = ps.default_witness(model, ds.pde, ds.grid)
    test = fisher_data / "data" / "test" / "fisher.hdf5"
    mine, theirs = ps.rollout_error(model, test, 12), ps.rollout_error(truth.double(), test, 12)
    assert mine == pytest.approx(theirs, rel=0.05)
    fd = ps.exact_surrogate(ds.pde, ds.grid, ds.dt, substeps=3, accuracy=2, powers=(2,), truncate=False,
                            dtype=torch.float64)
    assert mine < ps.rollout_error(fd, test, 12) / 3
    with pytest.raises(ps.SurrogateError, match="start='magic'"):
        ps.Recipe(start="magic")


def test_identify_reads_a_and_r_within_one_percent_from_a_model_the_default_trained(tmp_path):
    import datagen

    # modes the class's 5 x 5 stencils resolve (k = 1..3 on 48 cells); at four cells per
    # wavelength the trained network follows another equation, and reading it says so
    common = {"pde": "fisher", "steps": 12, "grid": Grid((48, 48)).to_dict(),
              "initial": {"name": "sincos", "k_min": 1, "k_max": 3}}
    for split, n in (("train", 6), ("valid", 2)):
        (tmp_path / "data" / split).mkdir(parents=True)
        datagen.generate(datagen.GenerationConfig(**common, split=split, n_trajectories=n, seed=0),
                         tmp_path / "data" / split / "fisher.hdf5")
    model, _ = ps.train(tmp_path, {"lbfgs": 20, "windows": 16}, log=None)  # the default recipe, shortened
    c = _coeffs(ps.identify(model, tmp_path, read="flow").pde)  # the equation its steps follow
    assert c["u"] == pytest.approx(1.0, rel=0.01) and c["u^2"] == pytest.approx(-1.0, rel=0.01), c
    assert c["u_xx"] == pytest.approx(0.01, rel=0.01) and c["u_yy"] == pytest.approx(0.01, rel=0.01), c
