"""One validation layer for the session's public entries: types, lengths, finiteness, ranges.

Each check returns the clean value or raises `TypeError`/`ValueError` naming the value received and the fix; a
refused call changes nothing. Whole numbers are refused when they are not whole (2.5 steps), never truncated.
"""
from __future__ import annotations

import math
import numbers


def whole(value, name: str, minimum: int | None = None, allow_none: bool = False):
    """An int (numpy ints too; not bool, not 2.5, not '3'), at least `minimum`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} is not a whole number: give an int"
                        + (" or None" if allow_none else ""))
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value!r} is too small: give a whole number >= {minimum}")
    return int(value)


def text(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}={value!r} is not a string: give text ('' for none)")
    return value


def point(value, what: str) -> tuple[float, float]:
    """(x, y): a pair of finite real numbers (a string such as '20,24' or a triple is refused)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{what} {value!r} is not a point: give (x, y) in image pixels")
    x, y = value
    for v in (x, y):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{what} {value!r} is not a point: give (x, y) as two numbers, in image pixels")
        if not math.isfinite(float(v)):
            raise ValueError(f"{what} {value!r} is not finite: give (x, y) inside the image")
    return float(x), float(y)


def pair(value) -> tuple:
    """A (handle, target) pair."""
    try:
        h, t = value
    except (TypeError, ValueError):
        raise TypeError(f"drag {value!r} is not a (handle, target) pair: give ((x, y), (x, y))") from None
    return h, t


def drag(geom, handle, target, image_wh, reach_distance: float | None = None):
    """A drag ((x, y), (x, y)) checked against the geometry: inside the image, target ≠ handle, at least one
    feature cell apart; a warning when it is shorter than `reach_distance` cells (reached before it starts)."""
    h = geom.check_point(point(handle, "handle"), "handle")
    t = geom.check_point(point(target, "target"), "target")
    if h == t:
        raise ValueError(f"target {t} equals its handle: drag to a different point")
    if geom.image_to_grid(h) == geom.image_to_grid(t):
        cell = image_wh[0] / geom.grid_hw[1]
        raise ValueError(f"handle {h} and target {t} fall in the same feature cell ({cell:.1f} px wide): "
                         "drag farther")
    (r0, c0), (r1, c1) = geom.image_to_grid(h), geom.image_to_grid(t)
    cells = math.hypot(r1 - r0, c1 - c0)
    if reach_distance is not None and cells < reach_distance:
        import warnings
        warnings.warn(f"drag {h} -> {t} is {cells:.1f} grid cells long, under reach_distance={reach_distance:g}: "
                      "tracking counts it as reached before any step. Drag farther, or lower reach_distance",
                      stacklevel=3)
    return h, t
