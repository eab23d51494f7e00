import numpy as np
import pytest
import torch

import datagen
import pdesurrogate as ps
from datagen import Euler, Grid, SemiDiscrete, catalogue
from pdesurrogate.stencil_conv import moment_matrix

ANCHORS = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "anchors" / "predicting-pixel-data"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_signed_power_is_the_power(p):
    x = torch.randn(10000, dtype=torch.float64) * 10
    x[:5] = torch.tensor([0.0, -0.0, 1e-300, -1e300 ** 0.25, 3.0], dtype=torch.float64)
    torch.testing.assert_close(ps.signed_power(x, p), x ** p, rtol=1e-15, atol=0)
    with pytest.raises(ValueError):
        ps.signed_power(x, 0)


def test_power_relu_per_channel():
    act = ps.PowerReLU([1, 2, 3, 2])
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    y = act(x)
    for c, p in enumerate([1, 2, 3, 2]):
        torch.testing.assert_close(y[:, c], torch.relu(x[:, c]) ** p, rtol=0, atol=0)
    with pytest.raises(ValueError, match="channels"):
        act(torch.randn(1, 3, 2, 2))


@pytest.mark.parametrize("boundary", ["periodic", "dirichlet", "neumann"])
def test_boundary_padding_equals_datagen_ghost_cells(boundary, rng):
    g = Grid((7, 6), boundary=boundary, boundary_value=(0.7, -0.2))
    u = rng.standard_normal((2, 2, 7, 6))
    for R in (1, 2, 3):
        ours = ps.BoundaryPad(boundary, R, (0.7, -0.2))(torch.from_numpy(u)).numpy()
        np.testing.assert_array_equal(ours, g.pad(u, R))


# -- exact construction -------------------------------------------------------------------
CASES = [(name, b) for name in catalogue.CATALOGUE for b in ("periodic", "dirichlet", "neumann")
         if not (name == "advection" and b != "periodic")]


@pytest.mark.parametrize("name, boundary", CASES)
@pytest.mark.parametrize("accuracy", [2, 4])
def test_exact_surrogate_equals_datagen_euler_step(name, boundary, accuracy, rng):
    pde = catalogue.make_pde(name)
    bv = (1.0, 0.0) if pde.n_fields == 2 else 0.5
    g = Grid((21, 17), extent=(1.0, 0.8), boundary=boundary, boundary_value=bv)
    sd = SemiDiscrete(pde, g, accuracy=accuracy)
    dt = 1e-3
    net = ps.exact_surrogate(pde, g, dt, substeps=3, accuracy=accuracy)
    u = (2 * rng.random((3, pde.n_fields, 21, 17)) - 1) * 1e3  # far outside [0, 1]
    ref = Euler(sd, dt, 3, check_stability=False).step(u)
    out = net(torch.from_numpy(u)).detach().numpy()
    assert np.linalg.norm(out - ref) <= 1e-12 * np.linalg.norm(ref)
    # and F itself, one Euler substep at a time
    F = net.vector_field(torch.from_numpy(u)).detach().numpy()
    assert np.linalg.norm(F - sd(u)) <= 1e-12 * np.linalg.norm(sd(u))


def test_exact_surrogate_over_the_paper_fisher_rollout():
    g = Grid((100, 100))
    dt = 0.24 * g.dx ** 2 / 0.01
    pde = catalogue.fisher()
    u0 = np.stack([datagen.initial.SinCos().sample(g, 1, np.random.default_rng(i)) for i in range(2)])
    ref = Euler(SemiDiscrete(pde, g), dt, 3).rollout(u0, 40)
    net = ps.exact_surrogate(pde, g, dt, substeps=3)
    with torch.no_grad():
        out = net.rollout(torch.from_numpy(u0), 40).numpy()
    diff, refs = (out - ref).reshape(2, 41, -1), ref.reshape(2, 41, -1)
    err = np.linalg.norm(diff, axis=-1) / np.linalg.norm(refs, axis=-1)
    assert err.max() < 1e-12, err.max()
    assert net.vector_field.hidden == 4 and net.info["hidden_channels"] == 4


def test_hidden_channel_counts_are_reported():
    g = Grid((16, 16))
    counts = {n: ps.exact_surrogate(catalogue.make_pde(n), g, 1e-3).vector_field.hidden for n in catalogue.CATALOGUE}
    assert counts["heat"] == 2 and counts["fisher"] == 4 and counts["allen_cahn"] == 4
    assert counts["gray_scott"] <= 16 and counts["burgers"] <= 14


def test_terms_outside_the_class_are_named():
    from datagen.pde import PDE, Derivative, Term

    u = Derivative("u")
    quintic = PDE("q", ("u",), ((Term(1.0, (u,) * 5),),))
    with pytest.raises(ps.SurrogateError, match=r"term 'u\^5' of u_t has degree 5"):
        ps.exact_surrogate(quintic, Grid((8, 8)), 0.1)
    assert ps.exact_surrogate(quintic, Grid((8, 8)), 0.1, max_degree=5).vector_field.hidden > 0
    with pytest.raises(ps.SurrogateError, match="needs a datagen PDE"):
        ps.exact_surrogate("fisher", Grid((8, 8)), 0.1)


# -- constraints --------------------------------------------------------------------------
def _train(model, steps=100, lr=1e-2, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    x = torch.randn(4, model.vector_field.n_fields, 12, 12, dtype=torch.float64)
    target = torch.randn_like(x)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
    return model


def test_moment_constrained_kernels_keep_their_moments():
    spacing = (0.1, 0.1)
    m = ps.build_surrogate(n_fields=1, hidden=6, kernel_size=5, powers=(1, 2), init="stencil", constraint="moments",
                           spacing=spacing, dt=0.01, seed=1).double()
    conv = m.vector_field.conv1
    before = conv.kernel.detach().clone()  # physical kernels: weights in grid units times 1/dx^p dy^q
    _train(m)
    after = conv.kernel.detach()
    assert not torch.allclose(before, after)  # it did learn
    for (o, i), (order, acc) in conv.orders.items():
        deg = sum(order) + acc - 1
        A = moment_matrix(5, deg, spacing)
        target = A @ before[o, i].numpy().ravel()
        got = A @ after[o, i].numpy().ravel()
        scale = np.abs(A).max(axis=1) * np.abs(before[o, i].numpy()).sum()
        assert np.all(np.abs(got - target) <= 1e-12 * np.maximum(scale, 1.0)), (order, got - target)
    # a derivative stencil stays consistent: moments 0..|order| are those of d^order
    k = after[2, 0].numpy()  # channel 2 holds +d^2/dx^2 (channels come in sign pairs)
    A = moment_matrix(5, 2, spacing)
    mom = A @ k.ravel()
    expect = np.zeros(len(mom))
    expect[5] = 1.0  # rows run (0,0) (0,1) (0,2) (1,0) (1,1) (2,0); (2,0): sum K a^2/2 = 1
    np.testing.assert_allclose(mom, expect, atol=1e-9)


def test_frozen_kernels_do_not_change():
    m = ps.build_surrogate(n_fields=1, hidden=4, kernel_size=3, init="stencil", constraint="frozen", dt=0.01).double()
    before = m.vector_field.conv1.weight.detach().clone()
    _train(m, steps=20)
    torch.testing.assert_close(m.vector_field.conv1.weight, before, rtol=0, atol=0)


@pytest.mark.parametrize("integrator", ["euler", "heun", "rk4"])
def test_mass_preserving_surrogate_conserves_the_sum(integrator):
    m = ps.build_surrogate(n_fields=2, hidden=6, kernel_size=3, powers=(1, 2, 3), mass_preserving=True,
                           integrator=integrator, substeps=2, dt=0.01, seed=3).double()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.3)
        u = torch.rand(3, 2, 16, 16, dtype=torch.float64)
        mass0 = u.sum(dim=(-2, -1))
        for _ in range(1000):
            u = m(u)
        assert torch.isfinite(u).all()
        torch.testing.assert_close(u.sum(dim=(-2, -1)), mass0, rtol=1e-12, atol=0)
    assert m.vector_field.conv2.bias is None
    with pytest.raises(ps.SurrogateError, match="periodic"):
        ps.build_surrogate(mass_preserving=True, boundary="neumann")


def test_an_unconstrained_surrogate_does_not_conserve_mass():
    m = ps.build_surrogate(n_fields=1, hidden=4, kernel_size=3, powers=(2,), dt=0.01, seed=3).double()
    u = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert abs(float(m(u).sum() - u.sum())) > 1e-6


def test_projected_euler_keeps_the_norm():
    m = ps.build_surrogate(n_fields=1, hidden=2, kernel_size=5, powers=(1,), integrator="projected_euler", substeps=3,
                           dt=0.1, seed=0).double()
    u = torch.randn(4, 1, 20, 20, dtype=torch.float64)
    n0 = torch.linalg.vector_norm(u.flatten(1), dim=1)
    with torch.no_grad():
        traj = m.rollout(u, 50)
    norms = torch.linalg.vector_norm(traj.flatten(2), dim=2)
    torch.testing.assert_close(norms, n0[:, None].expand_as(norms), rtol=1e-13, atol=0)
    assert not torch.allclose(traj[:, -1], u)


# -- config, checkpoints, integrator switching ---------------------------------------------
def test_config_round_trip_and_errors():
    cfg = ps.SurrogateConfig(n_fields=2, hidden=6, powers=(1, 2, 3), dt=0.5, boundary="neumann")
    assert ps.SurrogateConfig.from_dict(cfg.to_dict()) == cfg
    m = ps.build_surrogate(cfg.to_dict())
    assert m.vector_field.act.powers == (1, 2, 3, 1, 2, 3)
    for bad, match in [({"integrator": "leapfrog"}, "unknown integrator"), ({"hidden": 0}, "hidden"),
                       ({"init": "magic"}, "unknown init"), ({"constraint": "moments"}, "needs init='stencil'"),
                       ({"kernel_size": 4}, "odd"), ({"what": 1}, "unknown surrogate option")]:
        with pytest.raises(ps.SurrogateError, match=match):
            ps.build_surrogate(**bad)


def test_same_seed_same_weights():
    a, b = ps.build_surrogate(seed=7), ps.build_surrogate(seed=7)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    assert not torch.equal(ps.build_surrogate(seed=8).vector_field.conv1.weight, a.vector_field.conv1.weight)


@pytest.mark.parametrize("kw", [dict(init="stencil", constraint="moments", spacing=(0.5, 0.5)),
                                dict(mass_preserving=True), dict()])
def test_save_load_rollout_identical(tmp_path, kw):
    m = ps.build_surrogate(n_fields=1, hidden=6, kernel_size=5, powers=(1, 2), dt=0.01, substeps=3, seed=2, **kw).double()
    _train(m, steps=5)
    path = ps.save(m, tmp_path / "ck" / "m.pt", provenance={"note": "test"})
    back = ps.load(path, dtype=torch.float64)
    u = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        expected = m.rollout(u, 5)
        assert torch.isfinite(expected).all()
        torch.testing.assert_close(back.rollout(u, 5), expected, rtol=0, atol=0)
    assert back.provenance == {"note": "test"} and back.config == m.config


def test_exact_surrogate_checkpoint_and_switching_integrator(tmp_path):
    g = Grid((24, 24))
    pde = catalogue.fisher()
    dt = 0.24 * g.dx ** 2 / 0.01
    net = ps.exact_surrogate(pde, g, dt, substeps=3)
    path = ps.save(net, tmp_path / "exact.pt")
    u0 = np.stack([datagen.initial.SinCos().sample(g, 1, np.random.default_rng(0))])
    x = torch.from_numpy(u0)
    rk = ps.load(path, integrator="rk4", substeps=1, dtype=torch.float64)
    assert (rk.integrator, rk.substeps, rk.dt) == ("rk4", 1, dt) and rk.config.integrator == "rk4"
    with torch.no_grad():
        ours = rk(x).numpy()
    ref = datagen.RK4(SemiDiscrete(pde, g), dt, 1).step(u0)
    assert np.linalg.norm(ours - ref) <= 1e-12 * np.linalg.norm(ref)
    # more substeps of the same vector field converge towards the semi-discrete flow
    exact_flow = datagen.RK4(SemiDiscrete(pde, g), dt, 20).step(u0)
    with torch.no_grad():
        errs = [np.linalg.norm(net.with_integrator("euler", s)(x).numpy() - exact_flow) for s in (3, 6, 12)]
    assert errs[0] > errs[1] > errs[2] and errs[0] / errs[2] > 3


def test_bad_checkpoints_get_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ps.SurrogateError, match="not a readable checkpoint"):
        ps.load(tmp_path / "junk.pt")
    torch.save({"F.0.weight": torch.zeros(2, 1, 5, 5)}, tmp_path / "bare.pt")
    with pytest.raises(ps.SurrogateError, match="not a pdesurrogate checkpoint"):
        ps.load(tmp_path / "bare.pt")
    m = ps.build_surrogate(hidden=4)
    path = ps.save(m, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"] = payload["config"].replace('"hidden": 4', '"hidden": 5')
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ps.SurrogateError, match="weights do not match its config"):
        ps.load(tmp_path / "mismatch.pt")
    with pytest.raises(ps.SurrogateError, match="no such file"):
        ps.load(tmp_path / "missing.pt")


# -- published baselines ------------------------------------------------------------------
@pytest.mark.skipif(not ANCHORS.exists(), reason="published weights are not beside the project")
@pytest.mark.parametrize("name", sorted(p.name for p in ANCHORS.glob("*.pt")) if ANCHORS.exists() else [])
def test_published_weights_load_and_roll_out(name):
    path = ANCHORS / name
    m = ps.load_published(path)
    sd = torch.load(path, weights_only=True)
    for k, v in sd.items():
        torch.testing.assert_close(m.state_dict()[ps.KEY_MAP[k]], v, rtol=0, atol=0)
    g = Grid((32, 32))
    u0 = torch.from_numpy(datagen.initial.SinCos(1, 3).sample(g, 1, np.random.default_rng(0))[None]).float()
    with torch.no_grad():
        traj = m.rollout(u0, 5)
        # the same computation written out by hand with torch.nn.functional
        F = torch.nn.functional
        act = (lambda z: torch.relu(z) ** 2) if name.startswith("Fisher") else torch.relu

        def field(u):
            z = F.conv2d(F.pad(u, (2, 2, 2, 2), mode="circular"), sd["F.0.weight"], sd["F.0.bias"])
            return F.conv2d(F.pad(act(z), (2, 2, 2, 2), mode="circular"), sd["F.2.weight"], sd.get("F.2.bias"))

        u = u0
        for _ in range(3):
            v = u + (m.dt / 3) * field(u)
            if "Preserve" in name and "NoPreserve" not in name:
                v = v * torch.linalg.vector_norm(u0) / torch.linalg.vector_norm(v)
            u = v
    assert traj.shape == (1, 6, 1, 32, 32) and torch.isfinite(traj).all()
    torch.testing.assert_close(traj[:, 1], u, rtol=1e-5, atol=1e-6)


def test_published_names_and_errors(tmp_path):
    assert ps.published_config("FisherNoise.pt")["powers"] == (2,)
    assert ps.published_config("LinadvPreserveNoise.pt")["integrator"] == "projected_euler"
    assert ps.published_config("LinadvNoPreserveNoise.pt")["integrator"] == "euler"
    with pytest.raises(ps.SurrogateError, match="not a published network"):
        ps.published_config("Other.pt")
    torch.save({"F.0.weight": torch.zeros(3, 1, 5, 5)}, tmp_path / "HeatBroken.pt")
    with pytest.raises(ps.SurrogateError, match="do not fit"):
        ps.load_published(tmp_path / "HeatBroken.pt")


# -- diagnostics --------------------------------------------------------------------------
def test_effective_stencil_of_exact_networks_is_the_fd_stencil():
    g = Grid((50, 50))
    heat = ps.exact_surrogate(catalogue.heat(0.01), g, 1e-3)
    S = ps.effective_stencil(heat.vector_field)
    ref = 0.01 * datagen.stencils.laplacian_kernel(2, g.spacing)
    assert ps.stencil_distance(S[0, 0], ref) < 1e-9
    adv = ps.exact_surrogate(catalogue.advection(1.0, 0.5), g, 1e-3, accuracy=4)
    S = ps.effective_stencil(adv.vector_field)
    ref = -(ps.fd_stencil((1, 0), 5, 4, g.spacing) + 0.5 * ps.fd_stencil((0, 1), 5, 4, g.spacing))
    assert ps.stencil_distance(S[0, 0], ref) < 1e-9
    assert ps.stencil_distance(S[0, 0], -ref) > 1.9  # orientation matters
    # Fisher linearised at u = 1/2: a Lap + (1 - 2u) = a Lap
    fis = ps.exact_surrogate(catalogue.fisher(), g, 1e-3)
    S = ps.effective_stencil(fis.vector_field, state=0.5)
    assert ps.stencil_distance(S[0, 0], 0.01 * datagen.stencils.laplacian_kernel(2, g.spacing)) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pointwise_convolution_paths_agree(dtype, rng):
    conv = ps.StencilConv2d(4, 3, kernel_size=1).to(dtype)
    with torch.no_grad():
        conv.bias.normal_()
        x = torch.from_numpy(rng.standard_normal((2, 4, 9, 7))).to(dtype)
        ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
        torch.testing.assert_close(conv(x), ref, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=1e-6)


def test_bad_arguments_and_tampered_files_get_surrogate_errors(tmp_path):
    m = ps.build_surrogate(hidden=2, kernel_size=3)
    with pytest.raises(ps.SurrogateError, match="n_steps=-3"):
        m.rollout(torch.zeros(1, 1, 8, 8), -3)
    with pytest.raises(ps.SurrogateError, match="finite"):
        ps.build_surrogate(dt=float("inf"))
    path = ps.save(m, tmp_path / "m.pt")
    with pytest.raises(ps.SurrogateError, match="substeps=0"):
        ps.load(path, substeps=0)
    payload = torch.load(path, weights_only=True)
    payload["info"] = "{not json"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ps.SurrogateError, match="not valid JSON"):
        ps.load(tmp_path / "bad.pt")
    torch.save({"F.0.weight": "text"}, tmp_path / "FisherNoNoise.pt")
    with pytest.raises(ps.SurrogateError, match="not a tensor"):
        ps.load_published(tmp_path / "FisherNoNoise.pt")


def _plain_periodic(x, weight, bias, radius):
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (radius,) * 4, mode="circular"), weight, bias)


@pytest.mark.parametrize("channels", [(1, 10), (10, 1), (3, 4)])
def test_periodic_convolution_gradients_pass_gradcheck(channels):
    # the hand-written backward (adjoint input gradient; FFT or swapped-role weight gradients)
    from pdesurrogate.stencil_conv import _PeriodicConv

    g = torch.Generator().manual_seed(7)
    i, o = channels
    x = torch.randn(2, i, 9, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(o, i, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(o, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _PeriodicConv.apply(x, w, b, 2), (x, w, b))


@pytest.mark.parametrize("channels", [(1, 10), (10, 1)])
def test_float32_periodic_gradients_match_float64_autograd(channels):
    # float32 takes its own weight-gradient route for many-to-few channels: compare it with
    # torch's autograd of the plain padded convolution in float64
    g = torch.Generator().manual_seed(3)
    i, o = channels
    conv = ps.StencilConv2d(i, o, 5)
    x64 = torch.randn(4, i, 40, 36, dtype=torch.float64, generator=g)
    w64 = torch.randn(o, i, 5, 5, dtype=torch.float64, generator=g)
    b64 = torch.randn(o, dtype=torch.float64, generator=g)
    r64 = torch.randn(4, o, 40, 36, dtype=torch.float64, generator=g)
    with torch.no_grad():
        conv.weight.copy_(w64)
        conv.bias.copy_(b64)
    x32 = x64.float().requires_grad_(True)
    (conv(x32) * r64.float()).sum().backward()
    x, w, b = (t.clone().requires_grad_(True) for t in (x64, w64, b64))
    (_plain_periodic(x, w, b, 2) * r64).sum().backward()
    for got, ref in ((x32.grad, x.grad), (conv.weight.grad, w.grad), (conv.bias.grad, b.grad)):
        err = float((got.double() - ref).abs().max() / ref.abs().max())
        assert err < 3e-5, err


def _field_and_grads(vf, u, r):
    y = vf(u)
    return (y, *torch.autograd.grad((y * r).sum(), [u] + [p for p in vf.parameters()]))


@pytest.mark.parametrize("fields, powers, bias, batch, k2", [(1, 2, True, 5, 5), (1, 1, True, 3, 5),
                                                             (2, 3, False, 4, 5), (1, 2, True, 1, 5),
                                                             (1, 2, True, 5, 3), (2, 2, True, 3, 7)])
def test_fused_field_equals_layer_by_layer(fields, powers, bias, batch, k2):
    # the hand-written forward and backward of the whole field (widened grid, chunks of windows)
    # against the layer-by-layer modules and torch's autograd of their activation, in float64
    from pdesurrogate.passes import library_passes

    g = torch.Generator().manual_seed(11)
    vf = ps.ConvVectorField(fields, 6, 5, powers=(powers,), bias1=bias, bias2=bias, kernel_size2=k2).double()
    with torch.no_grad():
        for p in vf.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    u = torch.randn(batch, fields, 13, 11, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randn(batch, fields, 13, 11, generator=g, dtype=torch.float64)
    assert vf._fused_margin(u) == max(5, k2) // 2
    fused = _field_and_grads(vf, u, r)
    with library_passes(adjoint=True):
        assert vf._fused_margin(u) is None
        ref = _field_and_grads(vf, u, r)
    for a, b in zip(fused, ref):
        assert float((a - b).detach().abs().max() / b.detach().abs().max()) < 1e-13


def test_fused_field_passes_gradcheck_and_refuses_double_backward():
    from pdesurrogate.vector_field import _PeriodicField

    g = torch.Generator().manual_seed(5)
    args = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True)
            for s in ((3, 1, 7, 6), (4, 1, 3, 3), (4,), (1, 4, 3, 3), (1,))]
    for chunk in (1, 2, 3):
        assert torch.autograd.gradcheck(
            lambda u, w1, b1, w2, b2: _PeriodicField.apply(u, w1, b1, w2, b2, 2, 1, 1, chunk), args)
    wide = [args[0], torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64, requires_grad=True), *args[2:]]
    assert torch.autograd.gradcheck(lambda u, w1, b1, w2, b2: _PeriodicField.apply(u, w1, b1, w2, b2, 2, 2, 1, 2),
                                    wide)
    y = _PeriodicField.apply(*args, 2, 1, 1, 2)
    (gu,) = torch.autograd.grad(y.sum(), args[0], create_graph=True)
    with pytest.raises(RuntimeError):
        gu.sum().backward()


def test_fused_field_applies_only_where_it_is_exact():
    u = torch.zeros(2, 1, 12, 12)
    periodic = ps.ConvVectorField(1, 4, 5, powers=(2,))
    assert periodic._fused_margin(u) == 2
    assert periodic._fused_margin(torch.zeros(2, 1, 3, 12)) is None  # grid narrower than the widened margin
    assert ps.ConvVectorField(1, 4, 5, powers=(1, 2))._fused_margin(u) is None  # two activation powers
    assert ps.ConvVectorField(1, 4, 5, powers=(2,), kernel_size2=3)._fused_margin(u) == 2  # K2 narrower
    assert ps.ConvVectorField(1, 4, 5, powers=(2,), kernel_size2=1)._fused_margin(u) is None  # pointwise K2
    assert ps.ConvVectorField(1, 4, 5, powers=(2,), boundary="dirichlet")._fused_margin(u) is None
    with ps.build_surrogate(hidden=4, kernel_size=5, powers=(2,), dt=0.1).unpadded() as m:
        assert m.vector_field._fused_margin(u) is None  # cropped training steps with unpadded convolutions


def test_float32_fused_field_gradients_match_float64():
    g = torch.Generator().manual_seed(2)
    vf = ps.ConvVectorField(1, 10, 5, powers=(2,))
    u64 = torch.rand(8, 1, 40, 40, generator=g, dtype=torch.float64)
    r64 = torch.randn(8, 1, 40, 40, generator=g, dtype=torch.float64)
    got = _field_and_grads(vf, u64.float().requires_grad_(True), r64.float())
    ref = _field_and_grads(vf.double(), u64.requires_grad_(True), r64)
    for a, b in zip(got, ref):
        assert float((a.double() - b).detach().abs().max() / b.detach().abs().max()) < 3e-5


def test_a_config_written_with_the_old_field_count_name_still_loads():
    cfg = ps.SurrogateConfig(n_fields=2, hidden=6, dt=0.5).to_dict()
    assert "n_fields" in cfg and "fields" not in cfg
    old = {("fields" if k == "n_fields" else k): v for k, v in cfg.items()}
    assert ps.SurrogateConfig.from_dict(old) == ps.SurrogateConfig.from_dict(cfg)
    assert ps.build_surrogate(ps.SurrogateConfig.from_dict(old)).vector_field.n_fields == 2
