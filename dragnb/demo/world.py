"""The shape world: seeded 64×64 scenes of flat shapes with known ground truth for drag edits.

A scene is 1-3 shapes (circle, square, triangle, ellipse), each one flat colour and 15-35 % of the
image width, on a flat or linear-gradient background. Rendering is a deterministic numpy rasteriser
with 4×4 supersampling (anti-aliased edges). Coordinates are image pixels `(x, y)`, x to the right,
y down, pixel centres at integer + 0.5 (so pixel (i, j) covers [i, i+1) × [j, j+1)).

`sample_drag(seed)` gives a benchmark case: the top shape, a handle on it (its centroid), a target
6-25 % of the width away, an editable mask covering the shape at its start and end, and the
ground-truth image of the same scene with the shape moved.

Shaded shapes (`random_scene(seed, shaded=p)`, training only): each shape, with probability p, gets a colour
field fixed to the shape instead of one flat colour: a linear ramp across it in some direction plus a brighter
or darker centre, so that a point inside a shape has something of its own for point tracking to hold. The field
moves with the shape (`move_shape`), so a shaded scene's ground truth stays exact. The benchmark's cases stay
flat: with p = 0 (the default) every scene is drawn and rendered exactly as before shading existed, and with
p > 0 the same seed gives the same geometry and flat colours, plus shading from a second random stream.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from dragnb.demo.fidelity import fit_shape
from dragnb.metrics import psnr  # noqa: F401  (re-exported: dragnb.demo.world.psnr)

KINDS = ("circle", "square", "triangle", "ellipse")
SIZE_RANGE = (0.15, 0.35)        # shape extent as a fraction of the image width
DRAG_RANGE = (0.06, 0.25)        # drag length as a fraction of the image width
MIN_COLOR_DIST_BG = 90.0         # RGB distance of a shape colour from the background's colour segment
MIN_COLOR_DIST_SHAPES = 70.0     # RGB distance between shape colours
SUPERSAMPLE = 4
SHADE_RANGE = (20.0, 60.0)       # RGB length of a shaded shape's ramp from its centre to its bounding circle
GLOW_RANGE = (15.0, 45.0)        # how much brighter (or darker) a shaded shape's centre is than its mean colour


@dataclass(frozen=True)
class Shape:
    kind: str                     # one of KINDS
    cx: float                     # centre x, pixels at the scene's size
    cy: float                     # centre y
    size: float                   # extent (diameter / side / major axis / triangle side), pixels
    angle: float                  # rotation, radians (ignored for circles)
    aspect: float                 # minor/major axis ratio for ellipses, 1.0 otherwise
    color: tuple[int, int, int]   # RGB 0..255 (a shaded shape's colour at its centre, without the glow)
    shade: tuple[float, float, float] = (0.0, 0.0, 0.0)   # RGB change from the centre to the bounding circle along
    shade_angle: float = 0.0      # this direction (radians, image axes); (0, 0, 0): no ramp
    glow: float = 0.0             # added to all three channels at the centre, falling to 0 at the bounding circle

    @property
    def shaded(self) -> bool:
        return any(self.shade) or self.glow != 0.0


@dataclass(frozen=True)
class Scene:
    size: int                                 # the square image size the coordinates refer to
    shapes: tuple[Shape, ...]                 # drawn in order: later shapes cover earlier ones
    bg0: tuple[int, int, int]                 # background colour (gradient start)
    bg1: tuple[int, int, int]                 # gradient end (== bg0 for a flat background)
    bg_angle: float                           # gradient direction, radians


def _check_size(size) -> int:
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size={size!r} is invalid: use an integer image size >= 8 (the world's default is 64)")
    return int(size)


def _check_shaded(shaded) -> float:
    if not 0.0 <= float(shaded) <= 1.0:
        raise ValueError(f"shaded={shaded!r} is invalid: use the probability that a shape is shaded, in [0, 1]")
    return float(shaded)


def _seg_dist(c, a, b) -> float:
    """Distance of colour c from the RGB segment a-b (the colours a gradient background takes)."""
    c, a, b = (np.asarray(v, float) for v in (c, a, b))
    ab = b - a
    denom = float(ab @ ab)
    u = 0.0 if denom == 0 else float(np.clip((c - a) @ ab / denom, 0.0, 1.0))
    return float(np.linalg.norm(c - (a + u * ab)))


def _random_color(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def random_scene(seed: int, size: int = 64, shaded: float = 0.0) -> Scene:
    """A scene drawn from the world with `np.random.default_rng(seed)`; the same seed gives the same scene.

    `shaded` in [0, 1]: the probability that each shape is shaded (module docstring); the shading is drawn from
    `np.random.default_rng([seed, SHADE_STREAM])`, so the geometry and colours are those of the flat scene."""
    size, shaded = _check_size(size), _check_shaded(shaded)
    rng = np.random.default_rng(seed)
    bg0 = _random_color(rng)
    if rng.random() < 0.5:
        bg1 = bg0
    else:
        while True:
            bg1 = _random_color(rng)
            if np.linalg.norm(np.subtract(bg1, bg0)) > 60:
                break
    bg_angle = float(rng.uniform(0, 2 * math.pi))
    n = int(rng.integers(1, 4))
    shapes = []
    for _ in range(n):
        kind = KINDS[int(rng.integers(0, len(KINDS)))]
        ext = float(rng.uniform(*SIZE_RANGE)) * size
        angle = 0.0 if kind == "circle" else float(rng.uniform(0, 2 * math.pi))
        aspect = float(rng.uniform(0.45, 0.75)) if kind == "ellipse" else 1.0
        r = _bound_radius(kind, ext)
        cx = float(rng.uniform(r, size - r))
        cy = float(rng.uniform(r, size - r))
        for _try in range(200):
            color = _random_color(rng)
            if _seg_dist(color, bg0, bg1) < MIN_COLOR_DIST_BG:
                continue
            if any(np.linalg.norm(np.subtract(color, s.color)) < MIN_COLOR_DIST_SHAPES for s in shapes):
                continue
            break
        shapes.append(Shape(kind, cx, cy, ext, angle, aspect, color))
    if shaded > 0:
        srng = np.random.default_rng([int(seed), SHADE_STREAM])
        shapes = [_shade(sh, srng) if srng.random() < shaded else sh for sh in shapes]
    return Scene(size, tuple(shapes), bg0, bg1, bg_angle)


SHADE_STREAM = 0x5ADE


def _shade(sh: Shape, rng) -> Shape:
    """`sh` with a random colour field: a ramp of SHADE_RANGE in a random RGB direction and image direction, and
    a glow of GLOW_RANGE of either sign."""
    d = rng.normal(size=3)
    d = d / max(float(np.linalg.norm(d)), 1e-9) * float(rng.uniform(*SHADE_RANGE))
    glow = float(rng.uniform(*GLOW_RANGE)) * (1.0 if rng.random() < 0.5 else -1.0)
    return dataclasses.replace(sh, shade=tuple(float(v) for v in d), shade_angle=float(rng.uniform(0, 2 * math.pi)),
                               glow=glow)


def shape_colors(sh: Shape, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """RGB float64 (..., 3) colour of shape `sh` at sample points (xs, ys) (pixels at the scene's size): its flat
    colour, or a shaded shape's field (ramp + glow over its bounding radius)."""
    base = np.asarray(sh.color, np.float64)
    if not sh.shaded:
        return np.broadcast_to(base, xs.shape + (3,))
    dx, dy = xs - sh.cx, ys - sh.cy
    r = _bound_radius(sh.kind, sh.size)
    ramp = (dx * math.cos(sh.shade_angle) + dy * math.sin(sh.shade_angle)) / r
    fall = 1.0 - np.minimum((dx * dx + dy * dy) / (r * r), 1.0)
    return base + ramp[..., None] * np.asarray(sh.shade, np.float64) + (sh.glow * fall)[..., None]


def _bound_radius(kind: str, ext: float) -> float:
    """Radius of a circle around the centre that contains the shape at any rotation."""
    if kind == "square":
        return ext / math.sqrt(2)
    if kind == "triangle":
        return ext / math.sqrt(3)      # circumradius of an equilateral triangle with side `ext`
    return ext / 2                     # circle, ellipse (major axis)


def _coverage(shape: Shape, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean inside-test of `shape` at sample points (xs, ys) (any equal shapes)."""
    dx, dy = xs - shape.cx, ys - shape.cy
    c, s = math.cos(shape.angle), math.sin(shape.angle)
    u, v = c * dx + s * dy, -s * dx + c * dy            # shape-local coordinates
    h = shape.size / 2
    if shape.kind == "circle":
        return dx * dx + dy * dy <= h * h
    if shape.kind == "square":
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape.kind == "ellipse":
        b = h * shape.aspect
        return (u / h) ** 2 + (v / b) ** 2 <= 1.0
    if shape.kind == "triangle":
        R = shape.size / math.sqrt(3)
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):                               # three half-planes, edge normals at 90°+k·120°
            a = math.pi / 2 + k * 2 * math.pi / 3
            inside &= (u * math.cos(a) + v * math.sin(a)) <= R / 2   # inradius = R/2
        return inside
    raise ValueError(f"shape kind {shape.kind!r} is unknown; use one of {KINDS}")


def _coverages(scene: Scene, size: int) -> list[np.ndarray]:
    """Per-shape fractional coverage maps (size, size) in [0, 1] (4×4 supersampling inside each
    shape's bounding box; exact zeros outside it)."""
    ss = SUPERSAMPLE
    scale = scene.size / size
    off = (np.arange(ss) + 0.5) / ss
    covs = []
    for sh in scene.shapes:
        r = _bound_radius(sh.kind, sh.size) / scale + 1
        x0, x1 = max(0, int(math.floor(sh.cx / scale - r))), min(size, int(math.ceil(sh.cx / scale + r)))
        y0, y1 = max(0, int(math.floor(sh.cy / scale - r))), min(size, int(math.ceil(sh.cy / scale + r)))
        cov = np.zeros((size, size), np.float32)
        if x1 > x0 and y1 > y0:
            px = (np.arange(x0, x1)[:, None] + off[None, :]).reshape(-1) * scale
            py = (np.arange(y0, y1)[:, None] + off[None, :]).reshape(-1) * scale
            ys, xs = np.meshgrid(py, px, indexing="ij")
            inside = _coverage(sh, xs, ys).astype(np.float32)
            cov[y0:y1, x0:x1] = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))
        covs.append(cov)
    return covs


def render(scene: Scene, size: int | None = None) -> np.ndarray:
    """Rasterise `scene` to an (size, size, 3) uint8 RGB array (default: the scene's own size)."""
    size = scene.size if size is None else _check_size(size)
    scale = scene.size / size
    p = (np.arange(size) + 0.5) * scale
    ys, xs = np.meshgrid(p, p, indexing="ij")
    d = np.array([math.cos(scene.bg_angle), math.sin(scene.bg_angle)])
    proj = (xs - scene.size / 2) * d[0] + (ys - scene.size / 2) * d[1]
    t = np.clip(proj / (scene.size * 0.71) + 0.5, 0.0, 1.0)[..., None]        # 0..1 across the image
    img = (1 - t) * np.asarray(scene.bg0, np.float64) + t * np.asarray(scene.bg1, np.float64)
    for sh, cov in zip(scene.shapes, _coverages(scene, size)):
        a = cov[..., None].astype(np.float64)
        col = shape_colors(sh, xs, ys) if sh.shaded else np.asarray(sh.color, np.float64)
        img = (1 - a) * img + a * col
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def move_shape(scene: Scene, index: int, offset) -> Scene:
    """The same scene with shape `index` translated by `offset` = (dx, dy) pixels (scene's size)."""
    if not -len(scene.shapes) <= index < len(scene.shapes):
        raise ValueError(f"shape index {index} is out of range: the scene has {len(scene.shapes)} shape(s)")
    dx, dy = (float(v) for v in offset)
    shapes = list(scene.shapes)
    sh = shapes[index]
    shapes[index] = dataclasses.replace(sh, cx=sh.cx + dx, cy=sh.cy + dy)
    return dataclasses.replace(scene, shapes=tuple(shapes))


def shape_mask(scene: Scene, index: int, size: int | None = None) -> np.ndarray:
    """(size, size) bool: pixels where shape `index` is visible (coverage > 0.5 after later shapes cover it)."""
    size = scene.size if size is None else _check_size(size)
    if not -len(scene.shapes) <= index < len(scene.shapes):
        raise ValueError(f"shape index {index} is out of range: the scene has {len(scene.shapes)} shape(s)")
    index = index % len(scene.shapes)
    covs = _coverages(scene, size)
    vis = covs[index].astype(np.float64)
    for later in covs[index + 1:]:
        vis = vis * (1 - later)
    return vis > 0.5


def shape_centroid(scene: Scene, index: int) -> tuple[float, float]:
    """Centroid (x, y) of the shape's filled area (unoccluded), pixels at the scene's size."""
    sh = scene.shapes[index]
    # The filled area of every kind here is centrally symmetric about (cx, cy) except the triangle,
    # whose centroid is also its centre (equilateral): the centroid is the centre.
    return (sh.cx, sh.cy)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a bool mask by a disc of `radius` pixels (numpy only)."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius:
                continue
            src = mask[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            out[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] |= src
    return out


@dataclass(frozen=True)
class DragCase:
    """One benchmark case of the shape world (all coordinates in image pixels at `size`)."""
    seed: int
    scene: Scene
    index: int                       # the dragged shape (the top one)
    handle: tuple[float, float]      # (x, y) on the shape: its centroid, rounded to whole pixels
    target: tuple[float, float]      # handle + offset
    offset: tuple[int, int]          # (dx, dy) whole pixels
    mask: np.ndarray                 # (size, size) bool editable region: the shape at start and end, dilated
    image: np.ndarray                # (size, size, 3) uint8 input
    gt_scene: Scene
    gt_image: np.ndarray             # (size, size, 3) uint8 ground truth: the shape moved by `offset`

    @property
    def drag_length(self) -> float:
        return float(math.hypot(*self.offset))

    @property
    def color(self) -> tuple[int, int, int]:
        return self.scene.shapes[self.index].color


def sample_drag(seed: int, size: int = 64, mask_dilation: int = 3) -> DragCase:
    """A seeded drag case: top shape, handle at its centroid, offset 6-25 % of `size` in a random
    direction such that the moved shape stays inside the image, mask = start ∪ end dilated."""
    size = _check_size(size)
    rng = np.random.default_rng([int(seed), 7919])
    scene = random_scene(seed, size)
    index = len(scene.shapes) - 1
    sh = scene.shapes[index]
    cx0, cy0 = shape_centroid(scene, index)
    hx, hy = float(round(cx0)), float(round(cy0))
    # move the shape so its centroid lands on the rounded handle first: handle is then exactly on it
    scene = move_shape(scene, index, (hx - cx0, hy - cy0))
    r = _bound_radius(sh.kind, sh.size)
    lo, hi = DRAG_RANGE[0] * size, DRAG_RANGE[1] * size
    for _try in range(1000):
        length = rng.uniform(lo, hi)
        ang = rng.uniform(0, 2 * math.pi)
        dx, dy = int(round(length * math.cos(ang))), int(round(length * math.sin(ang)))
        if not lo <= math.hypot(dx, dy) <= hi:
            continue
        tx, ty = hx + dx, hy + dy
        if r <= tx <= size - r and r <= ty <= size - r:
            break
    else:  # pragma: no cover - a shape of at most 35 % always has room for the shortest drag
        raise RuntimeError(f"seed {seed}: found no drag that keeps the shape inside the image")
    gt_scene = move_shape(scene, index, (dx, dy))
    mask = dilate(shape_mask(scene, index) | shape_mask(gt_scene, index), mask_dilation)
    return DragCase(seed=int(seed), scene=scene, index=index, handle=(hx, hy), target=(tx, ty),
                    offset=(dx, dy), mask=mask, image=render(scene), gt_scene=gt_scene,
                    gt_image=render(gt_scene))


def random_batch(rng: np.random.Generator, n: int, size: int = 64, shaded: float = 0.0) -> np.ndarray:
    """n scenes with seeds drawn from `rng` (all < 10**9, the training range): (n, size, size, 3) uint8.
    `shaded`: the probability that each shape is shaded (`random_scene`)."""
    seeds = rng.integers(0, 10**9, size=n)
    return np.stack([render(random_scene(int(s), size, shaded)) for s in seeds])


# --------------------------------------------------------------------------------------------------
# measuring an edit against the ground truth

COLOR_TOLERANCE = 40.0   # RGB distance under which a pixel counts as the dragged shape's colour


def segment_shape(image: np.ndarray, case: DragCase, tol: float = COLOR_TOLERANCE) -> np.ndarray:
    """(H, W) bool: pixels inside the case's mask whose colour is within `tol` of the dragged shape's."""
    d = np.linalg.norm(image.astype(np.float64) - np.asarray(case.color, np.float64), axis=-1)
    return (d < tol) & case.mask


def score_edit(image: np.ndarray, case: DragCase) -> dict:
    """How well `image` (H, W, 3 uint8, the edit's result) matches the case's ground truth.

    dist: distance (px) from the colour-segmented centroid of the shape (inside the mask) to the target
      (= the moved shape's centroid); if no pixel of the shape's colour is left, the shape counts as not
      moved (dist = drag length) and `lost` is True.
    dist_frac: dist / drag length.   iou: IoU of the segmented shape with the true moved shape.
    bg_psnr: PSNR (dB) of the pixels outside the mask against the input (= the ground truth there).
    form: whether the result is still the shape, wherever it landed: IoU of the segmented pixels with the best
      primitive of the shape's own kind placed anywhere, at any size and rotation (`fidelity.fit_shape`; 0 when
      lost). A smear or a blob of the right colour scores low even where it overlaps the target.
    """
    image = np.asarray(image)
    if image.shape != case.image.shape:
        raise ValueError(f"image shape {image.shape} differs from the case's {case.image.shape}: resize the result first")
    seg = segment_shape(image, case)
    L = case.drag_length
    if seg.any():
        ys, xs = np.nonzero(seg)
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        dist = math.hypot(cx - case.target[0], cy - case.target[1])
        lost = False
    else:
        cx = cy = float("nan")
        dist, lost = L, True
    gt = shape_mask(case.gt_scene, case.index)
    iou = float((seg & gt).sum() / max(1, (seg | gt).sum()))
    form = fit_shape(seg, kinds=(case.scene.shapes[case.index].kind,))[1]
    out = ~case.mask
    return dict(dist=float(dist), dist_frac=float(dist / L), iou=iou, bg_psnr=psnr(image[out], case.image[out]),
                centroid=(float(cx), float(cy)), lost=lost, form=float(form))
