"""Shape fidelity: how many of the shapes in an image are clean circles, squares, triangles or ellipses.

A measure of a model's prior on the shape world (issue 17, item 4): generate images from noise, then
`shape_fidelity(images)` = the fraction of the shapes found in them that one primitive fits with
IoU >= 0.85. On the world's own scenes it is near 1 (tests/test_world.py), on noise 0.

Per image (64×64 RGB uint8, any square size works):
1. Background: the world's model, a colour ramp between two colours along a direction, clipped at its
   ends (flat when the colours are equal), fitted by a sweep over directions and a least squares of the
   two colours refitted on the pixels it explains (residual < BG_TOL), so the shapes do not pull it.
2. Palette: colours of the clearly-foreground pixels (residual > CORE_TOL) are grouped greedily: the colour
   with the most pixels within PALETTE_RADIUS becomes a palette entry (the median of those pixels), they
   are removed, repeat.
3. Labels: every pixel takes the nearest of {its background colour, the palette}: a mixed edge pixel goes to
   whichever side covers more of it, as a coverage > 0.5 rule would.
4. Shapes: the 4-connected components of each palette colour with at least MIN_AREA pixels.
5. Fit: for each shape, every primitive is placed from the component's moments (centre, area, orientation)
   and refined by a small search over angle, scale and offset; its IoU with the component counts the pixels
   of other shapes as unknown (an occluded shape is judged on what is visible). The best IoU over the four
   primitives is the shape's score. A shape *fits* when that IoU is >= FIT_IOU and it is flat: at least
   FLAT_MIN of its pixels are within FLAT_TOL of its fill colour (a blurred blob of the right outline is
   not a crisp shape).
"""
from __future__ import annotations

import math

import numpy as np

FIT_IOU = 0.85
BG_TOL = 30.0            # RGB distance under which a pixel is explained by the background field
CORE_TOL = 60.0          # RGB distance from the background over which a pixel is surely foreground
PALETTE_RADIUS = 30.0    # RGB radius of one palette colour
MIN_AREA = 24            # pixels: smaller components are not counted as shapes (the world's smallest is ~32)
FLAT_TOL = 25.0          # RGB distance from its palette colour within which a pixel is the flat fill
FLAT_MIN = 0.7           # a crisp flat shape has at least this fraction of its pixels at its flat fill
MAX_COLORS = 8


def _ramp(theta: float, h: int, w: int) -> np.ndarray:
    """The world's gradient parameter t(x, y) in [0, 1] for direction theta (world.render's formula)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    proj = (xs - w / 2) * math.cos(theta) + (ys - h / 2) * math.sin(theta)
    return np.clip(proj / (w * 0.71) + 0.5, 0.0, 1.0)


def _fit_ends(t: np.ndarray, y: np.ndarray, iters: int = 3):
    """Robust least squares of colours y (P, 3) = (1 - t) bg0 + t bg1: (field (P, 3), residual (P,))."""
    A = np.stack([1 - t, t], 1)
    keep = np.ones(len(y), bool)
    for _ in range(iters):
        if keep.sum() < 10:
            break
        coef, *_ = np.linalg.lstsq(A[keep], y[keep], rcond=None)
        field = A @ coef
        res = np.linalg.norm(y - field, axis=1)
        keep = res < BG_TOL
    return field, res


def fit_background(img: np.ndarray):
    """The world's background model fitted to `img` (H, W, 3): a colour ramp (1 - t) bg0 + t bg1 along a
    direction, t clipped to [0, 1] as world.render draws it (a flat background is bg0 == bg1). The direction
    is swept in 5° then 0.5° steps; the ends come from a robust least squares at each. Returns the (H, W, 3)
    field and the per-pixel RGB residual distance."""
    h, w, _ = img.shape
    y = img.reshape(-1, 3).astype(np.float64)
    best = None
    for thetas in (np.radians(np.arange(0, 360, 5.0)), None):
        if thetas is None:
            thetas = best[0] + np.radians(np.arange(-2.5, 2.75, 0.5))
        for th in thetas:
            field, res = _fit_ends(_ramp(th, h, w).ravel(), y)
            score = (np.minimum(res, BG_TOL) ** 2).sum()
            if best is None or score < best[1]:
                best = (th, score, field, res)
    return best[2].reshape(h, w, 3), best[3].reshape(h, w)


def _palette(colors: np.ndarray) -> list[np.ndarray]:
    """Greedy colour grouping of (N, 3) colours (see the module docstring, step 2)."""
    pal = []
    left = colors.astype(np.float64)
    while len(left) >= MIN_AREA and len(pal) < MAX_COLORS:
        sub = left if len(left) <= 1500 else left[np.linspace(0, len(left) - 1, 1500).astype(int)]
        d = np.linalg.norm(sub[:, None, :] - left[None, :, :], axis=-1)     # (n_sub, N)
        best = int((d < PALETTE_RADIUS).sum(1).argmax())
        near = d[best] < PALETTE_RADIUS
        if near.sum() < MIN_AREA:
            break
        pal.append(np.median(left[near], axis=0))
        left = left[np.linalg.norm(left - pal[-1], axis=1) >= PALETTE_RADIUS * 1.2]
    return pal


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a bool mask, as bool masks (plain flood fill: the images are small)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp = np.zeros_like(mask)
        stack = [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp[y, x] = True
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        out.append(comp)
    return out


def segment_shapes(img: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Shapes found in `img` (H, W, 3 uint8): ([component masks], (H, W) int labels: 0 background, k palette k,
    [palette colours])."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image of shape {img.shape} is not (H, W, 3) RGB: pass one uint8 image")
    bg, res = fit_background(img)
    core = res > CORE_TOL
    pal = _palette(img[core])
    if not pal:
        return [], np.zeros(img.shape[:2], int), []
    x = img.astype(np.float64)
    d = [np.linalg.norm(x - bg, axis=-1)] + [np.linalg.norm(x - c, axis=-1) for c in pal]
    labels = np.argmin(np.stack(d), axis=0)
    shapes = [c for k in range(1, len(pal) + 1) for c in _components(labels == k) if c.sum() >= MIN_AREA]
    return shapes, labels, pal


# --------------------------------------------------------------------------------------------------
# fitting primitives


def _primitive_masks(kind: str, cx, cy, size, angle, aspect, h: int, w: int) -> np.ndarray:
    """(K, h, w) bool rasters (pixel centres) of K primitives; parameters as in world.Shape, arrays (K,)."""
    ys, xs = np.mgrid[0:h, 0:w]
    xs, ys = xs[None] + 0.5, ys[None] + 0.5
    cx, cy, size, angle, aspect = (np.asarray(v, float)[:, None, None] for v in (cx, cy, size, angle, aspect))
    dx, dy = xs - cx, ys - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    half = size / 2
    if kind == "circle":
        return dx * dx + dy * dy <= half * half
    if kind == "square":
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == "ellipse":
        return (u / half) ** 2 + (v / (half * aspect)) ** 2 <= 1.0
    R = size / math.sqrt(3)
    inside = np.ones(np.broadcast_shapes(u.shape, R.shape), bool)
    for k in range(3):
        a = math.pi / 2 + k * 2 * math.pi / 3
        inside &= (u * math.cos(a) + v * math.sin(a)) <= R / 2
    return inside


def _ious(cands: np.ndarray, comp: np.ndarray, known: np.ndarray) -> np.ndarray:
    inter = (cands & comp).sum((1, 2))
    union = ((cands | comp) & known).sum((1, 2))
    return inter / np.maximum(union, 1)


def _initial(kind: str, comp: np.ndarray):
    """Moment estimates (cx, cy, size, angle, aspect) of primitive `kind` for a component."""
    ys, xs = np.nonzero(comp)
    xs, ys = xs + 0.5, ys + 0.5
    area = float(len(xs))
    cx, cy = xs.mean(), ys.mean()
    cov = np.cov(np.stack([xs - cx, ys - cy])) if len(xs) > 2 else np.eye(2)
    evals, evecs = np.linalg.eigh(cov)
    major = evecs[:, 1]
    angle = math.atan2(major[1], major[0])
    if kind == "circle":
        return cx, cy, 2 * math.sqrt(area / math.pi), 0.0, 1.0
    if kind == "square":
        return cx, cy, math.sqrt(area), 0.0, 1.0
    if kind == "triangle":
        return cx, cy, math.sqrt(4 * area / math.sqrt(3)), 0.0, 1.0
    a, b = 2 * math.sqrt(max(evals[1], 1e-6)), 2 * math.sqrt(max(evals[0], 1e-6))   # semi-axes of a solid ellipse
    return cx, cy, 2 * a * math.sqrt(area / (math.pi * a * b)), angle, float(np.clip(b / a, 0.2, 1.0))


def fit_shape(comp: np.ndarray, known: np.ndarray | None = None,
              kinds=("circle", "square", "triangle", "ellipse")) -> tuple[str, float, dict]:
    """Best primitive for a component mask: (kind, IoU, parameters). `known`: pixels that count (default all);
    `kinds`: the primitives tried (default all four)."""
    h, w = comp.shape
    known = np.ones_like(comp) if known is None else known
    best = ("none", 0.0, {})
    if not comp.any():
        return best
    for kind in kinds:
        cx, cy, size, angle, aspect = _initial(kind, comp)
        # 1. orientation (squares and triangles have no second-moment orientation): a coarse sweep
        period = {"square": math.pi / 2, "triangle": 2 * math.pi / 3}.get(kind)
        angles = np.arange(0, period, math.radians(5)) if period else np.array([angle])
        K = len(angles)
        ious = _ious(_primitive_masks(kind, [cx] * K, [cy] * K, [size] * K, angles, [aspect] * K, h, w), comp, known)
        angle = float(angles[ious.argmax()])
        # 2. local refinement: offsets, scale, angle (and aspect for ellipses), twice around the best
        for step in (1.0, 0.5):
            grid = np.array(np.meshgrid([-step, 0, step], [-step, 0, step], [0.92, 1.0, 1.08] if step == 1 else [0.96, 1.0, 1.04],
                                        [-math.radians(6 * step), 0, math.radians(6 * step)],
                                        [0.9, 1.0, 1.1] if kind == "ellipse" else [1.0], indexing="ij")).reshape(5, -1)
            p = dict(cx=cx + grid[0], cy=cy + grid[1], size=size * grid[2], angle=angle + grid[3],
                     aspect=np.clip(aspect * grid[4], 0.2, 1.0))
            ious = _ious(_primitive_masks(kind, p["cx"], p["cy"], p["size"], p["angle"], p["aspect"], h, w), comp, known)
            i = int(ious.argmax())
            cx, cy, size, angle, aspect = (float(p[k][i]) for k in ("cx", "cy", "size", "angle", "aspect"))
        iou = float(ious[i])
        if iou > best[1]:
            best = (kind, iou, dict(cx=cx, cy=cy, size=size, angle=angle, aspect=aspect))
    return best


def score_image(img: np.ndarray) -> list[dict]:
    """One row per shape found in `img`: kind, IoU of the best primitive, area, flat (fraction of its pixels
    at its flat fill colour), fits (IoU >= FIT_IOU and flat >= FLAT_MIN: a crisp, flat primitive)."""
    img = np.asarray(img)
    shapes, labels, pal = segment_shapes(img)
    rows = []
    for comp in shapes:
        known = (labels == 0) | comp            # other shapes' pixels may hide this one: they do not count
        kind, iou, params = fit_shape(comp, known)
        fill = pal[int(labels[comp][0]) - 1]
        flat = float((np.linalg.norm(img[comp].astype(np.float64) - fill, axis=-1) < FLAT_TOL).mean())
        rows.append(dict(kind=kind, iou=iou, area=int(comp.sum()), flat=flat,
                         fits=bool(iou >= FIT_IOU and flat >= FLAT_MIN), **params))
    return rows


def shape_fidelity(images) -> dict:
    """Fidelity of a set of images (N, H, W, 3) uint8: fraction of found shapes that fit a primitive
    (0 when none is found), shapes per image, and the fraction of images with at least one shape."""
    rows = [score_image(im) for im in images]
    found = [r for rs in rows for r in rs]
    n = max(1, len(rows))
    return dict(fidelity=float(np.mean([r["fits"] for r in found])) if found else 0.0,
                shapes=len(found), shapes_per_image=len(found) / n,
                images_with_shapes=sum(1 for rs in rows if rs) / n,
                mean_iou=float(np.mean([r["iou"] for r in found])) if found else 0.0)
