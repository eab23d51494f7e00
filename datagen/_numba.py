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
import stat
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DatagenError
from .safeio import write_atomic
from .stencils import central_stencil

__all__ = ["available", "compile_rhs", "compile_euler_rollout", "cache_dir"]


def available() -> bool:
    """Whether numba can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _source(sd, fused: bool, rollout: bool = False) -> str:
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
        if rollout:
            # into the next padded state, and on a saved step's last substep into its frame
            lines.append(f"                v = P[n,{c},i+{R},j+{R}] + h*({expr})")
            lines.append(f"                Q[n,{c},i+{R},j+{R}] = v")
            lines.append(f"                if store:\n                    F[n,t,{c},i,j] = v")
            continue
        target = f"out[n,{c},i,j]"
        if fused:
            lines.append(f"                {target} = P[n,{c},i+{R},j+{R}] + h*({expr})")
        else:
            lines.append(f"                {target} = {expr}")
    body = "\n".join(lines)
    if rollout:
        # the periodic ghost cells of sample n, while its rows are still in cache
        return (
            "def kernel(P, Q, h, F, t, store):\n"
            f"    R = {R}\n"
            "    nx, ny = Q.shape[2] - 2 * R, Q.shape[3] - 2 * R\n"
            "    for n in range(Q.shape[0]):\n"
            "        for i in range(nx):\n"
            "            for j in range(ny):\n"
            f"{body}\n"
            "        for c in range(Q.shape[1]):\n"
            "            for i in range(R):\n"
            "                for j in range(R, ny + R):\n"
            "                    Q[n, c, i, j] = Q[n, c, i + nx, j]\n"
            "                    Q[n, c, nx + R + i, j] = Q[n, c, R + i, j]\n"
            "            for i in range(nx + 2 * R):\n"
            "                for j in range(R):\n"
            "                    Q[n, c, i, j] = Q[n, c, i, j + ny]\n"
            "                    Q[n, c, i, ny + R + j] = Q[n, c, i, R + j]\n"
        )
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


def _check_private(folder: Path) -> None:
    """Refuse a kernel cache that anyone but this user could have written to: numba loads the
    pickled index files there, and Python the compiled modules, so a planted file would run."""
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise DatagenError(f"the kernel cache {folder} is not a plain folder; remove it or set DATAGEN_CACHE_DIR to a "
                           "private folder")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise DatagenError(f"the kernel cache {folder} belongs to another user (uid {st.st_uid}); set "
                           "DATAGEN_CACHE_DIR to a folder of your own")
    if st.st_mode & 0o022:
        raise DatagenError(f"the kernel cache {folder} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                           f"run chmod 700 {folder}, or set DATAGEN_CACHE_DIR to a private folder")


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
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_private(folder)
        if path.is_symlink() or not path.exists() or path.read_text() != text:
            write_atomic(path, text, sync=False)  # concurrent processes write the same text: either one wins
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # numba's cache re-imports the kernel's module by name
        spec.loader.exec_module(module)
    except OSError:
        return None
    return module.kernel


def _pad_periodic(U: np.ndarray, R: int, P: np.ndarray) -> None:
    """``U (..., nx, ny)`` into the interior of ``P (..., nx + 2R, ny + 2R)`` with its periodic
    ghost cells, by five block copies (a compiled per-row fill cost more than the stencil)."""
    nx, ny = U.shape[-2:]
    P[..., R:R + nx, R:R + ny] = U
    P[..., :R, R:R + ny] = U[..., nx - R:, :]
    P[..., R + nx:, R:R + ny] = U[..., :R, :]
    P[..., :R] = P[..., ny:ny + R]
    P[..., R + ny:] = P[..., R:2 * R]


def _kernel(source: str):
    try:
        import numba
    except ImportError:
        raise DatagenError("backend 'numba' needs numba: pip install numba (or the [fast] extra)") from None

    kernel = _cached_kernel(source)
    if kernel is None:  # no writable cache folder: compile in this process only
        ns: dict = {"numba": numba}
        exec(compile(source, "<datagen-numba-kernel>", "exec"), ns)
        kernel = numba.njit(error_model="numpy")(ns["kernel"])
    return kernel


def compile_rhs(sd, fused: bool) -> Callable[[np.ndarray, float], np.ndarray]:
    """``f(U, h)`` returning ``U + h F(U)`` (``fused``) or ``F(U)``, compiled for this operator."""
    if sd.method != "fd":
        raise DatagenError("the numba backend supports method='fd' only")
    kernel = _kernel(_source(sd, fused))
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
            _pad_periodic(U4, R, P)
        else:
            P = np.ascontiguousarray(sd.grid.pad(U4, R)) if R else np.ascontiguousarray(U4)
        out = np.empty_like(U4)
        kernel(P, out, h)
        return out.reshape(lead + U.shape[-3:])

    return f


def compile_euler_rollout(sd):
    """Forward Euler saved steps on a periodic grid: ``run(u0, n_steps, substeps, h, frames)``
    writes ``u0`` and ``n_steps`` saved steps into ``frames (b, n_steps + 1, field, x, y)`` (any
    float dtype) and returns the last state (float64).

    The state stays ghost-padded between substeps: each substep is one sweep that reads one padded
    buffer and writes the next one, its ghost cells and, on a saved step's last substep, the
    frame; no temporaries, no copy per substep. The same arithmetic as :func:`compile_rhs`'s
    fused update, so the frames are the same bytes.
    """
    if sd.method != "fd" or sd.grid.boundary != "periodic" or sd.radius < 1:
        raise DatagenError("internal: the fused Euler rollout is for periodic finite differences")
    kernel = _kernel(_source(sd, True, rollout=True))
    R = sd.radius
    buffers: dict = {}

    def run(u0: np.ndarray, n_steps: int, substeps: int, h: float, frames: np.ndarray) -> np.ndarray:
        b, C, nx, ny = u0.shape
        shape = (b, C, nx + 2 * R, ny + 2 * R)
        if shape not in buffers:
            buffers.clear()  # one batch shape at a time: keep the memory of one pair
            buffers[shape] = (np.empty(shape), np.empty(shape))
        P, Q = buffers[shape]
        _pad_periodic(u0, R, P)
        frames[:, 0] = u0
        for t in range(1, n_steps + 1):
            for s in range(substeps):
                kernel(P, Q, h, frames, t, s == substeps - 1)
                P, Q = Q, P
        return P[..., R:R + nx, R:R + ny].copy()

    return run
