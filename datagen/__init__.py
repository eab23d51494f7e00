"""datagen: method-of-lines data for reaction-diffusion PDEs on 2-D grids, stored as HDF5.

numpy, scipy, h5py, pyyaml and ducc0 (FFTs) only; this package never imports torch.
"""

from . import catalogue
from .errors import DatagenError
from .generate import GenerationConfig, generate, generate_splits, solve
from .grid import Grid
from .initial import make_sampler
from .integrators import ETDRK4, RK4, Euler, ScipyIVP, make_integrator
from .modified import modified_equation
from .parse import parse_pde
from .pde import PDE, Derivative, Term
from .semidiscrete import SemiDiscrete
from .store import dataset_file, open_dataset, read_provenance
from .validation import validate
from .version import __version__

__all__ = [
    "catalogue", "DatagenError", "GenerationConfig", "generate", "generate_splits", "Grid", "make_sampler",
    "Euler", "RK4", "ETDRK4", "ScipyIVP", "make_integrator", "PDE", "Derivative", "Term", "SemiDiscrete",
    "open_dataset", "read_provenance", "validate", "dataset_file", "solve", "modified_equation", "parse_pde", "__version__",
]
