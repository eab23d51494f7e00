"""Bounds on every size that comes from outside: PDE texts, stored provenance, command lines.

A PDE text, a dataset's provenance or a checkpoint is data from someone else. Each size read
from one is checked against these bounds before anything is allocated or expanded, so that a
crafted input gets a one-line error instead of exhausting memory or running for hours. The
numbers sit far above anything the method of lines or the paper's networks use.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import DatagenError

__all__ = ["MAX_PDE_TEXT", "MAX_DEGREE", "MAX_ORDER", "MAX_TERMS", "MAX_FIELDS", "MAX_NESTING", "MAX_JSON_DEPTH",
           "MAX_JSON_BYTES", "MAX_MODES", "MAX_STEPS", "MAX_SUBSTEPS", "MAX_TRAJECTORIES", "MAX_CELLS",
           "check_json_depth", "loads_bounded"]

MAX_PDE_TEXT = 4000  # characters of a PDE text
MAX_DEGREE = 8  # polynomial degree of one term
MAX_ORDER = 6  # total derivative order of one factor
MAX_TERMS = 256  # terms of one right-hand side
MAX_FIELDS = 16  # fields of a system
MAX_NESTING = 40  # parentheses and operators nested in a PDE text
MAX_JSON_DEPTH = 32  # nesting of a provenance or config JSON
MAX_JSON_BYTES = 16 * 2 ** 20  # a provenance or config JSON's length
MAX_MODES = 4096  # Fourier modes of an initial-condition sampler
MAX_STEPS = 100_000  # saved steps of a dataset, rollout steps of an evaluation
MAX_SUBSTEPS = 100_000  # internal solver steps per saved step
MAX_TRAJECTORIES = 10_000_000  # trajectories of a split
MAX_CELLS = 2 ** 31  # grid cells of one field (46340 x 46340)

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def check_json_depth(obj: Any, what: str, limit: int = MAX_JSON_DEPTH) -> Any:
    """``obj`` itself; a one-line error when its lists and dicts nest deeper than ``limit``."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list, tuple)):
            if depth > limit:
                raise DatagenError(f"{what} nests deeper than {limit} levels; it is not a file datagen wrote")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children)
    return obj


def loads_bounded(text: str | bytes, what: str) -> Any:
    """``json.loads`` with the length and nesting bounded before and after parsing."""
    if len(text) > MAX_JSON_BYTES:
        raise DatagenError(f"{what} is {len(text)} bytes, more than the {MAX_JSON_BYTES} a datagen record can be")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    # count brackets first: the json module recurses once per level and a deep enough text
    # overflows the interpreter's stack before any check on the result could run
    depth = 0
    for m in _BRACKETS.finditer(_STRINGS.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise DatagenError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels; it is not a file datagen wrote")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DatagenError(f"{what} is not valid JSON ({str(exc).splitlines()[0]})") from None
