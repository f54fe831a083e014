"""The shape world (dragnb.demo.world): deterministic, within its spec, ground truth consistent."""
import math

import numpy as np
import pytest

from dragnb.demo import world as W


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean() + 0.5, ys.mean() + 0.5      # pixel centres at +0.5


def test_generator_is_deterministic():
    a, b = W.random_scene(123), W.random_scene(123)
    assert a == b
    assert np.array_equal(W.render(a), W.render(b))
    assert W.random_scene(124) != a
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    assert np.array_equal(W.random_batch(r1, 4), W.random_batch(r2, 4))


@pytest.mark.parametrize("seed", range(40))
def test_scenes_within_spec(seed):
    sc = W.random_scene(seed)
    img = W.render(sc)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert 1 <= len(sc.shapes) <= 3
    for sh in sc.shapes:
        assert sh.kind in W.KINDS
        assert 0.15 * 64 <= sh.size <= 0.35 * 64
        assert all(0 <= c <= 255 for c in sh.color)
        r = W._bound_radius(sh.kind, sh.size)
        assert r <= sh.cx <= 64 - r and r <= sh.cy <= 64 - r          # fully inside the image


def test_flat_shape_colour_and_background():
    sc = W.random_scene(3)
    img = W.render(sc)
    top = len(sc.shapes) - 1
    m = W.shape_mask(sc, top)
    # interior pixels (away from anti-aliased edges) carry exactly the shape's colour
    inner = m & ~W.dilate(~m, 1)
    assert inner.sum() > 0
    assert np.all(img[inner] == np.array(sc.shapes[top].color))


def test_moved_shape_centroid_moves_by_offset():
    sc = W.random_scene(11)
    i = len(sc.shapes) - 1
    sh = sc.shapes[i]
    moved = W.move_shape(sc, i, (5, -3))
    assert moved.shapes[i].cx == sh.cx + 5 and moved.shapes[i].cy == sh.cy - 3
    # the top shape is never occluded: its rasterised centroid moves by the offset (within AA error)
    c0 = _centroid(W.shape_mask(sc, i))
    c1 = _centroid(W.shape_mask(moved, i))
    assert abs(c1[0] - c0[0] - 5) < 0.35 and abs(c1[1] - c0[1] + 3) < 0.35
    # the other shapes and the background are unchanged
    assert moved.shapes[:i] == sc.shapes[:i] and moved.bg0 == sc.bg0


def test_shape_mask_accounts_for_occlusion():
    sh = W.Shape("square", 32, 32, 20, 0.0, 1.0, (255, 0, 0))
    cover = W.Shape("square", 40, 32, 20, 0.0, 1.0, (0, 0, 255))
    sc = W.Scene(64, (sh, cover), (0, 0, 0), (0, 0, 0), 0.0)
    m0 = W.shape_mask(sc, 0)
    assert m0.sum() == 20 * 8           # columns 22..29 visible, 30..41 covered
    assert W.shape_mask(sc, 1).sum() == 400
    assert np.all(W.render(sc)[m0] == (255, 0, 0))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 10**9, 10**9 + 7])
def test_sample_drag_cases_valid(seed):
    c = W.sample_drag(seed)
    assert c.index == len(c.scene.shapes) - 1
    L = math.hypot(*c.offset)
    assert 0.06 * 64 <= L <= 0.25 * 64
    assert c.target == (c.handle[0] + c.offset[0], c.handle[1] + c.offset[1])
    sm = W.shape_mask(c.scene, c.index)
    hx, hy = c.handle
    assert sm[int(hy), int(hx)], "the handle lies on the shape"
    gm = W.shape_mask(c.gt_scene, c.index)
    assert gm[int(c.target[1]), int(c.target[0])], "the target lies on the moved shape"
    assert c.mask[sm].all() and c.mask[gm].all(), "the mask covers the shape at its start and end"
    assert c.mask.sum() < 64 * 64
    sh = c.gt_scene.shapes[c.index]
    r = W._bound_radius(sh.kind, sh.size)
    assert r - 0.5 <= sh.cx <= 64 - r + 0.5 and r - 0.5 <= sh.cy <= 64 - r + 0.5
    assert np.array_equal(c.gt_image, W.render(c.gt_scene))
    # outside the mask the ground truth equals the input (only the dragged shape changed)
    assert np.array_equal(c.image[~c.mask], c.gt_image[~c.mask])
    again = W.sample_drag(seed)
    assert again.offset == c.offset and np.array_equal(again.mask, c.mask)


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="size=3"):
        W.random_scene(0, size=3)
    with pytest.raises(ValueError, match="out of range"):
        W.move_shape(W.random_scene(0), 5, (1, 1))


def test_score_edit_baselines():
    c = W.sample_drag(10**9 + 3)
    gt = W.score_edit(c.gt_image, c)
    assert gt["dist"] < 0.5 and gt["iou"] > 0.9 and gt["bg_psnr"] == float("inf")
    un = W.score_edit(c.image, c)
    assert abs(un["dist"] - c.drag_length) < 0.5 and un["dist_frac"] > 0.9
    flat = np.broadcast_to(np.asarray(c.scene.bg0, np.uint8), c.image.shape).copy()
    assert W.score_edit(flat, c)["lost"]
    with pytest.raises(ValueError, match="differs"):
        W.score_edit(c.image[:32], c)
