"""Optional compiled backend for finite-difference right-hand sides (needs numba).

The PDE's polynomial is turned into the source of one loop nest over (batch, x, y) that reads a
ghost-padded array, evaluates each derivative from its stencil and combines the terms, so every
substep is one pass over memory instead of one numpy pass per operation. Results agree with the
numpy backend to round-off (the order of additions differs), so the backend is part of a
dataset's provenance.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DatagenError
from .stencils import central_stencil

__all__ = ["available", "compile_rhs", "cache_dir"]


def available() -> bool:
    """Whether numba can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _source(sd, fused: bool) -> str:
    pde, R = sd.pde, sd.radius
    dx, dy = sd.grid.spacing
    fi = {f: k for k, f in enumerate(pde.fields)}
    lines = []
    names = {}
    for k, d in enumerate(sd.derivs):
        c = fi[d.field]
        i, j = d.order
        ox, wx = central_stencil(i, sd.accuracy)
        oy, wy = central_stencil(j, sd.accuracy)
        parts = []
        for a, wa in zip(ox, wx):
            for b, wb in zip(oy, wy):
                w = wa * wb
                if w != 0.0:
                    parts.append(f"{float(w)!r}*P[n,{c},i+{R + a},j+{R + b}]")
        scale = 1.0 / (dx ** i * dy ** j)
        lines.append(f"                d{k} = ({' + '.join(parts)})" + (f"*{float(scale)!r}" if scale != 1.0 else ""))
        names[d] = f"d{k}"
    for c, terms in enumerate(pde.rhs):
        expr = " + ".join(
            f"({float(t.coeff)!r})" + "".join(f"*{names[d]}" for d in t.factors) for t in terms
        ) or "0.0"
        target = f"out[n,{c},i,j]"
        if fused:
            lines.append(f"                {target} = P[n,{c},i+{R},j+{R}] + h*({expr})")
        else:
            lines.append(f"                {target} = {expr}")
    body = "\n".join(lines)
    return (
        "def kernel(P, out, h):\n"
        "    for n in numba.prange(out.shape[0]):\n"
        "        for i in range(out.shape[2]):\n"
        "            for j in range(out.shape[3]):\n"
        f"{body}\n"
    )


def cache_dir() -> Path:
    """Where compiled kernels are kept between processes: ``$DATAGEN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/datagen`` (``~/.cache/datagen``)."""
    root = os.environ.get("DATAGEN_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "datagen"


def _cached_kernel(source: str):
    """The kernel of ``source`` from a module file named by its hash, compiled with numba's
    on-disk cache, so a fresh process loads it instead of compiling (about 2 s); ``None`` when
    the cache folder cannot be written."""
    import importlib.util

    import numba

    digest = hashlib.sha256((source + numba.__version__).encode()).hexdigest()[:20]
    name = f"datagen_kernel_{digest}"
    folder = cache_dir() / "numba"
    path = folder / f"{name}.py"
    text = "import numba\n\n\n@numba.njit(cache=True, error_model='numpy')\n" + source
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            tmp.write_text(text)
            os.replace(tmp, path)  # concurrent processes write the same text: either one wins
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # numba's cache re-imports the kernel's module by name
        spec.loader.exec_module(module)
    except OSError:
        return None
    return module.kernel


def compile_rhs(sd, fused: bool) -> Callable[[np.ndarray, float], np.ndarray]:
    """``f(U, h)`` returning ``U + h F(U)`` (``fused``) or ``F(U)``, compiled for this operator."""
    if sd.method != "fd":
        raise DatagenError("the numba backend supports method='fd' only")
    try:
        import numba
    except ImportError:
        raise DatagenError("backend 'numba' needs numba: pip install numba (or the [fast] extra)") from None
    kernel = _cached_kernel(_source(sd, fused))
    if kernel is None:  # no writable cache folder: compile in this process only
        ns: dict = {"numba": numba}
        exec(compile(_source(sd, fused), "<datagen-numba-kernel>", "exec"), ns)
        kernel = numba.njit(error_model="numpy")(ns["kernel"])
    R = max(sd.radius, 0)
    periodic = sd.grid.boundary == "periodic"
    ghost: dict = {}  # the padded buffer, kept between calls of one shape (no fresh pages per substep)

    def f(U: np.ndarray, h: float = 1.0) -> np.ndarray:
        lead = U.shape[:-3]
        U4 = U.reshape((-1,) + U.shape[-3:])
        if periodic and R:
            nx, ny = U4.shape[-2:]
            shape = U4.shape[:2] + (nx + 2 * R, ny + 2 * R)
            P = ghost.get((shape, U4.dtype))
            if P is None:
                P = ghost[(shape, U4.dtype)] = np.empty(shape, U4.dtype)
            # periodic ghost cells by five block copies
            P[..., R:R + nx, R:R + ny] = U4
            P[..., :R, R:R + ny] = U4[..., nx - R:, :]
            P[..., R + nx:, R:R + ny] = U4[..., :R, :]
            P[..., :R] = P[..., ny:ny + R]
            P[..., R + ny:] = P[..., R:2 * R]
        else:
            P = np.ascontiguousarray(sd.grid.pad(U4, R)) if R else np.ascontiguousarray(U4)
        out = np.empty_like(U4)
        kernel(P, out, h)
        return out.reshape(lead + U.shape[-3:])

    return f
