"""Methods side by side in pictures: plot_methods, per-timestep previews, timestep marks on the loss plot."""
import numpy as np
import pytest
from matplotlib.figure import Figure

from dragnb import DragSession, viz
from dragnb.models import tiny_model

FAST = dict(lora_steps=1, lora_batch_size=1, n_inference_steps=8)


@pytest.fixture(scope="module")
def runs():
    m = tiny_model(seed=0)
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 40 + 4 * xx
    img[((xx - 10) ** 2 + (yy - 16) ** 2) < 25] = (250, 220, 10)
    out = {}
    for method in ("dragdiffusion", "gooddrag"):
        s = DragSession(m, img, config=m.default_config(method=method, rounds=2, **FAST))
        s.add_drag((10, 16), (22, 16))
        rec = viz.TimestepPreviews(s)
        s.run(max_steps=6, callback=rec, progress=False)
        out[method] = (s, rec)
    return out


def test_plot_methods_has_one_column_per_method_plus_the_input(runs):
    fig = viz.plot_methods({k: s for k, (s, _) in runs.items()})
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "input and drags" and titles[1].startswith("dragdiffusion: 6 steps")
    assert fig._repr_png_()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="sessions is empty"):
        viz.plot_methods({})


def test_timestep_previews_follow_the_methods_timesteps(runs):
    _, dd = runs["dragdiffusion"]
    _, gd = runs["gooddrag"]
    assert len(dd.frames) == 1                                  # one timestep
    assert [k[0] for k in sorted(gd.frames)] == [0, 1, 2, 3]   # 2 rounds x 1 update (tiny losses) per timestep
    fig = viz.plot_timestep_previews(gd.frames)
    assert len(fig.axes) == 4 and "t=" in fig.axes[1].get_title()


def test_loss_plot_marks_timestep_changes(runs):
    s, _ = runs["gooddrag"]
    fig = viz.plot_loss(s)
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]
    assert len(lines) == len({r.t_index for r in s.history}) - 1
