"""`FeatureExplorer`: click a point, see what point tracking sees; scrub through the optimisation.

Layout: the image on an ipycanvas (click = pick a point), next to it the similarity map of the
source feature at that point over the feature grid, with the tracking window
(:func:`dragnb.viz.plot_similarity`); below, a step slider that replays the history (handle
positions, losses, preview snapshots recorded with :class:`dragnb.viz.PreviewRecorder`) and the loss
curves with the scrubbed step marked.

The widget holds no algorithm: the tracking map comes from :mod:`dragnb.viz` (which draws
:func:`dragnb.drag.tracking_distance`), features and coordinates from the session; drags are drawn in
the one vocabulary of :mod:`dragnb.drawing` (the editor canvas's renderer). Naming follows ipycanvas:
gesture handlers are ``handle_*`` (``handle_click(x, y)`` picks an image point, as clicking there does;
``handle_mouse_down``, ``handle_step_change``, ``handle_query_change``, ``handle_features_change``,
``handle_session_event``), so tests drive them without a browser; ``on_click(callback, remove=False)``
registers a callback for picked points.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import ipywidgets as W
from ipycanvas import Canvas, hold_canvas

from .. import viz
from ..drawing import as_rgb_array, drag_label, pair_shapes
from .canvas_draw import DRAW_LOCK, HEAD_LENGTH, draw_pairs
from .editor_parts import enable_frontend

__all__ = ["FeatureExplorer"]

_CLICKED = "clicked point"


class FeatureExplorer(W.VBox):
    """Explore a prepared :class:`~dragnb.session.DragSession`'s features and history.

    session: the session (``prepare()`` is called when ``prepare=True`` and it is not prepared yet);
    frames: optional {step: image} previews (``PreviewRecorder(s).frames``) shown when scrubbing;
    scale: display zoom of the image canvas (canvas pixels per image pixel; default: about 256 px wide).
    Attributes the tests and users read: ``point_xy`` (the clicked point or None), ``step`` (the
    scrubbed step), ``query`` ("clicked point" or a drag index), ``last_figure`` (the similarity Figure).
    """

    def __init__(self, session, frames=None, scale: int | None = None, prepare: bool = True):
        enable_frontend()                # Colab: its custom widget manager, or the canvas stays blank
        self.session = session
        self.frames = dict(frames or {})
        if prepare and not session.is_prepared:
            session.prepare(progress=False)
        w, h = session.size
        self.scale = int(scale) if scale else max(1, 256 // max(w, h))
        self.point_xy = None
        self.last_figure = None
        self._syncing = False
        self._click_callbacks = W.CallbackDispatcher()

        self.canvas = Canvas(width=w * self.scale, height=h * self.scale,
                             layout=W.Layout(width=f"{w * self.scale}px", height=f"{h * self.scale}px"))
        self.canvas.on_mouse_down(self.handle_mouse_down)
        self.canvas.on_client_ready(lambda *_: self.draw_image())   # a view that connects later gets the image too
        self.sim_image = W.Image(format="png", layout=W.Layout(max_width="640px"))
        self.loss_image = W.Image(format="png", layout=W.Layout(max_width="760px"))
        self.query_select = W.Dropdown(description="query", options=self._query_options(), layout=W.Layout(width="220px"))
        self.features_toggle = W.ToggleButtons(options=["current", "source"], value="current",
                                               description="match in", style={"button_width": "70px"})
        self.step_slider = W.IntSlider(description="step", min=0, max=len(session.history), value=len(session.history),
                                       continuous_update=False, layout=W.Layout(width="420px"))
        self.info = W.HTML()
        self.follow = W.Checkbox(value=True, description="redraw on every session change", indent=False,
                                 layout=W.Layout(width="240px"))
        self.query_select.observe(self.handle_query_change, names="value")
        self.features_toggle.observe(self.handle_features_change, names="value")
        self.step_slider.observe(self.handle_step_change, names="value")
        session.observe(self.handle_session_event)
        super().__init__([
            W.HBox([self.query_select, self.features_toggle, self.follow]),
            W.HBox([self.canvas, self.sim_image]),
            W.HBox([self.step_slider, self.info]),
            self.loss_image,
        ])
        self.refresh()

    # ---- state ----------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return int(self.step_slider.value)

    @property
    def query(self):
        return self.query_select.value

    def _query_options(self):
        return [(_CLICKED, _CLICKED)] + [(f"drag {drag_label(i)}", i) for i in range(len(self.session.drags))]

    def handles_at(self, step: int) -> list:
        """Handle points (x, y) after ``step`` steps (0 = the drags' handles)."""
        if step <= 0 or not self.session.history:
            return [h for h, _ in self.session.drags]
        return list(self.session.history[min(step, len(self.session.history)) - 1].handles)

    # ---- callback registrar (ipycanvas style) ----------------------------------------------
    def on_click(self, callback: Callable, remove: bool = False) -> None:
        """Register ``callback(x, y)``, called with the image point after each pick (a click, or `handle_click`)."""
        if not callable(callback):
            raise TypeError(f"on_click registers a callback; got {callback!r}. To pick the image point (x, y) "
                            "as a click there does, call handle_click(x, y)")
        self._click_callbacks.register_callback(callback, remove=remove)

    # ---- gestures -------------------------------------------------------------------------
    def handle_mouse_down(self, x, y):
        """ipycanvas mouse-down: canvas pixels -> image pixels (the one place), then `handle_click`."""
        self.handle_click(x / self.scale, y / self.scale)

    def handle_click(self, x, y):
        """Pick the image point (x, y) (image pixels) as the query, as clicking there does."""
        w, h = self.session.size
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"point ({x}, {y}) is outside the {w}×{h} image")
        self.point_xy = (float(x), float(y))
        if self.query_select.value != _CLICKED:
            self.query_select.value = _CLICKED          # triggers handle_query_change -> refresh
        else:
            self.refresh()
        self._click_callbacks(*self.point_xy)

    def handle_query_change(self, change=None):
        """The query list changed (a user pick): redraw."""
        if not self._syncing:
            self.refresh()

    def handle_features_change(self, change=None):
        """"match in" toggled between current and source features: redraw the map."""
        self.draw_similarity()

    def handle_step_change(self, change=None):
        """The step slider moved (a user gesture): redraw at that step."""
        if not self._syncing:
            self.refresh()

    def handle_session_event(self, event: str):
        """Keep the slider and the query list in step with the session (new steps, rewind, drags, image).

        With ``follow`` unticked only the slider range is updated (no feature pass, no figures): cheaper
        while a long ``run()`` is going on; ``refresh()`` or moving the slider redraws."""
        if event == "image":
            w, h = self.session.size
            self.point_xy, self.frames = None, {}
            self.canvas.width, self.canvas.height = w * self.scale, h * self.scale
            self.canvas.layout.width, self.canvas.layout.height = f"{w * self.scale}px", f"{h * self.scale}px"
        n = len(self.session.history)
        self._syncing = True                      # the widget changes below must not redraw one by one
        try:
            at_end = self.step_slider.value >= self.step_slider.max
            self.step_slider.max = n
            if at_end or self.step_slider.value > n:
                self.step_slider.value = n
            options = self._query_options()
            if tuple(self.query_select.options) != tuple(options):
                keep = self.query_select.value if self.query_select.value in [v for _, v in options] else _CLICKED
                self.query_select.options = options
                self.query_select.value = keep
        finally:
            self._syncing = False
        self._click_callbacks = W.CallbackDispatcher()
        if self.follow.value or event == "image":
            self.refresh()

    def close(self):
        self.session.unobserve(self.handle_session_event)
        super().close()

    # ---- drawing --------------------------------------------------------------------------
    def refresh(self):
        self.draw_image()
        self.draw_similarity()
        self.draw_loss()

    def _backdrop(self) -> np.ndarray:
        known = [k for k in self.frames if k <= self.step]
        return as_rgb_array(self.frames[max(known)] if known else self.session.image)

    def draw_image(self):
        """The backdrop at the scrubbed step with the drags (handle -> target, a cross where the handle is
        at that step) and the clicked point."""
        s, k = self.session, self.scale
        img = self._backdrop()
        big = np.repeat(np.repeat(img, k, axis=0), k, axis=1)
        px = lambda p: (p[0] * k, p[1] * k)                  # image pixels -> canvas pixels
        now = self.handles_at(self.step)
        shapes = pair_shapes([px(h) for h, _ in s.drags], [px(t) for _, t in s.drags],
                             [px(c) for c in now] if len(now) == len(s.drags) else None, radius=5.0, head=HEAD_LENGTH)
        with DRAW_LOCK, hold_canvas():   # one process-wide batch, shared with DragCanvas redraws
            self.canvas.clear()
            self.canvas.put_image_data(big, 0, 0)
            draw_pairs(self.canvas, shapes)
            if self.point_xy is not None:
                self.canvas.stroke_style = "cyan"
                self.canvas.line_width = 2
                x, y = px(self.point_xy)
                self.canvas.stroke_line(x - 7, y, x + 7, y)
                self.canvas.stroke_line(x, y - 7, x, y + 7)

    def draw_similarity(self):
        """Similarity of the query's source feature over the chosen feature map, window at the scrubbed handle."""
        s = self.session
        src = s.features("source")
        feats = s.features(self.features_toggle.value)
        q = self.query
        if q == _CLICKED:
            if self.point_xy is None:
                self._set_png(self.sim_image, b"")
                self.info.value = "<i>click the image to pick a point</i>" + self._loss_text()
                self.last_figure = None
                return
            point_rc = center_rc = s.image_to_grid(self.point_xy)
            target_rc = None
        else:
            handle_xy, target_xy = s.drags[q]
            point_rc = s.image_to_grid(handle_xy)
            center_rc = s.image_to_grid(self.handles_at(self.step)[q])
            target_rc = s.image_to_grid(target_xy)
        fig = viz.plot_similarity(src, q if q != _CLICKED else 0, current=feats, point_rc=point_rc, center_rc=center_rc,
                                  target_rc=target_rc, r_p=s.config.r_p, patch=s.config.track_patch,
                                  figsize=(7.6, 3.6))
        fig.suptitle(f"features: {self.features_toggle.value} (step {s.n_steps}); "
                     f"window: handle at scrubbed step {self.step}", fontsize=9)
        self.last_figure = fig
        self._set_png(self.sim_image, viz.figure_to_png(fig, dpi=72))
        self.info.value = self._loss_text()

    @staticmethod
    def _set_png(image: W.Image, png: bytes) -> None:
        """Show `png`, or hide the image while there is none (an empty image is a broken-image icon)."""
        image.value = png
        image.layout.display = None if png else "none"

    def _loss_text(self) -> str:
        if self.step == 0 or not self.session.history:
            return "&nbsp; step 0: inverted latent"
        r = self.session.history[self.step - 1]
        fmt = lambda v: "–" if v is None else f"{float(v):.4g}"
        t = getattr(r, "timestep", -1)
        at = "" if t is None or t < 0 else f" at t={t} (reference step {getattr(r, 't_index', 0)})"
        return (f"&nbsp; loss {fmt(r.loss)} = motion {fmt(r.motion_loss)} + mask term {fmt(r.mask_loss)}{at}")

    def draw_loss(self):
        hist = self.session.history
        if not hist:
            self._set_png(self.loss_image, b"")
            return
        fig = viz.plot_loss(hist, figsize=(9.0, 2.4))
        if self.step > 0:
            for ax in fig.axes:
                ax.axvline(self.step, color="cyan", lw=1.5)
        self._set_png(self.loss_image, viz.figure_to_png(fig, dpi=72))
