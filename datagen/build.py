"""A resolved configuration's PDE, grid, stepper and initial-data sampler, built once per
configuration (cached on its JSON text): what the solver and the config's own checks share."""

from __future__ import annotations

import json
from functools import lru_cache

from . import catalogue
from .grid import Grid
from .initial import make_sampler
from .integrators import make_integrator
from .pde import PDE
from .semidiscrete import SemiDiscrete

__all__ = ["build"]


@lru_cache(maxsize=8)
def build(cfg_json: str):
    """``(pde, grid, stepper, sampler)`` of a resolved config's JSON text."""
    cfg = json.loads(cfg_json)
    pde = PDE.from_dict(cfg["spec"]) if cfg.get("spec") else catalogue.make_pde(cfg["pde"], cfg["params"])
    grid = Grid.from_dict(cfg["grid"])
    sd = SemiDiscrete(pde, grid, accuracy=cfg["accuracy"] or 2, method=cfg["method"], backend=cfg["backend"])
    stepper = make_integrator(cfg["integrator"], sd, cfg["dt"], cfg["substeps"], rtol=cfg["rtol"], atol=cfg["atol"])
    return pde, grid, stepper, make_sampler(cfg["initial"])
