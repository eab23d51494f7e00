"""Files created without following links: exclusive creation, atomic replacement, lock files.

Every file that ``datagen`` or ``pdesurrogate`` creates goes through here. A link planted where
an output, a temporary or a lock file will be (``OUT/data/train/.fisher.hdf5.lock -> ~/.bashrc``)
is refused instead of followed, temporaries get fresh names created with ``O_EXCL``, and a
finished file takes its final name by an atomic rename, which replaces a link there instead of
writing through it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import DatagenError

__all__ = ["open_nofollow", "refuse_link", "atomic_path", "write_atomic", "file_mode", "output_lock"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def file_mode() -> int:
    """``0o666`` less the process's umask (read without changing it, from /proc where it can)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def refuse_link(path: str | os.PathLike, what: str = "file") -> None:
    """A one-line error when ``path`` is a symbolic link (dangling or not)."""
    if os.path.islink(path):
        raise DatagenError(f"{path} is a symbolic link where a {what} will be written; links in an output are never "
                           "followed: remove it")


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags | O_NOFOLLOW)``; a link at ``path`` is a one-line error."""
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise DatagenError(f"{path} is a symbolic link; links in an output are never followed: remove it") from None
        raise


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A new temporary file beside ``path`` to write by name; it takes ``path``'s name when the
    block ends without error, and is removed otherwise.

    The temporary is created with ``O_EXCL`` under a random name (``tempfile.mkstemp``), so
    nothing planted is followed; the final rename replaces whatever is at ``path``, a link
    included, without writing through it. ``suffix`` ends the temporary's name, for writers
    that choose a format by it (``.png``, ``.gif``).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    tmp = Path(name)
    try:
        os.fchmod(fd, file_mode())
        os.close(fd)
        yield tmp
        if os.path.islink(tmp) or not tmp.is_file():
            raise DatagenError(f"{tmp} was replaced while it was written; nothing was written under {path}")
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def write_atomic(path: str | os.PathLike, data: bytes | str, sync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); fsync before the rename
    unless ``sync`` is False."""
    raw = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        fd = open_nofollow(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return Path(path)


@contextmanager
def output_lock(path: Path, out: Path | str) -> Iterator[None]:
    """An exclusive OS lock on the lock file ``path`` (guarding ``out``) for the whole run,
    released by the OS if the process dies.

    A second run on the same output stops at once, naming the first one's pid, so that
    ``--overwrite`` can never delete the work of a live run. The lock file is opened without
    following links.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    while True:
        try:
            fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DatagenError(f"cannot write to {path.parent}: {exc.strerror}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DatagenError(f"another run (pid {other}) is writing {out}; wait for it to finish or choose "
                               "another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was replaced while we waited for it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
