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
    # with the catalogue's time scale (0.24 dx^2 / a) given, as the catalogue entry has it
    subprocess.run([exe, "generate", "--pde", "u_t = 0.01*(u_xx + u_yy) + u - u**2", "--ic", "sincos",
                    "--dt-factor", "0.24", "--out", str(tmp_path / "typed"), *small], check=True)
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


# -- hostile texts: nothing is evaluated, every size is bounded ---------------------------------

def test_pde_text_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    # full-width letters fold to ASCII identifiers under NFKC, sympy's subs evaluates a string, and
    # octal escapes hide the names inside it from a name filter: sympify ran this text
    subs = "".join(chr(ord(c) + 0xFEE0) for c in "subs")
    code = "".join("\\" + format(ord(c), "o") for c in f"open('{marker}', 'w')")
    attacks = [
        f'u_t = 0.01*u_xx + u.{subs}(u, "{code}") - u**2',
        f"u_t = u.subs(u, \"__import__('pathlib').Path('{marker}').touch()\")",
        f"u_t = __import__('pathlib').Path('{marker}').touch()",
        "u_t = u.__class__",
        "u_t = (lambda: 1)()",
        "u_t = [u for u in u]",
    ]
    for text in attacks:
        with pytest.raises(DatagenError):
            parse_pde(text)
    assert not marker.exists()


def test_scientific_notation_is_a_number():
    pde = parse_pde("u_t = 1e-2*(u_xx + u_yy) + 2.5E+0*u - .5*u**2")
    coeffs = sorted(t.coeff for t in pde.rhs[0])
    assert coeffs == [-0.5, 0.01, 0.01, 2.5]


@pytest.mark.parametrize("text", ["u_t = u**99999999", "u_t = 9**9**9**9*u", "u_t = (u+u_x+u_y+u_xx+u_yy)**60",
                                  "u_t = " + "+".join(["u"] * 9000), "u_t = " + "(" * 5000 + "u" + ")" * 5000,
                                  "u_t = u_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                                  "u_t = (u + u_x + u_y + u_xx + u_yy + u_xy)**8",
                                  "u_t = 1e308*1e308*u", "u_t = u/0", "u_t = (-8)**0.5*u"])
def test_huge_texts_fail_fast_in_one_line(text):
    import time

    t0 = time.perf_counter()
    with pytest.raises(DatagenError) as err:
        parse_pde(text)
    assert time.perf_counter() - t0 < 2.0
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_parameters_cannot_shadow_fields_derivatives_or_attributes():
    for bad, match in (("n_trajectories", "reserved"), ("u_xx", "derivative"), ("u", "both a field"),
                       ("datagen_batches_done", "reserved"), ("provenance", "reserved"), ("u_t", "time derivative"),
                       ("sin", "reserved")):
        with pytest.raises(DatagenError, match=match):
            parse_pde(f"u_t = {bad}*u_xx" if bad != "u" else "u_t = u_xx", params={bad: 0.01})
    with pytest.raises(DatagenError, match="finite"):
        parse_pde("u_t = a*u_xx", params={"a": float("nan")})


def test_parser_fuzz_only_raises_its_own_one_line_error():
    import time

    rng = np.random.default_rng(20261203)
    atoms = ["u", "v", "u_x", "u_yy", "v_xy", "a", "2", "1e-3", ".5", "3E+2", "(", ")", "+", "-", "*", "/", "**", "^",
             " ", "sin", "u_t", "=", ";", "9", "__import__", ".", ",", "'", '"', "[", "]", "lambda", "e", "99999"]
    alphabet = [chr(c) for c in range(32, 127)] + ["\u00e9", "\uff53", "\u0000", "\u200b", "\U0001f600", "\n", "\t"]
    worst = 0.0
    for case in range(3000):
        kind = case % 4
        if kind == 0:
            body = "".join(rng.choice(atoms, size=rng.integers(1, 30)))
        elif kind == 1:
            body = "".join(rng.choice(alphabet, size=rng.integers(1, 60)))
        elif kind == 2:
            d = int(rng.integers(1, 200))
            body = "(" * d + "u" + ")" * int(rng.integers(0, d + 2)) + "**" + str(rng.integers(0, 10 ** 6))
        else:
            body = "*".join(["(u+u_x+v)"] * int(rng.integers(1, 12))) + "+u" * int(rng.integers(0, 3000))
        text = f"u_t = {body}" if case % 3 else body
        t0 = time.perf_counter()
        try:
            pde = parse_pde(text, fields=None, params={"a": 0.5})
        except DatagenError as exc:
            assert "\n" not in str(exc), text
        else:
            assert all(t.degree <= datagen.limits.MAX_DEGREE for eq in pde.rhs for t in eq)
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 1.0
