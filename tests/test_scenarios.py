"""Each catalogue scenario shows the behaviour it is named for, measured on the data it writes."""

import numpy as np
import pytest
from scipy import ndimage

import datagen
from datagen import DatagenError, GenerationConfig, catalogue


def _solve(tmp_path, pde, scenario=None, n=1, **kw):
    cfg = GenerationConfig(pde=pde, scenario=scenario, n_trajectories=n, **kw)
    path = datagen.generate(cfg, tmp_path / f"{pde}-{scenario}.hdf5")
    ds = datagen.open_dataset(path)
    return np.stack([ds[f].values for f in ds.data_vars], axis=2).astype(np.float64), ds  # (traj, time, field, x, y)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_scenarios_are_listed_chosen_and_overridden():
    for name, entry in catalogue.CATALOGUE.items():
        assert entry.scenarios, name
        assert entry.scenario() is entry.scenarios[0]
    paper = GenerationConfig(pde="fisher").resolve()
    assert paper.scenario == "paper" and paper.grid["shape"] == [100, 100] and paper.steps == 40
    assert paper.dt == pytest.approx(0.24 * 0.01 ** 2 / 0.01) and paper.initial["k_min"] == 5
    # options go over the scenario: the grid's shape only, the rest stays the scenario's
    front = GenerationConfig(pde="fisher", scenario="front", grid={"shape": [50, 4]}, steps=3).resolve()
    assert front.grid["extent"] == [12.8, 12.8] and front.grid["shape"] == [50, 4] and front.steps == 3
    assert front.dt == 0.5 and front.initial["name"] == "band"
    gs = GenerationConfig(pde="gray_scott", scenario="maze", params={"k": 0.057}).resolve()
    assert gs.params["F"] == 0.029 and gs.params["k"] == 0.057
    with pytest.raises(DatagenError, match="no scenario 'zebra'; choose one of: spots, maze"):
        GenerationConfig(pde="gray_scott", scenario="zebra").resolve()
    with pytest.raises(DatagenError, match="scenarios belong to catalogue PDEs"):
        GenerationConfig(spec=catalogue.fisher(), scenario="front").resolve()


def test_cli_list_shows_scenarios_and_refuses_unknown_ones(tmp_path):
    from datagen.cli import main

    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["list"]) == 0
    text = buf.getvalue()
    for sc in ("paper:", "front:", "spots:", "maze:", "waves:", "pdebench:", "steepening:", "coarsening:", "crossing:"):
        assert sc in text
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["generate", "fisher", "--scenario", "nope", "--out", str(tmp_path), "--quiet"]) == 2
    assert "fisher has no scenario 'nope'; choose one of: paper, front" in err.getvalue()
    assert not list(tmp_path.iterdir())


def test_fisher_fronts_advance_at_the_minimal_speed(tmp_path):
    # a strip across the fronts: the same physics on 128 x 4 cells
    u, ds = _solve(tmp_path, "fisher", "front", n=2, grid={"shape": [128, 4], "extent": [12.8, 0.4]})
    a, r = 0.01, 1.0
    assert -1e-6 <= u.min() and u.max() <= 1.0 + 1e-6  # data in [0, 1]
    invaded = u[:, :, 0].mean(axis=-1).sum(axis=-1) * 0.1  # the integral of u along x
    t = ds.time.values
    i, j = np.searchsorted(t, 5.0), len(t) - 1
    speed = (invaded[:, j] - invaded[:, i]) / (t[j] - t[i]) / 2  # two fronts
    # a logarithmic delay makes finite-time speeds approach 2 sqrt(a r) from below
    assert speed == pytest.approx(2 * np.sqrt(a * r), rel=0.05)
    assert np.all(speed < 2 * np.sqrt(a * r))


def _radial_spectrum(f):
    n = f.shape[0]
    p = np.abs(np.fft.fft2(f - f.mean())) ** 2
    k = np.fft.fftfreq(n) * n
    kr = np.rint(np.hypot(k[:, None], k[None, :])).astype(int)
    return np.bincount(kr.ravel(), p.ravel()) / np.maximum(np.bincount(kr.ravel()), 1)


@pytest.mark.slow
@pytest.mark.parametrize("scenario, most", [("spots", 0.60), ("maze", 0.60)])
def test_gray_scott_patterns(tmp_path, scenario, most):
    u, _ = _solve(tmp_path, "gray_scott", scenario)
    v = u[0, -1, 1]
    spec = _radial_spectrum(v)[: v.shape[0] // 2]
    peak = int(np.argmax(spec))
    assert peak >= 3, peak  # a pattern of several wavelengths per side, not a blob
    assert spec[peak] > 5 * spec[1:].mean()
    covered = float((v > 0.1).mean())
    assert 0.05 <= covered <= most, covered


@pytest.mark.slow
def test_allen_cahn_separates_into_phases(tmp_path):
    u, _ = _solve(tmp_path, "allen_cahn", n=2)
    assert np.abs(u[:, 0]).max() < 0.5  # small random data
    assert (np.abs(u[:, -1]) > 0.9).mean(axis=(1, 2, 3)).min() >= 0.9


def _periodic_distance_from(mask):
    """Distance (cells) of each cell from the nearest True cell of ``mask`` on a periodic grid."""
    n, m = mask.shape
    tiled = np.tile(~mask, (3, 3))
    return ndimage.distance_transform_edt(tiled)[n:2 * n, m:2 * m]


@pytest.mark.slow
def test_fitzhugh_nagumo_waves_propagate(tmp_path):
    u, _ = _solve(tmp_path, "fitzhugh_nagumo", n=2)
    n = u.shape[-1]
    for traj in u:
        excited = traj[:, 0] > 0.0
        start = _periodic_distance_from(excited[0])
        reach = max(float(start[e].max()) if e.any() else 0.0 for e in excited)
        assert reach >= 0.1 * n, reach  # the excited region travels at least a tenth of the domain
        assert excited[-1].mean() < 0.5  # and the medium recovers behind it


@pytest.mark.slow
def test_burgers_steepens_then_decays(tmp_path):
    u, ds = _solve(tmp_path, "burgers", n=3)
    dx = float(ds.x.values[1] - ds.x.values[0])
    for traj in u[:, :, 0]:
        g = np.array([np.hypot(*np.gradient(f, dx)).max() for f in traj])
        assert g.max() >= 5 * g[0], g.max() / g[0]
        assert g[-1] < 0.5 * g.max()


@pytest.mark.slow
@pytest.mark.parametrize("pde", list(catalogue.CATALOGUE))
def test_every_default_scenario_moves(tmp_path, pde):
    u, _ = _solve(tmp_path, pde)
    assert _rel(u[0, -1], u[0, 0]) >= 0.3


def test_validation_warnings_fit_the_scenario(tmp_path):
    """The paper's sin-cos data are signed by design and validate ok; negative Fisher data that no
    scenario declares (the paper's modes shifted down, or sin-cos modes under the front scenario)
    still warn."""
    from datagen import Grid

    small = Grid((32, 32)).to_dict()
    paper = datagen.generate(GenerationConfig(pde="fisher", n_trajectories=2, steps=3, grid=small),
                             tmp_path / "paper.h5")
    rep = datagen.validate(paper)
    assert rep.verdict() == "ok", rep.warnings
    assert "by design" in rep.facts["signed_by_design"]
    shifted = datagen.generate(GenerationConfig(pde="fisher", n_trajectories=2, steps=3, grid=small,
                                                initial={"name": "sincos", "offset": -0.5}), tmp_path / "shifted.h5")
    front = datagen.generate(GenerationConfig(pde="fisher", scenario="front", n_trajectories=2, steps=3, grid=small,
                                              initial={"name": "sincos"}), tmp_path / "front.h5")
    for path in (shifted, front):
        rep = datagen.validate(path)
        assert rep.verdict() == "warnings" and any("start with negative values" in w for w in rep.warnings)
