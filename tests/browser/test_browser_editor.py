"""End to end in a real browser: JupyterLab + Debian's chromium + Playwright drive a `DragEditor`.

The browser clicks a handle and a target on the canvas, paints a mask stroke and presses Run; the
test then reads the session from the kernel side (kernel websocket API) and checks that it holds
exactly those drags and that mask, that steps were taken and that the result image changed.
A screenshot goes to artifacts/browser_editor.png.

Run: ``pytest -m browser tests/browser`` (after ``.ci/install_browser.sh``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from jupyter_harness import CHROMIUM, CHROMIUM_ARGS, JupyterLab, missing_requirements, write_notebook

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

_why = missing_requirements()
if _why:
    pytestmark.append(pytest.mark.skip(reason=f"browser test needs chromium, playwright and jupyterlab: {_why}"))

SIZE = 64            # image side; the canvas shows it 4x (256 px)
BRUSH = 4            # brush radius, image pixels
HANDLE, TARGET = (20, 32), (40, 32)
STROKE = ((14, 40), (46, 40))   # a horizontal brush stroke, image pixels

SETUP = f"""
import json, numpy as np
from dragnb.models import tiny_model
from dragnb.session import DragSession
from dragnb.widgets import DragEditor
yy, xx = np.mgrid[:{SIZE}, :{SIZE}]
img = np.zeros(({SIZE}, {SIZE}, 3), np.uint8); img[...] = (30, 60, 90)
img[(xx - 20) ** 2 + (yy - 32) ** 2 < 64] = (230, 200, 40)
s = DragSession(tiny_model(seed=0), img, seed=0)
s.configure(lora_steps=2, drag_steps=3, n_inference_steps=10)
editor = DragEditor(s)
editor.brush.value = {BRUSH}
shown_before = np.asarray(editor.result_view.image).copy()
editor
"""

STATE = """
import json, numpy as np
_res = np.asarray(editor.result_view.image, dtype=float)
print(json.dumps(dict(
    drags=s.drags, canvas_drags=editor.canvas.drags, pending=editor.canvas.pending, mode=editor.canvas.mode,
    mask=None if s.mask is None else np.argwhere(s.mask).tolist(),
    n_steps=s.n_steps, busy=editor.busy, status=editor.status_text, prepared=s.is_prepared,
    shown_change=float(np.abs(_res - shown_before).mean()),
    shown_is_result=bool(np.array_equal(_res, np.asarray(s.result(), dtype=float))) if s.n_steps else False,
    result_vs_reconstruction=float(np.abs(np.asarray(s.result(), float) - np.asarray(s.reconstruction(), float)).mean())
        if s.n_steps else 0.0,
)))
"""


def capsule(p0, p1, r, shape):
    """Pixels (row, col) whose centre lies within r of the segment p0-p1 (x, y): the brush stroke."""
    ys, xs = np.mgrid[:shape[0], :shape[1]].astype(float)
    d = np.subtract(p1, p0)
    t = np.clip(((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / float(d @ d), 0, 1)
    return (xs - p0[0] - t * d[0]) ** 2 + (ys - p0[1] - t * d[1]) ** 2 <= r * r


def run_cell_until(page, lab, selector, timeout=240.0):
    """Run the notebook's first cell from the page until `selector` is visible in its output.

    On a slow machine a Shift+Enter that arrives while JupyterLab is still wiring the kernel can be
    dropped: the prompt stays ``[ ]:``. Then the cell is run again. If the cell ran and the widget never
    shows, fail with what the output area holds, a screenshot and the server log: that is a bug to see.
    """
    cell = page.locator(".jp-Notebook .jp-Cell").first
    prompt = cell.locator(".jp-InputPrompt")
    target = page.locator(selector).first
    deadline = time.monotonic() + timeout
    tries = 0
    while time.monotonic() < deadline:
        if tries == 0 or prompt.inner_text().strip() in ("[ ]:", ""):
            if tries >= 4:
                break
            cell.locator(".cm-content").click()
            page.keyboard.press("Shift+Enter")
            tries += 1
        try:
            target.wait_for(state="visible", timeout=15_000)
            return target
        except Exception:     # playwright TimeoutError: look at the prompt and try again
            pass
    page.screenshot(path=str(ARTIFACTS / "browser_editor_failed.png"), full_page=True)
    output = cell.locator(".jp-OutputArea").all_inner_texts()
    raise AssertionError(f"{selector} not visible after {timeout:.0f} s and {tries} run(s) of the cell; "
                         f"prompt {prompt.inner_text()!r}; output area: {output!r}\n"
                         f"server log:\n{lab.log_tail(3000)}")


def test_editor_in_jupyterlab(tmp_path):
    from playwright.sync_api import sync_playwright

    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "editor.ipynb", [SETUP.strip()])
    ARTIFACTS.mkdir(exist_ok=True)
    lab = JupyterLab(root, pythonpath=str(REPO))
    t0 = time.monotonic()
    with lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab.url}/lab/tree/editor.ipynb")
            page.locator(".jp-Notebook .jp-Cell .cm-content").first.click(timeout=60_000)
            kernel = lab.kernel_id("editor.ipynb")

            def state():
                return json.loads(lab.execute(kernel, STATE, timeout=60).strip().splitlines()[-1])

            def wait_for(pred, what, timeout=60.0):
                deadline = time.monotonic() + timeout
                while True:
                    st = state()
                    if pred(st):
                        return st
                    if time.monotonic() > deadline:
                        raise AssertionError(f"timed out waiting for {what}; state: {st}\n{lab.log_tail(2000)}")
                    time.sleep(0.5)

            lab.wait_idle(kernel)
            canvas = run_cell_until(page, lab, ".dragnb-input canvas")   # the editor appears
            canvas.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            left, top, width, height, cw, ch = canvas.evaluate(
                "e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height, e.width, e.height]; }")
            assert (cw, ch) == (4 * SIZE, 4 * SIZE), (cw, ch)

            def client(p):
                """Integer client (page) pixel over image point p, and the image point the widget will get."""
                dx, dy = (p[0] + 0.5) * cw / SIZE, (p[1] + 0.5) * ch / SIZE
                cx, cy = round(left + dx * width / cw), round(top + dy * height / ch)
                # what ipycanvas computes from the event, then DragCanvas.display_to_image
                ex, ey = cw * (cx - left) / width, ch * (cy - top) / height
                return (cx, cy), (ex / (cw / SIZE) - 0.5, ey / (ch / SIZE) - 0.5)

            (hx, hy), handle = client(HANDLE)
            (tx, ty), target = client(TARGET)
            page.mouse.click(hx, hy)
            page.mouse.click(tx, ty)
            st = wait_for(lambda st: len(st["drags"]) == 1, "the drag to reach the session")

            page.get_by_role("button", name="Mask", exact=True).click()
            wait_for(lambda st: st["mode"] == "mask", "mask mode")
            (sx0, sy0), s0 = client(STROKE[0])
            (sx1, sy1), s1 = client(STROKE[1])
            page.mouse.move(sx0, sy0)
            page.mouse.down()
            page.mouse.move(sx1, sy1, steps=12)
            page.mouse.up()
            st = wait_for(lambda st: st["mask"] is not None, "the mask to reach the session")

            page.get_by_role("button", name="Run", exact=True).click()
            st = wait_for(lambda st: st["n_steps"] > 0 and not st["busy"], "Run to finish", timeout=180)
            page.wait_for_timeout(1000)                      # let the last canvas update paint
            page.screenshot(path=str(ARTIFACTS / "browser_editor.png"), full_page=True)
        finally:
            browser.close()

    # exactly the clicked drag, in session and canvas
    assert len(st["drags"]) == 1 and st["pending"] is None
    (h, t), = st["drags"]
    assert np.allclose(h, handle, atol=1e-6) and np.allclose(t, target, atol=1e-6), (st["drags"], handle, target)
    assert np.allclose(h, HANDLE, atol=0.5) and np.allclose(t, TARGET, atol=0.5)
    assert st["canvas_drags"] == st["drags"]
    # exactly the painted stroke: every pixel within the brush radius of the stroke segment
    got = np.zeros((SIZE, SIZE), bool)
    got[tuple(np.array(st["mask"]).T)] = True
    want = capsule(s0, s1, BRUSH, got.shape)
    assert np.array_equal(got, want), f"mask differs from the stroke in {int((got != want).sum())} pixels"
    # Run took its steps, the shown image is the session's result and differs from before
    assert st["n_steps"] == 3 and st["prepared"], st
    assert st["shown_is_result"], st
    assert st["shown_change"] > 0.5, st
    assert st["result_vs_reconstruction"] > 0, st
    assert "failed" not in st["status"] and st["status"].startswith("run:"), st["status"]
    assert (ARTIFACTS / "browser_editor.png").stat().st_size > 10_000
    print(f"browser test: {time.monotonic() - t0:.1f} s")
