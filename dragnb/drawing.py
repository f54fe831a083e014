"""The one drawing vocabulary for every picture of drags: the editor canvas, the `viz` figures, the
FeatureExplorer and the demo's GIF.

* one palette, :data:`DRAG_COLORS`: drag ``i`` (0-based, as in ``session.drags[i]``) is drawn in
  ``drag_color(i)`` everywhere (handle, target, arrow, trajectory);
* one numbering, :func:`drag_label`: 1-based, as a user counts; the first drag is labelled ``"1"``;
* one geometry, :func:`pair_shapes`: what a handle → target pair is made of (arrow shaft and head,
  target ring, handle dot, a dashed link and a cross where tracking has the handle now, the label),
  computed once in the caller's coordinates; each backend only renders it (matplotlib:
  ``viz.draw_drags``; ipycanvas: ``widgets.canvas_draw.draw_pairs``; PIL: :func:`draw_pairs_pil`);
* one image coercion, :func:`as_rgb_array`.

This module imports numpy and PIL only (never a Jupyter package), so `viz` and the demo can use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image

__all__ = ["DRAG_COLORS", "drag_color", "drag_label", "PairShape", "pair_shapes", "as_rgb_array",
           "draw_pairs_pil"]

Point = tuple  # (x, y) floats in the caller's coordinates (image, display or axes-data pixels)

DRAG_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
               "#42d4f4", "#f032e6", "#bfef45", "#9a6324", "#000075")
"""Drag ``i`` is drawn in ``DRAG_COLORS[i % len(DRAG_COLORS)]`` (handle, target, arrow and trajectory)."""

OUTLINE = "#ffffff"
"""Outline drawn around handle dots, target rings and crosses so they read on any image."""


def drag_color(i: int) -> str:
    """Colour of drag ``i`` (0-based index into ``session.drags``)."""
    return DRAG_COLORS[int(i) % len(DRAG_COLORS)]


def drag_label(i: int) -> str:
    """Label of drag ``i`` (0-based index): 1-based, as a user counts, so the first drag is ``"1"``."""
    return str(int(i) + 1)


@dataclass(frozen=True)
class PairShape:
    """The pieces of one drawn drag pair, in the coordinates the caller passed to :func:`pair_shapes`.

    A renderer draws, bottom to top: ``shaft`` and ``head`` (the arrow), ``link`` (dashed), the target
    ring at ``target``, the handle dot at ``handle``, the two strokes of ``cross`` at ``current``, and
    ``label`` at ``label_xy``; every piece in ``color`` (rings, dots and crosses outlined in white).
    A piece that does not apply is None.
    """
    index: int                                   # 0-based drag index (picks color and label)
    color: str                                   # "#rrggbb" = drag_color(index)
    label: str                                   # drag_label(index): "1" for the first drag
    handle: Point                                # where the drag starts
    target: Optional[Point]                      # where it should go (None: a handle waiting for its target)
    current: Optional[Point]                     # where tracking has the handle now (None: at the handle)
    shaft: Optional[tuple]                       # (start, tip): handle -> the edge of the target ring
    head: Optional[tuple]                        # (tip, left, right): the arrow-head triangle
    link: Optional[tuple]                        # (handle, current): the way tracking moved the handle
    cross: Optional[tuple]                       # ((a, b), (c, d)): the two strokes of the X at current
    label_xy: Point                              # where the label's text starts (left, baseline)
    radius: float                                # radius of the handle dot and the target ring


def _points(points, what: str) -> list:
    out = []
    for p in points:
        if p is None:
            out.append(None)
            continue
        try:
            out.append((float(p[0]), float(p[1])))
        except (TypeError, ValueError, IndexError):
            raise TypeError(f"{what} point {p!r} is not an (x, y) pair of numbers") from None
    return out


def pair_shapes(handles: Sequence, targets: Sequence | None = None, current: Sequence | None = None, *,
                radius: float = 6.0, head: float = 8.0, indices: Sequence[int] | None = None,
                arrows: bool = True) -> list[PairShape]:
    """The shapes of handle → target pairs: the one geometry every drag drawer renders.

    handles: (x, y) start points; targets: where they should go (same length, or None; an entry may be
    None for a handle still waiting for its target); current: where point tracking has each handle now
    (same length, or None). Coordinates are the caller's: image, display or axes-data pixels.
    radius: radius of the handle dot / target ring (the arrow stops at the ring; 0 = at the target);
    head: length of the arrow head (0 = the renderer draws its own head); indices: the drags' indices
    (default 0, 1, ...), which pick colour and label; arrows=False leaves out shaft, head and link.
    """
    handles = _points(handles, "handle")
    n = len(handles)
    targets = _points(targets, "target") if targets is not None else [None] * n
    current = _points(current, "current") if current is not None else [None] * n
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if not (n == len(targets) == len(current) == len(indices)):
        raise ValueError(f"handles ({n}), targets ({len(targets)}), current ({len(current)}) and indices "
                         f"({len(indices)}) must have the same length")
    out = []
    for i, h, t, c in zip(indices, handles, targets, current):
        shaft = head_tri = link = cross = None
        if c is not None and c == h:
            c = None
        if t is not None and arrows:
            dx, dy = t[0] - h[0], t[1] - h[1]
            dist = float(np.hypot(dx, dy))
            if dist > radius:                    # no arrow when the target ring covers the handle
                ux, uy = dx / dist, dy / dist
                tip = (t[0] - ux * radius, t[1] - uy * radius)
                shaft = (h, tip)
                if head > 0:
                    bx, by = tip[0] - ux * head, tip[1] - uy * head
                    head_tri = (tip, (bx - uy * head * 0.5, by + ux * head * 0.5),
                                (bx + uy * head * 0.5, by - ux * head * 0.5))
        if c is not None:
            if arrows:
                link = (h, c)
            s = max(radius, 3.0) * 0.8
            cross = (((c[0] - s, c[1] - s), (c[0] + s, c[1] + s)), ((c[0] - s, c[1] + s), (c[0] + s, c[1] - s)))
        out.append(PairShape(index=i, color=drag_color(i), label=drag_label(i), handle=h, target=t, current=c,
                             shaft=shaft, head=head_tri, link=link, cross=cross,
                             label_xy=(h[0] + radius + 2.0, h[1] - radius), radius=float(radius)))
    return out


def as_rgb_array(image) -> np.ndarray:
    """PIL image | HxW | HxWx3(4) array or tensor (uint8, or float in [0, 1]) -> contiguous HxWx3 uint8.

    Floats in [0, 1] are scaled by 255; other values are rounded and clipped to [0, 255]; alpha is dropped.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if hasattr(image, "detach"):                 # a torch.Tensor, without importing torch
        image = image.detach().float().cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or a.dtype == object:
        raise ValueError(f"expected an image (PIL image or HxWx3 uint8 array), got an array of shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(a.dtype, np.floating) and a.max(initial=0.0) <= 1.0 else 1.0
        a = np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def draw_pairs_pil(draw, shapes: Sequence[PairShape], *, width: int = 2) -> None:
    """Render :func:`pair_shapes` with a ``PIL.ImageDraw.Draw`` (the demo's GIF frames)."""
    for s in shapes:
        if s.shaft is not None:
            draw.line([s.shaft[0], s.shaft[1]], fill=s.color, width=width)
        if s.head is not None:
            draw.polygon(list(s.head), fill=s.color)
        if s.link is not None:
            _dashed_pil(draw, s.link[0], s.link[1], s.color, max(1, width - 1))
        r = max(s.radius, 1.0)
        if s.target is not None:
            x, y = s.target
            draw.ellipse([x - r - 1, y - r - 1, x + r + 1, y + r + 1], outline=OUTLINE, width=width + 2)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=s.color, width=width)
        x, y = s.handle
        draw.ellipse([x - r, y - r, x + r, y + r], fill=s.color, outline=OUTLINE, width=1)
        if s.cross is not None:
            for a, b in s.cross:
                draw.line([a, b], fill=OUTLINE, width=width + 2)
            for a, b in s.cross:
                draw.line([a, b], fill=s.color, width=width)
        lx, ly = s.label_xy
        draw.text((lx, ly - 10), s.label, fill=OUTLINE)


def _dashed_pil(draw, a, b, color, width, dash: float = 4.0) -> None:
    dx, dy = b[0] - a[0], b[1] - a[1]
    n = float(np.hypot(dx, dy))
    for s in np.arange(0.0, n, 2 * dash):
        e = min(s + dash, n)
        draw.line([(a[0] + dx * s / n, a[1] + dy * s / n), (a[0] + dx * e / n, a[1] + dy * e / n)],
                  fill=color, width=width)
