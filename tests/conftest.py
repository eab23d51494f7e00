import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def rel_l2(a, b):
    """Relative L2 error of a against reference b."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def observed_order(errors, hs):
    """Least-squares slope of log(error) against log(h)."""
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])
