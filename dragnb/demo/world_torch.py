"""The shape world rasterised in torch: batched, on any device, for training without a data bottleneck.

`dragnb.demo.world` draws one scene at a time with numpy (about 1 ms a scene, fine for a CPU run, a
bottleneck for a GPU that trains on thousands of scenes a second). This module draws the same world in
tensors of scene parameters:

* `pack(scenes)` turns `world.Scene`s into a `SceneBatch`; `render(batch)` rasterises it. With the default
  float64 the pixels equal `world.render(scene)` bit for bit (same sample points, same operation order, same
  round-half-to-even; see `tests/test_world.py`), on a CPU and on a GPU alike.
* `random_scenes(n, generator)` samples scene parameters from the world's distribution directly in torch
  (same ranges, same colour rules as `world.random_scene`, vectorised rejection sampling), on the
  generator's device. Its scenes are not `world.random_scene(seed)` for any seed (another random stream),
  so training with it never meets the benchmark's held-out seeds either.
* `random_batch(n, generator)` = render(random_scenes(...)): (n, size, size, 3) uint8 on the device.

Shaded shapes (`world.random_scene(seed, shaded=p)`): a batch may carry each slot's colour field (`shade`,
`shade_dir`, `glow`; None in a flat batch), rendered as `world.render` does, bit for bit in float64.

Layout: a batch holds `S = MAX_SHAPES` shape slots per scene; `valid` (B, S) says which are used; slots
are drawn in order (later cover earlier), as in `world.render`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from dragnb.demo import world as W

MAX_SHAPES = 3
KIND_ID = {k: i for i, k in enumerate(W.KINDS)}        # circle 0, square 1, triangle 2, ellipse 3
# triangle edge normals at 90° + k·120° (world._coverage), as python floats so they round as there
_TRI = [(math.cos(math.pi / 2 + k * 2 * math.pi / 3), math.sin(math.pi / 2 + k * 2 * math.pi / 3)) for k in range(3)]


@dataclass
class SceneBatch:
    """Scene parameters of B scenes as tensors (float ones in `dtype`, all on one device).

    Shape slot tensors are (B, S); colours (B, S, 3) / (B, 3) in 0..255.
    """
    size: float                 # the square image size the coordinates refer to (world.Scene.size)
    valid: torch.Tensor         # (B, S) bool: the slot holds a shape
    kind: torch.Tensor          # (B, S) long: KIND_ID
    cx: torch.Tensor            # (B, S) centre x, pixels
    cy: torch.Tensor            # (B, S) centre y
    extent: torch.Tensor        # (B, S) world.Shape.size: diameter / side / major axis / triangle side
    cos: torch.Tensor           # (B, S) cos(angle)
    sin: torch.Tensor           # (B, S) sin(angle)
    aspect: torch.Tensor        # (B, S) minor/major axis ratio (ellipses), 1 otherwise
    color: torch.Tensor         # (B, S, 3)
    bg0: torch.Tensor           # (B, 3) gradient start
    bg1: torch.Tensor           # (B, 3) gradient end (== bg0: flat)
    bg_dir: torch.Tensor        # (B, 2) (cos, sin) of the gradient direction
    shade: torch.Tensor | None = None       # (B, S, 3) world.Shape.shade (None: every shape flat)
    shade_dir: torch.Tensor | None = None   # (B, S, 2) (cos, sin) of world.Shape.shade_angle
    glow: torch.Tensor | None = None        # (B, S) world.Shape.glow

    @property
    def shaded(self) -> bool:
        return self.shade is not None

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def to(self, device) -> "SceneBatch":
        return SceneBatch(**{f.name: (v.to(device) if torch.is_tensor(v) else v)
                             for f in fields(self) for v in [getattr(self, f.name)]})


def pack(scenes, device=None, dtype: torch.dtype = torch.float64) -> SceneBatch:
    """`world.Scene`s (all of one `size`) -> a SceneBatch. Angles' cos/sin come from `math`, as in world."""
    scenes = list(scenes)
    if not scenes:
        raise ValueError("pack() got no scenes: pass a non-empty list of dragnb.demo.world.Scene")
    sizes = {sc.size for sc in scenes}
    if len(sizes) != 1:
        raise ValueError(f"scenes of different sizes {sorted(sizes)} cannot share a batch: pack each size apart")
    B, S = len(scenes), MAX_SHAPES
    if any(len(sc.shapes) > S for sc in scenes):
        raise ValueError(f"a scene has more than {S} shapes: MAX_SHAPES is {S}")
    valid = torch.zeros(B, S, dtype=torch.bool)
    kind = torch.zeros(B, S, dtype=torch.long)
    fl = {k: torch.zeros(B, S, dtype=torch.float64) for k in ("cx", "cy", "extent", "cos", "sin")}
    aspect = torch.ones(B, S, dtype=torch.float64)
    color = torch.zeros(B, S, 3, dtype=torch.float64)
    for b, sc in enumerate(scenes):
        for s, sh in enumerate(sc.shapes):
            valid[b, s], kind[b, s] = True, KIND_ID[sh.kind]
            fl["cx"][b, s], fl["cy"][b, s], fl["extent"][b, s] = sh.cx, sh.cy, sh.size
            fl["cos"][b, s], fl["sin"][b, s] = math.cos(sh.angle), math.sin(sh.angle)
            aspect[b, s] = sh.aspect
            color[b, s] = torch.tensor(sh.color, dtype=torch.float64)
    bg0 = torch.tensor([sc.bg0 for sc in scenes], dtype=torch.float64)
    bg1 = torch.tensor([sc.bg1 for sc in scenes], dtype=torch.float64)
    bg_dir = torch.tensor([(math.cos(sc.bg_angle), math.sin(sc.bg_angle)) for sc in scenes], dtype=torch.float64)
    f = dict(cos=fl["cos"], sin=fl["sin"], cx=fl["cx"], cy=fl["cy"], extent=fl["extent"], aspect=aspect,
             color=color, bg0=bg0, bg1=bg1, bg_dir=bg_dir)
    if any(sh.shaded for sc in scenes for sh in sc.shapes):
        f["shade"] = torch.zeros(B, S, 3, dtype=torch.float64)
        f["shade_dir"] = torch.zeros(B, S, 2, dtype=torch.float64)
        f["glow"] = torch.zeros(B, S, dtype=torch.float64)
        for b, sc in enumerate(scenes):
            for s, sh in enumerate(sc.shapes):
                f["shade"][b, s] = torch.tensor(sh.shade, dtype=torch.float64)
                f["shade_dir"][b, s, 0], f["shade_dir"][b, s, 1] = math.cos(sh.shade_angle), math.sin(sh.shade_angle)
                f["glow"][b, s] = sh.glow
    f = {k: v.to(device=device, dtype=dtype) for k, v in f.items()}
    return SceneBatch(size=float(sizes.pop()), valid=valid.to(device), kind=kind.to(device), **f)


def _inside(kind: int, dx, dy, cos, sin, extent, aspect):
    """world._coverage for one kind, broadcasting shape parameters (N, 1) over sample points (N, P).

    The operations and their order are world._coverage's, so float64 results are identical."""
    h = extent / 2
    if kind == KIND_ID["circle"]:
        return dx * dx + dy * dy <= h * h
    u, v = cos * dx + sin * dy, (-sin) * dx + cos * dy
    if kind == KIND_ID["square"]:
        return (u.abs() <= h) & (v.abs() <= h)
    if kind == KIND_ID["ellipse"]:
        b = h * aspect
        qu, qv = u / h, v / b
        return qu * qu + qv * qv <= 1.0
    half_r = extent / math.sqrt(3) / 2                  # inradius = circumradius / 2
    inside = None
    for ca, sa in _TRI:
        edge = (u * ca + v * sa) <= half_r
        inside = edge if inside is None else inside & edge
    return inside


def _bound_radius(kind: int, extent: torch.Tensor) -> torch.Tensor:
    """world._bound_radius for one kind id, elementwise."""
    if kind == KIND_ID["square"]:
        return extent / math.sqrt(2)
    if kind == KIND_ID["triangle"]:
        return extent / math.sqrt(3)
    return extent / 2


def _bound_radii(kind: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """world._bound_radius elementwise over tensors of kind ids and extents (any equal shapes)."""
    return torch.where(kind == KIND_ID["square"], extent / math.sqrt(2),
                       torch.where(kind == KIND_ID["triangle"], extent / math.sqrt(3), extent / 2))


def coverages(batch: SceneBatch, size: int | None = None) -> torch.Tensor:
    """(B, S, size, size) float32 fractional coverage of each shape slot (4×4 supersampling; 0 for empty slots).

    As world._coverages, sample points are only evaluated in a window around each shape (here one window
    size per slot and kind, large enough for the biggest shape of the group); the shape lies inside its
    bounding circle, so points outside the window are outside it and the result is the same."""
    size = int(batch.size) if size is None else W._check_size(size)
    ss = W.SUPERSAMPLE
    B, S = batch.valid.shape
    dev, dt = batch.cx.device, batch.cx.dtype
    scale = batch.size / size
    off = ((torch.arange(ss, dtype=torch.float64) + 0.5) / ss).to(device=dev, dtype=dt)
    cov = torch.zeros(B, S, size, size, dtype=torch.float32, device=dev)
    for s in range(S):
        for k in range(len(W.KINDS)):
            idx = torch.nonzero(batch.valid[:, s] & (batch.kind[:, s] == k)).flatten()
            if idx.numel() == 0:
                continue
            col = lambda t: t[idx, s].view(-1, 1, 1)     # noqa: E731  (N, 1, 1) parameters of the selected scenes
            cx, cy = col(batch.cx), col(batch.cy)
            r = _bound_radius(k, col(batch.extent)) / scale + 1            # world._coverages' box half-size
            win = min(size, int(math.ceil(2 * float(r.max()))) + 2)       # window side, pixels
            x0 = torch.floor(cx / scale - r).clamp(0, size - win).long()  # (N, 1, 1) window origin
            y0 = torch.floor(cy / scale - r).clamp(0, size - win).long()
            j = torch.arange(win, device=dev)
            cols, rows = x0.view(-1, 1) + j, y0.view(-1, 1) + j  # (N, win) pixel indices
            # sample coordinates (pixel + sub-offset) · scale, along x (N, 1, win·ss) and y (N, win·ss, 1)
            px = ((cols.to(dt)[:, :, None] + off).reshape(-1, 1, win * ss)) * scale
            py = ((rows.to(dt)[:, :, None] + off).reshape(-1, win * ss, 1)) * scale
            inside = _inside(k, px - cx, py - cy, col(batch.cos), col(batch.sin), col(batch.extent), col(batch.aspect))
            c = inside.to(torch.float32).view(-1, win, ss, win, ss).mean(dim=(2, 4))
            cov[idx[:, None, None], s, rows[:, :, None], cols[:, None, :]] = c
    return cov


def render(batch: SceneBatch, size: int | None = None) -> torch.Tensor:
    """Rasterise a SceneBatch: (B, size, size, 3) uint8 on its device (= world.render per scene in float64)."""
    size = int(batch.size) if size is None else W._check_size(size)
    dev, dt = batch.cx.device, batch.cx.dtype
    scale = batch.size / size
    p = (torch.arange(size, dtype=torch.float64) + 0.5) * scale
    p = p.to(device=dev, dtype=dt)
    ys, xs = p.view(1, size, 1), p.view(1, 1, size)
    d0, d1 = batch.bg_dir[:, 0].view(-1, 1, 1), batch.bg_dir[:, 1].view(-1, 1, 1)
    proj = (xs - batch.size / 2) * d0 + (ys - batch.size / 2) * d1
    t = torch.clamp(proj / (batch.size * 0.71) + 0.5, 0.0, 1.0)[..., None]          # (B, H, W, 1)
    img = (1 - t) * batch.bg0.view(-1, 1, 1, 3) + t * batch.bg1.view(-1, 1, 1, 3)
    cov = coverages(batch, size)
    for s in range(cov.shape[1]):
        a = cov[:, s, :, :, None].to(dt)
        col = _colors(batch, s, xs, ys) if batch.shaded else batch.color[:, s].view(-1, 1, 1, 3)
        img = (1 - a) * img + a * col
    return torch.clamp(torch.round(img), 0, 255).to(torch.uint8)


def _colors(batch: SceneBatch, s: int, xs, ys) -> torch.Tensor:
    """(B, H, W, 3) colour field of shape slot `s` at the sample points: world.shape_colors (same operations in
    the same order; a flat slot's zero ramp and glow leave its colour exact)."""
    v = lambda t: t[:, s].view(-1, 1, 1)               # noqa: E731  (B, 1, 1)
    r = _bound_radii(batch.kind[:, s].view(-1, 1, 1), v(batch.extent))
    r = torch.where(batch.valid[:, s].view(-1, 1, 1), r, torch.ones_like(r))   # an empty slot (extent 0) has no field
    dx, dy = xs - v(batch.cx), ys - v(batch.cy)
    ramp = (dx * batch.shade_dir[:, s, 0].view(-1, 1, 1) + dy * batch.shade_dir[:, s, 1].view(-1, 1, 1)) / r
    fall = 1.0 - torch.clamp((dx * dx + dy * dy) / (r * r), max=1.0)
    return (batch.color[:, s].view(-1, 1, 1, 3) + ramp[..., None] * batch.shade[:, s].view(-1, 1, 1, 3)
            + (v(batch.glow) * fall)[..., None])


# --------------------------------------------------------------------------------------------------
# sampling the world's distribution in torch


def _uniform(n, lo, hi, g, dev, dt):
    return lo + (hi - lo) * torch.rand(n, generator=g, device=dev, dtype=dt)


def _seg_dist(c, a, b):
    """world._seg_dist batched: distance of colours c (N, 3) from the RGB segments a-b (N, 3)."""
    ab = b - a
    denom = (ab * ab).sum(-1)
    u = ((c - a) * ab).sum(-1) / denom.clamp_min(1e-12)
    u = torch.where(denom == 0, torch.zeros_like(u), u.clamp(0.0, 1.0))
    return (c - (a + u[:, None] * ab)).norm(dim=-1)


def random_scenes(n: int, generator: torch.Generator, size: int = 64,
                  dtype: torch.dtype = torch.float64, shaded: float = 0.0) -> SceneBatch:
    """n scenes from the world's distribution (world.random_scene's rules), sampled on `generator`'s device.

    1-3 shapes of a uniformly chosen kind, extent 15-35 % of `size`, inside the image at any rotation, flat
    colours at RGB distance >= 90 from the background's colour segment and >= 70 from the scene's other
    shapes (up to 200 tries, then the last try, as world.random_scene); a flat or linear-gradient background
    (ends > 60 apart), each half the time. `shaded`: the probability that a shape is shaded (world.SHADE_RANGE,
    world.GLOW_RANGE), drawn after everything else, so shaded=0 draws exactly the flat stream.
    """
    size, shaded = W._check_size(size), W._check_shaded(shaded)
    if n < 1:
        raise ValueError(f"n={n} is invalid: ask for at least one scene")
    g, dev, dt, S = generator, generator.device, dtype, MAX_SHAPES
    ri = lambda *shape: torch.randint(0, 256, shape, generator=g, device=dev).to(dt)  # noqa: E731
    bg0 = ri(n, 3)
    bg1 = bg0.clone()
    todo = torch.rand(n, generator=g, device=dev) >= 0.5           # gradient backgrounds
    while bool(todo.any()):
        idx = torch.nonzero(todo).flatten()
        cand = ri(idx.numel(), 3)
        ok = (cand - bg0[idx]).norm(dim=-1) > 60
        bg1[idx[ok]] = cand[ok]
        todo[idx[ok]] = False
    ang = _uniform(n, 0.0, 2 * math.pi, g, dev, dt)
    bg_dir = torch.stack([ang.cos(), ang.sin()], -1)
    count = torch.randint(1, S + 1, (n,), generator=g, device=dev)
    valid = torch.arange(S, device=dev)[None, :] < count[:, None]
    kind = torch.randint(0, len(W.KINDS), (n, S), generator=g, device=dev)
    extent = _uniform((n, S), W.SIZE_RANGE[0] * size, W.SIZE_RANGE[1] * size, g, dev, dt)
    angle = _uniform((n, S), 0.0, 2 * math.pi, g, dev, dt)
    angle = torch.where(kind == KIND_ID["circle"], torch.zeros_like(angle), angle)
    aspect = torch.where(kind == KIND_ID["ellipse"], _uniform((n, S), 0.45, 0.75, g, dev, dt), torch.ones_like(angle))
    r = _bound_radii(kind, extent)
    cx = r + torch.rand((n, S), generator=g, device=dev, dtype=dt) * (size - 2 * r)
    cy = r + torch.rand((n, S), generator=g, device=dev, dtype=dt) * (size - 2 * r)
    color = torch.zeros(n, S, 3, device=dev, dtype=dt)
    for s in range(S):
        todo = valid[:, s].clone()
        for _try in range(200):
            idx = torch.nonzero(todo).flatten()
            if idx.numel() == 0:
                break
            cand = ri(idx.numel(), 3)
            color[idx, s] = cand                                # the last try stays if none passes
            ok = _seg_dist(cand, bg0[idx], bg1[idx]) >= W.MIN_COLOR_DIST_BG
            for s2 in range(s):
                near = (cand - color[idx, s2]).norm(dim=-1) < W.MIN_COLOR_DIST_SHAPES
                ok &= ~(near & valid[idx, s2])
            todo[idx[ok]] = False
    shading = {}
    if shaded > 0:
        on = (torch.rand((n, S), generator=g, device=dev) < shaded) & valid
        d = torch.randn((n, S, 3), generator=g, device=dev, dtype=dt)
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-9) * _uniform((n, S), *W.SHADE_RANGE, g, dev, dt)[..., None]
        sa = _uniform((n, S), 0.0, 2 * math.pi, g, dev, dt)
        sign = torch.where(torch.rand((n, S), generator=g, device=dev) < 0.5, 1.0, -1.0).to(dt)
        glow = _uniform((n, S), *W.GLOW_RANGE, g, dev, dt) * sign
        shading = dict(shade=d * on[..., None], shade_dir=torch.stack([sa.cos(), sa.sin()], -1), glow=glow * on)
    return SceneBatch(size=float(size), valid=valid, kind=kind, cx=cx, cy=cy, extent=extent, cos=angle.cos(),
                      sin=angle.sin(), aspect=aspect, color=color, bg0=bg0, bg1=bg1, bg_dir=bg_dir, **shading)


def random_batch(n: int, generator: torch.Generator, size: int = 64, dtype: torch.dtype = torch.float64,
                 shaded: float = 0.0) -> torch.Tensor:
    """n fresh scenes rendered on `generator`'s device: (n, size, size, 3) uint8 (`shaded`: random_scenes)."""
    return render(random_scenes(n, generator, size, dtype, shaded))


class SceneStream:
    """Batches of fresh scenes, drawn `chunk` batches at a time: `next()` -> (batch, size, size, 3) uint8.

    Drawing a batch costs about 1,800 small tensor operations whatever its size (the shapes and colours of a
    whole batch are drawn at once), so on a GPU each draw is ~1,800 kernel launches: about as long as the training
    step itself for the demo model. Drawing `chunk` batches in one go divides that by `chunk`; the scenes are the
    same kind (independent draws), only their order in the generator's stream differs from chunk=1.
    """

    def __init__(self, batch: int, generator: torch.Generator, chunk: int = 1, size: int = 64,
                 dtype: torch.dtype = torch.float64, shaded: float = 0.0):
        if batch < 1 or chunk < 1:
            raise ValueError(f"SceneStream(batch={batch}, chunk={chunk}): use positive whole numbers")
        self.batch, self.chunk, self.size, self.dtype, self.generator = batch, chunk, size, dtype, generator
        self.shaded = shaded
        self._buf: torch.Tensor | None = None
        self._i = chunk

    def next(self) -> torch.Tensor:
        if self._i >= self.chunk:
            self._buf = random_batch(self.batch * self.chunk, self.generator, self.size, self.dtype, self.shaded)
            self._i = 0
        out = self._buf[self._i * self.batch:(self._i + 1) * self.batch]
        self._i += 1
        return out
