import json

import pytest

from datagen import PDE, DatagenError, Derivative, Term, catalogue


@pytest.mark.parametrize("name", list(catalogue.CATALOGUE))
def test_json_round_trip_of_every_catalogue_entry(name):
    pde = catalogue.make_pde(name)
    again = PDE.from_json(pde.to_json())
    assert again == pde
    assert again.expression() == pde.expression()
    assert json.loads(pde.to_json())["parameters"] == catalogue.CATALOGUE[name].defaults


def test_expressions_read_like_the_equations():
    assert catalogue.fisher().expression() == "u_t = 0.01*(u_xx + u_yy) + u - u^2"
    assert catalogue.heat(0.5).expression() == "u_t = 0.5*(u_xx + u_yy)"
    gs = catalogue.gray_scott().expression().splitlines()
    assert gs[0] == "u_t = 2e-05*(u_xx + u_yy) - u*v^2 + 0.04 - 0.04*u"
    assert gs[1] == "v_t = 1e-05*(v_xx + v_yy) + u*v^2 - 0.1*v"
    assert catalogue.burgers().expression() == "u_t = 0.01*(u_xx + u_yy) - u*u_x - u*u_y"


def test_structure_queries():
    b = catalogue.burgers()
    assert b.degree == 2 and b.max_order == 2
    assert Derivative("u", (1, 0)) in b.derivatives()
    assert catalogue.gray_scott().degree == 3


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"name": "x", "fields": ["u"]}, "lacks key"),
        ({"name": "x", "fields": ["u"], "rhs": {"v": []}}, "must map each field"),
        ({"name": "x", "fields": ["u"], "rhs": {"u": [{"coeff": 1.0, "factors": [["w", [0, 0]]]}]}}, "unknown field 'w'"),
        ({"name": "x", "fields": ["u"], "rhs": {"u": [{"coeff": 1.0, "factors": [["u", [-1, 0]]]}]}}, "non-negative"),
        ({"name": "x", "fields": ["u"], "rhs": {"u": [{"factors": []}]}}, "malformed term"),
        ({"name": "x", "fields": ["u"], "rhs": {"u": [{"coeff": "nan"}]}}, "not a finite number"),
        ({"name": "x", "fields": ["u", "u"], "rhs": {"u": []}}, "repeats"),
    ],
)
def test_malformed_specs_get_clear_errors(spec, match):
    with pytest.raises(DatagenError, match=match):
        PDE.from_dict(spec)


def test_bad_json_and_bad_terms():
    with pytest.raises(DatagenError, match="not valid JSON"):
        PDE.from_json("{")
    with pytest.raises(DatagenError, match="one sequence"):
        PDE("x", ("u",), (Term(1.0, ()),))


def test_catalogue_parameter_errors():
    with pytest.raises(DatagenError, match="unknown PDE 'fishr'"):
        catalogue.make_pde("fishr")
    with pytest.raises(DatagenError, match="no parameter 'b'.*a=0.01"):
        catalogue.make_pde("fisher", {"b": 1})
    with pytest.raises(DatagenError, match="must be numbers"):
        catalogue.make_pde("fisher", {"a": "fast"})
