"""DragCanvas and DragEditor driven by simulated canvas events and button clicks (no browser).

Canvas gestures are the widget's own handlers (`handle_mouse_down(x, y)` ... in display pixels), so these
tests walk the same code a browser click does; `tests/browser/` checks the browser end of it.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import pytest
import traitlets

pytest.importorskip("ipycanvas")
import ipywidgets as widgets  # noqa: E402

from dragnb.widgets import DragCanvas, DragEditor  # noqa: E402

SIZE = 64


def image(w=SIZE, h=SIZE):
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (30, 60, 90)
    img[(xx - w // 3) ** 2 + (yy - h // 2) ** 2 < (min(w, h) // 6) ** 2] = (230, 200, 40)
    return img


def click(c, p):
    """Click at image point p (through the display mapping, as a browser would)."""
    x, y = c.image_to_display(*p)
    c.handle_mouse_down(x, y)
    c.handle_mouse_up(x, y)


def stroke(c, points):
    xy = [c.image_to_display(*p) for p in points]
    c.handle_mouse_down(*xy[0])
    for p in xy[1:]:
        c.handle_mouse_move(*p)
    c.handle_mouse_up(*xy[-1])


def capsule(p0, p1, r, shape):
    """Pixels whose centre (col, row) lies within r of the segment p0-p1 (x, y)."""
    ys, xs = np.mgrid[:shape[0], :shape[1]].astype(float)
    d = np.subtract(p1, p0).astype(float)
    dd = float(d @ d)
    t = np.zeros_like(xs) if dd == 0 else np.clip(((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / dd, 0, 1)
    return (xs - p0[0] - t * d[0]) ** 2 + (ys - p0[1] - t * d[1]) ** 2 <= r * r


# ---------------------------------------------------------------------------------------------- canvas
def test_click_handle_then_target_makes_a_numbered_pair():
    c = DragCanvas(image())
    seen = []
    c.observe(lambda ch: seen.append(ch["new"]), names="drags")
    click(c, (10, 20))
    assert c.pending == (10.0, 20.0) and c.drags == [] and "target" in c.message
    click(c, (30, 22))
    assert c.pending is None and c.drags == [((10.0, 20.0), (30.0, 22.0))]
    click(c, (40, 40))
    click(c, (50, 45))
    assert c.drags == [((10.0, 20.0), (30.0, 22.0)), ((40.0, 40.0), (50.0, 45.0))]
    assert len(seen) == 2, "one drags change per completed pair"


@pytest.mark.parametrize("wh, display", [((640, 480), None), ((200, 100), (100, 50)), ((64, 48), None),
                                         ((100, 60), (333, 187))])
def test_scaled_display_maps_clicks_back_to_image_pixels(wh, display):
    w, h = wh
    c = DragCanvas(image(w, h), display_size=display)
    dw, dh = c.display_size
    if display is None:   # large images shrink to fit 512, small ones grow by a whole factor to >= 256
        assert max(dw, dh) == (512 if max(w, h) > 512 else max(w, h) * -(-256 // max(w, h)))
        assert abs(dw / w - dh / h) < 0.01
    assert (c.layers.width, c.layers.height) == (dw, dh)
    for p in [(0, 0), (w - 1, h - 1), (w / 3, h / 2), (17.25, 9.5)]:
        x, y = c.image_to_display(*p)
        assert c.display_to_image(x, y) == pytest.approx(p, abs=1e-9)
    # the left edge of the canvas is the left edge of pixel 0, the right edge that of pixel w-1
    assert c.display_to_image(0, 0) == pytest.approx((-0.5, -0.5))
    assert c.display_to_image(dw, dh) == pytest.approx((w - 0.5, h - 0.5))
    click(c, (w / 4, h / 3))
    click(c, (w * 0.75, h * 0.6))
    (hp, tp), = c.drags
    assert hp == pytest.approx((w / 4, h / 3), abs=1e-9) and tp == pytest.approx((w * 0.75, h * 0.6), abs=1e-9)


def test_bad_clicks_leave_a_message_and_change_nothing():
    c = DragCanvas(image())
    click(c, (10, 10))
    click(c, (30, 10))
    before = (list(c.drags), c.pending)
    c.handle_mouse_down(-3, 5)
    assert "outside the 64×64 image" in c.message and c.message_is_error
    c.handle_mouse_down(*c.image_to_display(SIZE + 2, 5))
    assert "outside" in c.message
    assert (c.drags, c.pending) == before
    click(c, (40, 40))                           # a handle
    click(c, (40.3, 40.2))                       # a click on the waiting handle grabs it, makes no target
    assert c.pending == (40.0, 40.0) and c.drags == before[0]
    empty = DragCanvas()
    empty.handle_mouse_down(10, 10)
    assert "load an image" in empty.message and empty.drags == [] and empty.pending is None
    viewer = DragCanvas(image(), interactive=False)
    click(viewer, (10, 10))
    assert viewer.pending is None and "read-only" in viewer.message


def test_moving_a_point_and_undo_redo():
    c = DragCanvas(image())
    click(c, (10, 20))
    click(c, (30, 20))
    # grab the target 2 display px off its centre, move it in two moves, release: it keeps that offset
    x, y = c.image_to_display(30, 20)
    c.handle_mouse_down(x + 2, y - 1)                 # within the hit radius
    c.handle_mouse_move(x + 22, y + 19)
    c.handle_mouse_move(x + 42, y + 39)
    c.handle_mouse_up(x + 42, y + 39)
    assert c.drags == [((10.0, 20.0), (40.0, 30.0))]   # moved by 40x40 display px = 10x10 image px
    # grab the handle and drop it outside: it is clamped to the image
    c.handle_mouse_down(*c.image_to_display(10, 20))
    c.handle_mouse_move(-40, -40)
    c.handle_mouse_up(-40, -40)
    assert c.drags == [((0.0, 0.0), (40.0, 30.0))]
    # a click on a point without moving it is no gesture: nothing to undo for it
    c.handle_mouse_down(*c.image_to_display(40, 30))
    c.handle_mouse_up(*c.image_to_display(40, 30))
    assert c.undo() and c.drags == [((10.0, 20.0), (40.0, 30.0))]
    assert c.undo() and c.drags == [((10.0, 20.0), (30.0, 20.0))]
    assert c.undo() and c.drags == [] and c.pending == (10.0, 20.0)
    assert c.undo() and c.pending is None
    assert not c.undo() and "nothing to undo" in c.message
    assert c.redo() and c.redo() and c.drags == [((10.0, 20.0), (30.0, 20.0))]
    click(c, (50, 50))                           # a new gesture drops the redo branch
    assert not c.can_redo


def test_brush_stroke_eraser_undo_and_clear():
    c = DragCanvas(image())
    c.mode = "mask"
    c.brush_radius = 3
    stroke(c, [(10, 30), (20, 30), (40, 30)])
    assert c.mask.dtype == bool and c.mask.shape == (SIZE, SIZE)
    assert np.array_equal(c.mask, capsule((10, 30), (40, 30), 3, c.mask.shape))
    assert c.drags == [] and c.pending is None, "painting makes no points"
    painted = c.mask.copy()
    c.mode = "erase"
    c.brush_radius = 2
    stroke(c, [(25, 25), (25, 35)])
    assert np.array_equal(c.mask, painted & ~capsule((25, 25), (25, 35), 2, painted.shape))
    assert c.undo() and np.array_equal(c.mask, painted)
    assert c.redo() and not c.mask[30, 25]
    c.clear_mask()
    assert c.mask is None
    assert c.undo() and c.mask is not None
    # erasing with no mask (= everything may change) starts from everything
    c.clear_mask()
    stroke(c, [(5, 5)])
    assert c.mask.sum() == SIZE * SIZE - capsule((5, 5), (5, 5), 2, (SIZE, SIZE)).sum()
    # a fast move paints the whole segment in between, not just its ends
    c.clear_mask()
    c.mode = "mask"
    stroke(c, [(5, 60), (60, 60)])
    assert c.mask[60, 5:61].all()


def test_mode_switch_points_vs_mask():
    c = DragCanvas(image())
    c.mode = "mask"
    click(c, (10, 10))
    assert c.pending is None and c.mask is not None and c.mask[10, 10]
    c.mode = "points"
    click(c, (10, 10))
    assert c.pending == (10.0, 10.0)
    mask = c.mask.copy()
    click(c, (30, 30))
    assert c.drags == [((10.0, 10.0), (30.0, 30.0))] and np.array_equal(c.mask, mask)
    c.clear_points()
    assert c.drags == [] and c.mask is not None
    assert c.undo() and len(c.drags) == 1


def test_traits_set_from_code_are_checked():
    c = DragCanvas(image())
    c.drags = [[(1, 2), (3, 4)]]
    assert c.drags == [((1.0, 2.0), (3.0, 4.0))]
    with pytest.raises(traitlets.TraitError, match=r"drag 0 target \(100.0, 4.0\) is outside the 64×64 image"):
        c.drags = [((1, 2), (100, 4))]
    with pytest.raises(traitlets.TraitError, match="needs both a handle and a target"):
        c.drags = [((1, 2), None)]
    with pytest.raises(traitlets.TraitError, match=r"mask has shape \(10, 10\)"):
        c.mask = np.ones((10, 10), bool)
    assert c.drags == [((1.0, 2.0), (3.0, 4.0))] and c.mask is None, "refused values change nothing"
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[5:9, 5:9] = 255
    c.mask = m
    assert c.mask.dtype == bool and c.mask.sum() == 16
    with pytest.raises(traitlets.TraitError):
        c.brush_radius = 0
    # a new image of another size drops what no longer fits
    c.image = image(32, 32)
    assert c.mask is None and c.drags == [((1.0, 2.0), (3.0, 4.0))] and c.display_size == (256, 256)


def test_callback_registrars_follow_ipycanvas():
    c = DragCanvas(image())
    # on_mouse_* register callbacks as ipycanvas does (they no longer are the gesture handlers)
    seen_down = []
    down = lambda x, y: seen_down.append((x, y))
    for name in ("on_mouse_down", "on_mouse_move", "on_mouse_up", "on_mouse_out"):
        getattr(c, name)(down)
        getattr(c, name)(down, remove=True)
    c.on_mouse_down(down)
    c.layers[-1]._handle_frontend_event(None, {"event": "mouse_down", "x": 12, "y": 34}, [])   # as the browser sends it
    assert seen_down == [(12, 34)] and c.pending is not None, "the callback runs besides the canvas's own handler"
    # on_drags_changed / on_mask_changed: called with the new value after every change, until removed
    drags, masks = [], []
    c.on_drags_changed(drags.append)
    c.on_mask_changed(masks.append)
    c.pending = None
    click(c, (10, 20))
    click(c, (30, 22))
    assert drags == [[((10.0, 20.0), (30.0, 22.0))]]
    c.undo()
    assert drags[-1] == [] and len(drags) == 2
    c.mode = "mask"
    stroke(c, [(5, 5)])
    assert len(masks) == 1 and masks[0][5, 5]
    c.on_drags_changed(drags.append, remove=True)
    c.drags = [((1, 1), (9, 9))]
    assert len(drags) == 2


def test_canvas_draws_pairs_in_the_one_vocabulary():
    from dragnb import viz
    from dragnb.drawing import DRAG_COLORS, drag_label
    from dragnb.widgets import canvas_draw
    c = DragCanvas(image())
    c.drags = [((10, 10), (30, 10)), ((10, 40), (30, 40))]
    c.pending = (50, 50)
    shapes = c.pair_shapes()
    assert [s.color for s in shapes] == list(DRAG_COLORS[:3]) and [s.label for s in shapes] == ["1", "2", "3"]
    assert viz.DRAG_COLORS == DRAG_COLORS and drag_label(0) == "1"
    assert shapes[0].handle == c.image_to_display(10, 10) and shapes[2].target is None and shapes[2].shaft is None
    # the ipycanvas renderer draws each pair in its colour with its label
    calls = []

    class Layer:
        def __setattr__(self, name, value):
            calls.append((name, value))

        def __getattr__(self, name):
            return lambda *args: calls.append((name, args))

    canvas_draw.draw_pairs(Layer(), shapes)
    assert ("fill_style", DRAG_COLORS[0]) in calls and ("fill_style", DRAG_COLORS[1]) in calls
    texts = [args[0] for name, args in calls if name == "fill_text"]
    assert texts == ["1", "2", "3"]


# ---------------------------------------------------------------------------------------------- editor
@pytest.fixture(scope="module")
def model():
    from dragnb.models import tiny_model
    return tiny_model(seed=0)


@pytest.fixture
def session(model):
    from dragnb.session import DragSession
    s = DragSession(model, image(), seed=0)
    s.configure(lora_steps=2, drag_steps=3, n_inference_steps=10)
    return s


def test_editor_is_a_box_that_displays_itself(session):
    e = DragEditor(session)
    assert isinstance(e, widgets.VBox) and e.canvas in e.input_box.children
    assert e.canvas.image.shape == (SIZE, SIZE, 3) and e.canvas.display_size == (256, 256)
    assert {"prepare", "step", "run", "stop", "reset"} <= set(e.buttons) and e.buttons["stop"].disabled
    assert e.settings["drag_steps"].value == 3 and e.settings["mutual_attention"].value is True
    e.view.value = "result"
    assert e.input_box.layout.display == "none" and e.result_box.layout.display is None
    e.close()
    session.add_drag(handle=(10, 10), target=(10, 40))            # a closed editor no longer follows the session
    assert e.canvas.drags == [] and e.settings["drag_steps"].value == 3
    session.configure(drag_steps=5)
    assert e.settings["drag_steps"].value == 3


def test_canvas_edits_reach_the_session(session):
    e = DragEditor(session)
    c = e.canvas
    click(c, (12, 32))
    click(c, (40, 32))
    assert session.drags == [((12.0, 32.0), (40.0, 32.0))]
    e.mode.value = "mask"                         # the toolbar drives the canvas mode
    assert c.mode == "mask"
    e.brush.value = 5
    stroke(c, [(8, 32), (50, 32)])
    assert np.array_equal(session.mask, capsule((8, 32), (50, 32), 5, (SIZE, SIZE)))
    e.buttons["undo"].click()
    assert session.mask is None
    e.buttons["redo"].click()
    assert session.mask is not None
    e.buttons["clear_points"].click()
    assert session.drags == [] and c.drags == []
    e.buttons["clear_mask"].click()
    assert session.mask is None


def test_session_changes_reach_the_canvas(session):
    e = DragEditor(session)
    session.add_drag(handle=(10, 10), target=(10, 40))
    assert e.canvas.drags == [((10.0, 10.0), (10.0, 40.0))]
    m = np.zeros((SIZE, SIZE), bool)
    m[:, :32] = True
    session.set_mask(m)
    assert np.array_equal(e.canvas.mask, m)
    e.canvas.handle_mouse_down(*e.canvas.image_to_display(50, 50))   # a handle waiting on the canvas ...
    session.add_drag(handle=(30, 10), target=(30, 40))            # ... stays when a cell adds a drag
    assert e.canvas.pending == (50.0, 50.0) and len(e.canvas.drags) == 2
    session.remove_drag(1)
    session.configure(lam=0.25, r_p=4)
    assert e.settings["lam"].value == 0.25 and e.settings["r_p"].value == 4
    assert e.drag_progress.max == 3
    session.clear_drags()
    assert e.canvas.drags == []
    session.add_drag(handle=(10, 10), target=(10, 40))
    session.set_image(image(128, 96))              # a new image: drags and mask cleared, canvas resized
    assert e.canvas.image.shape == (96, 128, 3) and e.canvas.display_size == (256, 192)
    assert e.canvas.drags == [] and e.canvas.mask is None
    assert e.result_view.display_size == (256, 192) and np.array_equal(e.result_view.image, e.canvas.image)
    click(e.canvas, (100, 80))
    click(e.canvas, (120, 20))
    assert session.drags == [((100.0, 80.0), (120.0, 20.0))]


def test_bad_input_becomes_a_status_message(session):
    e = DragEditor(session)
    e.buttons["run"].click()                      # no drags yet: refused before any LoRA training, in words
    assert e.wait(30)
    assert "no drag yet" in e.status_text and "Points mode" in e.status_text and "add_drag" not in e.status_text
    assert session.n_steps == 0 and not e.busy and session.counters["lora_trainings"] == 0
    e.canvas.handle_mouse_down(-10, 5)
    assert "outside" in e.status_text
    e.settings["r_p"].value = 0                   # out of range: refused, the widget shows the session's value
    assert "r_p" in e.status_text and session.config.r_p == 3 and e.settings["r_p"].value == 3
    e.settings["inversion_strength"].value = 1.5
    assert "inversion_strength" in e.status_text and session.config.inversion_strength == 0.7
    assert e.settings["inversion_strength"].value == 0.7
    e.settings["lam"].value = 0.2                 # a good value goes through
    assert session.config.lam == 0.2
    # a pair the session refuses (same feature cell; clicks that close would grab the handle, so set it
    # as a notebook would): message, the canvas goes back to the session's drags, the handle waits
    e.canvas.drags = [((20, 20), (21, 20))]
    assert "same feature cell" in e.status_text
    assert session.drags == [] and e.canvas.drags == [] and e.canvas.pending == (20.0, 20.0)
    click(e.canvas, (40, 20))
    assert session.drags == [((20.0, 20.0), (40.0, 20.0))]
    # a target moved onto its handle: refused, the pair goes back to where it was
    e.canvas.handle_mouse_down(*e.canvas.image_to_display(40, 20))
    e.canvas.handle_mouse_move(*e.canvas.image_to_display(20, 20))
    e.canvas.handle_mouse_up(*e.canvas.image_to_display(20, 20))
    assert "equals its handle" in e.status_text
    assert session.drags == e.canvas.drags == [((20.0, 20.0), (40.0, 20.0))]
    # erasing every editable pixel: the session refuses an empty mask, the canvas keeps the last good one
    e.mode.value = "mask"
    stroke(e.canvas, [(30, 30)])
    good = session.mask
    e.mode.value = "erase"
    e.brush.value = e.brush.max
    stroke(e.canvas, [(0, 0), (63, 0), (63, 63), (0, 63), (0, 0), (63, 63)])
    assert "no editable pixel" in e.status_text
    assert np.array_equal(session.mask, good) and np.array_equal(e.canvas.mask, good)


def _wait_for(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_run_stop_step_resume_reset(session):
    session.configure(drag_steps=6)
    e = DragEditor(session)
    e.preview_every_s = 0.0                       # a preview after every step
    click(e.canvas, (16, 32))
    click(e.canvas, (44, 32))
    shown_before = e.result_view.image.copy()
    e.buttons["run"].click()
    assert e.busy and e.buttons["run"].disabled and not e.buttons["stop"].disabled
    assert e.buttons["clear_points"].disabled and e.buttons["undo"].disabled and e.settings["lam"].disabled
    _wait_for(lambda: session.n_steps >= 1)
    e.canvas.handle_mouse_down(*e.canvas.image_to_display(5, 5))     # the canvas is locked while running
    assert "busy" in e.canvas.message and e.canvas.pending is None
    e.buttons["stop"].click()
    at_stop = session.n_steps
    assert e.wait(60)
    assert at_stop <= session.n_steps <= at_stop + 1 < 6, "Stop takes effect within one step"
    assert "stopped" in e.status_text and not e.buttons["run"].disabled and e.buttons["stop"].disabled
    assert not e.buttons["clear_points"].disabled and not e.settings["lam"].disabled and e.canvas.interactive
    assert e.lora_progress.value == e.lora_progress.max == 2
    assert e.drag_progress.value == session.n_steps
    assert len(session.history) == session.n_steps and session.drags == [((16.0, 32.0), (44.0, 32.0))]
    assert not np.array_equal(e.result_view.image, shown_before)
    assert e.result_view.drags == list(zip(session.handles, session.targets))
    # Step: one more
    n = session.n_steps
    e.buttons["step"].click()
    assert e.wait(60) and session.n_steps == n + 1 and e.status_text.startswith("step:")
    # Run resumes up to drag_steps and shows the full result
    e.buttons["run"].click()
    assert e.wait(120)
    assert session.n_steps == 6 or session.reached
    assert e.status_text.startswith("run:") and e.drag_progress.value == session.n_steps
    assert np.array_equal(e.result_view.image, np.asarray(session.result()))
    assert "after" in e.result_label.value
    counters = dict(session.counters)
    # Reset: back to the start, caches kept
    e.buttons["reset"].click()
    assert session.n_steps == 0 and e.drag_progress.value == 0 and "reset" in e.status_text
    assert np.array_equal(e.result_view.image, np.asarray(session.image))
    assert session.counters["lora_trainings"] == counters["lora_trainings"] == 1
    # steps and resets done in a cell show up too
    session.step(2)
    assert e.drag_progress.value == 2 and e.result_view.drags == list(zip(session.handles, session.targets))
    session.reset()
    assert e.drag_progress.value == 0 and e.result_view.drags == [((16.0, 32.0), (44.0, 32.0))]


# ---------------------------------------------------------------------------------------------- issue 15
def _run_to_end(e, timeout=120):
    e.buttons["run"].click()
    assert e.wait(timeout)


def test_checks_before_a_job_spends_anything(session):
    e = DragEditor(session)
    for job in ("step", "run"):
        e.buttons[job].click()
        assert not e.busy and "no drag yet" in e.status_text and f"press {job.capitalize()}" in e.status_text
    e.canvas.handle_mouse_down(*e.canvas.image_to_display(12, 32))     # a handle without its target
    e.canvas.handle_mouse_up(*e.canvas.image_to_display(12, 32))
    e.handle_key_down("Enter")
    assert "waits for its target" in e.status_text and not e.busy
    assert session.counters == {k: 0 for k in session.counters}, "nothing was computed for refused jobs"
    click(e.canvas, (40, 32))
    _run_to_end(e)                                                      # 3 steps
    assert session.n_steps == 3 or session.reached
    if not session.reached:
        e.buttons["run"].click()                                        # drag steps used up: refused, in words
        assert not e.busy and "drag steps" in e.status_text and "Reset" in e.status_text


def test_status_words_say_what_is_known():
    from types import SimpleNamespace as NS
    from dragnb.widgets.editor_parts import finish_text, step_text
    rec = NS(step=7, loss=0.5, timestep=681, t_index=0)
    method = NS(reference_steps=lambda c: 0)
    s = NS(n_steps=7, reached=True, stop_reason="tracking puts every handle at its target",
           config=NS(drag_steps=80), method=method)
    text = finish_text(s, "run", [rec], stopped=False)
    assert "tracking puts every handle at its target" in text and "may still not show the shape" in text
    assert "reached" not in text and "at t=681" in text
    s.stop_reason = "the method's schedule is done"
    assert "schedule is done" in finish_text(s, "run", [rec], stopped=False)
    s.method = NS(reference_steps=lambda c: 6)                          # GoodDrag: 7 timesteps
    rec.t_index, rec.timestep = 2, 641
    assert step_text(s, rec) == "step 7/80 at t=641, timestep 3 of 7: loss 0.5"
    assert finish_text(s, "run", [rec], stopped=True).startswith("run: stopped: press Run to resume")


def test_previews_are_labelled_and_result_clicks_answered(session):
    session.configure(drag_steps=3)
    e = DragEditor(session)
    e.preview_every_s = 0.0
    labels = []
    e.result_label.observe(lambda c: labels.append(c["new"]), names="value")
    click(e.canvas, (16, 32))
    click(e.canvas, (44, 32))
    _run_to_end(e)
    previews = [v for v in labels if "preview" in v]
    assert previews and all("one-step estimate" in v for v in previews)
    assert "after" in e.result_label.value and "estimate" not in e.result_label.value
    # a press on the result view, as the browser sends it
    e.result_view.layers._canvases[-1]._handle_frontend_event(None, {"event": "mouse_down", "x": 9, "y": 9}, [])
    assert "read-only" in e.status_text and "input image" in e.status_text


def test_edits_after_a_run_keep_faith_with_it(session):
    session.configure(drag_steps=3)
    e = DragEditor(session)
    click(e.canvas, (16, 32))
    click(e.canvas, (44, 32))
    drags = list(session.drags)
    _run_to_end(e)
    n = session.n_steps
    assert n > 0 and "after" in e.result_label.value
    # a mask stroke keeps the run, and says so at once
    e.mode.value = "mask"
    stroke(e.canvas, [(10, 20), (50, 20)])
    mask = session.mask
    assert session.n_steps == n and f"the {n} steps so far are kept" in e.status_text
    # Undo takes the stroke back (the run is still kept) ...
    e.buttons["undo"].click()
    assert session.mask is None and session.n_steps == n and e.status_text.startswith("undo")
    # ... and Redo is its exact inverse
    e.buttons["redo"].click()
    assert np.array_equal(session.mask, mask) and np.array_equal(e.canvas.mask, mask) and session.n_steps == n
    # Undo of the stroke and of the target: the run is reset, status and result view say so at once
    latent = session.current_latent()
    e.buttons["undo"].click()
    e.buttons["undo"].click()
    assert session.drags == [] and e.canvas.pending == (16.0, 32.0) and session.n_steps == 0
    assert e.status_text.startswith("undo") and "run was reset" in e.status_text
    assert "reset" in e.result_label.value and np.array_equal(e.result_view.image, np.asarray(session.image))
    assert e.drag_progress.value == 0
    # Redo brings back exactly the drags, pending handle and mask of before the Undo, and the run with them
    e.buttons["redo"].click()
    assert session.drags == drags and e.canvas.pending is None and session.mask is None
    assert session.n_steps == n and torch.equal(session.current_latent(), latent)
    assert f"with its {n}-step run" in e.status_text and e.drag_progress.value == n
    e.buttons["redo"].click()
    assert np.array_equal(session.mask, mask) and "redo" in e.status_text and session.n_steps == n
    # a new drag by a click after a run: reset at once
    e.mode.value = "points"
    _run_to_end(e)
    n = session.n_steps
    click(e.canvas, (30, 50))
    click(e.canvas, (50, 50))
    assert session.n_steps == 0 and f"the {n}-step run was reset" in e.status_text
    assert "reset" in e.result_label.value and "after" not in e.result_label.value
    # a drag added from a cell after a run: the same
    _run_to_end(e)
    n = session.n_steps
    session.add_drag(handle=(8, 8), target=(8, 30))
    assert f"drags changed from code; the {n}-step run was reset" in e.status_text
    assert np.array_equal(e.result_view.image, np.asarray(session.image))


def test_colours_follow_the_theme(session):
    import inspect
    from dragnb.widgets import editor, editor_parts
    e = DragEditor(session)
    e.say("fine")
    assert "color" not in e.status.value                    # the notebook's own text colour, light or dark
    e.say("bad", error=True)
    assert "var(--jp-error-color1" in e.status.value
    for mod in (editor, editor_parts):
        assert "#333" not in inspect.getsource(mod)


def test_buttons_keep_their_words(session):
    e = DragEditor(session)
    for name, b in e.buttons.items():
        assert b.description and b.tooltip, name
        assert b.layout.min_width == "max-content" and b.layout.flex == "0 0 auto", name
    rows = [c for c in e.children if isinstance(c, widgets.HBox)]
    assert rows and all(r.layout.flex_flow == "row wrap" for r in rows)
    assert e.settings["mutual_attention"].indent is False                # no 130 px indent cutting the label


def test_keyboard_shortcuts(session):
    session.configure(drag_steps=2)
    e = DragEditor(session)
    assert "Enter" in e.buttons["keys"].tooltip and "Ctrl-Z" in e.buttons["keys"].tooltip
    send = lambda key, ctrl=False, shift=False: e.canvas.layers._canvases[-1]._handle_frontend_event(  # noqa: E731
        None, {"event": "key_down", "key": key, "shift_key": shift, "ctrl_key": ctrl, "meta_key": False}, [])
    send("m")
    assert e.mode.value == e.canvas.mode == "mask"
    send("E")
    assert e.canvas.mode == "erase"
    send("p")
    assert e.canvas.mode == "points"
    click(e.canvas, (16, 32))
    click(e.canvas, (44, 32))
    send("z", ctrl=True)
    assert session.drags == [] and e.canvas.pending == (16.0, 32.0)
    send("y", ctrl=True)
    assert session.drags == [((16.0, 32.0), (44.0, 32.0))]
    send("z", ctrl=True)
    send("Z", ctrl=True, shift=True)                                    # Ctrl-Shift-Z redoes too
    assert len(session.drags) == 1
    send(" ")                                                           # Space: one step
    assert e.wait(60) and session.n_steps == 1
    send("Enter")                                                       # Enter: Run
    assert e.wait(60) and (session.n_steps == 2 or session.reached)
    session.reset()
    session.configure(drag_steps=50)
    e.preview_every_s = 1e9
    send("Enter")
    _wait_for(lambda: session.n_steps >= 1)
    send("Escape")                                                      # Esc: Stop
    assert e.wait(60) and session.n_steps < 50 and "stopped" in e.status_text
    e.result_view.layers._canvases[-1]._handle_frontend_event(
        None, {"event": "key_down", "key": "m", "shift_key": False, "ctrl_key": False, "meta_key": False}, [])
    assert e.canvas.mode == "mask"                                      # keys work on the result view too


def test_method_selector_switches_method_and_its_defaults(session):
    from dragnb.methods import available
    session.configure(lora_steps=3)                                     # a user's own edit, kept across switches
    e = DragEditor(session)
    assert list(e.method.options) == available() and e.method.value == "dragdiffusion"
    official = session.config
    e.method.value = "gooddrag"
    want = session.model.default_config(method="gooddrag")
    c = session.config
    assert c.method == "gooddrag" and c.lora_steps == 3
    for f in ("drag_steps", "drag_lr", "lam", "r_m", "r_p", "inversion_strength", "rounds", "beta"):
        assert getattr(c, f) == getattr(want, f), f
    assert e.settings["drag_steps"].value == c.drag_steps and "gooddrag" in e.status_text
    e.method.value = "dragdiffusion"            # the methods' own fields back to the official values, the rest kept
    from dragnb.methods import GoodDrag
    back = session.model.default_config()
    assert session.config == official.replace(**{f: getattr(back, f) for f in GoodDrag.defaults(256)})
    assert session.config.lora_steps == 3 and session.config.n_inference_steps == 10
    session.configure(method="gooddrag", drag_timesteps=2, rounds=1, updates_per_round=1, drag_steps=2)  # from a cell
    assert e.method.value == "gooddrag"
    click(e.canvas, (16, 32))
    click(e.canvas, (44, 32))
    seen = []
    e.status.observe(lambda ch: seen.append(e.status_text), names="value")
    _run_to_end(e)
    assert any(" at t=" in t and "timestep" in t for t in seen), seen


def test_explorer_shows_its_image_before_the_first_click(session):
    from dragnb.widgets import FeatureExplorer
    fx = FeatureExplorer(session)
    assert fx.point_xy is None
    assert fx.sim_image.layout.display == "none" and fx.loss_image.layout.display == "none"  # no broken image
    assert "click the image" in fx.info.value
    fx.handle_click(20, 30)
    assert fx.sim_image.layout.display is None and fx.sim_image.value


def test_colab_custom_widget_manager_is_turned_on(session, monkeypatch):
    import sys
    import types
    calls = []
    output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append("on"))
    colab = types.ModuleType("google.colab")
    colab.output = output
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    DragEditor(session)
    assert calls == ["on"]
    monkeypatch.delitem(sys.modules, "google.colab")
    from dragnb.widgets.editor_parts import enable_frontend
    assert enable_frontend() is None and calls == ["on"]             # elsewhere: nothing is done


def test_a_moved_point_after_a_run_says_what_happened(session):
    session.configure(drag_steps=2)
    e = DragEditor(session)
    click(e.canvas, (16, 32))
    click(e.canvas, (44, 32))
    _run_to_end(e)
    n = session.n_steps
    c = e.canvas                                          # drag the target a little: no canvas message of its own
    c.handle_mouse_down(*c.image_to_display(44, 32))
    c.handle_mouse_move(*c.image_to_display(48, 36))
    c.handle_mouse_up(*c.image_to_display(48, 36))
    assert session.drags == [((16.0, 32.0), (48.0, 36.0))] and session.n_steps == 0
    assert e.status_text == f"drags changed on the canvas; the {n}-step run was reset: Run starts over from the input"


def test_spread_adds_points_on_the_handle_region_in_one_undo_step():
    """Spread: up to four more pairs on the last drag's colour region (the disc), each with the drag's offset, in one
    undo step; a second press, no drag, or a region too small for more points change nothing and say why."""
    c = DragCanvas(image())
    assert c.spread_last() == 0 and c.message_is_error and "add a drag first" in c.message
    click(c, (21, 32))                                    # the yellow disc: centre (21, 32), radius 10
    click(c, (41, 32))
    assert c.spread_last() == 4 and not c.message_is_error and "4 more points" in c.message
    img = image()
    assert len(c.drags) == 5 and c.drags[0] == ((21.0, 32.0), (41.0, 32.0))
    for (hx, hy), (tx, ty) in c.drags:
        assert (tx - hx, ty - hy) == (20.0, 0.0)
        assert tuple(img[int(hy), int(hx)]) == (230, 200, 40)          # every handle on the disc
    assert len({h for h, _ in c.drags}) == 5
    assert c.spread_last() == 0 and "spread already (5 points" in c.message and len(c.drags) == 5
    assert c.undo() and c.drags == [((21.0, 32.0), (41.0, 32.0))]       # one undo step takes them all back
    assert c.redo() and len(c.drags) == 5
    # a mask that leaves only the handle's neighbourhood editable: no room for more points
    c.clear_points()
    m = np.zeros((SIZE, SIZE), bool)
    m[30:35, 19:24] = True
    c.mask = m
    click(c, (21, 32))
    click(c, (45, 32))
    assert c.spread_last() == 0 and "too small" in c.message and len(c.drags) == 1


def test_spread_button_and_key_reach_the_session(session):
    e = DragEditor(session)
    assert "S = Spread" in e.buttons["keys"].tooltip and "(S)" in e.buttons["spread"].tooltip
    click(e.canvas, (21, 32))
    click(e.canvas, (41, 32))
    e.buttons["spread"].click()
    assert len(session.drags) == 5 and session.drags == [tuple(map(tuple, d)) for d in e.canvas.drags]
    assert "spread: 4 more points" in e.status_text
    e.buttons["undo"].click()
    assert session.drags == [((21.0, 32.0), (41.0, 32.0))]
    e.canvas.layers._canvases[-1]._handle_frontend_event(
        None, {"event": "key_down", "key": "s", "shift_key": False, "ctrl_key": False, "meta_key": False}, [])
    assert len(session.drags) == 5
