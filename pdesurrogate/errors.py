"""Exception type of ``pdesurrogate``."""


class SurrogateError(ValueError):
    """Bad input or an impossible request; the message says what is wrong and how to fix it."""
