"""dragnb.demo.correspond: scene pairs with known correspondences, the InfoNCE correspondence loss, the tracking
error measure, and `train --corr-weight` (on the tiny architecture, both data paths, with a graph emulation)."""
import numpy as np
import pytest
import torch

from dragnb.demo.correspond import correspondence_loss, pair_batch, tracking_error
from dragnb.demo.world import sample_drag, shape_mask


def test_pairs_are_a_scene_and_its_moved_shape_with_true_points():
    rng = np.random.default_rng(3)
    seeds = np.random.default_rng(3).integers(0, 10**9, size=3)
    a, b, pa, pb = pair_batch(rng, 3, k_shape=10, k_bg=5)
    assert a.shape == b.shape == (3, 64, 64, 3) and a.dtype == np.uint8
    assert pa.shape == pb.shape == (3, 15, 2)
    for i, seed in enumerate(seeds):
        case = sample_drag(int(seed))
        assert case.seed < 10**9 and np.array_equal(a[i], case.image) and np.array_equal(b[i], case.gt_image)
        m_a, m_b = shape_mask(case.scene, case.index), shape_mask(case.gt_scene, case.index)
        xa, ya = (pa[i] - 0.5).astype(int).T
        xb, yb = (pb[i] - 0.5).astype(int).T
        assert np.allclose(pb[i, :10] - pa[i, :10], case.offset)              # shape points move with the shape
        assert m_a[ya[:10], xa[:10]].all() and m_b[yb[:10], xb[:10]].all()
        assert np.array_equal(pa[i, 10:], pb[i, 10:])                         # background points stay
        assert not (m_a | m_b)[ya[10:], xa[10:]].any()
        assert (a[i][ya[10:], xa[10:]] == b[i][yb[10:], xb[10:]]).all()
    with pytest.raises(ValueError, match="n=0"):
        pair_batch(rng, 0)


def test_loss_is_low_and_accurate_for_features_that_move_with_the_scene():
    """Features of the second scene = the first's shifted by the drag: every point's nearest cell is its true one
    (accuracy 1) and the loss is far below that of unrelated features, which score near chance."""
    g = torch.Generator().manual_seed(0)
    fa = torch.randn(2, 16, 32, 32, generator=g)
    dx, dy = 3, -2                                            # cells; pixels are twice that on a 64-px image
    fb = torch.roll(fa, shifts=(dy, dx), dims=(2, 3))
    pts_a = (torch.randint(4, 28, (2, 12, 2), generator=g).float() + 0.5) * 2
    pts_b = pts_a + torch.tensor([2.0 * dx, 2.0 * dy])
    good, acc = correspondence_loss(fa, fb, pts_a, pts_b)
    bad, acc_bad = correspondence_loss(fa, torch.randn(2, 16, 32, 32, generator=g), pts_a, pts_b)
    assert float(acc) == 1.0 and float(acc_bad) < 0.2
    assert float(good) < 0.05 * float(bad) and float(bad) > 0.5 * np.log(32 * 32)
    # it trains: gradient steps on random features of the second scene lower the loss
    fb2 = torch.randn(2, 16, 32, 32, generator=g, requires_grad=True)
    opt = torch.optim.Adam([fb2], lr=0.05)
    first = None
    for _ in range(30):
        loss, _ = correspondence_loss(fa, fb2, pts_a, pts_b)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad(); loss.backward(); opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_tracking_error_on_the_shipped_model_is_bounded_by_its_search():
    from dragnb import load_model
    model = load_model("demo", device="cpu")
    cases = [sample_drag(10**9 + 11), sample_drag(10**9 + 12)]
    rows = tracking_error(model, cases, search=2)
    assert [r["seed"] for r in rows] == [c.seed for c in cases]
    for r, c in zip(rows, cases):
        drag_cells = np.hypot(*c.offset) / 2                                 # 32-cell grid on a 64-px image
        assert abs(r["drag"] - drag_cells) < 1e-6
        assert 0 <= r["error"] <= 2 * (np.ceil(r["drag"]) + 2) * np.sqrt(2) + 1
        assert abs(r["handle_error"] - r["drag"]) <= 1.0                     # the handle rounded to a cell
    # another decoder block's features are another search (same cases, same drags)
    other = tracking_error(model, cases, search=2, feature_block=0)
    assert [r["drag"] for r in other] == [r["drag"] for r in rows]
    with pytest.raises(ValueError, match="feature_block=7"):
        tracking_error(model, cases[:1], feature_block=7)


def _tiny(out, *extra):
    return ["--out", str(out), "--arch", "tiny", "--batch", "6", "--warmup", "2", "--precision", "fp32", "--threads",
            "1", "--log-every", "2", "--figures", "none", "--corr-weight", "0.5", "--corr-pairs", "2", *extra]


def test_train_with_the_correspondence_loss_records_it_on_both_data_paths(tmp_path, monkeypatch):
    from dragnb import load_model
    from dragnb.demo import stepping, train
    recs = {}
    for data in ("numpy", "torch"):
        rec = recs[data] = train.main(_tiny(tmp_path / data, "--steps", "4", "--data", data))
        assert rec["steps"] == 4 and rec["corr_weight"] == 0.5 and rec["corr_pairs"] == 2
        assert rec["corr_t"] == [600, 760] and len(rec["corr_final"]) == 2
        assert 0 < rec["corr_final"][0] < 20 and 0 <= rec["corr_final"][1] <= 1
        assert load_model(tmp_path / data, device="cpu").codec_factor == 2
        assert rec["corr_block"] == 2                                   # DragDiffusion's block, as in the probe
    other = train.main(_tiny(tmp_path / "b1", "--steps", "4", "--data", "numpy", "--corr-block", "1"))
    assert other["corr_block"] == 1 and other["corr_final"] != recs["numpy"]["corr_final"]   # same data, other features
    # the update replayed from a (emulated) graph gives the eager run's weights
    from test_train import _emulated_capture
    monkeypatch.setattr(train, "_GRAPHS_ON_CPU", True)
    monkeypatch.setattr(stepping, "_capture", _emulated_capture)
    eager = train.main(_tiny(tmp_path / "e", "--steps", "5", "--data", "torch"))
    graph = train.main(_tiny(tmp_path / "g", "--steps", "5", "--data", "torch", "--cuda-graph"))
    assert graph["graph_replays"] == 2 and graph["graph_failure"] is None
    assert abs(graph["corr_final"][0] - eager["corr_final"][0]) < 1e-4
    for bad, match in ((["--corr-pairs", "4"], "pairs <= batch / 2"), (["--corr-t", "700", "600"], "LO < HI"),
                       (["--corr-weight", "-1"], "weight >= 0"), (["--corr-tau", "0"], "positive temperature"),
                       (["--corr-block", "9"], "--corr-block 9 is invalid")):
        with pytest.raises(ValueError, match=match):
            train.main(_tiny(tmp_path / "x", "--steps", "1", *bad))
