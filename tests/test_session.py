"""DragSession: caches and what invalidates them, stepping, rewind, save/load, stop, bad input."""
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from dragnb import DragDiverged, DragSession
from dragnb.models import tiny_model
from scenes import FAST, disc_scene as scene, disc_session as session


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def test_prepare_caches_and_invalidates_exactly(model):
    s = session(model)
    s.prepare(progress=False)
    assert s.counters == dict(lora_trainings=1, inversions=1, feature_extractions=1, denoisings=0)
    # drags, mask and drag-only settings retrain nothing
    s.add_drag((5, 5), (5, 20))
    m = np.zeros((32, 32), bool); m[:, 2:30] = True
    s.set_mask(m)
    s.configure(lam=0.5, r_p=2, drag_lr=0.02, mutual_attention=False)
    s.prepare(progress=False)
    assert s.counters["lora_trainings"] == 1 and s.counters["inversions"] == 1
    # inversion settings re-invert with the cached LoRA
    s.configure(inversion_strength=0.5)
    s.prepare(progress=False)
    assert s.counters["lora_trainings"] == 1 and s.counters["inversions"] == 2
    # feature settings re-extract only
    s.configure(sup_res_scale=0.25)
    s.prepare(progress=False)
    assert s.counters["inversions"] == 2 and s.counters["feature_extractions"] == 3
    # prompt and LoRA settings retrain; going back is a cache hit
    s.prompt = "another prompt"
    s.prepare(progress=False)
    assert s.counters["lora_trainings"] == 2
    s.prompt = "a disc"
    s.prepare(progress=False)
    assert s.counters["lora_trainings"] == 2
    s.configure(lora_rank=4)
    s.prepare(progress=False)
    assert s.counters["lora_trainings"] == 3


def test_step_tracks_handles_and_records_history(model):
    s = session(model)
    recs = s.step(3)
    assert [r.step for r in recs] == [1, 2, 3] and s.n_steps == 3
    assert all(np.isfinite(r.loss) and r.motion_loss > 0 for r in recs)
    assert len(s.handles) == 1 and len(s.history) == 3
    assert recs[1].has_snapshot and not recs[0].has_snapshot   # snapshot_every=2
    before = np.asarray(s.reconstruction()).astype(int)
    after = np.asarray(s.result()).astype(int)
    assert np.abs(after - before).mean() > 0.1     # the latent changed, so does the result


def test_run_stops_at_max_steps_and_on_callback(model):
    s = session(model)
    recs = s.run(max_steps=3, progress=False)
    assert len(recs) == 3 and s.n_steps == 3
    recs = s.run(callback=lambda r: r.step < 4, progress=False)
    assert s.n_steps == 4 and s.stop_reason == "stopped by the callback"
    s.run(progress=False)
    assert s.n_steps == 6    # drag_steps in all


def test_run_stops_when_handles_reach_targets(model):
    s = session(model, reach_distance=100.0)
    assert s.run(progress=False) == [] and s.reached
    assert s.stop_reason == "tracking puts every handle at its target"


def test_stop_from_another_thread_leaves_a_consistent_session(model):
    s = session(model, drag_steps=200)
    seen = []

    def cb(rec):
        seen.append(rec.step)
        if rec.step == 2:
            threading.Thread(target=s.stop).start()
        return True
    t = threading.Thread(target=s.run, kwargs=dict(callback=cb, progress=False))
    t.start(); t.join(60)
    assert not t.is_alive()
    assert 2 <= s.n_steps <= 4 and s.stop_reason == "stopped by stop()"
    n = s.n_steps
    s.run(max_steps=1, progress=False)       # resumes
    assert s.n_steps == n + 1


def test_rewind_is_exact(model):
    s = session(model)
    s.step(3)
    lat3 = s.current_latent()
    h3 = s.handles
    s.step(2)
    s.rewind(2)
    assert s.n_steps == 3 and torch.equal(s.current_latent(), lat3) and s.handles == h3
    again = s.step(2)
    ref = session(model)
    ref_recs = ref.step(5)
    assert [r.loss for r in again] == [r.loss for r in ref_recs[3:]]
    with pytest.raises(ValueError, match="cannot rewind 9 steps"):
        s.rewind(9)
    s.reset()
    assert s.n_steps == 0 and s.handles == [(10.0, 16.0)]


def test_save_load_continues_bit_exactly(model, tmp_path):
    s = session(model)
    m = np.zeros((32, 32), bool); m[8:24, 4:30] = True
    s.set_mask(m)
    s.step(3)
    p = tmp_path / "edit.dragnb"
    s.save(p)
    s2 = DragSession.load(p, model)
    assert s2.counters["lora_trainings"] == 1 and s2.is_prepared       # nothing retrained
    assert s2.drags == s.drags and np.array_equal(s2.mask, s.mask) and s2.n_steps == 3
    a, b = s.step(3), s2.step(3)
    assert [r.loss for r in a] == [r.loss for r in b]
    assert torch.equal(s.current_latent(), s2.current_latent()) and s.handles == s2.handles
    s2.rewind(4)
    assert s2.n_steps == 2
    assert s2.counters["lora_trainings"] == 1
    with open(p, "rb") as f:
        assert b"pickle" not in f.read(200)


def test_load_refuses_another_model_and_non_session_files(model, tmp_path):
    s = session(model); s.prepare(progress=False)
    p = tmp_path / "e.dragnb"; s.save(p)
    with pytest.raises(ValueError, match="was saved with model 'tiny-0'"):
        DragSession.load(p, tiny_model(seed=1))
    (tmp_path / "x.dragnb").write_bytes(b"hello")
    with pytest.raises(Exception):
        DragSession.load(tmp_path / "x.dragnb", model)


def test_generated_image_drags_without_inversion_error(model):
    s = DragSession.generate(model, "a red ball", seed=3, guidance_scale=3.0,
                             config=model.default_config(n_inference_steps=10, drag_steps=3))
    assert s.counters["inversions"] == 0
    rec = np.asarray(s.reconstruction())
    assert np.array_equal(rec, np.asarray(s.image))          # exact: the drag starts on the generation's own path
    assert s.counters["lora_trainings"] == 0 and s.counters["inversions"] == 0
    s.add_drag((8, 8), (20, 20))
    assert len(s.step(2)) == 2


def test_observers_see_changes(model):
    s = session(model)
    events = []
    s.observe(events.append)
    s.add_drag((3, 3), (3, 12))
    s.set_mask(None)
    s.configure(lam=0.2)
    s.step(1)
    assert events == ["drags", "mask", "config", "prepare", "step"]


# ----------------------------------------------------------------------------- bad input
def test_points_outside_the_image_and_degenerate_drags(model):
    s = session(model)
    with pytest.raises(ValueError, match=r"handle \(300, 20\) is outside the 32×32 image"):
        s.add_drag((300, 20), (10, 10))
    with pytest.raises(ValueError, match=r"target \(5, -1\) is outside"):
        s.add_drag((5, 5), (5, -1))
    with pytest.raises(ValueError, match="equals its handle"):
        s.add_drag((5, 5), (5, 5))
    with pytest.raises(ValueError, match="same feature cell"):
        s.add_drag((4, 5), (4.4, 5))
    with pytest.raises(TypeError, match="is not a point"):
        s.add_drag("here", (5, 5))
    assert s.drags == [((10.0, 16.0), (22.0, 16.0))]        # nothing lost


def test_run_without_drags(model):
    s = DragSession(model, scene(), config=model.default_config(**FAST))
    with pytest.raises(ValueError, match="no drags: add one with session.add_drag"):
        s.run()
    with pytest.raises(ValueError, match="no drags"):
        s.step()


def test_bad_masks(model):
    s = session(model)
    good = np.ones((32, 32), bool)
    s.set_mask(good)
    with pytest.raises(ValueError, match=r"mask of shape \(16, 16\) does not match the 32×32 image"):
        s.set_mask(np.ones((16, 16), bool))
    with pytest.raises(ValueError, match="no editable pixel"):
        s.set_mask(np.zeros((32, 32), np.uint8))
    assert s.mask.all()                                      # the good mask stayed
    s.set_mask(Image.fromarray(np.full((32, 32), 255, np.uint8), "L"))


def test_image_conversions_warn(model):
    rgba = np.dstack([scene(), np.full((32, 32), 128, np.uint8)])
    with pytest.warns(UserWarning, match="RGBA image converted to RGB"):
        DragSession(model, rgba)
    with pytest.warns(UserWarning, match="L image converted to RGB"):
        DragSession(model, scene()[..., 0])
    with pytest.warns(UserWarning, match="16-bit image converted"):
        s = DragSession(model, scene().astype(np.uint16) * 257)
    assert np.array_equal(np.asarray(s.image), scene())
    with pytest.raises(ValueError, match="image file 'nope.png' does not exist"):
        DragSession(model, "nope.png")
    with pytest.raises(TypeError, match="image of type int"):
        DragSession(model, 3)


def test_resize_policy_maps_points_both_ways(model):
    img = np.asarray(Image.fromarray(scene(32)).resize((44, 30)))
    with pytest.warns(UserWarning, match=r"image 44×30 is worked on at 48×32"):
        s = DragSession(model, img, config=model.default_config(**FAST))
    assert s.geometry.work_wh == (48, 32) and s.grid_size == (16, 24)
    s.add_drag((11, 15), (33, 15))
    assert s.image_to_grid((11, 15)) == (8, 6)
    assert s.handles == [(11.0, 15.0)]
    s.step(1)
    x, y = s.handles[0]
    assert abs(x - 11) <= 44 / 24 and abs(y - 15) <= 30 / 16   # back in the user's pixels
    assert s.result().size == (44, 30)


def test_config_errors_keep_state(model):
    s = session(model)
    with pytest.raises(ValueError, match=r"DragConfig.inversion_strength=1.5 is invalid"):
        s.configure(inversion_strength=1.5)
    with pytest.raises(TypeError, match="unknown DragConfig field"):
        s.configure(bogus=1)
    assert s.config.inversion_strength == 0.7


def test_nan_stops_and_keeps_the_last_good_state(model):
    s = session(model)
    s.step(2)
    good = s.current_latent()
    s.configure(drag_lr=1e38)      # the next update overflows to inf
    with pytest.raises(DragDiverged, match="step 3 produced a non-finite"):
        s.step(3)
    assert s.n_steps == 2 and torch.equal(s.current_latent(), good)
    s.configure(drag_lr=0.01)
    assert len(s.step(1)) == 1


def test_changing_the_prompt_restarts_the_optimisation_and_retrains(model):
    s = session(model)
    s.step(2)
    events = []
    s.observe(events.append)
    s.prompt = "something else"
    assert s.n_steps == 0 and events == ["config"]
    s.step(1)
    assert s.counters["lora_trainings"] == 2


def test_latent_at_zero_is_the_inverted_latent_before_any_step(model):
    s = session(model)
    assert s.latent_at(0) is None            # nothing prepared yet
    s.prepare(progress=False)
    z0 = s.latent_at(0)
    s.step(2)
    assert torch.equal(s.latent_at(0), z0) and s.latent_at(1) is None and s.latent_at(2) is not None


def test_render_latent_matches_result_and_reconstruction(model):
    s = session(model)
    s.step(2)
    z = s.current_latent()
    assert torch.equal(z, s.latent_at(2))               # FAST snapshots every 2 steps
    z += 1.0                                            # a copy: the session's latent is untouched
    assert torch.equal(s.current_latent(), s.latent_at(2))
    a, b = np.asarray(s.render_latent(s.current_latent())), np.asarray(s.result())
    assert np.array_equal(a, b)
    assert np.array_equal(np.asarray(s.render_latent(s.latent_at(0), mutual=False)), np.asarray(s.reconstruction()))
    with pytest.raises(ValueError, match="shape"):
        s.render_latent(torch.zeros(1, 2, 3, 3))
    assert s.n_steps == 2
