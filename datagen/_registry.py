"""Classes that register themselves by name (integrators, space discretisations, samplers)."""

from __future__ import annotations

from typing import Any

from .errors import DatagenError


def register(registry: dict[str, Any], name: str, cls: type, kind: str) -> None:
    """Add ``cls`` under ``name``; a different class may not take a name already in use (a
    user's class would otherwise replace a built-in one silently). The same class defined
    again (a notebook cell run twice) replaces its earlier self."""
    old = registry.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise DatagenError(f"{kind} name {name!r} is taken by {old.__module__}.{old.__qualname__}; "
                           f"give {cls.__qualname__} another name")
    registry[name] = cls
