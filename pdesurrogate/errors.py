"""Exception and warning types of ``pdesurrogate``."""


class SurrogateError(ValueError):
    """Bad input or an impossible request; the message says what is wrong and how to fix it."""


class StabilityWarning(UserWarning):
    """A model's integrator cannot step the data's dt stably (see :mod:`pdesurrogate.stability`)."""
