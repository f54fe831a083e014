"""dragnb.points and DragSession.spread_drag: more handle points on the handle's region, each moved alike."""
import numpy as np
import pytest


def _square_scene(size=64, side=24, at=(20, 20), colour=(200, 40, 40), bg=(30, 120, 200)):
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = bg
    x0, y0 = at
    img[y0:y0 + side, x0:x0 + side] = colour
    return img


def test_region_at_finds_the_connected_flat_region_and_stays_inside_within():
    from dragnb.points import region_at
    img = _square_scene()
    img[50:56, 50:56] = (200, 40, 40)                     # the same colour, not connected to the square
    r = region_at(img, (30, 30))
    assert r.sum() == 24 * 24 and r[20:44, 20:44].all() and not r[50:56, 50:56].any()
    within = np.zeros((64, 64), bool)
    within[:, :32] = True
    assert region_at(img, (30, 30), within=within).sum() == 24 * 12
    shaded = img.astype(int)
    shaded[20:44, 20:44, 0] += np.arange(24)[None, :] * 2  # a colour ramp across the square: a tight tolerance
    assert region_at(shaded.clip(0, 255).astype(np.uint8), (30, 30), tolerance=5).sum() < 24 * 24 // 2
    with pytest.raises(ValueError, match="outside the 64x64 image"):
        region_at(img, (70, 3))
    with pytest.raises(ValueError, match="tolerance=-1"):
        region_at(img, (30, 30), tolerance=-1)
    with pytest.raises(ValueError, match=r"within has shape \(3, 3\)"):
        region_at(img, (30, 30), within=np.ones((3, 3), bool))


def test_spread_puts_points_half_way_to_the_edge_each_moved_by_the_offset():
    from dragnb.points import spread
    img = _square_scene()                                   # square 20..43 in x and y
    pairs = spread(img, (31, 31), (37, 29))
    assert pairs[0] == ((31.0, 31.0), (37.0, 29.0)) and len(pairs) == 5
    assert {p[0] for p in pairs[1:]} == {(37.0, 31.0), (26.0, 31.0), (31.0, 37.0), (31.0, 26.0)}   # 12 px right, 11 left
    assert all((t[0] - h[0], t[1] - h[1]) == (6.0, -2.0) for h, t in pairs)
    assert len(spread(img, (31, 31), (37, 29), n=3)) == 3 and spread(img, (31, 31), (37, 29), n=1) == pairs[:1]
    small = _square_scene(side=5, at=(30, 30))
    assert len(spread(small, (32, 32), (40, 32))) == 1        # under MIN_REACH pixels to every edge: no more points
    edge = spread(img, (31, 31), (58, 31))                    # the rightmost point's target would leave the image
    assert (37.0, 31.0) not in {p[0] for p in edge} and len(edge) == 4
    with pytest.raises(ValueError, match="n=6"):
        spread(img, (31, 31), (37, 29), n=6)


def test_session_spread_drag_adds_the_points_and_resets_the_drag():
    from dragnb import DragSession
    from dragnb.models import tiny_model
    from scenes import FAST
    m = tiny_model(seed=0)
    s = DragSession(m, _square_scene(), config=m.default_config(method="dragdiffusion", **{**FAST, "lora_steps": 0}))
    with pytest.raises(ValueError, match="add one first"):
        s.spread_drag()
    s.add_drag((31, 31), (37, 29))
    s.step(1)
    added = s.spread_drag(0)
    assert added == [1, 2, 3, 4] and len(s.drags) == 5 and s.n_steps == 0
    assert all((t[0] - h[0], t[1] - h[1]) == (6.0, -2.0) for h, t in s.drags)
    s.set_mask(np.pad(np.ones((24, 40), bool), ((20, 20), (20, 4))))    # the mask bounds the region too
    s.clear_drags()
    s.add_drag((31, 31), (37, 29))
    assert s.spread_drag() == [1, 2, 3, 4]
    s.step(1)
    assert s.n_steps == 1 and len(s.handles) == 5
