"""What both command lines share: one-line errors and warnings, exit codes, interrupts."""

from __future__ import annotations

import sys
import warnings
from typing import Callable, Mapping

from .errors import DatagenError

__all__ = ["run_cli"]


def run_cli(prog: str, body: Callable[[], int], errors: tuple[type[BaseException], ...] = (DatagenError,),
            interrupted: str = "", extra: Mapping[type, Callable[[BaseException], str]] | None = None) -> int:
    """Run a command's ``body``: failures caused by the input print ``PROG: error: ...`` on one line
    and exit 2, warnings print ``PROG: warning: ...`` (no source path), a closed pipe exits 0 and
    an interrupt 130 (with ``interrupted`` appended to its line)."""

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prog}: warning: {message}", file=file or sys.stderr)

    shown = warnings.showwarning
    warnings.showwarning = one_line
    try:
        return body()
    except errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `datagen list | head`
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{interrupted}", file=sys.stderr)
        return 130
    except tuple(extra or ()) as exc:
        kind = next(k for k in extra if isinstance(exc, k))
        print(f"{prog}: error: {extra[kind](exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
