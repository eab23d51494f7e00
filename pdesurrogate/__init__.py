"""pdesurrogate: stencil-aware convolutional ResNet surrogates of PDE time steps (torch)."""

__version__ = "0.1.0"
