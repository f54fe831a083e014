"""`CanvasState`: what a `DragCanvas` holds and how it is drawn, without the gestures.

Traits (each documented with a ``#:`` comment) with their validation, the ``@observe`` reactions
(``_on_<trait>_changed``) that redraw a layer and call the callbacks registered with
``on_drags_changed`` / ``on_mask_changed``, the one display <-> image coordinate mapping, undo/redo and
the commands (``say``, ``clear_points``, ``clear_mask``, ``undo``, ``redo``). Drawing itself is
`canvas_draw`; the gestures that change this state are `canvas.DragCanvas`.
"""
from __future__ import annotations

from typing import Callable, Optional

import ipywidgets as widgets
import numpy as np
import traitlets
from ipycanvas import MultiCanvas, hold_canvas
from PIL import Image

from ..drawing import as_rgb_array, pair_shapes
from . import canvas_draw as draw
from .canvas_draw import DRAW_LOCK, HEAD_LENGTH, MARKER_RADIUS, default_display_size
from .undo import UndoStack

Point = tuple  # (x, y) floats, image pixels

UNDO_DEPTH = 50
"""How many gestures `undo` can take back."""


def _as_point(p, what: str) -> Point:
    try:
        x, y = p
        return (float(x), float(y))
    except (TypeError, ValueError):
        raise traitlets.TraitError(f"{what} must be an (x, y) pair of numbers, got {p!r}") from None


class CanvasState(widgets.VBox):
    """The state and drawing of a `DragCanvas` (use `DragCanvas`; this base has no gestures).

    Layers (an ipycanvas `MultiCanvas` in ``layers``, bottom to top): the image, the mask overlay, the
    points and arrows, the brush cursor (the top layer receives the mouse).
    """

    #: The image, HxWx3 uint8 (set a PIL image or any array `dragnb.drawing.as_rgb_array` takes), or None.
    image = traitlets.Any(None, allow_none=True)
    #: Drag pairs ``[((hx, hy), (tx, ty)), ...]`` in image pixels (x right, y down; pixel i's centre is i).
    drags = traitlets.List()
    #: The handle clicked last that still waits for its target, ``(x, y)``, or None.
    pending = traitlets.Any(None, allow_none=True)
    #: Editable region: (H, W) bool array, True = may change; None = the whole image may change.
    mask = traitlets.Any(None, allow_none=True)
    #: What a press does: "points" (handles and targets), "mask" (paint the region), "erase" (remove from it).
    mode = traitlets.Enum(("points", "mask", "erase"), default_value="points")
    #: Brush radius in image pixels (mask and erase modes).
    brush_radius = traitlets.Float(8.0)
    #: False: gestures change nothing and leave a message (a viewer, or an editor that is busy).
    interactive = traitlets.Bool(True)
    #: Size of the canvas on screen, ``(width, height)`` display pixels.
    display_size = traitlets.Tuple(traitlets.Int(), traitlets.Int(), default_value=(256, 256))
    #: The last thing the canvas has to tell the user (a bad click, a finished pair, ...).
    message = traitlets.Unicode("")
    #: True when ``message`` reports a refused gesture.
    message_is_error = traitlets.Bool(False)

    def __init__(self, image=None, drags=(), mask=None, display_size=None, interactive=True, **kwargs):
        self._history = UndoStack(UNDO_DEPTH)
        self._fixed_display = display_size is not None
        self._drags_callbacks = widgets.CallbackDispatcher()
        self._mask_callbacks = widgets.CallbackDispatcher()
        self.layers = MultiCanvas(4, width=256, height=256)
        super().__init__(children=[self.layers], **kwargs)
        self.interactive = interactive
        self.image = image
        if display_size is not None:
            self.display_size = tuple(int(v) for v in display_size)
        self.drags = list(drags)
        self.mask = mask
        self.layers.on_client_ready(self.redraw)
        self.redraw()

    # ------------------------------------------------------------------ callback registrars (ipycanvas style)
    def on_drags_changed(self, callback: Callable, remove: bool = False) -> None:
        """Register ``callback(drags)``, called with the new ``drags`` list after every change."""
        self._drags_callbacks.register_callback(callback, remove=remove)

    def on_mask_changed(self, callback: Callable, remove: bool = False) -> None:
        """Register ``callback(mask)``, called with the new ``mask`` (array or None) after every change."""
        self._mask_callbacks.register_callback(callback, remove=remove)

    # ------------------------------------------------------------------ trait validation and reactions
    @traitlets.validate("image")
    def _valid_image(self, proposal):
        if proposal["value"] is None:
            return None
        try:
            return as_rgb_array(proposal["value"])
        except (TypeError, ValueError) as e:
            raise traitlets.TraitError(f"image: {e}") from None

    @traitlets.observe("image")
    def _on_image_changed(self, change):
        old, new = change["old"], change["new"]
        if new is not None and not self._fixed_display:
            self.display_size = default_display_size(new.shape[1], new.shape[0])
        if new is not None and (old is None or old.shape[:2] != new.shape[:2]):
            # points and mask of another size make no sense on this image
            self._history.clear()
            self.pending = None
            if self.mask is not None and self.mask.shape != new.shape[:2]:
                self.mask = None
            if any(not self._inside(p) for pair in self.drags for p in pair):
                self.drags = []
        draw.draw_image(self.layers[0], self.image, self.display_size)

    @traitlets.observe("display_size")
    def _on_display_size_changed(self, change):
        w, h = change["new"]
        self.layers.width, self.layers.height = w, h
        self.redraw()

    @traitlets.observe("drags")
    def _on_drags_changed(self, change):
        self._draw_points()
        self._drags_callbacks(list(change["new"]))

    @traitlets.observe("pending")
    def _on_pending_changed(self, change):
        self._draw_points()

    @traitlets.observe("mask")
    def _on_mask_changed(self, change):
        self._draw_mask()
        self._mask_callbacks(change["new"])

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

    # ------------------------------------------------------------------ commands
    def say(self, text: str, error: bool = False) -> None:
        """Set `message` (observers are told even when the same text repeats); `error`: a gesture was refused."""
        self.message_is_error = error
        if text == self.message:
            self.message = ""
        self.message = text

    def clear_points(self) -> None:
        """Remove every drag and the pending handle (one undo step)."""
        if self.drags or self.pending is not None:
            self._push_undo()
            self.pending = None
            self.drags = []

    def clear_mask(self) -> None:
        """Remove the mask: the whole image may change (one undo step)."""
        if self.mask is not None:
            self._push_undo()
            self.mask = None

    def spread_last(self, n: int = 5, tolerance: float = 40.0) -> int:
        """Carry the last drag's region whole (one undo step): up to n - 1 more pairs on the region of the handle's
        colour connected to it, inside the mask when one is painted, each moved by the drag's offset
        (`dragnb.points.spread`, what `DragSession.spread_drag` adds). Returns how many pairs it added; 0, with a
        message saying why, when there is no drag, the last drag is spread already (the drags at the end share its
        offset), or its region is too small for more points."""
        from ..points import MIN_REACH, spread
        if self.image is None or not self.drags:
            self.say("spread: add a drag first (click a handle on the shape, then its target)", error=True)
            return 0
        (hx, hy), (tx, ty) = self.drags[-1]
        tail = 1
        for (ax, ay), (bx, by) in reversed(self.drags[:-1]):
            if abs((bx - ax) - (tx - hx)) > 1e-6 or abs((by - ay) - (ty - hy)) > 1e-6:
                break
            tail += 1
        if tail > 1:
            self.say(f"spread: the last drag is spread already ({tail} points with the same offset); Undo takes "
                     "the added points back", error=True)
            return 0
        extra = [(self._clamp(h), self._clamp(t)) for h, t in
                 spread(self.image, (hx, hy), (tx, ty), n, tolerance, within=self.mask)[1:]]
        if not extra:
            self.say(f"spread: the handle's region is too small for more points (under {MIN_REACH} px from the handle "
                     "to its edge in every direction, or their targets would leave the image)", error=True)
            return 0
        self._push_undo()
        self.say(f"spread: {len(extra)} more point{'s' if len(extra) > 1 else ''} on the handle's region, each moved "
                 "by the same offset, so the region moves whole")
        self.drags = list(self.drags) + extra
        return len(extra)

    def _state(self):
        return (list(self.drags), self.pending, None if self.mask is None else self.mask.copy())

    def _set_state(self, state):
        drags, pending, mask = state
        with self.hold_trait_notifications():
            self.pending = pending
            self.drags = drags
            self.mask = mask

    def _push_undo(self, state=None):
        self._history.push(self._state() if state is None else state)

    @property
    def can_undo(self) -> bool:
        return self._history.can_undo

    @property
    def can_redo(self) -> bool:
        return self._history.can_redo

    def undo(self) -> bool:
        """Undo the last gesture (point added or moved, stroke, clear). False when there is nothing to undo."""
        state = self._history.undo(self._state())
        if state is None:
            self.say("nothing to undo")
            return False
        self._set_state(state)
        return True

    def redo(self) -> bool:
        """Redo what `undo` undid. False when there is nothing to redo."""
        state = self._history.redo(self._state())
        if state is None:
            self.say("nothing to redo")
            return False
        self._set_state(state)
        return True

    # ------------------------------------------------------------------ drawing (canvas_draw does the work)
    def redraw(self, *_):
        """Draw every layer again (also called when a new browser view connects)."""
        with DRAW_LOCK, hold_canvas():
            draw.draw_image(self.layers[0], self.image, self.display_size)
            self._draw_mask()
            self._draw_points()

    def pair_shapes(self) -> list:
        """The drawn pairs (`dragnb.drawing.PairShape`, display pixels): the drags, then the pending handle."""
        if self.image is None:
            return []
        handles = [self.image_to_display(*h) for h, _ in self.drags]
        targets = [self.image_to_display(*t) for _, t in self.drags]
        if self.pending is not None:
            handles.append(self.image_to_display(*self.pending))
            targets.append(None)
        return pair_shapes(handles, targets, radius=MARKER_RADIUS, head=HEAD_LENGTH)

    def _draw_mask(self, mask=None):
        mask = self.mask if mask is None else mask
        draw.draw_mask(self.layers[1], None if self.image is None else mask, self.display_size)

    def _draw_points(self):
        with DRAW_LOCK, hold_canvas():
            self.layers[2].clear()
            draw.draw_pairs(self.layers[2], self.pair_shapes())

    def _draw_cursor(self, x, y):
        sx, _ = self._scale()
        draw.draw_brush_cursor(self.layers[3], x, y, self.brush_radius * sx, erase=self.mode == "erase")
