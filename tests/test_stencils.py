import findiff
import numpy as np
import pytest

from conftest import observed_order
from datagen import Grid, SemiDiscrete
from datagen.pde import PDE, Derivative, Term
from datagen.stencils import central_stencil, fornberg_weights, kernel2d, laplacian_kernel, matrix_1d


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("acc", [2, 4, 6])
def test_weights_match_findiff(order, acc):
    offs, w = central_stencil(order, acc)
    ref = findiff.coefficients(deriv=order, acc=acc)["center"]
    np.testing.assert_array_equal(offs, ref["offsets"])
    ref_w = np.asarray(ref["coefficients"], float)
    # findiff solves a floating-point Vandermonde system, so its weights carry round-off of about
    # cond * eps relative to the largest weight (-1.26e-13 for an exact zero in findiff 0.16); ours
    # are exact rationals, so compare at the reference's round-off, not at ours.
    np.testing.assert_allclose(w, ref_w, rtol=0, atol=1e-10 * np.abs(ref_w).max())
    # exact arithmetic keeps the symmetry that the reference only approximates
    np.testing.assert_array_equal(w, (-1) ** order * w[::-1])


def test_fornberg_known_values_and_one_sided():
    assert [float(v) for v in fornberg_weights(2, [-1, 0, 1])] == [1.0, -2.0, 1.0]
    # one-sided first derivative, second order: (-3, 4, -1) / 2
    assert [float(v) for v in fornberg_weights(1, [0, 1, 2])] == [-1.5, 2.0, -0.5]
    np.testing.assert_array_equal(laplacian_kernel(), [[0, 1, 0], [1, -4, 1], [0, 1, 0]])
    k = kernel2d((1, 1), 2, (0.5, 0.25))
    np.testing.assert_allclose(k, np.outer([-0.5, 0, 0.5], [-0.5, 0, 0.5]) / (0.5 * 0.25))


def _op(order):
    return PDE("op", ("u",), ((Term(1.0, (Derivative("u", order),)),),))


def _lap():
    return PDE("lap", ("u",), ((Term(1.0, (Derivative("u", (2, 0)),)), Term(1.0, (Derivative("u", (0, 2)),))),))


# smooth periodic test function and its exact derivatives (x-, y-orders)
def _f(X, Y):
    return np.exp(np.sin(2 * np.pi * X)) * np.cos(2 * np.pi * Y)


def _exact(X, Y, order):
    s, c = np.sin(2 * np.pi * X), np.cos(2 * np.pi * X)
    e = np.exp(s)
    k = 2 * np.pi
    fx = {0: e, 1: k * c * e, 2: k * k * (c * c - s) * e}
    fy = {0: np.cos(k * Y), 1: -k * np.sin(k * Y), 2: -k * k * np.cos(k * Y)}
    if order == "lap":
        return fx[2] * fy[0] + fx[0] * fy[2]
    return fx[order[0]] * fy[order[1]]


@pytest.mark.parametrize("acc", [2, 4, 6])
@pytest.mark.parametrize("order", [(1, 0), (0, 1), (2, 0), (1, 1), "lap"])
def test_convergence_order_periodic(acc, order):
    ns = [32, 48, 64, 96]
    errs, hs = [], []
    for n in ns:
        g = Grid((n, n))
        X, Y = g.meshgrid()
        sd = SemiDiscrete(_lap() if order == "lap" else _op(order), g, accuracy=acc)
        approx = sd(_f(X, Y)[None])[0]
        errs.append(np.abs(approx - _exact(X, Y, order)).max())
        hs.append(g.dx)
    p = observed_order(errs, hs)
    assert abs(p - acc) < 0.2, (errs, p)


@pytest.mark.parametrize("boundary, acc", [("dirichlet", 2), ("dirichlet", 4), ("neumann", 2), ("neumann", 4)])
def test_ghost_cells_keep_the_order_at_walls(boundary, acc):
    # sin vanishes at Dirichlet walls (odd extension smooth); cos has zero slope at Neumann walls
    errs, hs = [], []
    for n in [16, 32, 64]:
        g = Grid((n, n), boundary=boundary)
        X, Y = g.meshgrid()
        b = np.sin if boundary == "dirichlet" else np.cos
        u = b(np.pi * X) * b(2 * np.pi * Y)
        lap = -(np.pi ** 2 + 4 * np.pi ** 2) * u
        errs.append(np.abs(SemiDiscrete(_lap(), g, accuracy=acc)(u[None])[0] - lap).max())
        hs.append(g.dx)
    assert abs(observed_order(errs, hs) - acc) < 0.2, errs


def test_dirichlet_wall_value_enters_as_the_boundary_data():
    g = Grid((9, 9), boundary="dirichlet", boundary_value=2.0)
    u = np.full((1, 9, 9), 2.0)  # constant equal to the wall value: zero Laplacian everywhere
    np.testing.assert_allclose(SemiDiscrete(_lap(), g)(u), 0.0, atol=1e-9)
    x = g.x
    # linear in x between walls 2 (x=0) and 2 (x=1) is not harmonic unless constant; check the ghost rule
    p = g.pad(u[0][None], 2)[0]
    np.testing.assert_allclose(p[1, 2:-2], 2.0)  # wall node
    assert x[0] == pytest.approx(0.1)


def test_spectral_derivatives_are_exact_for_band_limited_data():
    g = Grid((32, 32))
    X, Y = g.meshgrid()
    u = np.sin(2 * np.pi * 3 * X) * np.cos(2 * np.pi * 2 * Y)
    sd = SemiDiscrete(_lap(), g, method="spectral")
    np.testing.assert_allclose(sd(u[None])[0], -(4 * np.pi ** 2) * 13 * u, atol=1e-10)


@pytest.mark.parametrize("boundary", ["periodic", "dirichlet", "neumann"])
def test_sparse_matrices_equal_the_stencil_operator(boundary, rng):
    g = Grid((11, 9), boundary=boundary)
    for order in [(2, 0), (0, 1), (1, 1), (0, 4)]:
        sd = SemiDiscrete(_op(order), g, accuracy=4)
        u = rng.standard_normal((1, 11, 9))
        A = sp_op = sd._operator(order)
        np.testing.assert_allclose((A @ u.ravel()).reshape(u.shape), sd(u), rtol=1e-12, atol=1e-9)
        assert sp_op.nnz < 11 * 9 * 30
    assert matrix_1d(g, 0, 2, 2).shape == (11, 11)
