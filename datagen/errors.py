"""Exception types shared by the whole of ``datagen``."""


class DatagenError(ValueError):
    """Bad input or an impossible request; the message says what is wrong and how to fix it.

    The command-line interface prints these as one line and exits with status 2.
    """
