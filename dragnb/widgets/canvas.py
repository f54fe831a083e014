"""`DragCanvas`: an ipycanvas widget to place drag points and paint the editable mask on an image.

Layers (an ipycanvas `MultiCanvas`, bottom to top): the image, the mask overlay, the points and arrows,
the brush cursor (the top layer receives the mouse).

State lives in traits a notebook can read, set and observe:

* ``drags``  list of ``((hx, hy), (tx, ty))`` pairs in *image* pixels (x right, y down; pixel ``i``'s
  centre is coordinate ``i``, as in `DragSession`);
* ``pending`` the handle clicked last that still waits for its target, or ``None``;
* ``mask``   ``(H, W)`` bool array, True = may change, or ``None`` (the whole image may change);
* ``mode``   ``"points"`` | ``"mask"`` | ``"erase"``; ``brush_radius`` in image pixels;
* ``message`` the last thing the canvas has to tell the user (bad click, ...); `DragEditor` shows it.

The canvas may be shown at another size than the image (``display_size``); mouse coordinates arrive in
display pixels and are converted in exactly one place (`display_to_image` / `image_to_display`).

Gestures are small named methods (`on_mouse_down(x, y)`, `on_mouse_move`, `on_mouse_up`,
`on_mouse_out`) taking display-pixel coordinates, so tests drive the canvas by calling them.
The canvas holds no algorithm: it only edits points and a mask.
"""
from __future__ import annotations

import threading
from typing import Optional

import ipywidgets as widgets
import numpy as np
import traitlets
from ipycanvas import MultiCanvas, hold_canvas
from PIL import Image

Point = tuple  # (x, y) floats, image pixels

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
           "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#ffe119")
"""Pair i is drawn in PALETTE[i % len(PALETTE)]."""

MASK_RGBA = (64, 160, 255, 100)
"""Tint of the editable region (RGBA, alpha out of 255)."""

MARKER_RADIUS = 6.0
"""Radius of a drawn point, display pixels."""

HIT_RADIUS = 9.0
"""A mouse-down this close (display pixels) to a drawn point grabs it."""

UNDO_DEPTH = 50

# ipycanvas batches commands in one process-wide manager (`hold_canvas`); the editor redraws from a
# worker thread while the user clicks, so every redraw of a DragCanvas holds this lock.
_DRAW_LOCK = threading.RLock()


def _as_rgb_array(image) -> Optional[np.ndarray]:
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise traitlets.TraitError(f"image must be a PIL image or an HxWx3 uint8 array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def _as_point(p, what: str) -> Point:
    try:
        x, y = p
        return (float(x), float(y))
    except (TypeError, ValueError):
        raise traitlets.TraitError(f"{what} must be an (x, y) pair of numbers, got {p!r}") from None


def default_display_size(width: int, height: int, min_side: int = 256, max_side: int = 512) -> tuple:
    """Display size for an image: the longest side scaled into [min_side, max_side], aspect kept."""
    longest = max(width, height)
    if longest > max_side:
        scale = max_side / longest
    else:                           # small images grow by a whole factor, so pixels stay square and crisp
        scale = max(1, -(-min_side // longest))
    return (max(1, round(width * scale)), max(1, round(height * scale)))


class DragCanvas(widgets.VBox):
    """Click handle/target pairs and paint the editable mask on an image (see the module docstring).

    Args:
        image: PIL image or HxWx3 uint8 array (or None: set ``image`` later).
        display_size: ``(width, height)`` of the canvas on screen; default: the longest image side
            scaled into [256, 512] pixels.
        interactive: False makes the canvas a viewer (gestures only leave a message).
    """

    image = traitlets.Any(None, allow_none=True)
    drags = traitlets.List()
    pending = traitlets.Any(None, allow_none=True)
    mask = traitlets.Any(None, allow_none=True)
    mode = traitlets.Enum(("points", "mask", "erase"), default_value="points")
    brush_radius = traitlets.Float(8.0)
    interactive = traitlets.Bool(True)
    display_size = traitlets.Tuple(traitlets.Int(), traitlets.Int(), default_value=(256, 256))
    message = traitlets.Unicode("")
    message_is_error = traitlets.Bool(False)

    def __init__(self, image=None, drags=(), mask=None, display_size=None, interactive=True, **kwargs):
        self._undo: list = []
        self._redo: list = []
        self._grab = None          # [pair index or -1 for pending, "handle"|"target", state before or None, offset]
        self._stroke = None        # working mask during a brush stroke
        self._last_xy = None       # last brush position, image px
        self._fixed_display = display_size is not None
        self.layers = MultiCanvas(4, width=256, height=256)
        super().__init__(children=[self.layers], **kwargs)
        self.interactive = interactive
        self.image = image
        if display_size is not None:
            self.display_size = tuple(int(v) for v in display_size)
        self.drags = list(drags)
        self.mask = mask
        self.layers.on_mouse_down(self.on_mouse_down)
        self.layers.on_mouse_move(self.on_mouse_move)
        self.layers.on_mouse_up(self.on_mouse_up)
        self.layers.on_mouse_out(self.on_mouse_out)
        self.layers.on_client_ready(self.redraw)
        self.observe(self._on_change, names=["drags", "pending", "mask"])
        self.redraw()

    # ------------------------------------------------------------------ trait validation
    @traitlets.validate("image")
    def _valid_image(self, proposal):
        return _as_rgb_array(proposal["value"])

    @traitlets.observe("image")
    def _image_changed(self, change):
        old, new = change["old"], change["new"]
        if new is not None and not self._fixed_display:
            self.display_size = default_display_size(new.shape[1], new.shape[0])
        if new is not None and (old is None or old.shape[:2] != new.shape[:2]):
            # points and mask of another size make no sense on this image
            self._undo.clear()
            self._redo.clear()
            self.pending = None
            if self.mask is not None and self.mask.shape != new.shape[:2]:
                self.mask = None
            if any(not self._inside(p) for pair in self.drags for p in pair):
                self.drags = []
        self._draw_image()

    @traitlets.observe("mode")
    def _mode_changed(self, change):
        with _DRAW_LOCK:
            self.layers[3].clear()      # no brush cursor left over in points mode
        self._grab = self._stroke = None

    @traitlets.observe("display_size")
    def _display_size_changed(self, change):
        w, h = change["new"]
        self.layers.width, self.layers.height = w, h
        self.redraw()

    @traitlets.validate("display_size")
    def _valid_display_size(self, proposal):
        w, h = proposal["value"]
        if w < 1 or h < 1:
            raise traitlets.TraitError(f"display_size must be positive, got {(w, h)}")
        return (int(w), int(h))

    @traitlets.validate("drags")
    def _valid_drags(self, proposal):
        out = []
        for i, pair in enumerate(proposal["value"]):
            try:
                handle, target = pair
            except (TypeError, ValueError):
                raise traitlets.TraitError(f"drag {i} must be a (handle, target) pair, got {pair!r}") from None
            if handle is None or target is None:
                raise traitlets.TraitError(f"drag {i} needs both a handle and a target, got {pair!r}")
            handle, target = _as_point(handle, f"drag {i} handle"), _as_point(target, f"drag {i} target")
            for name, p in (("handle", handle), ("target", target)):
                if not self._inside(p):
                    raise traitlets.TraitError(f"drag {i} {name} {p} is outside the {self._size_text()} image")
            out.append((handle, target))
        return out

    @traitlets.validate("pending")
    def _valid_pending(self, proposal):
        p = proposal["value"]
        return None if p is None else _as_point(p, "pending handle")

    @traitlets.validate("mask")
    def _valid_mask(self, proposal):
        m = proposal["value"]
        if m is None:
            return None
        if isinstance(m, Image.Image):
            m = np.asarray(m.convert("L"))
        m = np.asarray(m)
        if m.ndim != 2:
            raise traitlets.TraitError(f"mask must be an HxW array, got shape {m.shape}")
        if self.image is not None and m.shape != self.image.shape[:2]:
            raise traitlets.TraitError(f"mask has shape {m.shape} but the image is {self._size_text()} "
                                       f"(expected shape {self.image.shape[:2]})")
        if m.dtype == np.bool_:
            return m.copy()
        if m.dtype == np.uint8:
            return m > 127
        return m > 0.5

    @traitlets.validate("brush_radius")
    def _valid_brush(self, proposal):
        r = float(proposal["value"])
        if not r > 0:
            raise traitlets.TraitError(f"brush_radius must be positive (image pixels), got {r}")
        return r

    def _on_change(self, change):
        if change["name"] == "mask":
            self._draw_mask()
        else:
            self._draw_points()

    # ------------------------------------------------------------------ coordinates (the one place)
    @property
    def image_size(self) -> Optional[tuple]:
        """(width, height) of the image, or None."""
        return None if self.image is None else (self.image.shape[1], self.image.shape[0])

    def _scale(self) -> tuple:
        w, h = self.image_size or self.display_size
        dw, dh = self.display_size
        return dw / w, dh / h

    def display_to_image(self, x: float, y: float) -> Point:
        """Canvas (display) pixels -> image pixel coordinates (pixel i's centre is i)."""
        sx, sy = self._scale()
        return (x / sx - 0.5, y / sy - 0.5)

    def image_to_display(self, x: float, y: float) -> Point:
        """Image pixel coordinates -> canvas (display) pixels; the inverse of `display_to_image`."""
        sx, sy = self._scale()
        return ((x + 0.5) * sx, (y + 0.5) * sy)

    def _inside(self, p) -> bool:
        if self.image is None:
            return True
        w, h = self.image_size
        return -0.5 <= p[0] < w - 0.5 and -0.5 <= p[1] < h - 0.5

    def _clamp(self, p) -> Point:
        w, h = self.image_size
        return (min(max(p[0], 0.0), w - 1.0), min(max(p[1], 0.0), h - 1.0))

    def _size_text(self) -> str:
        w, h = self.image_size or (0, 0)
        return f"{w}×{h}"

    # ------------------------------------------------------------------ gestures
    def on_mouse_down(self, x: float, y: float) -> None:
        """Mouse button pressed at display pixel (x, y)."""
        if not self.interactive:
            return self.say("the canvas is busy (press Stop first) or read-only", error=True)
        if self.image is None:
            return self.say("load an image first: there is nothing to click on", error=True)
        p = self.display_to_image(x, y)
        if not self._inside(p):
            return self.say(f"click ({p[0]:.0f}, {p[1]:.0f}) is outside the {self._size_text()} image; ignored", error=True)
        p = self._clamp(p)
        if self.mode == "points":
            self._points_down(x, y, p)
        else:
            self._brush_down(p)

    def on_mouse_move(self, x: float, y: float) -> None:
        """Mouse moved to display pixel (x, y) (button up or down)."""
        if self.image is None or not self.interactive:
            return
        p = self._clamp(self.display_to_image(x, y))
        if self._grab is not None:
            self._move_grabbed(self.display_to_image(x, y))
        elif self._stroke is not None:
            self._paint(self._last_xy, p)
            self._last_xy = p
            self._draw_mask(self._stroke)
        if self.mode != "points":
            self._draw_cursor(x, y)

    def on_mouse_up(self, x: float, y: float) -> None:
        """Mouse button released at display pixel (x, y): ends a point move or a brush stroke."""
        if self._grab is not None:
            if self.image is not None:
                self._move_grabbed(self.display_to_image(x, y))
            self._release_grab()
        elif self._stroke is not None:
            if self.image is not None:
                p = self._clamp(self.display_to_image(x, y))
                self._paint(self._last_xy, p)
            self._end_stroke()

    def on_mouse_out(self, x: float, y: float) -> None:
        """The mouse left the canvas: finish what was going on (without painting outside)."""
        if self._grab is not None:
            self._release_grab()
        elif self._stroke is not None:
            self._end_stroke()
        self.layers[3].clear()

    # --- points
    def _points_down(self, x, y, p):
        hit = self._hit(x, y)
        if hit is not None:
            i, kind = hit
            q = self.pending if i == -1 else self.drags[i][0 if kind == "handle" else 1]
            # the state to undo to (once the point moved) and the point's offset from the cursor
            self._grab = [i, kind, self._state(), (q[0] - p[0], q[1] - p[1])]
            return
        if self.pending is None:
            self._push_undo()
            self.pending = p
            self.say(f"handle {len(self.drags) + 1} at ({p[0]:.0f}, {p[1]:.0f}); now click its target")
            return
        self._push_undo()
        handle = self.pending
        # say first: an observer refusing the new value (DragEditor) then has the last word
        self.say(f"drag {len(self.drags) + 1}: ({handle[0]:.0f}, {handle[1]:.0f}) -> ({p[0]:.0f}, {p[1]:.0f})")
        self.pending = None
        self.drags = self.drags + [(handle, p)]

    def _hit(self, x, y):
        """(pair index or -1 for the pending handle, 'handle'|'target') of the drawn point under (x, y)."""
        best, best_d = None, HIT_RADIUS
        candidates = [(-1, "handle", self.pending)] if self.pending is not None else []
        for i, (h, t) in enumerate(self.drags):
            candidates += [(i, "target", t), (i, "handle", h)]
        for i, kind, p in candidates:
            dx, dy = self.image_to_display(*p)
            d = float(np.hypot(dx - x, dy - y))
            if d <= best_d:
                best, best_d = (i, kind), d
        return best

    def _move_grabbed(self, cursor):
        i, kind, before, (ox, oy) = self._grab
        p = self._clamp((cursor[0] + ox, cursor[1] + oy))
        current = self.pending if i == -1 else self.drags[i][0 if kind == "handle" else 1]
        if p == current:
            return
        if before is not None:      # first move of this grab: one undo entry per point move
            self._push_undo(before)
            self._grab[2] = None
        if i == -1:
            self.pending = p
            return
        drags = list(self.drags)
        h, t = drags[i]
        drags[i] = (p, t) if kind == "handle" else (h, p)
        self.drags = drags

    def _release_grab(self):
        self._grab = None           # a click on a point without moving it changed nothing

    # --- brush
    def _brush_down(self, p):
        w, h = self.image_size
        if self.mask is not None:
            start = self.mask.copy()
        else:                       # None = everything may change: erasing starts from all True
            start = np.full((h, w), self.mode == "erase", dtype=bool)
        self._stroke = start
        self._last_xy = p
        self._paint(p, p)
        self._draw_mask(self._stroke)

    def _paint(self, p0, p1):
        """Set (mask mode) or clear (erase mode) the pixels within brush_radius of the segment p0-p1."""
        m, r = self._stroke, self.brush_radius
        h, w = m.shape
        x0, x1 = int(np.floor(min(p0[0], p1[0]) - r)), int(np.ceil(max(p0[0], p1[0]) + r))
        y0, y1 = int(np.floor(min(p0[1], p1[1]) - r)), int(np.ceil(max(p0[1], p1[1]) + r))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
        if x0 > x1 or y0 > y1:
            return
        ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1].astype(np.float64)
        ax, ay = p0
        dx, dy = p1[0] - ax, p1[1] - ay
        seg2 = dx * dx + dy * dy
        t = np.zeros_like(xs) if seg2 == 0 else np.clip(((xs - ax) * dx + (ys - ay) * dy) / seg2, 0.0, 1.0)
        inside = (xs - ax - t * dx) ** 2 + (ys - ay - t * dy) ** 2 <= r * r
        m[y0:y1 + 1, x0:x1 + 1][inside] = self.mode != "erase"

    def _end_stroke(self):
        stroke, self._stroke, self._last_xy = self._stroke, None, None
        self._push_undo()
        self.say(f"mask: {int(stroke.sum())} of {stroke.size} pixels may change")
        self.mask = stroke

    # ------------------------------------------------------------------ commands
    def say(self, text: str, error: bool = False) -> None:
        """Set `message` (observers are told even when the same text repeats); `error`: a gesture was refused."""
        self.message_is_error = error
        if text == self.message:
            self.message = ""
        self.message = text

    def clear_points(self) -> None:
        if self.drags or self.pending is not None:
            self._push_undo()
            self.pending = None
            self.drags = []

    def clear_mask(self) -> None:
        if self.mask is not None:
            self._push_undo()
            self.mask = None

    def _state(self):
        return (list(self.drags), self.pending, None if self.mask is None else self.mask.copy())

    def _set_state(self, state):
        drags, pending, mask = state
        with self.hold_trait_notifications():
            self.pending = pending
            self.drags = drags
            self.mask = mask

    def _push_undo(self, state=None):
        self._undo.append(self._state() if state is None else state)
        del self._undo[:-UNDO_DEPTH]
        self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> bool:
        """Undo the last gesture (point added or moved, stroke, clear). False when there is nothing to undo."""
        if not self._undo:
            self.say("nothing to undo")
            return False
        self._redo.append(self._state())
        self._set_state(self._undo.pop())
        return True

    def redo(self) -> bool:
        if not self._redo:
            self.say("nothing to redo")
            return False
        self._undo.append(self._state())
        self._set_state(self._redo.pop())
        return True

    # ------------------------------------------------------------------ drawing
    def redraw(self, *_):
        """Draw every layer again (also called when a new browser view connects)."""
        with _DRAW_LOCK, hold_canvas():
            self._draw_image()
            self._draw_mask()
            self._draw_points()

    def _draw_image(self):
        layer = self.layers[0]
        with _DRAW_LOCK, hold_canvas():
            layer.clear()
            if self.image is None:
                layer.fill_style = "#eeeeee"
                layer.fill_rect(0, 0, *self.display_size)
                layer.fill_style = "#666666"
                layer.font = "14px sans-serif"
                layer.fill_text("no image", 10, 24)
                return
            dw, dh = self.display_size
            img = Image.fromarray(self.image)
            if img.size != (dw, dh):
                img = img.resize((dw, dh), Image.NEAREST if dw >= img.width else Image.LANCZOS)
            rgba = np.asarray(img.convert("RGBA"))   # RGBA goes as PNG (lossless); RGB would go as JPEG
            layer.put_image_data(rgba, 0, 0)

    def _draw_mask(self, mask=None):
        mask = self.mask if mask is None else mask
        layer = self.layers[1]
        with _DRAW_LOCK, hold_canvas():
            layer.clear()
            if mask is None or self.image is None:
                return
            dw, dh = self.display_size
            h, w = mask.shape
            rows = np.minimum((np.arange(dh) * h) // dh, h - 1)   # nearest neighbour, display -> image
            cols = np.minimum((np.arange(dw) * w) // dw, w - 1)
            big = mask[rows][:, cols]
            rgba = np.zeros((dh, dw, 4), dtype=np.uint8)
            rgba[big] = MASK_RGBA
            layer.put_image_data(rgba, 0, 0)

    def _draw_points(self):
        layer = self.layers[2]
        with _DRAW_LOCK, hold_canvas():
            layer.clear()
            if self.image is None:
                return
            layer.font = "bold 12px sans-serif"
            for i, (h, t) in enumerate(self.drags):
                self._draw_pair(layer, i, self.image_to_display(*h), self.image_to_display(*t))
            if self.pending is not None:
                self._draw_pair(layer, len(self.drags), self.image_to_display(*self.pending), None)

    @staticmethod
    def _draw_pair(layer, i, h, t):
        color = PALETTE[i % len(PALETTE)]
        r = MARKER_RADIUS
        if t is not None:
            dx, dy = t[0] - h[0], t[1] - h[1]
            n = float(np.hypot(dx, dy)) or 1.0
            ux, uy = dx / n, dy / n
            tip = (t[0] - ux * r, t[1] - uy * r)
            layer.stroke_style = color
            layer.line_width = 2
            layer.stroke_line(h[0], h[1], tip[0], tip[1])
            head = 8.0
            left = (tip[0] - ux * head - uy * head * 0.5, tip[1] - uy * head + ux * head * 0.5)
            right = (tip[0] - ux * head + uy * head * 0.5, tip[1] - uy * head - ux * head * 0.5)
            layer.fill_style = color
            layer.fill_polygon([tip, left, right])
            layer.stroke_style = "white"
            layer.line_width = 4
            layer.stroke_circle(t[0], t[1], r)
            layer.stroke_style = color
            layer.line_width = 2
            layer.stroke_circle(t[0], t[1], r)
        layer.fill_style = color
        layer.fill_circle(h[0], h[1], r)
        layer.stroke_style = "white"
        layer.line_width = 1.5
        layer.stroke_circle(h[0], h[1], r)
        layer.fill_style = "white"
        layer.fill_text(str(i + 1), h[0] + r + 2, h[1] - r)

    def _draw_cursor(self, x, y):
        layer = self.layers[3]
        sx, _ = self._scale()
        with _DRAW_LOCK, hold_canvas():
            layer.clear()
            layer.stroke_style = "white" if self.mode == "mask" else "#ff5050"
            layer.line_width = 1.5
            layer.stroke_circle(x, y, self.brush_radius * sx)
