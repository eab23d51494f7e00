"""Progress of long work: a bar on a terminal, and off it (a log file, a notebook's captured
stream, CI) a line every few seconds with the rate and the time left."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import IO

__all__ = ["Progress", "eta_text"]

# seconds between lines off a terminal; PDESURROGATE_PROGRESS_EVERY overrides
DEFAULT_EVERY = 10.0


def _every() -> float:
    try:
        v = float(os.environ.get("PDESURROGATE_PROGRESS_EVERY", DEFAULT_EVERY))
    except ValueError:
        return DEFAULT_EVERY
    return v if math.isfinite(v) and v >= 0 else DEFAULT_EVERY


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def eta_text(done: float, total: float, elapsed: float) -> str:
    """``elapsed 1:05, left 2:10`` from the work done so far at its mean rate."""
    left = elapsed / done * (total - done) if done > 0 else math.inf
    return f"elapsed {_clock(elapsed)}, left {_clock(max(left, 0.0))}"


class Progress:
    """Counts ``total`` units of work under ``label``.

    On a terminal it draws a tqdm bar; elsewhere it writes ``label: done/total unit (pct%),
    elapsed m:ss, left m:ss`` at most every ``every`` seconds (and once at the end), so that a
    log shows that the work is moving and when it will end. ``enabled=False`` says nothing.
    """

    def __init__(self, total: int, label: str, unit: str = "", *, enabled: bool = True, stream: IO[str] | None = None,
                 every: float | None = None, leave: bool = True) -> None:
        self.total, self.label, self.unit = int(total), label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled)
        self.every = _every() if every is None else every
        self.done, self.t0 = 0, time.perf_counter()
        self._last = self.t0
        self._bar = None
        self.note = ""
        tty = getattr(self.stream, "isatty", lambda: False)()
        if self.enabled and tty:
            from tqdm import tqdm  # not tqdm.auto: in notebooks it warns without ipywidgets

            self._bar = tqdm(total=self.total, desc=label, unit=unit or "it", leave=leave, file=self.stream)

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more units done; ``note`` (e.g. the running loss) goes on the bar or line."""
        self.done += n
        self.note = note
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note)
            return
        now = time.perf_counter()
        if now - self._last >= self.every and self.done < self.total:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        unit = f" {self.unit}" if self.unit else ""
        note = f"; {self.note}" if self.note else ""
        print(f"{self.label}: {self.done}/{self.total}{unit} ({pct:.0f}%), {eta_text(self.done, self.total, now - self.t0)}"
              f"{note}", file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar; off a terminal, a last line when earlier ones were written."""
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._last > self.t0:
            self._line(time.perf_counter())
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
