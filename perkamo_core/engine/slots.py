"""Slot setters for the engine's fast constructors, checked against the dataclass fields at import."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    actual = tuple(f.name for f in fields(cls))
    if actual != names or hasattr(cls, "__post_init__"):
        raise AssertionError(f"{cls.__name__} has fields {actual}; update its fast constructor")
    return tuple(getattr(cls, name).__set__ for name in names)


_new = object.__new__
