"""What `DragEditor` shows, apart from its behaviour: the settings table, the words of its status line (checks
before a job spends anything, the end of a job, a step's timestep, what an edit did to a run), the keyboard
shortcuts, and widgets laid out to wrap rather than truncate.

Plain functions of a `DragSession` (its public properties only), so each sentence is testable on its own.
"""
from __future__ import annotations

import sys

import ipywidgets as widgets

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

# key (as the browser names it, lower case) -> editor action; Ctrl (or Cmd) + key in CTRL_KEYS
KEYS = {"enter": "run", " ": "step", "escape": "stop", "p": "points", "m": "mask", "e": "erase", "s": "spread"}
CTRL_KEYS = {"z": "undo", "y": "redo"}

KEYS_HELP = ("Keyboard (click the image first, so the editor has the focus): Enter = Run, Space = Step, "
             "Esc = Stop, P / M / E = Points / Mask / Erase, S = Spread the last drag, Ctrl-Z = Undo, "
             "Ctrl-Y (or Ctrl-Shift-Z) = Redo")

ERROR_COLOR = "var(--jp-error-color1, #d32f2f)"
"""Red of refused input; ordinary status text takes the notebook's own colour (light and dark themes)."""

RESULT_VIEW_CLICK = ("the right-hand view shows the result and is read-only: click the input image on the left "
                     "to place handles and targets")


# ------------------------------------------------------------------------------------------ front ends
def enable_frontend() -> str | None:
    """Make third-party widgets show where the front end needs asking: in Google Colab, turn on its custom
    widget manager (without it an ipycanvas canvas is a blank output). Returns the front end's name when
    something was done, else None; never raises."""
    if "google.colab" not in sys.modules:
        return None
    try:
        from google.colab import output
        output.enable_custom_widget_manager()
    except Exception:                 # an old or a changed Colab: the docs say how to do it by hand
        return None
    return "colab"


# ------------------------------------------------------------------------------------------ layout
def button(description: str, tooltip: str = "", style: str = "", icon: str = "") -> widgets.Button:
    """A button as wide as its words: it never shrinks into "Ru…" (its row wraps instead)."""
    return widgets.Button(description=description, tooltip=tooltip or description, button_style=style, icon=icon,
                          layout=widgets.Layout(width="auto", min_width="max-content", flex="0 0 auto",
                                                overflow="visible"))


def wrapping_row(children, **layout) -> widgets.HBox:
    """A row that wraps its children onto the next line when the notebook is narrow."""
    return widgets.HBox(children, layout=widgets.Layout(flex_flow="row wrap", align_items="center", **layout))


def toggles(options, value, tooltips=()) -> widgets.ToggleButtons:
    t = widgets.ToggleButtons(options=options, value=value, tooltips=list(tooltips))
    t.style.button_width = "auto"
    t.layout.flex = "0 0 auto"
    return t


def settings_widgets(config) -> dict:
    """config field -> a widget holding the session's value, labelled in full."""
    out = {}
    for field, label, cls in SETTINGS:
        if cls is widgets.Checkbox:
            wdg = cls(value=getattr(config, field), description=label, indent=False,
                      layout=widgets.Layout(width="auto", min_width="max-content"))
        else:
            wdg = cls(value=getattr(config, field), description=label, style={"description_width": "130px"},
                      layout=widgets.Layout(width="250px"))
        out[field] = wdg
    return out


def settings_grid(settings: dict) -> widgets.GridBox:
    """The settings in as many columns as fit (at least 250 px each)."""
    return widgets.GridBox(list(settings.values()), layout=widgets.Layout(
        grid_template_columns="repeat(auto-fill, minmax(260px, 1fr))", width="100%"))


# ------------------------------------------------------------------------------------------ words
def preflight(session, job: str, pending=None) -> str | None:
    """Why `job` ("prepare", "step", "run") cannot start now, in words for the person at the editor, or None.

    Checked before anything is spent (no LoRA is trained for a Run that would refuse)."""
    if session.image is None:
        return "there is no image yet: give the session one (session.set_image(...)) and try again"
    try:
        session.config.validate()
    except ValueError as e:
        return f"a setting is not valid: {e}. Fix it under Settings"
    if job == "prepare":
        return None
    if not session.drags:
        if pending is not None:
            return ("handle 1 still waits for its target: click where it should go on the input image, "
                    f"then press {job.capitalize()}")
        return ("there is no drag yet: in Points mode click a point of the input image (the handle), then the "
                f"place it should go (the target); then press {job.capitalize()}")
    if session.reached:
        return ("tracking already puts every handle at its target: move a target, or press Reset to run again "
                "from the start")
    if job == "run" and session.n_steps >= session.config.drag_steps:
        return (f"all {session.config.drag_steps} drag steps are taken: raise 'drag steps' under Settings to go "
                "on, or press Reset to start over")
    return None


def timestep_text(session, record) -> str:
    """Where a step ran in the method's schedule: "t=681" or "t=681, timestep 2 of 7"."""
    t = getattr(record, "timestep", -1)
    if t is None or t < 0:
        return ""
    n = session.method.reference_steps(session.config) + 1
    index = getattr(record, "t_index", 0) or 0
    return f"t={t}" if n <= 1 else f"t={t}, timestep {index + 1} of {n}"


def step_text(session, record) -> str:
    """Status during a run: "step 12/80 at t=681: loss 0.1234"."""
    at = timestep_text(session, record)
    return (f"step {record.step}/{session.config.drag_steps}{' at ' + at if at else ''}: "
            f"loss {record.loss:.4g}")


def finish_text(session, job: str, records, stopped: bool) -> str:
    """Status after Step or Run: why it ended, said as what is known (tracking is not the image)."""
    n = session.n_steps
    last = f"loss {records[-1].loss:.4g}" if records else "no step taken"
    if records and getattr(records[-1], "timestep", -1) >= 0:
        last += f" at {timestep_text(session, records[-1])}"
    reason = session.stop_reason or ""
    if stopped:
        why = "stopped: press Run to resume"
    elif "schedule is done" in reason:
        why = "the method's schedule is done (look at the result: it shows how far the shape moved)"
    elif session.reached:
        why = ("tracking puts every handle at its target (what the point tracker believes; "
               "the result may still not show the shape there)")
    elif job == "run":
        why = "the drag steps are used up (raise 'drag steps' and Run to go on)"
    else:
        why = "one step done"
    return f"{job}: {why}; {n} step{'s' if n != 1 else ''}, {last}"


def edit_text(origin: str | None, event: str, steps_before: int, steps_now: int) -> str | None:
    """What an edit of the points or the mask did to a run that had taken steps (None: nothing to say).

    origin: what the user did ("undo", "redo", the canvas's own message) or None for a change from code."""
    if steps_before <= 0:
        return None
    what = origin or {"drags": "drags changed from code", "mask": "mask changed from code",
                      "config": "settings changed", "image": "new image"}.get(event, f"{event} changed")
    if steps_now == 0:
        return f"{what}; the {steps_before}-step run was reset: Run starts over from the input"
    if event == "mask":
        return (f"{what}; the {steps_now} steps so far are kept and the next steps use the new mask "
                "(press Reset to start over with it)")
    return None
