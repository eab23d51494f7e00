"""pdesurrogate: stencil-aware convolutional ResNet surrogates of PDE time steps (torch).

Reads the PDE spec and stencils of :mod:`datagen`; never the other way round.
"""

from .activations import PowerReLU, signed_power
from .bound import error_bound
from .data import WindowDataset, receptive_halo
from .diagnostics import effective_stencil, fd_stencil, stencil_distance
from .errors import StabilityWarning, SurrogateError
from .evaluation import evaluate, relative_to, rollout_error, summarize, constant_state_growth
from .exact import embed, exact_channels, exact_surrogate
from .gauss_newton import step_jacobian
from .identify import Identified, identify, identify_data
from .integrators import INTEGRATORS
from .learn import Recipe, data_start, learn, train
from .lipschitz import lipschitz_estimate
from .membership import witness_in_class
from .checkpoint import load, save
from .model import Surrogate, SurrogateConfig, build_surrogate
from .published import KEY_MAP, load_published, published_config
from .split import error_split, split_verdict
from .stencil_conv import BoundaryPad, StencilConv2d
from .allocator import malloc_tuned
from .losses import window_loss
from .fit_options import FitOptions
from .training import fit
from .vector_field import ConvVectorField
from .version import __version__
from .witness import default_witness


__all__ = [
    "PowerReLU", "signed_power", "StabilityWarning", "effective_stencil", "fd_stencil", "stencil_distance", "SurrogateError",
    "exact_channels", "exact_surrogate", "embed", "INTEGRATORS", "Surrogate", "SurrogateConfig", "build_surrogate",
    "load", "save", "KEY_MAP", "load_published", "published_config", "BoundaryPad", "StencilConv2d",
    "ConvVectorField", "evaluate", "summarize", "error_split", "default_witness", "witness_in_class",
    "lipschitz_estimate", "rollout_error", "error_bound", "split_verdict", "relative_to", "constant_state_growth",
    "step_jacobian", "identify_data", "Recipe", "data_start", "learn",
    "train", "identify", "Identified", "WindowDataset", "receptive_halo", "fit", "FitOptions", "window_loss", "malloc_tuned",
    "__version__",
]
