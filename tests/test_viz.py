"""dragnb.viz on plain arrays (synthetic features with a known shift) and on a tiny real session,
and the FeatureExplorer gestures."""
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dragnb import viz


# ------------------------------------------------------------------------------------------
# synthetic data: current features = source features shifted 2 cells to the right
# ------------------------------------------------------------------------------------------
@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(8, 16, 16)).astype(np.float32)
    cur = np.roll(src, 2, axis=2)
    return src, cur


@pytest.fixture
def image():
    rng = np.random.default_rng(1)
    return (rng.random((32, 32, 3)) * 255).astype(np.uint8)


def _images(ax):
    return [im.get_array() for im in ax.get_images()]


def test_viz_imports_no_pyplot_and_no_jupyter():
    code = ("import sys, dragnb.viz, dragnb.drawing; "
            "print([m for m in ('matplotlib.pyplot', 'ipywidgets', 'ipycanvas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from pathlib import Path
    from dragnb import drawing
    files = sorted(Path(viz.__file__).parent.glob("*.py")) + [Path(drawing.__file__)]
    assert len(files) >= 3
    for f in files:
        src = f.read_text()
        for banned in ("import ipywidgets", "import ipycanvas", "import IPython", "matplotlib.pyplot", "import pyplot"):
            assert banned not in src, (f.name, banned)


def test_pca_rgb_uses_the_source_projection(feats):
    src, cur = feats
    a, b = viz.pca_rgb(src, cur)
    assert a.shape == b.shape == (16, 16, 3)
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.05
    # same projection for both maps: shifting the features shifts the colours exactly
    np.testing.assert_allclose(b, np.roll(a, 2, axis=1), atol=1e-5)
    # a map with different statistics is *not* re-normalised: constant features give one colour
    (c,) = viz.pca_rgb(src, np.zeros_like(src))[1:]
    assert np.ptp(c.reshape(-1, 3), axis=0).max() == 0


def test_pca_rgb_rejects_wrong_shapes(feats):
    src, _ = feats
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        viz.pca_rgb(src[0])
    with pytest.raises(ValueError, match="channels"):
        viz.pca_rgb(src, src[:4])


def test_similarity_map_is_negative_l1(feats):
    src, cur = feats
    sim = viz.similarity_map(cur, src[:, 5, 5])
    assert sim.shape == (16, 16)
    assert sim[5, 7] == 0.0 and np.unravel_index(np.argmax(sim), sim.shape) == (5, 7)
    assert sim[3, 3] == pytest.approx(-np.abs(cur[:, 3, 3] - src[:, 5, 5]).sum(), rel=1e-6)


def test_tracking_window_clips_to_grid():
    assert viz.tracking_window((5, 5), 3, (16, 16)) == (2, 9, 2, 9)
    assert viz.tracking_window((0.4, 15.2), 3, (16, 16)) == (0, 4, 12, 16)


@pytest.mark.parametrize("patch", [0, 2])
def test_tracking_map_is_the_trackers_own(patch):
    """viz draws dragnb.drag.tracking_distance, the map track_points takes the argmin of, patch included."""
    import torch
    from dragnb.drag import track_points, tracking_distance
    rng = np.random.default_rng(3)
    src = rng.normal(size=(6, 20, 24)).astype(np.float32)
    src[:, 8:13, 8:13] = 1.0                               # a flat square: patches see its edges
    cur = np.roll(src, (1, 2), axis=(1, 2)) + 0.05 * rng.normal(size=src.shape).astype(np.float32)
    f0, f1 = torch.from_numpy(src)[None], torch.from_numpy(cur)[None]
    for point, center in [((10, 10), (10, 11)), ((1, 22), (0, 23)), ((5, 5), (5, 5))]:
        box, dist = viz.tracking_map(src, cur, point, center, r_p=3, patch=patch)
        expected = tracking_distance(f0, f1, torch.tensor(point), torch.tensor(center), 3, patch)
        assert box == expected.box and dist.shape == (box[1] - box[0], box[3] - box[2])
        np.testing.assert_array_equal(dist, expected.dist.numpy())
        # its best cell is where track_points moves the handle, and the figure says so
        tracked = track_points(f0, f1, torch.tensor([point], dtype=torch.float32),
                               torch.tensor([center], dtype=torch.float32), 3, patch)[0]
        assert expected.best_rc() == (int(tracked[0]), int(tracked[1]))
        fig = viz.plot_similarity(src, current=cur, point_rc=point, center_rc=center, r_p=3, patch=patch)
        assert f"best cell ({int(tracked[0])}, {int(tracked[1])})" in fig.axes[1].get_title()
        np.testing.assert_array_equal(-_images(fig.axes[1])[0], dist)
        _, whole = viz.tracking_map(src, cur, point, center, patch=patch, whole_grid=True)
        np.testing.assert_array_equal(-_images(fig.axes[0])[0], whole)
        np.testing.assert_allclose(whole[box[0]:box[1], box[2]:box[3]], dist, rtol=1e-6)


def test_plot_features_arrays(feats, image):
    src, cur = feats
    fig = viz.plot_features(src, cur, image=image)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert _images(fig.axes[1])[0].shape == (16, 16, 3) and _images(fig.axes[0])[0].shape == (32, 32, 3)
    assert len(viz.plot_features(src).axes) == 1


def test_plot_similarity_arrays_marks_window_and_best_cell(feats):
    src, cur = feats
    fig = viz.plot_similarity(src, current=cur, point_rc=(5, 5), center_rc=(5, 6), target_rc=(5, 10), r_p=3)
    ax, axz = fig.axes[0], fig.axes[1]
    np.testing.assert_allclose(_images(ax)[0], viz.similarity_map(cur, src[:, 5, 5]))
    window = [p for p in ax.patches if isinstance(p, Rectangle)][0]
    assert (window.get_x(), window.get_y(), window.get_width(), window.get_height()) == (2.5, 1.5, 7, 7)
    assert "best cell (5, 7)" in axz.get_title()            # the shifted feature, found inside the window
    assert _images(axz)[0].shape == (7, 7)
    with pytest.raises(ValueError, match="point_rc"):
        viz.plot_similarity(src)


def test_plot_similarity_window_limits_tracking(feats):
    src, cur = feats
    cur = np.roll(src, 6, axis=2)                          # moved farther than r_p: tracking cannot find it
    fig = viz.plot_similarity(src, current=cur, point_rc=(5, 5), r_p=2)
    assert "best cell (5, 11)" not in fig.axes[1].get_title()
    assert np.unravel_index(np.argmax(_images(fig.axes[0])[0]), (16, 16)) == (5, 11)


def test_plot_trajectories_arrays(image):
    traj = np.stack([np.array([[5.0 + i, 5.0], [20.0, 20.0 - i]]) for i in range(6)])
    fig = viz.plot_trajectories(image, traj, [[12, 5], [20, 10]])
    lines = [l for l in fig.axes[0].get_lines() if l.get_linestyle() == "-"]
    assert len(lines) == 2
    np.testing.assert_allclose(lines[0].get_xydata(), traj[:, 0])
    with pytest.raises(ValueError, match="n_handles"):
        viz.plot_trajectories(image, traj[:, 0])


def _hist(n=5):
    return [dict(step=i + 1, loss=1.0 / (i + 1) + 0.01 * i, motion_loss=1.0 / (i + 1), mask_loss=0.01 * i,
                 handles=[(5.0 + i, 5.0)]) for i in range(n)]


def test_plot_loss_terms_apart():
    fig = viz.plot_loss(_hist())
    assert [a.get_title() for a in fig.axes] == ["total loss", "motion supervision", "mask term"]
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_ydata(), [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    np.testing.assert_allclose(fig.axes[2].get_lines()[0].get_ydata(), [0, 0.01, 0.02, 0.03, 0.04])
    assert len(viz.plot_loss([]).axes) == 3


def test_before_after_and_inversion_check(image):
    fig = viz.plot_before_after(image, image[::-1], drags=[((5, 5), (12, 5))], handles=[(11, 5)])
    assert len(fig.axes) == 2 and len(fig.axes[0].collections) >= 2
    other = np.clip(image.astype(int) + 5, 0, 255).astype(np.uint8)
    expected = viz.psnr(image, other)
    mse = np.mean((image.astype(float) - other.astype(float)) ** 2)
    assert expected == pytest.approx(10 * np.log10(255 ** 2 / mse))
    fig = viz.plot_inversion_check(image, other)
    assert f"{expected:.2f} dB" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="differ in size"):
        viz.psnr(image, image[:16])


def test_draw_drags_checks_lengths(image):
    fig = Figure()
    ax = fig.subplots()
    with pytest.raises(ValueError, match="same length"):
        viz.draw_drags(ax, [(1, 1), (2, 2)], [(3, 3)])
    viz.draw_drags(ax, [(1, 1), (2, 2)], [(3, 3), (4, 4)], current=[(1.5, 1), (2, 2.5)])
    assert [t.get_text() for t in ax.texts if t.get_text()] == ["1", "2"]   # arrows are empty annotations


def test_one_palette_and_numbering_for_every_drawer(image):
    """viz, the canvas, the explorer and the demo GIF draw drag i in DRAG_COLORS[i] labelled i + 1."""
    from matplotlib.colors import to_hex
    from PIL import Image, ImageDraw
    from dragnb import drawing
    from dragnb.demo.run import GIF_SCALE, _draw
    assert viz.DRAG_COLORS is drawing.DRAG_COLORS and len(set(drawing.DRAG_COLORS)) == len(drawing.DRAG_COLORS)
    assert [drawing.drag_label(i) for i in range(3)] == ["1", "2", "3"]
    fig = Figure()
    ax = fig.subplots()
    viz.draw_drags(ax, [(1, 1), (9, 9)], [(5, 1), (9, 3)])
    handles = ax.collections[0::2]                          # per pair: the handle's dots, then the target's ring
    assert [to_hex(c.get_facecolor()[0]) for c in handles] == list(drawing.DRAG_COLORS[:2])
    fig = viz.plot_similarity(np.ones((2, 8, 8), np.float32), 1, point_rc=(2, 2), target_rc=(2, 6))
    assert [t.get_text() for t in fig.axes[0].texts if t.get_text()] == ["2"]     # handle_index 1 is drag "2"
    # the demo GIF: the handle's dot in the drag's colour
    frame = _draw(Image.fromarray(image), [(20, 8)], [(20, 20)], [(8, 8)], "step 1")
    rgb = frame.getpixel((8 * GIF_SCALE, 8 * GIF_SCALE))
    assert "#%02x%02x%02x" % rgb == drawing.DRAG_COLORS[0]
    # pair_shapes: the arrow stops at the target ring and its head points at the target
    (s,) = drawing.pair_shapes([(0, 0)], [(20, 0)], [(4, 0)], radius=5, head=8)
    assert s.shaft == ((0.0, 0.0), (15.0, 0.0)) and s.head[0] == (15.0, 0.0) and s.head[1][0] == 7.0
    assert s.link == ((0.0, 0.0), (4.0, 0.0)) and s.cross is not None and s.label == "1"
    with pytest.raises(ValueError, match="same length"):
        drawing.pair_shapes([(0, 0)], [(1, 1), (2, 2)])


def test_as_rgb_array_is_the_one_image_coercion():
    from PIL import Image
    from dragnb.drawing import as_rgb_array
    a = np.zeros((4, 5, 3), np.uint8)
    a[0, 0] = (10, 20, 30)
    for x in (a, Image.fromarray(a), a.astype(np.float32) / 255, np.concatenate([a, np.full((4, 5, 1), 255, np.uint8)], -1)):
        out = as_rgb_array(x)
        assert out.dtype == np.uint8 and out.shape == (4, 5, 3) and tuple(out[0, 0]) == (10, 20, 30)
    assert as_rgb_array(a[..., 0]).shape == (4, 5, 3)
    with pytest.raises(ValueError, match=r"shape \(4, 5, 2\)"):
        as_rgb_array(np.zeros((4, 5, 2)))


def test_animate_edit_writes_gif(tmp_path, image):
    from PIL import Image
    traj = np.stack([np.array([[5.0 + i, 5.0]]) for i in range(6)])
    path = tmp_path / "edit.gif"
    anim = viz.animate_edit(image, path, every=2, trajectories=traj, history=_hist(), targets=[(12, 5)],
                            frames={0: image, 4: image[::-1]})
    assert anim is not None
    with Image.open(path) as gif:
        assert gif.n_frames == 4                            # steps 0, 2, 4 and the last one, 5


# ------------------------------------------------------------------------------------------
# a tiny real session: tiny model, 64×64 shape-world image, lora_steps=2, a few drag steps
# ------------------------------------------------------------------------------------------
N_STEPS = 3


@pytest.fixture(scope="module")
def session_and_frames():
    from dragnb import DragSession, tiny_model
    from dragnb.demo.world import sample_drag
    model = tiny_model(0)
    case = sample_drag(3)
    cfg = model.default_config(lora_steps=2, n_inference_steps=8, drag_steps=N_STEPS, snapshot_every=1)
    s = DragSession(model, case.image, config=cfg, mask=case.mask)
    s.add_drag(case.handle, case.target)
    s.prepare(progress=False)
    rec = viz.PreviewRecorder(s, every=1)
    s.run(max_steps=N_STEPS, callback=rec, progress=False)
    assert s.n_steps == N_STEPS, "the tiny drag reached its target early: pick a longer drag"
    return s, rec.frames


@pytest.fixture
def session(session_and_frames):
    return session_and_frames[0]


def test_session_plot_features(session):
    fig = viz.plot_features(session)
    assert [a.get_title() for a in fig.axes] == ["image", "source features (PCA)", f"current features (step {N_STEPS})"]
    gh, gw = session.grid_size
    assert _images(fig.axes[1])[0].shape == (gh, gw, 3) and _images(fig.axes[0])[0].shape == (64, 64, 3)
    np.testing.assert_allclose(_images(fig.axes[1])[0], viz.pca_rgb(session.features("source"))[0])


def test_session_plot_similarity_is_what_tracking_sees(session):
    import torch
    from dragnb.drag import track_points
    fig = viz.plot_similarity(session, handle_index=0)
    F0, F1 = session.features("source"), session.features("current")
    h0_rc = session.image_to_grid(session.drags[0][0])
    np.testing.assert_allclose(_images(fig.axes[0])[0], viz.similarity_map(F1, F0[:, h0_rc[0], h0_rc[1]]), rtol=1e-6)
    # the window's best cell is where the next tracking step will put the handle
    h_rc = session.image_to_grid(session.handles[0])
    tracked = track_points(F0[None], F1[None], torch.tensor([h0_rc], dtype=torch.float32),
                           torch.tensor([h_rc], dtype=torch.float32), session.config.r_p)[0]
    assert f"best cell ({int(tracked[0])}, {int(tracked[1])})" in fig.axes[1].get_title()
    window = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)][0]
    assert window.get_width() <= 2 * session.config.r_p + 1
    fig = viz.plot_similarity(session, point_xy=(10, 12))
    assert "point (10, 12)" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="out of range"):
        viz.plot_similarity(session, handle_index=3)


def test_session_plot_trajectories_and_loss(session):
    fig = viz.plot_trajectories(session)
    (path,) = [l for l in fig.axes[0].get_lines() if l.get_linestyle() == "-"]
    expected = [session.drags[0][0]] + [r.handles[0] for r in session.history]
    np.testing.assert_allclose(path.get_xydata(), expected)
    fig = viz.plot_loss(session)
    total, motion, mask = (a.get_lines()[0].get_ydata() for a in fig.axes)
    np.testing.assert_allclose(total, [r.loss for r in session.history], rtol=1e-6)
    np.testing.assert_allclose(total, motion + mask, rtol=1e-5)
    assert mask.max() > 0                                      # the session has a mask: the term is active


def test_session_before_after_and_inversion_check(session):
    fig = viz.plot_before_after(session)
    np.testing.assert_array_equal(_images(fig.axes[1])[0], np.asarray(session.result()))
    fig = viz.plot_inversion_check(session)
    value = viz.psnr(session.image, session.reconstruction())
    assert fig._suptitle.get_text() == f"inversion check: PSNR {value:.2f} dB"


def test_session_animation(tmp_path, session_and_frames):
    from PIL import Image
    s, frames = session_and_frames
    assert sorted(frames) == list(range(N_STEPS + 1))
    anim = viz.animate_edit(s, tmp_path / "edit.gif", frames=frames)
    assert anim is not None
    with Image.open(tmp_path / "edit.gif") as gif:
        assert gif.n_frames == N_STEPS + 1 and gif.size[0] > 64


# ------------------------------------------------------------------------------------------
# FeatureExplorer gestures (no browser: the handlers are called directly)
# ------------------------------------------------------------------------------------------
def test_explorer_click_shows_similarity_of_the_point(session_and_frames):
    from dragnb.widgets import FeatureExplorer
    s, frames = session_and_frames
    ex = FeatureExplorer(s, frames=frames)
    assert ex.last_figure is None and ex.step == N_STEPS and ex.step_slider.max == N_STEPS
    picked = []
    ex.on_click(lambda x, y: picked.append((x, y)))
    ex.handle_mouse_down(40 * ex.scale, 24 * ex.scale)         # canvas pixels -> image pixels, as a click
    assert ex.point_xy == (40.0, 24.0) and ex.sim_image.value[:4] == b"\x89PNG" and picked == [(40.0, 24.0)]
    r, c = s.image_to_grid((40, 24))
    np.testing.assert_allclose(_images(ex.last_figure.axes[0])[0],
                               viz.similarity_map(s.features("current"), s.features("source")[:, r, c]), rtol=1e-6)
    ex.handle_features_change()
    ex.features_toggle.value = "source"                        # matching in the source map: peak on the point
    sim = _images(ex.last_figure.axes[0])[0]
    assert sim[r, c] == 0.0
    with pytest.raises(ValueError, match="outside the 64×64 image"):
        ex.handle_click(70, 3)
    with pytest.raises(TypeError, match="handle_click"):                 # on_click registers callbacks
        ex.on_click(30, 30)
    ex.close()


def test_explorer_scrubs_history_and_follows_the_session(session_and_frames, monkeypatch):
    from dragnb.widgets import FeatureExplorer, explorer
    s, frames = session_and_frames
    drawn = []
    monkeypatch.setattr(explorer, "draw_pairs", lambda layer, shapes: drawn.append(shapes))
    ex = FeatureExplorer(s, frames=frames)
    assert ex.query_select.options[1] == ("drag 1", 0)        # drags are counted from 1, as everywhere
    (shape,) = drawn[-1]
    assert (shape.color, shape.label, shape.current) == (viz.DRAG_COLORS[0], "1", None)
    ex.query_select.value = 0                                  # drag 0: window at the handle of the scrubbed step
    ex.step_slider.value = 1
    h1 = s.history[0].handles[0]
    assert ex.handles_at(1) == [h1] and ex.handles_at(0) == [s.drags[0][0]]
    if tuple(h1) != tuple(s.drags[0][0]):                     # the handle at the scrubbed step: a cross
        assert drawn[-1][0].current == (h1[0] * ex.scale, h1[1] * ex.scale)
    assert "loss" in ex.info.value and f"{s.history[0].loss:.4g}" in ex.info.value
    window = [p for p in ex.last_figure.axes[0].patches if isinstance(p, Rectangle)][0]
    r, c = s.image_to_grid(h1)
    r0, _, c0, _ = viz.tracking_window((r, c), s.config.r_p, s.grid_size)
    assert (window.get_x(), window.get_y()) == (c0 - 0.5, r0 - 0.5)
    np.testing.assert_array_equal(ex._backdrop(), np.asarray(frames[1]))
    # the session moves on: the slider follows when it was at the end, stays when the user scrubbed
    ex.step_slider.value = N_STEPS
    s.rewind(1)
    assert ex.step_slider.max == N_STEPS - 1 and ex.step == N_STEPS - 1
    s.step(1)
    assert ex.step_slider.max == N_STEPS and ex.step == N_STEPS
    ex.close()


def test_figures_display_without_pyplot():
    fig = viz.plot_loss(_hist())
    assert isinstance(fig, Figure) and fig._repr_png_()[:4] == b"\x89PNG"


def test_explorer_follow_off_skips_redraws(session_and_frames):
    from dragnb.widgets import FeatureExplorer
    s, frames = session_and_frames
    ex = FeatureExplorer(s, frames=frames)
    ex.handle_click(30, 30)
    ex.follow.value = False
    drawn = ex.last_figure
    s.rewind(1)                                                 # slider follows, figures are not redrawn
    assert ex.step_slider.max == N_STEPS - 1 and ex.last_figure is drawn
    s.step(1)
    assert ex.step_slider.max == N_STEPS and ex.last_figure is drawn
    ex.handle_step_change()                                     # a user gesture redraws
    assert ex.last_figure is not drawn
    ex.close()
