"""`DragCanvas`: an ipycanvas widget to place drag points and paint the editable mask on an image.

The widget is three small pieces: this module (the gestures), `canvas_state` (the traits, their
validation, coordinates, undo/redo and commands) and `canvas_draw` (drawing on the ipycanvas layers,
drag pairs in the one vocabulary of `dragnb.drawing`: palette, 1-based labels, arrow geometry).

State lives in traits a notebook can read, set and observe (documented with ``#:`` in `CanvasState`):
``drags`` (``[((hx, hy), (tx, ty)), ...]`` in image pixels; pixel ``i``'s centre is coordinate ``i``, as
in `DragSession`), ``pending``, ``mask``, ``mode``, ``brush_radius``, ``interactive``, ``display_size``,
``message``. The canvas may be shown at another size than the image; mouse coordinates arrive in
display pixels and are converted in exactly one place (`display_to_image` / `image_to_display`).

Naming follows ipycanvas: ``handle_mouse_down(x, y)``, ``handle_mouse_move``, ``handle_mouse_up``,
``handle_mouse_out`` handle the gestures (display pixels; tests replay gestures by calling them);
``on_<event>(callback, remove=False)`` registers a callback: ``on_drags_changed``, ``on_mask_changed``,
and ``on_mouse_down`` ... ``on_key_down`` (forwarded to the ipycanvas layers); ``@observe`` reactions are
``_on_<trait>_changed``. The canvas holds no algorithm: it only edits points and a mask.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import traitlets

from . import canvas_draw as draw
from .canvas_draw import DRAW_LOCK
from .canvas_state import CanvasState, Point

__all__ = ["DragCanvas"]

HIT_RADIUS = 9.0
"""A mouse-down this close (display pixels) to a drawn point grabs it."""


class DragCanvas(CanvasState):
    """Click handle/target pairs and paint the editable mask on an image (see the module docstring).

    Args:
        image: PIL image or HxWx3 uint8 array (or None: set ``image`` later).
        drags, mask: initial values of those traits.
        display_size: ``(width, height)`` of the canvas on screen; default: the longest image side
            scaled into [256, 512] pixels.
        interactive: False makes the canvas a viewer (gestures only leave a message).
    """

    def __init__(self, image=None, drags=(), mask=None, display_size=None, interactive=True, **kwargs):
        self._grab = None          # [pair index or -1 for pending, "handle"|"target", state before or None, offset]
        self._stroke = None        # working mask during a brush stroke
        self._last_xy = None       # last brush position, image px
        super().__init__(image, drags, mask, display_size, interactive, **kwargs)
        self.layers.on_mouse_down(self.handle_mouse_down)
        self.layers.on_mouse_move(self.handle_mouse_move)
        self.layers.on_mouse_up(self.handle_mouse_up)
        self.layers.on_mouse_out(self.handle_mouse_out)

    # ------------------------------------------------------------------ registrars of mouse callbacks (ipycanvas')
    def on_mouse_down(self, callback: Callable, remove: bool = False) -> None:
        """Register ``callback(x, y)`` (display pixels) for mouse-down on the canvas, as ipycanvas does.

        The canvas's own gesture handler is `handle_mouse_down`; registered callbacks run besides it."""
        self.layers.on_mouse_down(callback, remove=remove)

    def on_mouse_move(self, callback: Callable, remove: bool = False) -> None:
        """Register ``callback(x, y)`` for mouse moves over the canvas (ipycanvas' registrar)."""
        self.layers.on_mouse_move(callback, remove=remove)

    def on_mouse_up(self, callback: Callable, remove: bool = False) -> None:
        """Register ``callback(x, y)`` for mouse-up on the canvas (ipycanvas' registrar)."""
        self.layers.on_mouse_up(callback, remove=remove)

    def on_mouse_out(self, callback: Callable, remove: bool = False) -> None:
        """Register ``callback(x, y)`` for the mouse leaving the canvas (ipycanvas' registrar)."""
        self.layers.on_mouse_out(callback, remove=remove)

    def on_key_down(self, callback: Callable, remove: bool = False) -> None:
        """Register ``callback(key, shift_key, ctrl_key, meta_key)`` for a key pressed while the canvas has the
        focus (a click on it gives it the focus; ipycanvas' registrar). `DragEditor` binds its shortcuts here."""
        self.layers.on_key_down(callback, remove=remove)

    @traitlets.observe("mode")
    def _on_mode_changed(self, change):
        with DRAW_LOCK:
            self.layers[3].clear()      # no brush cursor left over in points mode
        self._grab = self._stroke = None

    # ------------------------------------------------------------------ gestures
    def handle_mouse_down(self, x: float, y: float) -> None:
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

    def handle_mouse_move(self, x: float, y: float) -> None:
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

    def handle_mouse_up(self, x: float, y: float) -> None:
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

    def handle_mouse_out(self, x: float, y: float) -> None:
        """The mouse left the canvas: finish what was going on (without painting outside)."""
        if self._grab is not None:
            self._release_grab()
        elif self._stroke is not None:
            self._end_stroke()
        with DRAW_LOCK:
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
        draw.paint_segment(self._stroke, p0, p1, self.brush_radius, self.mode != "erase")

    def _end_stroke(self):
        stroke, self._stroke, self._last_xy = self._stroke, None, None
        self._push_undo()
        self.say(f"mask: {int(stroke.sum())} of {stroke.size} pixels may change")
        self.mask = stroke
