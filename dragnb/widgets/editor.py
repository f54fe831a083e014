"""`DragEditor`: a `DragCanvas` plus toolbar, settings, progress and a result view, bound to a `DragSession`.

The editor holds no algorithm: every action is one call on the session (`configure`, `set_drags`,
`set_mask`, `prepare`, `step`, `run`, `stop`, `reset`, `preview`, `result`). Prepare, Step and Run
work in a background thread, so the notebook stays usable and **Stop** (`session.stop()`) takes effect
before the next step; the session is left consistent and Run resumes it.

Sync runs both ways: canvas edits (`canvas.on_drags_changed` / `on_mask_changed`) call
`session.set_drags` / `session.set_mask`; session changes made in a cell (`session.add_drag(...)`) reach
the canvas through `session.observe`. A `ValueError` from the session (bad point, setting out of range,
Run with no drags, ...) becomes a message in the status line and the widget goes back to the session's state.
"""
from __future__ import annotations

import html
import threading
import time
import traceback

import ipywidgets as widgets

from .canvas import DragCanvas

# (config field, label, widget class) of the settings panel; values are passed to session.configure().
SETTINGS = (
    ("lora_steps", "LoRA steps", widgets.IntText),
    ("lora_lr", "LoRA lr", widgets.FloatText),
    ("drag_steps", "drag steps", widgets.IntText),
    ("drag_lr", "drag lr", widgets.FloatText),
    ("lam", "lam", widgets.FloatText),
    ("r_m", "r_m", widgets.IntText),
    ("r_p", "r_p", widgets.IntText),
    ("inversion_strength", "inversion strength", widgets.FloatText),
    ("mutual_attention", "mutual attention", widgets.Checkbox),
)

PREVIEW_EVERY_S = 1.0
"""During Run the result view is refreshed with `session.preview()` at most this often (seconds)."""


class DragEditor(widgets.VBox):
    """Notebook editor for a `DragSession`: ``DragEditor(session)``; display it or leave it last in a cell.

    Attributes tests and notebooks may use: ``canvas`` (the input `DragCanvas`), ``result_view`` (a
    read-only `DragCanvas` with the current result and handles), ``buttons`` (dict: prepare, step, run,
    stop, reset, undo, redo, clear_points, clear_mask), ``settings`` (dict: config field -> widget),
    ``mode``, ``brush``, ``lora_progress``, ``drag_progress``, ``status`` (HTML), ``status_text``,
    ``busy``, ``wait(timeout)``, ``last_error``.
    """

    def __init__(self, session, display_size=None, **kwargs):
        self.session = session
        self._status_plain = ""
        self.last_error = None
        self._worker = None
        self._stop_requested = False
        self._local = threading.local()  # .syncing: True while this thread copies session state into widgets
        self._last_preview = 0.0
        self.preview_every_s = PREVIEW_EVERY_S

        image = session.image
        self.canvas = DragCanvas(image, drags=session.drags, mask=session.mask, display_size=display_size)
        self.result_view = DragCanvas(image, interactive=False, display_size=self.canvas.display_size)
        self.result_label = widgets.HTML("<b>result</b> (not computed yet)")
        self.canvas.add_class("dragnb-input")          # CSS hooks (browser tests, user styling)
        self.result_view.add_class("dragnb-result")

        # --- toolbar
        self.mode = widgets.ToggleButtons(options=[("Points", "points"), ("Mask", "mask"), ("Erase", "erase")],
                                          value="points", tooltips=["click handle, then target; drag points to move",
                                                                    "paint the region that may change",
                                                                    "erase from that region"])
        self.mode.style.button_width = "70px"
        widgets.link((self.mode, "value"), (self.canvas, "mode"))
        w, h = self.canvas.image_size or (256, 256)
        radius = max(2, round(min(w, h) / 16))
        self.brush = widgets.IntSlider(value=radius, min=1, max=max(8, min(w, h) // 4), description="brush",
                                       layout=widgets.Layout(width="220px"))
        self.canvas.brush_radius = radius
        self.brush.observe(lambda c: setattr(self.canvas, "brush_radius", c["new"]), names="value")
        self.view = widgets.ToggleButtons(options=[("Both", "both"), ("Input", "input"), ("Result", "result")],
                                          value="both")
        self.view.style.button_width = "70px"
        self.view.observe(self._on_view_changed, names="value")

        def button(name, description, handler, tooltip="", style=""):
            b = widgets.Button(description=description, tooltip=tooltip, button_style=style,
                               layout=widgets.Layout(width="auto"))
            b.on_click(lambda _: handler())
            self.buttons[name] = b
            return b

        self.buttons = {}
        tools = widgets.HBox([self.mode, self.brush,
                              button("undo", "Undo", self.canvas.undo),
                              button("redo", "Redo", self.canvas.redo),
                              button("clear_points", "Clear points", self.canvas.clear_points),
                              button("clear_mask", "Clear mask", self.canvas.clear_mask)],
                             layout=widgets.Layout(flex_flow="row wrap"))
        actions = widgets.HBox([button("prepare", "Prepare", self.prepare, "LoRA fine-tune + inversion (cached)"),
                                button("step", "Step", self.step, "one drag step"),
                                button("run", "Run", self.run, "drag until the targets are reached", "primary"),
                                button("stop", "Stop", self.stop, "stop after the current step", "warning"),
                                button("reset", "Reset", self.reset, "back to the inverted latent"),
                                self.view])
        self.buttons["stop"].disabled = True

        # --- progress and status
        self.lora_progress = widgets.IntProgress(value=0, min=0, max=max(1, session.config.lora_steps),
                                                 description="LoRA", layout=widgets.Layout(width="320px"))
        self.drag_progress = widgets.IntProgress(value=session.n_steps, min=0, max=max(1, session.config.drag_steps),
                                                 description="drag", layout=widgets.Layout(width="320px"))
        self.status = widgets.HTML("")
        self.status.add_class("dragnb-status")
        self.details = widgets.Output()   # a traceback of an unexpected error, out of the way

        # --- settings
        self.settings = {}
        for field, label, cls in SETTINGS:
            wdg = cls(value=getattr(session.config, field), description=label, style={"description_width": "130px"},
                      layout=widgets.Layout(width="260px"))
            wdg.observe(lambda c, f=field: self._on_setting(f, c["new"]), names="value")
            self.settings[field] = wdg
        settings_box = widgets.GridBox(list(self.settings.values()),
                                       layout=widgets.Layout(grid_template_columns="repeat(3, 270px)"))
        self.settings_panel = widgets.Accordion(children=[settings_box])
        self.settings_panel.set_title(0, "Settings")

        self.input_box = widgets.VBox([widgets.HTML("<b>input</b>: click handle, then target"), self.canvas])
        self.result_box = widgets.VBox([self.result_label, self.result_view])
        self.result_box.layout.margin = "0 0 0 12px"
        views = widgets.HBox([self.input_box, self.result_box])
        super().__init__([tools, views, actions, widgets.HBox([self.lora_progress, self.drag_progress]),
                          self.status, self.settings_panel, self.details], **kwargs)

        # --- sync both ways
        self.canvas.on_drags_changed(self._on_canvas_drags)
        self.canvas.on_mask_changed(self._on_canvas_mask)
        self.canvas.observe(self._on_canvas_message, names="message")
        session.observe(self._on_session_event)
        self._show_handles()
        self.say("ready: click a handle, then its target" if image is not None else
                 "no image in this session yet")

    # ------------------------------------------------------------------ status
    @property
    def status_text(self) -> str:
        """The status line as plain text."""
        return html.unescape(self._status_plain)

    def say(self, text: str, error: bool = False) -> None:
        """Show `text` in the status line (red when `error`)."""
        self._status_plain = html.escape(str(text))
        color = "#c62828" if error else "#333"
        self.status.value = f'<span style="color:{color}">{self._status_plain}</span>'

    def _on_canvas_message(self, change):
        if change["new"]:
            self.say(change["new"], error=self.canvas.message_is_error)

    # ------------------------------------------------------------------ canvas -> session
    def _on_canvas_drags(self, drags):
        if self._syncing:
            return
        try:
            self.session.set_drags(list(drags))
        except (ValueError, TypeError) as e:
            self.say(str(e), error=True)
            new, accepted = list(drags), [tuple(map(tuple, d)) for d in self.session.drags]
            self._sync_from_session("drags")
            if len(new) == len(accepted) + 1 and new[:-1] == accepted and self.canvas.interactive:
                self.canvas.pending = new[-1][0]     # the refused pair's handle waits for another target

    def _on_canvas_mask(self, mask):
        if self._syncing:
            return
        try:
            self.session.set_mask(mask)
        except (ValueError, TypeError) as e:
            self.say(str(e), error=True)
            self._sync_from_session("mask")

    def _on_setting(self, field, value):
        if self._syncing:
            return
        try:
            self.session.configure(**{field: value})
        except (ValueError, TypeError) as e:
            self.say(str(e), error=True)
            self._sync_from_session("config")
            return
        self.say(f"{field} = {value!r}")

    # ------------------------------------------------------------------ session -> widgets
    def _on_session_event(self, event: str) -> None:
        if event == "step":
            if self._worker is None or not self._worker.is_alive():   # a step from a cell
                self.drag_progress.value = min(self.session.n_steps, self.drag_progress.max)
                self._show_handles()
            return
        self._sync_from_session(event)

    @property
    def _syncing(self) -> bool:
        return getattr(self._local, "syncing", False)

    def _sync_from_session(self, event: str) -> None:
        s = self._syncing
        self._local.syncing = True
        try:
            if event in ("drags", "image", "reset"):
                if event == "image":
                    self.canvas.image = self.session.image
                    self.result_view.image = self.session.image
                    self.result_view.display_size = self.canvas.display_size
                    self.result_label.value = "<b>result</b> (new image)"
                    w, h = self.canvas.image_size
                    self.brush.max = max(8, min(w, h) // 4)
                if [tuple(map(tuple, d)) for d in self.session.drags] != self.canvas.drags:
                    self.canvas.drags = list(self.session.drags)
                self._show_handles()
            if event == "reset":
                self._show_image(self.session.image, "(reset: showing the input)")
            if event in ("mask", "image"):
                self.canvas.mask = self.session.mask
            if event == "config":
                for field, wdg in self.settings.items():
                    wdg.value = getattr(self.session.config, field)
                self.lora_progress.max = max(1, self.session.config.lora_steps)
                self.drag_progress.max = max(1, self.session.config.drag_steps)
            if event == "rewind":
                self._show_handles()
            if event == "prepare":
                self.lora_progress.value = self.lora_progress.max
            # new drags, a reset, a rewind, a setting that invalidates the inversion: all move the step count
            self.drag_progress.value = min(self.session.n_steps, self.drag_progress.max)
        finally:
            self._local.syncing = s

    def _show_handles(self, handles=None):
        """Draw current handles -> targets on the result view."""
        s = self.session
        handles = s.handles if handles is None else handles
        pairs = list(zip(handles, s.targets)) if len(handles) == len(s.targets) else []
        try:
            self.result_view.drags = pairs
        except Exception:                # a handle tracked off the image: show none rather than fail
            self.result_view.drags = []

    def _show_image(self, image, label, handles=None):
        self.result_view.image = image
        self.result_label.value = f"<b>result</b> {html.escape(label)}"
        self._show_handles(handles)

    def _on_view_changed(self, change):
        self.input_box.layout.display, self.result_box.layout.display = {
            "both": (None, None), "input": (None, "none"), "result": ("none", None)}[change["new"]]

    # ------------------------------------------------------------------ actions
    @property
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background job (Prepare/Step/Run) ends; True when none is left running."""
        if self._worker is not None:
            self._worker.join(timeout)
        return not self.busy

    def prepare(self) -> None:
        """Button Prepare: LoRA + inversion + source features in the background."""
        self._start("prepare", self._prepare_job)

    def step(self) -> None:
        """Button Step: one drag step in the background, then the result."""
        self._start("step", self._step_job)

    def run(self) -> None:
        """Button Run: drag steps in the background until reached / drag steps / Stop."""
        self._start("run", self._run_job)

    def stop(self) -> None:
        """Button Stop: the running job ends before its next step; Run resumes."""
        if self.busy:
            self._stop_requested = True
            self.session.stop()
            self.say("stopping after the current step…")

    def reset(self) -> None:
        """Button Reset: back to the inverted latent and the drags' handles."""
        if self.busy:
            return self.say("busy: press Stop first", error=True)
        try:
            self.session.reset()            # its "reset" event updates the result view and progress
        except (ValueError, TypeError) as e:
            return self.say(str(e), error=True)
        self.say("reset: back to the start; Run starts over")

    # --- background jobs
    def _start(self, name, job) -> None:
        if self.busy:
            return self.say("busy: wait for the current job or press Stop", error=True)
        self._stop_requested = False
        self._set_busy(True, name)
        self._worker = threading.Thread(target=self._job, args=(name, job), name=f"dragnb-{name}", daemon=True)
        self._worker.start()

    def _job(self, name, job):
        try:
            job()
        except (ValueError, TypeError) as e:
            self.say(str(e), error=True)
        except Exception as e:                       # not the user's fault: keep the traceback out of the way
            self.last_error = e
            self.say(f"{name} failed: {type(e).__name__}: {e} (traceback under the settings)", error=True)
            with self.details:
                traceback.print_exc()
        finally:
            self._set_busy(False, name)

    def _set_busy(self, busy: bool, name: str) -> None:
        for key in ("prepare", "step", "run", "reset", "undo", "redo", "clear_points", "clear_mask"):
            self.buttons[key].disabled = busy       # no edits under a running job (Stop first)
        self.buttons["stop"].disabled = not (busy and name in ("run", "step"))
        for wdg in self.settings.values():
            wdg.disabled = busy
        self.canvas.interactive = not busy
        if busy:
            self.say(f"{name}…")

    def _on_prepare_progress(self, stage, i, n):
        if stage == "lora":
            self.lora_progress.max = max(1, n)
            self.lora_progress.value = min(i, n)
        if stage == "lora" and i not in (0, n) and i % max(1, n // 20):
            return                                   # coarse: about 20 status updates per stage
        self.say(f"preparing: {stage} {i}/{n}")

    def _prepare_if_needed(self, always: bool = False):
        if always or not self.session.is_prepared:
            self.session.prepare(progress=False, callback=self._on_prepare_progress)
            self.lora_progress.value = self.lora_progress.max

    def _prepare_job(self):
        t0 = time.perf_counter()
        self._prepare_if_needed(always=True)
        self.say(f"prepared in {time.perf_counter() - t0:.1f} s: add drags and press Run")

    def _step_job(self):
        self._prepare_if_needed()
        records = self.session.step(1)
        self._finish(records, "step")

    def _run_job(self):
        self._prepare_if_needed()
        if self._stop_requested:
            return self.say("stopped before the first step")
        self._last_preview = time.perf_counter()
        self.drag_progress.max = max(1, self.session.config.drag_steps)
        records = self.session.run(callback=self._on_record, progress=False)
        self._finish(records, "run")

    def _on_record(self, record) -> bool:
        """Per-step callback of session.run (worker thread): progress, and now and then a preview."""
        if self._stop_requested:                     # Stop pressed before run() started listening
            return False
        self.drag_progress.value = min(record.step, self.drag_progress.max)
        self.say(f"step {record.step}/{self.session.config.drag_steps}: loss {record.loss:.4g}")
        now = time.perf_counter()
        if now - self._last_preview >= self.preview_every_s:
            self._show_image(self.session.preview(), f"(preview at step {record.step})", record.handles)
            self._last_preview = time.perf_counter()
        else:
            self._show_handles(record.handles)
        return True

    def _finish(self, records, name):
        s = self.session
        self.drag_progress.value = min(s.n_steps, self.drag_progress.max)
        self._show_image(s.result(), f"after {s.n_steps} steps")
        last = f"loss {records[-1].loss:.4g}" if records else "no step taken"
        if self._stop_requested:
            why = "stopped: press Run to resume"
        elif s.reached:
            why = "every handle reached its target"
        elif name == "run":
            why = "the drag steps are used up (raise 'drag steps' and Run to go on)"
        else:
            why = "one step done"
        self.say(f"{name}: {why}; {s.n_steps} steps, {last}")

    def close(self):
        self.session.unobserve(self._on_session_event)
        if self.busy:
            self.session.stop()
        self.canvas.close()
        self.result_view.close()
        super().close()
