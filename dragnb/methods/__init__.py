"""Drag methods as small strategies: each decides its timesteps, its supervision reference, its tracking rule and
what happens between rounds. `DragConfig.method` picks one by name; `register` plugs in a new one.

    from dragnb.methods import available, get_method, register
"""
from __future__ import annotations

from .base import Advance, DragMethod, Position

_REGISTRY: dict[str, type[DragMethod]] = {}


def register(cls: type[DragMethod]) -> type[DragMethod]:
    """Make a `DragMethod` subclass selectable as `DragConfig(method=cls.name)` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, DragMethod)) or not getattr(cls, "name", ""):
        raise TypeError(f"{cls!r} is not a DragMethod subclass with a name: subclass dragnb.methods.DragMethod "
                        "and set name = '...'")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)


def get_method(name: str) -> DragMethod:
    """A fresh instance of the method registered under `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"drag method {name!r} is unknown: use one of {available()}")
    return _REGISTRY[name]()


from .dragdiffusion import DragDiffusion  # noqa: E402  (registers itself)
from .gooddrag import GoodDrag  # noqa: E402

__all__ = ["Advance", "DragMethod", "Position", "DragDiffusion", "GoodDrag", "available", "get_method", "register"]
