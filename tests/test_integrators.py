import numpy as np
import pytest

from conftest import observed_order, rel_l2
from datagen import ETDRK4, RK4, DatagenError, Euler, GenerationConfig, Grid, ScipyIVP, SemiDiscrete, catalogue
from datagen.generate import solve_batch
from datagen.initial import Front, SinCos
from datagen.integrators import make_integrator, max_stable_step


def _heat_mode(n, boundary="periodic"):
    g = Grid((n, n), boundary=boundary)
    X, Y = g.meshgrid()
    return g, np.sin(2 * np.pi * 3 * X) * np.cos(2 * np.pi * 2 * Y)


def test_heat_single_mode_spectral_etdrk4_is_exact():
    a, T = 0.01, 0.25
    g, u0 = _heat_mode(32)
    sd = SemiDiscrete(catalogue.heat(a), g, method="spectral")
    u = ETDRK4(sd, dt=T / 10).rollout(u0[None], 10)[-1, 0]
    exact = np.exp(-a * (2 * np.pi) ** 2 * 13 * T) * u0
    assert rel_l2(u, exact) < 1e-10


@pytest.mark.parametrize("acc", [2, 4])
def test_heat_fd_converges_with_the_stencil_order(acc):
    a, T = 0.01, 0.25
    errs, hs = [], []
    for n in (24, 32, 48, 64):
        g, u0 = _heat_mode(n)
        sd = SemiDiscrete(catalogue.heat(a), g, accuracy=acc)
        u = ETDRK4(sd, dt=T).step(u0[None])[0]  # exact in time for a linear problem
        errs.append(rel_l2(u, np.exp(-a * (2 * np.pi) ** 2 * 13 * T) * u0))
        hs.append(g.dx)
    assert abs(observed_order(errs, hs) - acc) < 0.2, errs


@pytest.mark.parametrize("cls, order, subs", [(Euler, 1, (40, 80, 160)), (RK4, 4, (16, 32, 64))])
def test_time_order_of_explicit_methods(cls, order, subs):
    a, T = 0.01, 0.2
    g, u0 = _heat_mode(32)
    sd = SemiDiscrete(catalogue.heat(a), g, method="spectral")
    exact = np.exp(-a * (2 * np.pi) ** 2 * 13 * T) * u0
    errs = [rel_l2(cls(sd, T, n).step(u0[None])[0], exact) for n in subs]
    assert abs(observed_order(errs, [T / n for n in subs]) - order) < 0.2, errs


@pytest.mark.parametrize("acc", [2, 4])
def test_advection_matches_the_exact_shift(acc):
    cx, cy, T = 1.0, 0.5, 0.3
    pde = catalogue.advection(cx, cy)

    def f(X, Y):
        return np.exp(np.sin(2 * np.pi * X)) * np.cos(2 * np.pi * Y)

    errs, hs = [], []
    for n in (32, 48, 64, 96):
        g = Grid((n, n))
        X, Y = g.meshgrid()
        sd = SemiDiscrete(pde, g, accuracy=acc)
        u = make_integrator("rk4", sd, T, "auto").step(f(X, Y)[None])[0]
        errs.append(rel_l2(u, f(X - cx * T, Y - cy * T)))
        hs.append(g.dx)
    assert abs(observed_order(errs, hs) - acc) < 0.2, errs


def _paper_u0(n_traj, grid):
    return np.stack([SinCos(5, 8).sample(grid, 1, np.random.default_rng(s)) for s in range(n_traj)])


def _independent_fisher(u0, a, r, dt, steps, fine=2, sub=8):
    """Integrating-factor RK4, pseudo-spectral on a grid `fine` times finer (its own code path)."""
    n = u0.shape[-1]
    m = n * fine
    uh = np.fft.rfft2(u0)
    big = np.zeros(u0.shape[:-2] + (m, m // 2 + 1), complex)
    big[..., : n // 2, : n // 2 + 1] = uh[..., : n // 2, :]
    big[..., -n // 2:, : n // 2 + 1] = uh[..., -n // 2:, :]
    big *= fine * fine
    k = 2 * np.pi * np.fft.fftfreq(m, d=1.0 / m)
    kr = 2 * np.pi * np.fft.rfftfreq(m, d=1.0 / m)
    L = -a * (k[:, None] ** 2 + kr[None, :] ** 2) + r
    h = dt / sub
    E, E2 = np.exp(h * L), np.exp(h * L / 2)

    def N(vh):
        v = np.fft.irfft2(vh, s=(m, m))
        return -r * np.fft.rfft2(v * v)

    v = big
    for _ in range(steps * sub):
        k1 = N(v)
        k2 = N(E2 * (v + h / 2 * k1))
        k3 = N(E2 * v + h / 2 * k2)
        k4 = N(E * v + h * E2 * k3)
        v = E * v + h / 6 * (E * k1 + 2 * E2 * (k2 + k3) + k4)
    return np.fft.irfft2(v, s=(m, m))[..., ::fine, ::fine]


@pytest.mark.slow
def test_fisher_paper_setting_reference_path_against_independent_fine_solve():
    cfg = GenerationConfig(n_trajectories=3, batch_size=3).resolve()
    assert (cfg.integrator, cfg.method) == ("etdrk4", "spectral")
    assert cfg.dt == pytest.approx(0.24 * 0.01 ** 2 / 0.01, rel=1e-15)
    import json

    traj = solve_batch(json.dumps(cfg.to_dict(), sort_keys=True), 0, 3)
    g = Grid((100, 100))
    from datagen.generate import trajectory_rng
    u0 = np.stack([SinCos(5, 8).sample(g, 1, trajectory_rng(0, "train", i)) for i in range(3)])
    np.testing.assert_array_equal(traj[:, 0], u0.astype(np.float32))
    # the file stores float32; compare the float64 path to reach 1e-6 honestly
    sd = SemiDiscrete(catalogue.fisher(), g, method="spectral")
    u40 = ETDRK4(sd, cfg.dt).rollout(u0, 40)[:, -1]
    ref = _independent_fisher(u0, 0.01, 1.0, cfg.dt, 40)
    err = rel_l2(u40, ref)
    assert err < 1e-6, err
    assert rel_l2(traj[:, -1], ref) < 1e-6  # float32 storage keeps it


def test_fisher_euler_five_point_equals_direct_numpy_scheme():
    g = Grid((100, 100))
    a, dt = 0.01, 0.24 * g.dx ** 2 / 0.01
    u0 = _paper_u0(2, g)
    ours = Euler(SemiDiscrete(catalogue.fisher(a), g, accuracy=2), dt, substeps=3).rollout(u0, 40)
    u = u0[:, 0].copy()
    h = dt / 3
    for _ in range(40 * 3):
        lap = (np.roll(u, 1, -2) + np.roll(u, -1, -2) + np.roll(u, 1, -1) + np.roll(u, -1, -1) - 4 * u) / g.dx ** 2
        u = u + h * (a * lap + u - u * u)
    assert np.abs(ours[:, -1, 0] - u).max() <= 1e-13 * np.abs(u).max()


@pytest.mark.slow
def test_fisher_front_travels_at_the_minimal_speed():
    a, r = 1.0, 1.0
    L, n = 240.0, 960
    g = Grid((n, 5), extent=(L, 5 * L / n), boundary="neumann")
    sd = SemiDiscrete(catalogue.fisher(a, r), g, accuracy=4)
    step = make_integrator("rk4", sd, 1.0, "auto")
    u = Front(position=10 / L, width=1 / L).sample(g, 1, np.random.default_rng(0))[None]
    pos = {}
    for t in range(1, 101):
        u = step.step(u)
        if t in (50, 100):
            prof = u[0, 0, :, 1]
            i = int(np.argmax(prof < 0.5))
            x0, x1 = g.x[i - 1], g.x[i]
            pos[t] = x0 + (prof[i - 1] - 0.5) / (prof[i - 1] - prof[i]) * (x1 - x0)
    speed = (pos[100] - pos[50]) / 50
    assert abs(speed - 2 * np.sqrt(a * r)) / (2 * np.sqrt(a * r)) < 0.02, speed
    assert speed < 2 * np.sqrt(a * r)  # fronts approach the minimal speed from below (Bramson)


@pytest.mark.parametrize("name", ["gray_scott", "fitzhugh_nagumo"])
def test_two_field_systems_stay_bounded_with_defaults(name):
    cfg = GenerationConfig(pde=name, grid=Grid((48, 48)).to_dict(), n_trajectories=2, batch_size=2).resolve()
    import json

    traj = solve_batch(json.dumps(cfg.to_dict(), sort_keys=True), 0, 2)
    assert np.all(np.isfinite(traj))
    if name == "gray_scott":
        assert traj.min() > -0.05 and traj.max() < 1.05
    else:
        assert np.abs(traj).max() < 2.0
    assert np.abs(traj[:, -1] - traj[:, 0]).max() > 1e-3  # it did evolve


@pytest.mark.parametrize("name", ["gray_scott", "fitzhugh_nagumo"])
def test_stiff_bdf_agrees_with_explicit_rk4(name):
    entry = catalogue.get(name)
    g = Grid((24, 24))
    pde = catalogue.make_pde(name)
    sd = SemiDiscrete(pde, g, accuracy=2)
    dt = entry.dt(g)
    sampler = __import__("datagen").make_sampler(entry.initial)
    u0 = sampler.sample(g, 2, np.random.default_rng(3))[None]
    # well inside the stability region, so the explicit run is accurate too
    explicit = make_integrator("rk4", sd, dt, 4 * RK4.auto_substeps(sd, dt)).rollout(u0, 5)
    stiff = ScipyIVP(sd, dt, "BDF", rtol=1e-9, atol=1e-11).rollout(u0, 5)
    assert rel_l2(stiff[:, -1], explicit[:, -1]) < 1e-6


def test_unstable_explicit_step_is_refused_with_the_largest_stable_dt():
    g = Grid((100, 100))
    sd = SemiDiscrete(catalogue.fisher(), g)
    hmax = max_stable_step(sd, "euler")
    assert hmax == pytest.approx(0.25 * g.dx ** 2 / 0.01, rel=1e-9)  # 5-point: dx^2 / (4 a)
    with pytest.raises(DatagenError, match=r"largest stable dt=0\.0025\b.*substeps >= 2"):
        Euler(sd, 0.003)
    Euler(sd, 0.003, substeps=2)  # two substeps are stable
    with pytest.raises(DatagenError, match="unstable .* at any step size"):
        Euler(SemiDiscrete(catalogue.advection(), g), 0.001)
    assert max_stable_step(SemiDiscrete(catalogue.advection(), g), "rk4") == pytest.approx(2 * np.sqrt(2) * g.dx, rel=1e-3)


def test_jacobian_matches_finite_differences(rng):
    for name in ("burgers", "gray_scott"):
        pde = catalogue.make_pde(name)
        for boundary in ("periodic", "dirichlet", "neumann"):
            g = Grid((12, 10), boundary=boundary)
            sd = SemiDiscrete(pde, g, accuracy=4)
            u = rng.random((pde.n_fields, 12, 10))
            du = rng.standard_normal(u.shape)
            e = 1e-6
            fd = (sd(u + e * du) - sd(u - e * du)) / (2 * e)
            jv = sd.jacobian(u) @ du.ravel()
            assert rel_l2(jv, fd.ravel()) < 1e-7


def test_etdrk4_refuses_walls_and_state_shape_is_checked():
    with pytest.raises(DatagenError, match="periodic"):
        ETDRK4(SemiDiscrete(catalogue.heat(), Grid((8, 8), boundary="neumann")), 0.1)
    with pytest.raises(DatagenError, match="spectral method needs a periodic grid"):
        SemiDiscrete(catalogue.heat(), Grid((8, 8), boundary="dirichlet"), method="spectral")
    with pytest.raises(DatagenError, match="does not fit"):
        SemiDiscrete(catalogue.heat(), Grid((8, 8)))(np.zeros((1, 2, 8, 8)))


@pytest.mark.parametrize("name, boundary", [("fisher", "periodic"), ("burgers", "dirichlet"), ("gray_scott", "neumann")])
def test_numba_backend_agrees_with_numpy_to_round_off(name, boundary, rng):
    pytest.importorskip("numba")
    pde = catalogue.make_pde(name)
    g = Grid((20, 18), boundary=boundary, boundary_value=0.5)
    a = SemiDiscrete(pde, g, accuracy=4)
    b = SemiDiscrete(pde, g, accuracy=4, backend="numba")
    u = rng.random((3, pde.n_fields, 20, 18))
    assert np.abs(a(u) - b(u)).max() <= 1e-13 * np.abs(a(u)).max()
    dt = min(0.5 * max_stable_step(a, "euler"), 0.05)  # resolve the reaction too
    ua, ub = Euler(a, dt, 2).rollout(u, 10), Euler(b, dt, 2).rollout(u, 10)
    assert np.abs(ua - ub).max() <= 1e-12 * np.abs(ua).max()
    with pytest.raises(DatagenError, match="numba.*supports"):
        SemiDiscrete(pde, Grid((20, 18)), method="spectral", backend="numba")


@pytest.mark.parametrize("name, acc, dtype", [("fisher", 2, np.float32), ("gray_scott", 4, np.float64)])
def test_numba_fused_euler_rollout_is_the_step_by_step_rollout_bit_for_bit(name, acc, dtype, rng):
    # one sweep per substep over a padded state kept between substeps, frames stored as made
    from datagen.integrators import rollout

    pytest.importorskip("numba")
    pde = catalogue.make_pde(name)
    sd = SemiDiscrete(pde, Grid((20, 18)), accuracy=acc, backend="numba")
    stepper = Euler(sd, 3 * min(0.5 * max_stable_step(sd, "euler"), 0.05), 3)  # resolve the reaction too
    u = rng.random((3, pde.n_fields, 20, 18))
    want, want_last = rollout(stepper.step, u, 7, np.empty((3, 8, pde.n_fields, 20, 18), dtype))
    got, last = stepper.run(u, 7, np.empty((3, 8, pde.n_fields, 20, 18), dtype))
    assert np.isfinite(want).all() and not np.array_equal(want[:, 1], want[:, 0])
    assert np.array_equal(got, want) and np.array_equal(last, want_last)
    assert np.array_equal(stepper.run(u[:1], 2)[0], rollout(stepper.step, u[:1], 2)[0])  # another batch size


@pytest.mark.parametrize("name, method, acc", [("fisher", "fd", 4), ("fisher", "fd", 6), ("advection", "fd", 2),
                                               ("burgers", "spectral", 0), ("gray_scott", "fd", 2)])
def test_etdrk4_converges_to_the_same_semi_discrete_flow_as_rk4(name, method, acc):
    # real, complex (advection) and coupled (Gray-Scott) symbols: ETDRK4 is fourth order in time
    g = Grid((32, 32))
    pde = catalogue.make_pde(name)
    sd = SemiDiscrete(pde, g, accuracy=acc or 2, method=method)
    entry = catalogue.get(name)
    dt = entry.dt(g)
    u0 = __import__("datagen").make_sampler(entry.initial).sample(g, pde.n_fields, np.random.default_rng(1))[None]
    ref = RK4(sd, dt, 8 * RK4.auto_substeps(sd, dt)).rollout(u0, 5)[:, -1]
    errs = [rel_l2(ETDRK4(sd, dt, s).rollout(u0, 5)[:, -1], ref) for s in (4, 8)]
    # fourth order, unless already exact in time (a linear problem) to the reference's accuracy
    assert errs[1] < 1e-6 and (errs[0] / errs[1] > 8 or errs[0] < 1e-7), errs


NUMBA_PROBE = """
import sys, numpy as np
from datagen import SemiDiscrete, Grid, catalogue
sd = SemiDiscrete(catalogue.fisher(), Grid((12, 10)), accuracy=2, backend="numba")
u = np.random.default_rng(0).random((2, 1, 12, 10))
ref = SemiDiscrete(catalogue.fisher(), Grid((12, 10)), accuracy=2).euler_update(u, 1e-3)
assert np.abs(sd.euler_update(u, 1e-3) - ref).max() <= 1e-15
print(sum(f.name.startswith("datagen_kernel") for f in __import__("pathlib").Path(sys.argv[1]).rglob("*.nbi")))
"""


def test_numba_kernels_are_cached_between_processes_and_work_without_a_cache(tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("numba")
    cache = tmp_path / "cache"
    env = {**os.environ, "DATAGEN_CACHE_DIR": str(cache)}
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", NUMBA_PROBE, str(cache)], env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "1"  # one kernel: the second process loaded what the first compiled
    index = next(cache.rglob("*.nbi"))
    stamp = index.stat().st_mtime_ns
    subprocess.run([sys.executable, "-c", NUMBA_PROBE, str(cache)], env=env, check=True, capture_output=True)
    assert index.stat().st_mtime_ns == stamp  # not recompiled
    # an unwritable cache folder: compiled in the process, same numbers
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    env["DATAGEN_CACHE_DIR"] = str(blocked)
    p = subprocess.run([sys.executable, "-c", NUMBA_PROBE, str(tmp_path)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_space_discretisations_and_integrators_are_registered_by_name(tmp_path, rng):
    import pickle
    from dataclasses import dataclass

    from datagen.initial import SAMPLERS, Sampler, make_sampler
    from datagen.integrators import INTEGRATORS
    from datagen.semidiscrete import METHODS, FiniteDifference, Spectral

    pde, g = catalogue.fisher(), Grid((16, 12))
    assert METHODS == ("fd", "spectral") and INTEGRATORS == ("euler", "rk4", "etdrk4", "bdf", "radau", "rk45")
    fd, sp = SemiDiscrete(pde, g, 4), SemiDiscrete(pde, g, method="spectral")
    assert type(fd) is FiniteDifference and type(sp) is Spectral and isinstance(sp, SemiDiscrete)
    u = rng.random((2, 1, 16, 12))
    assert np.array_equal(pickle.loads(pickle.dumps(sp))(u), sp(u))  # workers receive operators by pickle
    assert np.array_equal(FiniteDifference(pde, g, 4)(u), fd(u))
    with pytest.raises(DatagenError, match="needs method='fd'"):
        sp.jacobian(u[0])
    with pytest.raises(DatagenError, match="FiniteDifference is method 'fd', not 'spectral'"):
        FiniteDifference(pde, g, method="spectral")
    stepper = make_integrator("radau", fd, 0.01)
    assert type(stepper) is ScipyIVP and stepper.method == "Radau"
    assert type(make_integrator("rk4", fd, 0.01, "auto")) is RK4

    @dataclass(frozen=True)
    class Ridge(Sampler):  # a user's own initial data: defining it is registering it
        name = "test_ridge"
        height: float = 0.5

        def _one(self, grid, rng):
            return self.height * np.exp(-((grid.meshgrid()[0] - rng.uniform(0.3, 0.7)) / 0.1) ** 2)

    with pytest.raises(DatagenError, match="initial condition name 'sincos' is taken by datagen.initial.SinCos"):
        @dataclass(frozen=True)
        class MySinCos(Sampler):  # would have replaced the built-in silently
            name = "sincos"

            def _one(self, grid, rng):
                return np.zeros(grid.shape)
    assert SAMPLERS["sincos"] is __import__("datagen").initial.SinCos
    try:
        assert SAMPLERS["test_ridge"] is Ridge and make_sampler({"name": "test_ridge", "height": 2}).height == 2.0
        cfg = GenerationConfig(pde="heat", n_trajectories=2, steps=2, grid={"shape": (16, 16)},
                               initial={"name": "test_ridge", "height": 0.25})
        frames = solve_batch(__import__("json").dumps(cfg.resolve().to_dict(), sort_keys=True), 0, 2)
        assert 0.2 < frames[:, 0].max() <= 0.25
        path = __import__("datagen").generate(cfg, tmp_path / "ridge.h5")
        assert __import__("datagen").validate(path, deep=1).ok
    finally:
        SAMPLERS.pop("test_ridge", None)
    # without the class (a fresh process), regenerating says so in one line (not "malformed metadata")
    __import__("datagen").solver._build.cache_clear()
    with pytest.raises(DatagenError, match="unknown initial condition 'test_ridge'.*registers its name"):
        __import__("datagen").validate(path, deep=1)


def test_implicit_integrators_solve_the_whole_horizon_in_one_call_per_trajectory(monkeypatch, rng):
    import scipy.integrate

    calls = []
    real = scipy.integrate.solve_ivp
    monkeypatch.setattr(scipy.integrate, "solve_ivp", lambda *a, **k: calls.append(1) or real(*a, **k))
    stepper = make_integrator("bdf", SemiDiscrete(catalogue.heat(), Grid((8, 8))), 0.01)
    u = rng.random((2, 1, 8, 8))
    frames, last = stepper.run(u, 4)
    assert len(calls) == 2 and frames.shape == (2, 5, 1, 8, 8) and np.array_equal(frames[:, -1], last)
    assert np.array_equal(stepper.rollout(u, 4), frames)
