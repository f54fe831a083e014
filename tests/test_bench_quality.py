"""benchmarks/bench_quality.py's multi-point variant: up to five handle points on the dragged shape."""
import math

import numpy as np
import pytest
from benchlib import load_benchmark


@pytest.fixture(scope="module")
def bq():
    return load_benchmark("bench_quality.py")


def test_handle_points_sit_on_the_shape_and_move_by_the_case_offset(bq):
    from dragnb.demo.world import sample_drag, shape_mask
    assert bq.SHORT["points5"] in bq.METHODS and bq.METHODS[bq.SHORT["points5"]] == {"_points": 5}
    counts = []
    for seed in range(10**9, 10**9 + 12):
        case = sample_drag(seed)
        assert bq.handle_points(case, 1) == [(case.handle, case.target)]
        drags = bq.handle_points(case, 5)
        counts.append(len(drags))
        inside = shape_mask(case.scene, case.index)
        assert drags[0] == (case.handle, case.target) and 1 <= len(drags) <= 5
        for (hx, hy), (tx, ty) in drags:
            assert inside[int(hy), int(hx)], (seed, hx, hy)
            assert (tx - hx, ty - hy) == case.offset
        for (a, _), (b, _) in zip(drags[:1] * len(drags), drags[1:]):
            assert math.dist(a, b) >= 2                      # clear of the centroid's grid cell
    assert max(counts) == 5 and min(counts) < 5                  # large shapes get all four, small ones fewer
    with pytest.raises(ValueError, match="_points=3"):
        bq.handle_points(sample_drag(10**9), 3)


def test_run_methods_sets_the_variant_s_drags_on_one_session(bq, monkeypatch):
    from dragnb import DragSession, load_model
    from dragnb.demo.world import sample_drag
    case = next(c for c in map(sample_drag, range(10**9, 10**9 + 12)) if len(bq.handle_points(c, 5)) == 5)
    seen = []
    real = DragSession.set_drags

    def recording(self, drags):
        real(self, drags)
        seen.append((id(self), len(self.drags)))
    monkeypatch.setattr(DragSession, "set_drags", recording)
    quick = dict(lora_steps=0, drag_steps=2, method="dragdiffusion")
    res = bq.run_methods(load_model("demo"), case, [quick, {**quick, "_points": 5}, quick])
    assert len(res) == 3 and all(isinstance(img, np.ndarray) and img.shape == (64, 64, 3) for img, _, _ in res)
    assert [n for _, n in seen] == [1, 5, 1] and len({i for i, _ in seen}) == 1     # one session, its drags reset


def test_a_fresh_case_set_starts_at_a_held_out_seed(bq):
    with pytest.raises(ValueError, match="--first-seed 5 is a training seed"):
        bq.main(["--first-seed", "5", "--quick"])
    assert "feature_block 1 (the 8x8 attention block)" in bq.METHODS and bq.SHORT["fb1"] in bq.METHODS
