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
    out = subprocess.run([sys.executable, "-c", "import sys, dragnb.viz; print('matplotlib.pyplot' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    src = open(viz.__file__).read()
    assert "import ipywidgets" not in src and "import ipycanvas" not in src and "pyplot" not in src.split('"""', 2)[2]


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
    assert [t.get_text() for t in ax.texts if t.get_text()] == ["0", "1"]   # arrows are empty annotations


def test_animate_edit_writes_gif(tmp_path, image):
    from PIL import Image
    traj = np.stack([np.array([[5.0 + i, 5.0]]) for i in range(6)])
    path = tmp_path / "edit.gif"
    anim = viz.animate_edit(image, path, every=2, trajectories=traj, history=_hist(), targets=[(12, 5)],
                            frames={0: image, 4: image[::-1]})
    assert anim is not None
    with Image.open(path) as gif:
        assert gif.n_frames == 4                            # steps 0, 2, 4 and the last one, 5
