"""glibc's malloc thresholds for training processes (opt-in: a library call leaves its caller's
process alone; ``pdesurrogate train`` turns it on in its own)."""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

__all__ = ["malloc_tuned"]

_MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_malloc_depth = 0


@contextmanager
def malloc_tuned(enabled: bool = True) -> Iterator[bool]:
    """Within this block glibc's malloc serves blocks of up to 32 MB from its heap and keeps the
    freed ones for reuse (yields True).

    torch frees and allocates the same few-MB temporaries many times per training iteration;
    glibc maps blocks above its (adaptive) threshold afresh and trims the heap's free top, paying
    page faults each time. This sets ``M_MMAP_THRESHOLD`` to 32 MB (glibc's ceiling, where its
    own adaptation ends) and ``M_TRIM_THRESHOLD`` to 2 GB with ``mallopt``. At the block's end
    the mmap threshold stays at 32 MB and the trim threshold goes to 64 MB, twice that, as
    glibc's adaptation would set them after freeing a 32 MB block, so the process returns its
    free memory again (glibc has no call that restores the adaptation). Yields False and
    changes nothing off glibc, when ``enabled`` is False, or where the environment sets malloc's
    thresholds itself (``MALLOC_*_``, ``GLIBC_TUNABLES``).
    """
    global _malloc_depth
    libc = None
    if enabled and not _malloc_depth and not any(k in os.environ for k in _MALLOC_VARS):
        try:
            if os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
                libc = ctypes.CDLL(None)
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (AttributeError, OSError, ValueError):
            libc = None
    if libc is None:
        yield bool(_malloc_depth)
        return
    _malloc_depth += 1
    try:
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
        yield bool(ok)
    finally:
        _malloc_depth -= 1
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
