"""`DragEditor`: a `DragCanvas` plus toolbar, settings, progress and a result view, bound to a `DragSession`.

The editor holds no algorithm: every action is one call on the session (`configure`, `set_drags`,
`set_mask`, `prepare`, `step`, `run`, `stop`, `reset`, `preview`, `result`). Prepare, Step and Run
work in a background thread, so the notebook stays usable and **Stop** (`session.stop()`) takes effect
before the next step; the session is left consistent and Run resumes it. Before a job starts, the editor
checks that it can do anything (a drag, an image, valid settings: `editor_parts.preflight`), so a Run that
would refuse trains no LoRA first.

Sync runs both ways: canvas edits (`canvas.on_drags_changed` / `on_mask_changed`) call
`session.set_drags` / `session.set_mask`; session changes made in a cell (`session.add_drag(...)`) reach
the canvas through `session.observe`. An edit after a run says what it did to the run, at once: new drags
reset it (the result view goes back to the input), a new mask keeps its steps. A `ValueError` from the
session becomes a message in the status line and the widget goes back to the session's state.

Keyboard (when one of the editor's images has the focus; ipycanvas' `on_key_down`): Enter runs, Space steps,
Esc stops, P/M/E switch Points/Mask/Erase, S spreads the last drag (Spread), Ctrl-Z/Ctrl-Y undo/redo
(`handle_key_down`). The words and the layout pieces live in `editor_parts`.
"""
from __future__ import annotations

import html
import threading

import ipywidgets as widgets

from ..methods import available, get_method
from . import editor_parts as parts
from .canvas import DragCanvas
from .editor_jobs import EditorJobs
from .editor_parts import SETTINGS  # noqa: F401  (the settings table, importable from here as before)

PREVIEW_EVERY_S = 1.0
"""During Run the result view is refreshed with `session.preview()` at most this often (seconds)."""


class DragEditor(EditorJobs, widgets.VBox):
    """Notebook editor for a `DragSession`: ``DragEditor(session)``; display it or leave it last in a cell.

    Attributes tests and notebooks may use: ``canvas`` (the input `DragCanvas`), ``result_view`` (a
    read-only `DragCanvas` with the current result and handles), ``buttons`` (dict: prepare, step, run,
    stop, reset, undo, redo, spread, clear_points, clear_mask, keys), ``settings`` (dict: config field -> widget),
    ``method`` (the drag-method dropdown), ``mode``, ``brush``, ``lora_progress``, ``drag_progress``,
    ``status`` (HTML), ``status_text``, ``busy``, ``wait(timeout)``, ``last_error``, ``handle_key_down``.
    """

    def __init__(self, session, display_size=None, **kwargs):
        self.session = session
        self._status_plain = ""
        self.last_error = None
        self._worker = None
        self._stop_requested = False
        self._local = threading.local()  # .syncing: True while this thread copies session state into widgets
        self._last_preview = 0.0
        self._known_steps = session.n_steps   # the run's length as the editor last showed it
        self._edit_origin = None              # what the user just did, while the session reacts to it
        self._edit_note = None                # what that did to the run (said after Undo/Redo's own words)
        self._redo_runs: list = []            # per Undo: the session's state_dict when Undo reset a run, else None
        self._fresh_message = None            # the canvas's message during the gesture under way
        self.preview_every_s = PREVIEW_EVERY_S

        parts.enable_frontend()          # Colab: its custom widget manager, or the canvas stays blank
        image = session.image
        self.canvas = DragCanvas(image, drags=session.drags, mask=session.mask, display_size=display_size)
        self.result_view = DragCanvas(image, interactive=False, display_size=self.canvas.display_size)
        self.result_label = widgets.HTML("<b>result</b> (not computed yet)")
        self.canvas.add_class("dragnb-input")          # CSS hooks (browser tests, user styling)
        self.result_view.add_class("dragnb-result")

        # --- toolbar
        self.mode = parts.toggles([("Points", "points"), ("Mask", "mask"), ("Erase", "erase")], "points",
                                  ["click handle, then target; drag points to move (P)",
                                   "paint the region that may change (M)", "erase from that region (E)"])
        widgets.link((self.mode, "value"), (self.canvas, "mode"))
        w, h = self.canvas.image_size or (256, 256)
        radius = max(2, round(min(w, h) / 16))
        self.brush = widgets.IntSlider(value=radius, min=1, max=max(8, min(w, h) // 4), description="brush",
                                       layout=widgets.Layout(width="220px"))
        self.canvas.brush_radius = radius
        self.brush.observe(lambda c: setattr(self.canvas, "brush_radius", c["new"]), names="value")
        self.view = parts.toggles([("Both", "both"), ("Input", "input"), ("Result", "result")], "both",
                                  ["input and result side by side", "the input only", "the result only"])
        self.view.observe(self._on_view_changed, names="value")
        self.method = widgets.Dropdown(options=available(), value=session.config.method, description="method",
                                       style={"description_width": "initial"}, layout=widgets.Layout(width="auto"))
        self.method.observe(self._on_method_changed, names="value")

        self.buttons = {}

        def button(name, description, handler, tooltip="", style="", icon=""):
            b = parts.button(description, tooltip, style, icon)
            b.on_click(lambda _: handler())
            self.buttons[name] = b
            return b

        tools = parts.wrapping_row([self.mode, self.brush,
                                    button("undo", "Undo", self.undo, "undo the last edit (Ctrl-Z)"),
                                    button("redo", "Redo", self.redo, "redo what Undo undid (Ctrl-Y)"),
                                    button("spread", "Spread", self.spread,
                                           "carry the last drag's shape whole: up to 4 more handle points on its "
                                           "region, each moved by the same offset (S)"),
                                    button("clear_points", "Clear points", self.canvas.clear_points),
                                    button("clear_mask", "Clear mask", self.canvas.clear_mask),
                                    button("keys", "Keys", self.show_keys, parts.KEYS_HELP)])
        actions = parts.wrapping_row([
            button("prepare", "Prepare", self.prepare, "LoRA fine-tune + inversion (cached)"),
            button("step", "Step", self.step, "one drag step (Space)"),
            button("run", "Run", self.run, "drag until tracking puts the handles at their targets (Enter)", "primary"),
            button("stop", "Stop", self.stop, "stop after the current step (Esc)", "warning"),
            button("reset", "Reset", self.reset, "back to the inverted latent"),
            self.view, self.method])
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
        self.settings = parts.settings_widgets(session.config)
        for field, wdg in self.settings.items():
            wdg.observe(lambda c, f=field: self._on_setting(f, c["new"]), names="value")
        self.settings_panel = widgets.Accordion(children=[parts.settings_grid(self.settings)])
        self.settings_panel.set_title(0, "Settings")

        self.input_box = widgets.VBox([widgets.HTML("<b>input</b>: click handle, then target"), self.canvas])
        self.result_box = widgets.VBox([self.result_label, self.result_view])
        self.result_box.layout.margin = "0 0 0 12px"
        views = parts.wrapping_row([self.input_box, self.result_box], align_content="flex-start")
        super().__init__([tools, views, actions, parts.wrapping_row([self.lora_progress, self.drag_progress]),
                          self.status, self.settings_panel, self.details], **kwargs)
        self.add_class("dragnb-editor")

        # --- sync both ways, keys, clicks on the result
        self.canvas.on_drags_changed(self._on_canvas_drags)
        self.canvas.on_mask_changed(self._on_canvas_mask)
        self.canvas.observe(self._on_canvas_message, names="message")
        self.result_view.on_mouse_down(self.handle_result_click)
        for c in (self.canvas, self.result_view):
            c.on_key_down(self.handle_key_down)
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
        """Show `text` in the status line (red when `error`; otherwise in the notebook theme's text colour)."""
        self._status_plain = html.escape(str(text))
        style = f' style="color:{parts.ERROR_COLOR}"' if error else ""
        self.status.value = f"<span{style}>{self._status_plain}</span>"

    def show_keys(self) -> None:
        """Button Keys: the keyboard shortcuts in the status line (also the button's tooltip)."""
        self.say(parts.KEYS_HELP)

    def _on_canvas_message(self, change):
        if change["new"]:
            self._fresh_message = change["new"]   # what the gesture under way said (read by the edit it makes)
            self.say(change["new"], error=self.canvas.message_is_error)

    def handle_result_click(self, x: float, y: float) -> None:
        """A press on the result view (read-only): say where points go."""
        self.say(parts.RESULT_VIEW_CLICK)

    # ------------------------------------------------------------------ keyboard
    def handle_key_down(self, key: str, shift_key: bool = False, ctrl_key: bool = False,
                        meta_key: bool = False) -> None:
        """A key pressed while one of the editor's images has the focus (ipycanvas' key_down event)."""
        k = str(key).lower()
        if ctrl_key or meta_key:
            action = "redo" if (k == "z" and shift_key) else parts.CTRL_KEYS.get(k)
        else:
            action = parts.KEYS.get(k)
        if action is None:
            return
        if action in ("points", "mask", "erase"):
            if self.canvas.interactive:
                self.mode.value = action
            return
        if action in ("undo", "redo") and self.busy:          # spread() refuses a busy editor itself
            return self.say("busy: press Stop first", error=True)
        getattr(self, action)()

    # ------------------------------------------------------------------ canvas -> session
    def undo(self) -> None:
        """Button Undo: take the last edit back (a drag, a moved point, a stroke, a clear)."""
        self._edit_origin = "undo"
        run = self.session.state_dict() if self.session.n_steps else None   # what Redo must bring back
        try:
            if self.canvas.undo():
                self._redo_runs.append(run)
                self._say_edit("undo: the last edit is taken back")
        finally:
            self._edit_origin = None

    def redo(self) -> None:
        """Button Redo: the exact inverse of Undo (the same drags, handle and mask come back)."""
        self._edit_origin = "redo"
        try:
            if self.canvas.redo():
                run = self._redo_runs.pop() if self._redo_runs else None
                if run is not None and [tuple(map(tuple, d)) for d in run["drags"]] == self.session.drags:
                    self.session.load_state_dict(run)          # the run Undo reset comes back, step for step
                    self._edit_note = None
                    self._say_edit(f"redo: the edit is back, with its {self.session.n_steps}-step run")
                else:
                    self._say_edit("redo: the edit is back")
        finally:
            self._edit_origin = None

    def spread(self) -> None:
        """Button Spread: up to four more handle points on the last drag's region, each moved by its offset
        (`DragCanvas.spread_last`; one undo step). A region moves whole instead of stretching after its handle."""
        if self.busy:
            return self.say("busy: press Stop first", error=True)
        self.canvas.spread_last()

    def _say_edit(self, text):
        note, self._edit_note = self._edit_note, None
        self.say(f"{text}; {note.split('; ', 1)[1]}" if note else text)

    def _on_canvas_drags(self, drags):
        if self._syncing:
            return
        if self._edit_origin not in ("undo", "redo"):
            self._redo_runs.clear()               # a new edit: the canvas forgets its redo steps, so do we
        try:
            self._edit_origin = self._edit_origin or self._fresh_message or "drags changed on the canvas"
            self.session.set_drags(list(drags))
        except (ValueError, TypeError) as e:
            self.say(str(e), error=True)
            new, accepted = list(drags), [tuple(map(tuple, d)) for d in self.session.drags]
            self._sync_from_session("drags")
            if len(new) == len(accepted) + 1 and new[:-1] == accepted and self.canvas.interactive:
                self.canvas.pending = new[-1][0]     # the refused pair's handle waits for another target
        finally:
            self._fresh_message = None
            if self._edit_origin not in ("undo", "redo"):
                self._edit_origin = None

    def _on_canvas_mask(self, mask):
        if self._syncing:
            return
        if self._edit_origin not in ("undo", "redo"):
            self._redo_runs.clear()
        try:
            self._edit_origin = self._edit_origin or self._fresh_message or "mask changed on the canvas"
            self.session.set_mask(mask)
        except (ValueError, TypeError) as e:
            self.say(str(e), error=True)
            self._sync_from_session("mask")
        finally:
            self._fresh_message = None
            if self._edit_origin not in ("undo", "redo"):
                self._edit_origin = None

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

    def _on_method_changed(self, change):
        """The method dropdown: switch `config.method` and the fields that method sets (its own defaults, scaled to
        this model), keeping the user's other settings."""
        if self._syncing or change["new"] == self.session.config.method:
            return
        old, new = self.session.config.method, change["new"]
        fields = set(type(get_method(old)).defaults(256)) | set(type(get_method(new)).defaults(256))
        target = self.session.model.default_config(method=new)
        try:
            self.session.configure(method=new, **{f: getattr(target, f) for f in sorted(fields)})
        except (ValueError, TypeError) as e:
            self.say(str(e), error=True)
            self._sync_from_session("config")
            return
        c = self.session.config
        self.say(f"method = {new!r} ({c.drag_steps} drag steps, lr {c.drag_lr}, r_m {c.r_m}, r_p {c.r_p})")

    # ------------------------------------------------------------------ session -> widgets
    def _on_session_event(self, event: str) -> None:
        if event == "step":
            if self._worker is None or not self._worker.is_alive():   # a step from a cell
                self.drag_progress.value = min(self.session.n_steps, self.drag_progress.max)
                self._known_steps = self.session.n_steps
                self._show_handles()
            return
        self._sync_from_session(event)
        self._after_edit(event)

    def _after_edit(self, event: str) -> None:
        """An input changed: if a run had taken steps, say at once whether it was kept or reset."""
        before, now = self._known_steps, self.session.n_steps
        self._known_steps = now
        if event in ("reset", "rewind", "prepare"):
            return
        note = parts.edit_text(self._edit_origin, event, before, now)
        if note is None:
            return
        if now == 0 and before > 0:
            self._show_image(self.session.image, "(the input: the run was reset by an edit)")
        if self._edit_origin in ("undo", "redo"):
            self._edit_note = note                # the Undo/Redo button's own words come first
        else:
            self.say(note)

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
                self.method.value = self.session.config.method
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

    def close(self):
        self.session.unobserve(self._on_session_event)
        if self.busy:
            self.session.stop()
        self.canvas.close()
        self.result_view.close()
        super().close()
