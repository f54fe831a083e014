"""Where to put handle points so that a drag carries a region whole.

One handle pulls the features around it; on a large flat region the rest lags behind and the region stretches. More
handle points on the same region, each dragged by the same offset, tell the method which pixels belong together.
On the shape world's 50 held-out drags, `spread` takes the default method from 0.26 of the drag left and IoU 0.52 to
0.15 and 0.66, in about 2.5 times the drag steps (`benchmarks/bench_quality.py`, the `spread5` variant;
benchmarks/README, "More handle points").

    from dragnb.points import region_at, spread
    pairs = spread(image, handle=(x, y), target=(x2, y2))       # [(handle, target), ...], the given pair first
    session.spread_drag(0)                                       # the same for a session's drag 0

`region_at` finds the region: the pixels connected to the handle (4-neighbours) whose colour is within `tolerance`
(RGB distance) of the handle's own. That is exact for flat-coloured regions; on a textured region it finds less, and
fewer points come back (none where the region is too small to hold them).
"""
from __future__ import annotations

import numpy as np

from . import validate
from .coords import load_image

MIN_REACH = 4
"""Pixels from the handle to the region's edge below which a direction gets no point (a point nearer than 2 px to
the handle would share its cell on a half-resolution supervision grid)."""


def _rgb(image) -> np.ndarray:
    return np.asarray(load_image(image).convert("RGB"), dtype=np.float64)


def region_at(image, point, tolerance: float = 40.0, within=None) -> np.ndarray:
    """(H, W) bool: the pixels connected to `point` (x, y) whose RGB colour is within `tolerance` of the colour at
    `point`; only inside `within` ((H, W) bool) when given (the point's own pixel always counts)."""
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    x, y = validate.point(point, "point")
    c, r = int(round(x)), int(round(y))
    if not (0 <= c < w and 0 <= r < h):
        raise ValueError(f"point {point!r} is outside the {w}x{h} image: give (x, y) pixels inside it")
    tolerance = float(tolerance)
    if not tolerance >= 0:
        raise ValueError(f"tolerance={tolerance!r}: use an RGB distance >= 0 (0 = the point's exact colour)")
    similar = np.linalg.norm(rgb - rgb[r, c], axis=-1) <= tolerance
    if within is not None:
        within = np.asarray(within, bool)
        if within.shape != (h, w):
            raise ValueError(f"within has shape {within.shape}: give an (H, W) = ({h}, {w}) boolean array")
        similar &= within
    similar[r, c] = True
    region = np.zeros((h, w), bool)
    region[r, c] = True
    while True:                                         # grow by 4-neighbours until nothing similar is left to add
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= similar
        if (grown == region).all():
            return region
        region = grown


def spread(image, handle, target, n: int = 5, tolerance: float = 40.0, within=None, region=None) -> list[tuple]:
    """The drag (handle → target) and up to n - 1 more pairs on the handle's region, each moved by the same offset:
    [(handle, target), ...], (x, y) image pixels, the given pair first. The extra handles sit half the way from the
    handle to the region's edge along the image axes (right, left, down, up); a direction whose edge is under
    `MIN_REACH` pixels away gets none, nor one whose target would leave the image. `region` ((H, W) bool) replaces
    the colour region `region_at` would find."""
    n = validate.whole(n, "n")
    if not 1 <= n <= 5:
        raise ValueError(f"n={n}: use 1 to 5 points (the handle and up to four more on its region)")
    hx, hy = validate.point(handle, "handle")
    tx, ty = validate.point(target, "target")
    if region is None:
        region = region_at(image, (hx, hy), tolerance, within)
    region = np.asarray(region, bool)
    h, w = region.shape
    pairs = [((hx, hy), (tx, ty))]
    for ux, uy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        if len(pairs) == n:
            break
        reach = 0
        while True:
            x, y = int(round(hx + (reach + 1) * ux)), int(round(hy + (reach + 1) * uy))
            if not (0 <= x < w and 0 <= y < h and region[y, x]):
                break
            reach += 1
        if reach >= MIN_REACH:
            px, py = hx + ux * (reach // 2), hy + uy * (reach // 2)
            qx, qy = px + tx - hx, py + ty - hy
            if 0 <= qx <= w - 1 and 0 <= qy <= h - 1:        # a target off the image: that point is left out
                pairs.append(((px, py), (qx, qy)))
    return pairs
