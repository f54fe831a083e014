"""One validation layer for the session's public entries: types, lengths, finiteness, ranges.

Each check returns the clean value or raises `TypeError`/`ValueError` naming the value received and the fix; a
refused call changes nothing. Whole numbers are refused when they are not whole (2.5 steps), never truncated.
"""
from __future__ import annotations

import math
import numbers
import os


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


def model(value, name: str = "model"):
    """A `DragModel` (anything with a UNet, a scheduler and default settings)."""
    if not all(hasattr(value, a) for a in ("unet", "scheduler", "default_config", "name")):
        raise TypeError(f"{name}={_short(value)} is not a DragModel: get one with dragnb.load_model('demo')")
    return value


def cache(value, model_):
    """None or a `SourceCache` of this very model (a cache of another model would hand out its LoRA and latents)."""
    from .cache import SourceCache
    if value is None:
        return None
    if not isinstance(value, SourceCache):
        raise TypeError(f"cache={_short(value)} is not a SourceCache: give SourceCache(model), share one session's "
                        "`session.cache`, or None")
    if value.model is not model_:
        raise ValueError(f"cache={value!r} belongs to another model ({value.model.name!r}, not this "
                         f"{model_.name!r} object): give SourceCache(model) of the model the session uses")
    return value


def callback(value, name: str = "callback"):
    if value is not None and not callable(value):
        raise TypeError(f"{name}={_short(value)} is not callable: give a function of one record, or None")
    return value


def flag(value, name: str, allow_none: bool = False):
    """True or False (not 1, not 'yes'); None too when `allow_none`."""
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        raise TypeError(f"{name}={_short(value)} is not True, False" + (" or None" if allow_none else "")
                        + f": give a bool{' (None: the default)' if allow_none else ''}")
    return value


def path(value, name: str = "path") -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}={_short(value)} is not a file path: give a str or pathlib.Path such as 'edit.dragnb'")
    return os.fspath(value)


def latent(value, shape: tuple, name: str = "latent"):
    """A finite tensor (or array) of the session's latent shape (1, C, h, w)."""
    import numpy as np
    import torch
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}={_short(value)} is not a tensor: give a torch.Tensor of shape {shape}, e.g. from "
                        "session.latent_at(0) or session.current_latent()")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(value.shape)} but this session's step-t latents are {tuple(shape)}: "
                         "start from latent_at(0) or current_latent()")
    if not value.is_floating_point():
        raise TypeError(f"{name} has dtype {value.dtype}: give a float tensor (from latent_at(0) or current_latent())")
    bad = int((~torch.isfinite(value)).sum())
    if bad:
        raise ValueError(f"{name} holds {bad} NaN/inf value(s): give a finite latent (start from latent_at(0) or "
                         "current_latent())")
    return value


def drag_list(value) -> list:
    """A list/tuple of drags (not a string, not None)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"drags={_short(value)} is not a list of drags: give [((x, y), (x, y)), ...] (handle, target)")
    return list(value)


def mask_like(value):
    """What `coords.load_mask` can read: None, an array, a PIL image, a path, or nested lists."""
    import numpy as np
    from PIL import Image
    if value is None or isinstance(value, (np.ndarray, Image.Image, str, os.PathLike, list, tuple)) \
            or hasattr(value, "__array__"):
        return value
    raise TypeError(f"mask of type {type(value).__name__} ({_short(value)}) is not a mask: give an HxW bool/uint8 "
                    "array, a PIL 'L' image, a file path, or None")


def _short(value) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


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


#: A drag shorter than this many grid cells that tracking would count as reached before any step is refused (a one-cell
#: drag under the official reach_distance 2.0); a longer one under a larger, deliberate reach_distance only warns.
MIN_DRAG_CELLS = 2.0


def drag(geom, handle, target, image_wh, reach_distance: float | None = None):
    """A drag ((x, y), (x, y)) checked against the geometry: inside the image, target ≠ handle, not in the same
    feature cell; refused when tracking would count it as reached before any step and it is shorter than
    `MIN_DRAG_CELLS` cells (one grid cell, diagonal neighbours), warned when longer but under `reach_distance`."""
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
    if reach_distance is not None and cells < min(reach_distance, MIN_DRAG_CELLS):
        cell = image_wh[0] / geom.grid_hw[1]
        shortest = math.ceil(min(reach_distance, MIN_DRAG_CELLS) * cell)
        raise ValueError(f"drag {h} -> {t} is {cells:.1f} grid cells long ({cell:.1f} px a cell), under "
                         f"reach_distance={reach_distance:g}: tracking would count it as reached before any step. "
                         f"Drag farther (at least {shortest} px), or lower "
                         "reach_distance")
    if reach_distance is not None and cells < reach_distance:
        import warnings
        warnings.warn(f"drag {h} -> {t} is {cells:.1f} grid cells long, under reach_distance={reach_distance:g}: "
                      "tracking counts it as reached before any step. Drag farther, or lower reach_distance",
                      stacklevel=3)
    return h, t
