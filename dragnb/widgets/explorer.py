"""`FeatureExplorer`: click a point, see what point tracking sees; scrub through the optimisation.

Layout: the image on an ipycanvas (click = pick a point), next to it the similarity map of the
source feature at that point over the feature grid, with the tracking window
(:func:`dragnb.viz.plot_similarity`); below, a step slider that replays the history (handle
positions, losses, preview snapshots recorded with :class:`dragnb.viz.PreviewRecorder`) and the loss
curves with the scrubbed step marked.

The widget holds no algorithm: similarity maps come from :mod:`dragnb.viz`, features and coordinates
from the session. Gesture handlers are small named methods (``on_click``, ``on_step_change``,
``on_query_change``, ``on_features_change``) so tests can drive them without a browser.
"""
from __future__ import annotations

import numpy as np
import ipywidgets as W
from ipycanvas import Canvas, hold_canvas

from .. import viz
from .canvas import _DRAW_LOCK

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
        self.session = session
        self.frames = dict(frames or {})
        if prepare and not session.is_prepared:
            session.prepare(progress=False)
        w, h = session.size
        self.scale = int(scale) if scale else max(1, 256 // max(w, h))
        self.point_xy = None
        self.last_figure = None
        self._syncing = False

        self.canvas = Canvas(width=w * self.scale, height=h * self.scale,
                             layout=W.Layout(width=f"{w * self.scale}px", height=f"{h * self.scale}px"))
        self.canvas.on_mouse_down(self.on_click_canvas)
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
        self.query_select.observe(self.on_query_change, names="value")
        self.features_toggle.observe(self.on_features_change, names="value")
        self.step_slider.observe(self.on_step_change, names="value")
        session.observe(self.on_session_event)
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
        return [(_CLICKED, _CLICKED)] + [(f"drag {i}", i) for i in range(len(self.session.drags))]

    def handles_at(self, step: int) -> list:
        """Handle points (x, y) after ``step`` steps (0 = the drags' handles)."""
        if step <= 0 or not self.session.history:
            return [h for h, _ in self.session.drags]
        return list(self.session.history[min(step, len(self.session.history)) - 1].handles)

    # ---- gestures -------------------------------------------------------------------------
    def on_click_canvas(self, x, y):
        """ipycanvas mouse-down: canvas pixels -> image pixels (the one place), then `on_click`."""
        self.on_click(x / self.scale, y / self.scale)

    def on_click(self, x, y):
        """Pick the image point (x, y) (image pixels) as the query."""
        w, h = self.session.size
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"point ({x}, {y}) is outside the {w}×{h} image")
        self.point_xy = (float(x), float(y))
        if self.query_select.value != _CLICKED:
            self.query_select.value = _CLICKED          # triggers on_query_change -> refresh
        else:
            self.refresh()

    def on_query_change(self, change=None):
        if not self._syncing:
            self.refresh()

    def on_features_change(self, change=None):
        self.draw_similarity()

    def on_step_change(self, change=None):
        if not self._syncing:
            self.refresh()

    def on_session_event(self, event: str):
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
        if self.follow.value or event == "image":
            self.refresh()

    def close(self):
        self.session.unobserve(self.on_session_event)
        super().close()

    # ---- drawing --------------------------------------------------------------------------
    def refresh(self):
        self.draw_image()
        self.draw_similarity()
        self.draw_loss()

    def _backdrop(self) -> np.ndarray:
        known = [k for k in self.frames if k <= self.step]
        return viz._image_hw3(self.frames[max(known)] if known else self.session.image)

    def draw_image(self):
        s, k = self.session, self.scale
        img = self._backdrop()
        big = np.repeat(np.repeat(img, k, axis=0), k, axis=1)
        handles_now = self.handles_at(self.step)
        with _DRAW_LOCK, hold_canvas():   # one process-wide batch, shared with DragCanvas redraws
            self.canvas.clear()
            self.canvas.put_image_data(big, 0, 0)
            for i, ((h, t), c) in enumerate(zip(s.drags, handles_now)):
                col = viz.DRAG_COLORS[i % len(viz.DRAG_COLORS)]
                self.canvas.stroke_style = col
                self.canvas.line_width = 2
                self.canvas.stroke_line(h[0] * k, h[1] * k, t[0] * k, t[1] * k)
                self.canvas.fill_style = col
                self.canvas.fill_circle(c[0] * k, c[1] * k, 5)
                self.canvas.stroke_circle(t[0] * k, t[1] * k, 5)
            if self.point_xy is not None:
                self.canvas.stroke_style = "cyan"
                self.canvas.line_width = 2
                x, y = self.point_xy[0] * k, self.point_xy[1] * k
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
                self.sim_image.value = b""
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
                                  target_rc=target_rc, r_p=s.config.r_p, figsize=(7.6, 3.6))
        fig.suptitle(f"features: {self.features_toggle.value} (step {s.n_steps}); "
                     f"window: handle at scrubbed step {self.step}", fontsize=9)
        self.last_figure = fig
        self.sim_image.value = viz.figure_to_png(fig, dpi=72)
        self.info.value = self._loss_text()

    def _loss_text(self) -> str:
        if self.step == 0 or not self.session.history:
            return "&nbsp; step 0: inverted latent"
        r = self.session.history[self.step - 1]
        fmt = lambda v: "–" if v is None else f"{float(v):.4g}"
        return (f"&nbsp; loss {fmt(r.loss)} = motion {fmt(r.motion_loss)} + mask term {fmt(r.mask_loss)}")

    def draw_loss(self):
        hist = self.session.history
        if not hist:
            self.loss_image.value = b""
            return
        fig = viz.plot_loss(hist, figsize=(9.0, 2.4))
        if self.step > 0:
            for ax in fig.axes:
                ax.axvline(self.step, color="cyan", lw=1.5)
        self.loss_image.value = viz.figure_to_png(fig, dpi=72)
