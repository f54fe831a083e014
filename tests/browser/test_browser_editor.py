"""End to end in a real browser: JupyterLab 4 and Notebook 7 + Debian's chromium + Playwright drive a `DragEditor`.

In JupyterLab the browser clicks a handle and a target on the canvas, takes the target back and forth with
Ctrl-Z / Ctrl-Y, switches to Mask with the M key, paints a stroke and presses Run; the test then reads the
session from the kernel side (kernel websocket API) and checks that it holds exactly those drags and that
mask, that steps were taken and that the result image changed. At 900 px and at full width (1400 px), in
the light and the dark theme, it checks that no button or label of the editor is cut (`scrollWidth` >
`clientWidth`) and that the status text is readable on its background (contrast >= 4.5). In Notebook 7 the
same editor appears, takes a click pair, and passes the same layout and contrast checks.
Screenshots go to artifacts/ (CI keeps them).

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
    pytestmark.append(pytest.mark.skip(reason=f"real-browser test: {_why}"))

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


CUT_LABELS_JS = """
() => {
  const root = document.querySelector('.dragnb-editor');
  if (!root) return ['no .dragnb-editor on the page'];
  const els = root.querySelectorAll('button, .widget-label, .widget-label-basic span, .widget-toggle-button');
  const cut = [];
  for (const e of els) {
    if (!e.offsetParent || !e.textContent.trim()) continue;          // hidden or empty
    // the text's own width against the box it has: a fraction of a pixel too little already draws "meth…"
    const cs = getComputedStyle(e), range = document.createRange();
    range.selectNodeContents(e);
    const text = range.getBoundingClientRect().width;
    const box = e.getBoundingClientRect().width - ['paddingLeft', 'paddingRight', 'borderLeftWidth',
      'borderRightWidth'].reduce((sum, k) => sum + (parseFloat(cs[k]) || 0), 0);
    if (e.scrollWidth > e.clientWidth + 1 || text > box + 0.05)
      cut.push(`${e.textContent.trim()} (text ${text.toFixed(2)} px in ${box.toFixed(2)} px)`);
  }
  return cut;
}
"""

CONTRAST_JS = """
() => {
  const el = document.querySelector('.dragnb-status span') || document.querySelector('.dragnb-status');
  const rgb = s => (s.match(/[0-9.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  let bg = null;
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) { bg = c; break; }
  }
  bg = bg || [255, 255, 255];
  const fg = rgb(getComputedStyle(el).color);
  const [a, b] = [lum(fg) + 0.05, lum(bg) + 0.05];
  return {ratio: Math.max(a, b) / Math.min(a, b), fg: getComputedStyle(el).color, bg: bg.join(','),
          text: el.textContent};
}
"""


def check_layout(page, name, widths=(1400, 900), height=1000):
    """At each width: no cut button or label in the editor; a screenshot. Returns {width: [cut labels]}."""
    cut = {}
    for w in widths:
        page.set_viewport_size({"width": w, "height": height})
        page.wait_for_timeout(700)
        page.locator(".dragnb-editor").first.scroll_into_view_if_needed()
        cut[w] = page.evaluate(CUT_LABELS_JS)
        page.screenshot(path=str(ARTIFACTS / f"{name}_{w}.png"), full_page=True)
    return cut


def open_settings(page):
    """Unfold the editor's Settings panel, so its labels are measured too."""
    title = page.locator(".dragnb-editor").get_by_text("Settings", exact=True).first
    title.click()
    page.wait_for_timeout(300)


def use_theme(page, dark: bool):
    """Settings > Theme > JupyterLab Dark/Light (the same menu in JupyterLab 4 and Notebook 7)."""
    name = "JupyterLab Dark" if dark else "JupyterLab Light"
    page.get_by_role("menuitem", name="Settings", exact=True).first.click()
    page.get_by_text("Theme", exact=True).first.hover()
    page.get_by_text(name, exact=True).first.click()
    page.wait_for_selector(f"body[data-jp-theme-light='{'false' if dark else 'true'}']", state="attached", timeout=30_000)
    page.wait_for_timeout(800)


def test_editor_in_jupyterlab(tmp_path):
    from playwright.sync_api import sync_playwright

    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "editor.ipynb", [SETUP.strip()])
    write_notebook(root / "editor7.ipynb", [SETUP.strip()])
    ARTIFACTS.mkdir(exist_ok=True)
    lab = JupyterLab(root, pythonpath=str(REPO))
    t0 = time.monotonic()
    layout, contrast = {}, {}
    with lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab.url}/lab/tree/editor.ipynb")
            page.locator(".jp-Notebook .jp-Cell .cm-content").first.click(timeout=60_000)
            kernel = lab.kernel_id("editor.ipynb")

            def state(k=None):
                return json.loads(lab.execute(k or kernel, STATE, timeout=60).strip().splitlines()[-1])

            def wait_for(pred, what, timeout=60.0, k=None):
                deadline = time.monotonic() + timeout
                while True:
                    st = state(k)
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

            # keyboard on the focused canvas: Ctrl-Z takes the target back, Ctrl-Y redoes it, M switches to Mask
            page.keyboard.press("Control+z")
            st = wait_for(lambda st: st["drags"] == [] and st["pending"] is not None, "Ctrl-Z to undo the target")
            page.keyboard.press("Control+y")
            st = wait_for(lambda st: len(st["drags"]) == 1 and st["pending"] is None, "Ctrl-Y to redo it")
            page.keyboard.press("m")
            st = wait_for(lambda st: st["mode"] == "mask", "the M key to switch to mask mode")
            keys_kept_cell = page.locator(".jp-Notebook .jp-Cell").first.evaluate(
                "e => e.classList.contains('jp-CodeCell')")      # JupyterLab did not take M (cell to Markdown)
            # Spread: four more pairs on the disc with the drag's offset; Undo takes them back in one step
            page.get_by_role("button", name="Spread", exact=True).click()
            spread_drags = wait_for(lambda st: len(st["drags"]) == 5, "the Spread button to add four points")["drags"]
            page.get_by_role("button", name="Undo", exact=True).click()
            wait_for(lambda st: len(st["drags"]) == 1, "Undo to take the spread points back")
            page.get_by_role("button", name="Points", exact=True).click()
            wait_for(lambda st: st["mode"] == "points", "the Points button")
            page.get_by_role("button", name="Mask", exact=True).click()
            wait_for(lambda st: st["mode"] == "mask", "the Mask button")
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

            # layout and contrast: light, then dark, at full width and at 900 px
            open_settings(page)
            layout["lab light"] = check_layout(page, "lab_light")
            contrast["lab light"] = page.evaluate(CONTRAST_JS)
            use_theme(page, dark=True)
            layout["lab dark"] = check_layout(page, "lab_dark")
            contrast["lab dark"] = page.evaluate(CONTRAST_JS)
            use_theme(page, dark=False)

            # Notebook 7: the same editor on its own page and kernel
            page7 = browser.new_page(viewport={"width": 1400, "height": 1000})
            page7.goto(f"{lab.url}/notebooks/editor7.ipynb")
            page7.locator(".jp-Notebook .jp-Cell .cm-content").first.click(timeout=60_000)
            kernel7 = lab.kernel_id("editor7.ipynb")
            lab.wait_idle(kernel7)
            canvas7 = run_cell_until(page7, lab, ".dragnb-input canvas")
            canvas7.scroll_into_view_if_needed()
            page7.wait_for_timeout(500)
            box = canvas7.bounding_box()
            k = box["width"] / SIZE
            page7.mouse.click(box["x"] + (HANDLE[0] + 0.5) * k, box["y"] + (HANDLE[1] + 0.5) * k)
            page7.mouse.click(box["x"] + (TARGET[0] + 0.5) * k, box["y"] + (TARGET[1] + 0.5) * k)
            st7 = wait_for(lambda st: len(st["drags"]) == 1, "the drag to reach the Notebook 7 kernel", k=kernel7)
            open_settings(page7)
            layout["notebook7 light"] = check_layout(page7, "nb7_light")
            contrast["notebook7 light"] = page7.evaluate(CONTRAST_JS)
            use_theme(page7, dark=True)
            layout["notebook7 dark"] = check_layout(page7, "nb7_dark", widths=(900,))
            contrast["notebook7 dark"] = page7.evaluate(CONTRAST_JS)
            use_theme(page7, dark=False)
        finally:
            browser.close()

    # exactly the clicked drag, in session and canvas
    assert len(st["drags"]) == 1 and st["pending"] is None
    (h, t), = st["drags"]
    assert spread_drags[0] == st["drags"][0]                  # Spread kept the clicked pair first ...
    for hh, tt in spread_drags:                               # ... and moved every added handle by its offset
        assert np.allclose(np.subtract(tt, hh), np.subtract(t, h), atol=1e-9)
        assert (hh[0] - 20) ** 2 + (hh[1] - 32) ** 2 < 64     # on the disc
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
    # keys went to the editor, not to JupyterLab's notebook shortcuts
    assert keys_kept_cell, "the M key turned the cell into Markdown: JupyterLab took the editor's shortcut"
    # no label cut at 900 px or full width, light or dark, JupyterLab or Notebook 7
    assert all(not cut for per_width in layout.values() for cut in per_width.values()), layout
    # the status line reads in both themes
    assert all(c["ratio"] >= 4.5 for c in contrast.values()), contrast
    assert len(st7["drags"]) == 1
    print(f"browser test: {time.monotonic() - t0:.1f} s; contrast "
          + ", ".join(f"{k} {v['ratio']:.1f}" for k, v in contrast.items()))
