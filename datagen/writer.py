"""Solved batches go straight into the dataset's final HDF5 layout, resumably.

A run writes ``.NAME.tmp`` beside its output: the whole layout (metadata, and for uncompressed
fields every chunk, allocated once) is made first; then each finished batch is written into its
fixed place, its reference-error estimates into a scratch group, and its index into the
``datagen_batches_done`` record, flushed in that order: a killed run leaves a file whose record
lists only whole batches, and ``--resume`` solves the rest. At the end the scratch group and the
record go, the provenance is written, the file is synced (unless ``sync=False``) and renamed.
Uncompressed chunks have fixed addresses, so batches may arrive in any order; compressed ones
are written in index order (their sizes vary). Either way an interrupted and resumed run
produces the same bytes as an uninterrupted one.

All HDF5 calls run in a writer child process (:class:`IsolatedWriter`): when a write fails (a
full disk), libhdf5 keeps the file open and can crash the interpreter at exit, and a child
confines that to itself; the parent prints one line. The frames reach the child through shared
memory made before the fork: batches are solved straight into those buffers (by this process or
by local workers forked after the writer) and only their index crosses the pipe.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import DatagenError
from .metadata import DatasetMetadata
from .safeio import file_mode, open_nofollow, refuse_link
from .store import create_layout, write_frames

__all__ = ["PartialFile", "IsolatedWriter", "Slot"]

SCRATCH = "_datagen_partial"
DONE = "datagen_batches_done"
CONFIG = "datagen_partial_config"


class PartialFile:
    """The file under construction for ``out``: ``bounds`` are the batches' trajectory ranges."""

    def __init__(self, out: Path, meta: DatasetMetadata | dict[str, Any], cfg_json: str, bounds: list[tuple[int, int]],
                 compression: str, sync: bool = True) -> None:
        self.out, self.tmp = out, out.with_name(f".{out.name}.tmp")
        self.sync = sync
        meta = DatasetMetadata.from_mapping(meta)
        self.meta, self.cfg_json, self.bounds, self.compression = meta, cfg_json, bounds, compression
        self._f: Any = None
        self._pending: dict[int, tuple] = {}

    # -- opening -----------------------------------------------------------------------------
    def open(self, resume: bool, overwrite: bool) -> list[int]:
        """Create or reopen the file; the indices of the batches still to solve."""
        if os.path.lexists(self.tmp):
            if overwrite:
                self.tmp.unlink()  # a link itself, never its target
            elif not resume:
                raise DatagenError(f"an interrupted run left {self.tmp}; pass --resume to continue it or --overwrite "
                                   "to restart")
        import h5py

        refuse_link(self.tmp, "temporary file")
        if not self.tmp.exists():
            self._create()
        try:
            self._f = h5py.File(self.tmp, "r+")
            stored = self._f.attrs.get(CONFIG)
            done = np.asarray(self._f.attrs[DONE]) if DONE in self._f.attrs else None
        except (OSError, KeyError):
            # killed while the layout was being made, or in the middle of a write: start afresh
            self.close()
            self.tmp.unlink(missing_ok=True)
            self._create()
            self._f = h5py.File(self.tmp, "r+")
            stored, done = self._f.attrs.get(CONFIG), np.asarray(self._f.attrs[DONE])
        if stored != self.cfg_json or done is None or done.shape != (len(self.bounds),):
            self.close()
            raise DatagenError(f"{self.tmp} belongs to a run with other options; pass --overwrite to restart")
        self._dsets = [self._f["t0_fields"][name] for name in self.meta.fields]
        self._done = done.astype(np.uint8)
        self._next = int(np.argmin(self._done)) if not self._done.all() else len(self.bounds)
        return [k for k in range(len(self.bounds)) if not self._done[k]]

    def _create(self) -> None:
        import h5py

        try:
            self._make(h5py)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def _make(self, h5py) -> None:
        # created here, exclusively and without following a link, before h5py opens it by name
        os.close(open_nofollow(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode()))
        with h5py.File(self.tmp, "w") as f:
            create_layout(f, self.meta, self.compression, preallocate=True)
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            n = self.meta.n_trajectories
            f.create_group(SCRATCH).create_dataset("reference", shape=(2, n), dtype=np.float64, dcpl=dcpl)
            f.attrs[CONFIG] = self.cfg_json
            f.attrs[DONE] = np.zeros(len(self.bounds), np.uint8)

    # -- writing -----------------------------------------------------------------------------
    def write(self, k: int, frames: np.ndarray, est: np.ndarray, used: np.ndarray) -> None:
        """Batch ``k``: in place at once when uncompressed, else once the batches before it are in."""
        if self.compression == "none":
            self._put(k, frames, est, used)
            return
        # a copy: the frames may sit in a buffer the caller reuses before their turn comes
        self._pending[k] = (np.array(frames), est, used)
        while self._next in self._pending:
            self._put(self._next, *self._pending.pop(self._next))
            self._next += 1
            while self._next < len(self.bounds) and self._done[self._next]:
                self._next += 1

    def _put(self, k: int, frames: np.ndarray, est: np.ndarray, used: np.ndarray) -> None:
        a, b = self.bounds[k]
        write_frames(self._dsets, a, frames)
        self._f[SCRATCH]["reference"][:, a:b] = np.stack([est, used.astype(np.float64)])
        self._f.flush()  # the frames are in the file before the record says so
        self._done[k] = 1
        self._f.attrs[DONE] = self._done
        self._f.flush()

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-trajectory error estimates and substeps of the finished batches."""
        ref = self._f[SCRATCH]["reference"][...]
        return ref[0], ref[1].astype(np.int64)

    def finish(self, provenance: dict[str, Any] | Any) -> tuple[np.ndarray, np.ndarray]:
        """Close the file under its final name, with ``provenance`` (a dict, or a callable of the
        estimates and substeps); returns those estimates and substeps."""
        if self._pending or not self._done.all():
            raise DatagenError("internal: batches are missing at the end of the run")
        est, used = self.reference()
        del self._f[SCRATCH]
        del self._f.attrs[DONE]
        del self._f.attrs[CONFIG]
        prov = provenance(est, used) if callable(provenance) else provenance
        self._f.attrs["provenance"] = json.dumps(prov, sort_keys=True)
        self.close()
        if self.sync:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename must not outlive the data after a power cut
            finally:
                os.close(fd)
        os.replace(self.tmp, self.out)
        return est, used

    def close(self) -> None:
        """Close the file under construction (it stays for ``--resume``)."""
        if self._f is not None:
            try:
                self._f.close()
            finally:
                self._f = None

    def discard(self) -> None:
        """Close and remove the file under construction."""
        try:
            self.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class Slot(NamedTuple):
    """Frames of ``n`` trajectories already in shared buffer ``index`` (see :attr:`IsolatedWriter.slots`)."""

    index: int
    n: int


class IsolatedWriter:
    """:class:`PartialFile` run in a child process, with the same methods.

    ``slots`` shared buffers of a batch's frames are made before the fork, so that the child, and
    worker processes forked later, map them: a batch is solved into one (or copied in once) and
    written from there while the next one is solved.
    """

    def __init__(self, out: Path, meta: DatasetMetadata | dict[str, Any], cfg_json: str, bounds: list[tuple[int, int]],
                 compression: str, slots: int = 2, sync: bool = True) -> None:
        import mmap
        import multiprocessing as mp

        meta = DatasetMetadata.from_mapping(meta)
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        self._frame_shape = meta.frame_shape
        frame = int(np.prod(self._frame_shape)) * 4
        size = max(b - a for a, b in bounds) * frame
        n_slots = max(2, int(slots))
        self._buffers = ([mmap.mmap(-1, max(size, 1)) for _ in range(n_slots)]
                         if ctx.get_start_method() == "fork" else [])
        self._turn = 0
        self._conn, child = ctx.Pipe()
        args = (out, meta, cfg_json, bounds, compression, sync)
        self._proc = ctx.Process(target=_serve, args=(child, self._conn, args, self._buffers), daemon=True)
        self._proc.start()
        child.close()
        self.tmp = out.with_name(f".{out.name}.tmp")
        self._bounds = bounds

    def _call(self, *msg: Any, data: tuple[np.ndarray, ...] = (), wait: bool = True) -> Any:
        """Send a request; with ``wait=False`` its reply is collected before the next request, so
        the child writes a batch while this process solves the next one."""
        self._collect()
        try:
            self._conn.send(msg)
            for a in data:
                self._conn.send_bytes(np.ascontiguousarray(a).data)
        except (OSError, BrokenPipeError):
            self._collect()  # the child's own message says more than a broken pipe
            self._died()
        self._owed = True
        return self._collect() if wait else None

    def _collect(self) -> Any:
        if not getattr(self, "_owed", False):
            return None
        self._owed = False
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            self._died()
        if kind == "datagen":
            raise DatagenError(value)
        if kind == "os":
            self._proc.join(5)
            raise OSError(value)
        return value

    def _died(self) -> None:
        self._proc.join(5)
        raise OSError(f"the writer process died (exit code {self._proc.exitcode})")

    def open(self, resume: bool, overwrite: bool) -> list[int]:
        """As :meth:`PartialFile.open`. A fresh file is made while the first batch is solved (a
        failure, such as a full disk, is reported at the first write)."""
        if not os.path.lexists(self.tmp):
            self._call("open", resume, overwrite, wait=False)
            return list(range(len(self._bounds)))
        return self._call("open", resume, overwrite)

    def buffer(self, n: int) -> np.ndarray | None:
        """A float32 array for the frames of ``n`` trajectories in the shared buffer the next
        :meth:`write` sends (the one not in flight), so a batch solved into it is not copied;
        ``None`` without shared buffers."""
        if not self._buffers:
            return None
        return np.ndarray((n, *self._frame_shape), np.float32, buffer=self._buffers[self._turn])

    @property
    def slots(self) -> list:
        """The shared frame buffers (empty without fork), for worker processes forked after this
        writer: a worker solves into one and the batch is passed on as a :class:`Slot`."""
        return self._buffers

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """One trajectory's frames ``(time, field, x, y)``."""
        return self._frame_shape

    def write(self, k: int, frames: np.ndarray | Slot, est: np.ndarray, used: np.ndarray) -> None:
        """As :meth:`PartialFile.write`; the frames travel as raw bytes, or stay in their shared
        buffer when given as a :class:`Slot` (free again once the next request is sent)."""
        est, used = np.asarray(est, np.float64), np.asarray(used, np.int64)
        if isinstance(frames, Slot):
            self._collect()
            self._call("write", k, (frames.n, *self._frame_shape), frames.index, data=(est, used), wait=False)
            return
        frames = np.asarray(frames, np.float32)
        if not self._buffers:  # no fork: the frames travel through the pipe
            self._call("write", k, frames.shape, None, data=(frames, est, used), wait=False)
            return
        self._collect()  # the one request in flight used the other buffer: this one is free
        buf = self._buffers[self._turn]
        view = np.ndarray(frames.shape, np.float32, buffer=buf)
        if view.__array_interface__["data"][0] != frames.__array_interface__["data"][0]:
            view[...] = frames  # solved elsewhere (a worker): copied in once
        self._call("write", k, frames.shape, self._turn, data=(est, used), wait=False)
        self._turn = 1 - self._turn

    def finish(self, provenance: Any) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`PartialFile.finish`; the provenance is built here from the child's estimates."""
        est, used = self._call("reference")
        prov = provenance(est, used) if callable(provenance) else provenance
        self._call("finish", json.dumps(prov, sort_keys=True))
        self._stop()
        return est, used

    def close(self) -> None:
        """Close the file under construction (kept for ``--resume``) and end the child."""
        self._end("close")

    def discard(self) -> None:
        """Remove the file under construction and end the child."""
        self._end("discard")
        self.tmp.unlink(missing_ok=True)

    def _end(self, op: str) -> None:
        if self._proc.is_alive():
            try:
                self._call(op)
            except (OSError, DatagenError):
                pass
        self._stop()

    def _stop(self) -> None:
        for buf in self._buffers:
            buf.close()
        self._buffers = []
        self._conn.close()
        self._proc.join(10)
        if self._proc.is_alive():  # pragma: no cover - a hung libhdf5 call
            self._proc.kill()
            self._proc.join()


def _serve(conn, parent_end, args: tuple, buffers: list) -> None:
    """The writer child: one request at a time, one reply each; exits at once after a failure."""
    parent_end.close()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # libhdf5's own complaints are noise; the parent prints one line
    partial = PartialFile(*args)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone: leave the file for --resume
            break
        op = msg[0]
        try:
            reply: Any = None
            if op == "open":
                reply = partial.open(*msg[1:])
            elif op == "write":
                k, shape, turn = msg[1:]
                if turn is None:
                    frames = np.frombuffer(conn.recv_bytes(), np.float32).reshape(shape)
                else:
                    frames = np.ndarray(shape, np.float32, buffer=buffers[turn])
                est = np.frombuffer(conn.recv_bytes(), np.float64)
                used = np.frombuffer(conn.recv_bytes(), np.int64)
                partial.write(k, frames, est, used)
            elif op == "reference":
                reply = partial.reference()
            elif op == "finish":
                partial.finish(json.loads(msg[1]))
            elif op == "close":
                partial.close()
            elif op == "discard":
                partial.discard()
            conn.send(("ok", reply))
            if op in ("finish", "close", "discard"):
                break
        except DatagenError as exc:
            conn.send(("datagen", str(exc)))
        except BaseException as exc:  # report, whatever it is, and stop without touching libhdf5 again
            text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            m = re.search(r"error message = '([^']+)'", text)
            try:
                conn.send(("os", m.group(1) if m else text.splitlines()[0][:200]))
            except OSError:
                pass
            break
    conn.close()
    os._exit(0)  # skip interpreter teardown, where a failed HDF5 file can crash
