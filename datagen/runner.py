"""Where batches are solved: in this process, in local worker processes that die with their
parent, or on a Dask cluster; and the progress report."""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from .errors import DatagenError
from .solver import solve_batch

__all__ = ["run_batches", "progress_reporter"]


def progress_reporter(progress, total: int, label: str = "generate"):
    if callable(progress):
        done = [0]

        def cb(n):
            if n is not None:
                done[0] += n
                progress(done[0], total)
        return cb
    if progress:
        from .progress import Progress

        bar = Progress(total, label, "trajectories")

        def tq(n):
            if n is None:
                bar.close()
            else:
                bar.update(n)
        return tq
    return lambda n: None


_SLOTS: list = []  # the writer's shared frame buffers, inherited by forked workers


def _solve_in_slot(cfg_json: str, start: int, stop: int, slot: int, frame_shape: tuple[int, ...]):
    """Worker side: solve into shared buffer ``slot``; only the estimates travel back."""
    out = np.ndarray((stop - start, *frame_shape), np.float32, buffer=_SLOTS[slot])
    _, est, used = solve_batch(cfg_json, start, stop, True, out)
    return est, used


def run_batches(cfg_json: str, bounds: list[tuple[int, int]], keys: list[int], workers: int, scheduler: str | None,
                buffer=None, writer=None):
    """Yield ``(key, batch)`` as batches finish, keeping at most 2 x workers in flight. In this
    process, ``buffer(n)`` (when given) provides the array to solve ``n`` trajectories into. With
    local workers and a ``writer`` with enough shared slots, workers solve into the slots and a
    batch is yielded as a :class:`~datagen.writer.Slot`; the caller hands each one to the writer
    before asking for the next (that is what frees the one before it)."""
    if scheduler:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise DatagenError("--scheduler needs the dask extra: pip install 'pdesurrogate[dask]'") from None
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise DatagenError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        try:
            futs = {client.submit(solve_batch, cfg_json, a, b, True, pure=False): k for k, (a, b) in zip(keys, bounds)}
            for fut in as_completed(futs):
                try:
                    result = fut.result()
                except (OSError, TimeoutError) as exc:  # the scheduler or a worker went away
                    err = DatagenError(f"lost the Dask scheduler at {scheduler} ({type(exc).__name__}: {exc}); the "
                                       "finished batches are kept: rerun with --resume")
                    err.resumable = True
                    raise err from None
                yield futs[fut], result
                fut.release()
        finally:
            try:
                client.close()
            except (OSError, TimeoutError):
                pass
        return
    if workers == 1:
        for k, (a, b) in zip(keys, bounds):
            yield k, solve_batch(cfg_json, a, b, True, buffer(b - a) if buffer else None)
        return
    import multiprocessing as mp

    # fork where available: spawn re-imports __main__, which fails for notebooks and stdin scripts
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    shared = ctx is not None and writer is not None and len(writer.slots) >= min(2 * workers, len(bounds)) + 2
    if shared:
        global _SLOTS
        _SLOTS = writer.slots  # before the pool forks its workers
    try:
        yield from _local_pool(cfg_json, bounds, keys, workers, ctx, writer if shared else None)
    except BrokenProcessPool:
        # a worker killed from outside (the OOM killer, a signal): the batches written so far stay
        err = DatagenError("a worker process died (killed from outside, or out of memory?); the finished "
                           "batches are kept: rerun with --resume (and fewer --workers or a smaller --batch-size "
                           "if memory ran out)")
        err.resumable = True
        raise err from None


def _local_pool(cfg_json: str, bounds: list[tuple[int, int]], keys: list[int], workers: int, ctx, writer):
    shared = writer is not None
    if shared:
        from .writer import Slot
    # a slot is busy from its submission until the write after its own has been sent
    free, written = list(range(len(_SLOTS))) if shared else [], None
    if ctx is not None and bounds:
        # build the stepper here (numba's load, ETDRK4's coefficients) by solving one trajectory
        # for nothing: forked workers inherit it instead of each paying for it
        a = bounds[0][0]
        solve_batch(cfg_json, a, a + 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as ex:
        pending: dict = {}
        queue = list(zip(keys, bounds))
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                k, (a, b) = queue.pop(0)
                if shared:
                    s = free.pop()
                    pending[ex.submit(_solve_in_slot, cfg_json, a, b, s, writer.frame_shape)] = (k, s, b - a)
                else:
                    pending[ex.submit(solve_batch, cfg_json, a, b, True)] = (k, None, b - a)
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                k, s, n = pending.pop(fut)
                if not shared:
                    yield k, fut.result()
                    continue
                est, used = fut.result()
                yield k, (Slot(s, n), est, used)
                if written is not None:
                    free.append(written)
                written = s


def _die_with_parent(parent: int) -> None:
    """Worker initialiser: exit when the parent process dies (a SIGKILLed parent would otherwise
    leave its workers blocked on their queue forever)."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: Linux delivers SIGTERM when the parent dies
    except (OSError, AttributeError):  # pragma: no cover - not Linux: fall back to polling below
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    import threading

    def watch() -> None:  # other POSIX systems: poll for re-parenting
        import time

        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
