"""PDEs typed as text: the spec they parse to, and one-line errors for anything outside the class."""

import numpy as np
import pytest
import torch

import datagen
import pdesurrogate as ps
from datagen import DatagenError, Grid, catalogue, parse_pde


def _canon(pde):
    return [sorted((t.coeff, tuple((d.field, d.order) for d in t.factors)) for t in eq) for eq in pde.rhs]


def test_fisher_as_text_is_the_catalogue_spec():
    for text, params in (("u_t = 0.01*(u_xx + u_yy) + u - u**2", {}),
                         ("u_t = a*(u_xx + u_yy) + r*u*(1 - u)", {"a": 0.01, "r": 1.0})):
        pde = parse_pde(text, params=params, name="fisher")
        assert pde.fields == ("u",) and _canon(pde) == _canon(catalogue.fisher())
    # with its parameters by name, the typed spec is the catalogue's, term order included
    typed = parse_pde("u_t = a*(u_xx + u_yy) + r*u*(1 - u)", params={"a": 0.01, "r": 1.0}, name="fisher")
    assert typed == catalogue.fisher()
    g = Grid((16, 16))
    u0 = np.random.default_rng(0).random((2, 1, 16, 16))
    a = datagen.Euler(datagen.SemiDiscrete(parse_pde("u_t = 0.01*(u_xx + u_yy) + u - u**2"), g), 1e-3).rollout(u0, 3)
    b = datagen.Euler(datagen.SemiDiscrete(catalogue.fisher(), g), 1e-3).rollout(u0, 3)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("text, params", [
    ("u_t = Du*(u_xx + u_yy) + a - u + u**2*v; v_t = Dv*(v_xx + v_yy) + b - u**2*v",  # Schnakenberg
     {"Du": 0.01, "Dv": 0.2, "a": 0.1, "b": 0.9}),
    ("u_t = D1*(u_xx + u_yy) + A - (B + 1)*u + u**2*v\nv_t = D2*(v_xx + v_yy) + B*u - u**2*v",  # Brusselator
     {"D1": 0.01, "D2": 0.05, "A": 1.0, "B": 3.0}),
])
def test_user_systems_get_exact_networks(text, params):
    pde = parse_pde(text, params=params)
    g = Grid((16, 16))
    dt = 1e-3
    u0 = np.random.default_rng(1).random((2, 2, 16, 16))
    fd = datagen.Euler(datagen.SemiDiscrete(pde, g, accuracy=2), dt, 2).rollout(u0, 3)
    net = ps.exact_surrogate(pde, g, dt, substeps=2, dtype=torch.float64)
    out = net.rollout(torch.as_tensor(u0), 3).detach().numpy()
    assert np.abs(out - fd).max() <= 1e-12 * np.abs(fd).max()


@pytest.mark.parametrize("text, match", [
    ("u_t = sin(u)", "not a polynomial"),
    ("u_t = u/u_x", "not a polynomial"),
    ("u_t = u**0.5", "not a polynomial"),
    ("u_t = k*u_xx", "unknown name"),
    ("u = u_xx", "time derivative"),
    ("u_t = u_xx; u_t = u", "two equations"),
    ("", "no equation"),
])
def test_outside_the_class_is_a_one_line_error(text, match):
    with pytest.raises(DatagenError, match=match):
        parse_pde(text)


def test_typed_pdes_generate_validate_and_regenerate(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("datagen"))
    small = ["--grid", "32,32", "--steps", "5", "--quiet", "--splits", "train=3"]
    subprocess.run([exe, "generate", "--pde", "u_t = 0.01*(u_xx + u_yy) + u - u**2", "--ic", "sincos",
                    "--out", str(tmp_path / "typed"), *small], check=True)
    subprocess.run([exe, "generate", "fisher", "--out", str(tmp_path / "cat"), *small], check=True)
    typed, cat = (datagen.open_dataset(tmp_path / d, split="train")["u"].values for d in ("typed", "cat"))
    assert typed.tobytes() == cat.tobytes()  # the same spec gives the same bytes
    schnak = ("u_t = Du*(u_xx + u_yy) + a - u + u**2*v; v_t = Dv*(v_xx + v_yy) + b - u**2*v")
    p = subprocess.run([exe, "generate", "--pde", schnak, "--param", "Du=0.01,Dv=0.2,a=0.1,b=0.9", "--name",
                        "schnakenberg", "--out", str(tmp_path / "s"), *small, "--ic", "fourier",
                        "--ic-param", "amplitude=0.1,offset=1.0"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    path = tmp_path / "s" / "data" / "train" / "schnakenberg.hdf5"
    assert datagen.validate(path).ok
    assert datagen.validate(path, deep=1, seed=0).ok  # regenerated from the stored spec, byte for byte
    prov = datagen.read_provenance(path)
    assert prov["config"]["spec"]["fields"] == ["u", "v"] and prov["pde"]["name"] == "schnakenberg"
    p = subprocess.run([exe, "generate", "--pde", "u_t = sin(u)", "--out", str(tmp_path / "bad"), *small],
                       capture_output=True, text=True)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "not a polynomial" in p.stderr
