"""Drawing on ipycanvas layers: drag pairs (the ipycanvas renderer of `dragnb.drawing.pair_shapes`), the
image, the mask overlay, the brush cursor; and rasterising a brush stroke into a mask.

Plain functions taking a layer (an ipycanvas `Canvas`, or anything with its drawing methods) and the data
to draw, so `DragCanvas` and `FeatureExplorer` draw drags the same way. Every batch of drawing commands
holds :data:`DRAW_LOCK`.
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
from ipycanvas import hold_canvas
from PIL import Image

from ..drawing import OUTLINE, PairShape

__all__ = ["DRAW_LOCK", "MASK_RGBA", "default_display_size", "MARKER_RADIUS", "HEAD_LENGTH", "LABEL_FONT", "draw_pairs", "draw_image",
           "draw_mask", "draw_brush_cursor", "paint_segment"]

DRAW_LOCK = threading.RLock()
"""ipycanvas batches commands in one process-wide manager (`hold_canvas`); the editor redraws from a
worker thread while the user clicks, so every redraw of a DragCanvas or a FeatureExplorer holds this lock."""

MASK_RGBA = (64, 160, 255, 100)
"""Tint of the editable region (RGBA, alpha out of 255)."""

MARKER_RADIUS = 6.0
"""Radius of a drawn handle dot / target ring, display pixels."""

HEAD_LENGTH = 8.0
"""Length of an arrow head, display pixels."""

LABEL_FONT = "bold 12px sans-serif"


def default_display_size(width: int, height: int, min_side: int = 256, max_side: int = 512) -> tuple:
    """Display size for an image: the longest side scaled into [min_side, max_side], aspect kept."""
    longest = max(width, height)
    if longest > max_side:
        scale = max_side / longest
    else:                           # small images grow by a whole factor, so pixels stay square and crisp
        scale = max(1, -(-min_side // longest))
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def draw_pairs(layer, shapes: Sequence[PairShape]) -> None:
    """Render `dragnb.drawing.pair_shapes(...)` (in display pixels) on an ipycanvas layer."""
    with DRAW_LOCK, hold_canvas():
        layer.font = LABEL_FONT
        for s in shapes:
            if s.shaft is not None:
                layer.stroke_style = s.color
                layer.line_width = 2
                layer.stroke_line(*s.shaft[0], *s.shaft[1])
            if s.head is not None:
                layer.fill_style = s.color
                layer.fill_polygon(list(s.head))
            if s.link is not None:
                layer.stroke_style = s.color
                layer.line_width = 1.5
                layer.set_line_dash([4, 3])
                layer.stroke_line(*s.link[0], *s.link[1])
                layer.set_line_dash([])
            if s.target is not None:
                for style, width in ((OUTLINE, 4), (s.color, 2)):
                    layer.stroke_style = style
                    layer.line_width = width
                    layer.stroke_circle(s.target[0], s.target[1], s.radius)
            layer.fill_style = s.color
            layer.fill_circle(s.handle[0], s.handle[1], s.radius)
            layer.stroke_style = OUTLINE
            layer.line_width = 1.5
            layer.stroke_circle(s.handle[0], s.handle[1], s.radius)
            if s.cross is not None:
                for style, width in ((OUTLINE, 4), (s.color, 2)):
                    layer.stroke_style = style
                    layer.line_width = width
                    for a, b in s.cross:
                        layer.stroke_line(*a, *b)
            layer.fill_style = OUTLINE
            layer.fill_text(s.label, *s.label_xy)


def draw_image(layer, image, display_size) -> None:
    """The HxWx3 uint8 `image` (or a "no image" card for None), resized to `display_size` (w, h)."""
    dw, dh = display_size
    with DRAW_LOCK, hold_canvas():
        layer.clear()
        if image is None:
            layer.fill_style = "#eeeeee"
            layer.fill_rect(0, 0, dw, dh)
            layer.fill_style = "#666666"
            layer.font = "14px sans-serif"
            layer.fill_text("no image", 10, 24)
            return
        img = Image.fromarray(image)
        if img.size != (dw, dh):
            img = img.resize((dw, dh), Image.NEAREST if dw >= img.width else Image.LANCZOS)
        layer.put_image_data(np.asarray(img.convert("RGBA")), 0, 0)   # RGBA goes as PNG (lossless), RGB as JPEG


def draw_mask(layer, mask, display_size) -> None:
    """The HxW bool `mask` as a tint (:data:`MASK_RGBA`) over the display, nearest neighbour; None: nothing."""
    with DRAW_LOCK, hold_canvas():
        layer.clear()
        if mask is None:
            return
        dw, dh = display_size
        h, w = mask.shape
        rows = np.minimum((np.arange(dh) * h) // dh, h - 1)       # nearest neighbour, display -> image
        cols = np.minimum((np.arange(dw) * w) // dw, w - 1)
        rgba = np.zeros((dh, dw, 4), dtype=np.uint8)
        rgba[mask[rows][:, cols]] = MASK_RGBA
        layer.put_image_data(rgba, 0, 0)


def draw_brush_cursor(layer, x: float, y: float, radius: float, erase: bool) -> None:
    """A circle of `radius` display pixels at (x, y): white to paint, red to erase."""
    with DRAW_LOCK, hold_canvas():
        layer.clear()
        layer.stroke_style = "#ff5050" if erase else "white"
        layer.line_width = 1.5
        layer.stroke_circle(x, y, radius)


def paint_segment(mask: np.ndarray, p0, p1, radius: float, value: bool) -> None:
    """Set the pixels of `mask` whose centre lies within `radius` of the segment p0-p1 ((x, y) image px) to `value`."""
    h, w = mask.shape
    x0, x1 = int(np.floor(min(p0[0], p1[0]) - radius)), int(np.ceil(max(p0[0], p1[0]) + radius))
    y0, y1 = int(np.floor(min(p0[1], p1[1]) - radius)), int(np.ceil(max(p0[1], p1[1]) + radius))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    if x0 > x1 or y0 > y1:
        return
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1].astype(np.float64)
    ax, ay = p0
    dx, dy = p1[0] - ax, p1[1] - ay
    seg2 = dx * dx + dy * dy
    t = np.zeros_like(xs) if seg2 == 0 else np.clip(((xs - ax) * dx + (ys - ay) * dy) / seg2, 0.0, 1.0)
    inside = (xs - ax - t * dx) ** 2 + (ys - ay - t * dy) ** 2 <= radius * radius
    mask[y0:y1 + 1, x0:x1 + 1][inside] = value
