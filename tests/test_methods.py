"""Drag methods side by side: GoodDrag's invariants and the add-ons (restricted tracking, warp, auto mask, conv LoRA)
on the tiny model; rewind, save/load and stop/resume bit-exact under "gooddrag" as under "dragdiffusion"."""
import threading

import numpy as np
import pytest
import torch

from dragnb import DragSession
from dragnb import render
from dragnb.coords import drag_path_mask
from dragnb.drag import track_points, warp_latent
from dragnb.methods import GoodDrag
from dragnb.models import tiny_model
from scenes import disc_scene as scene

FAST = dict(lora_steps=2, lora_batch_size=1, n_inference_steps=10)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def gd(model, **cfg):
    s = DragSession(model, scene(), prompt="a disc", config=model.default_config(method="gooddrag", **{**FAST, **cfg}))
    s.add_drag((10, 16), (22, 16))
    return s


def test_default_config_takes_the_methods_defaults_scaled_to_the_grid(model):
    c = model.default_config(method="gooddrag")
    assert (c.inversion_strength, c.drag_lr, c.drag_timesteps, c.rounds, c.updates_per_round) == (0.75, 0.02, 7, 10, 3)
    assert c.r_m == 1 and c.r_p == 1 and c.beta == 1.0            # tiny: a 16-cell grid, GoodDrag's 4/12/4 of 256
    big = GoodDrag.defaults(256)
    assert (big["r_m"], big["r_p"], big["beta"]) == (4, 12, 4.0)
    assert model.default_config(method="gooddrag", lam=0.5).lam == 0.5                  # changes win
    assert model.default_config().method == "dragdiffusion" and model.default_config().drag_lr == 0.01


def test_reference_trajectory_without_a_drag_is_plain_denoising(model):
    s = gd(model)
    ref = s.cache.extract_features(s.spec)
    T = s.config.drag_timesteps
    assert len(ref.ts) == T and len(ref.latents) == T + 1
    lora_state = s.cache.train_lora(s.spec).state
    cond = model.encode_prompt(s.prompt)
    from_T = render.denoise(model, cond, lora_state, s.config, ref.latents[T], ref.latents[T], T, mutual=False)
    assert np.array_equal(np.asarray(render.to_pil(from_T, s.size)), np.asarray(s.reconstruction()))


def test_supervision_reference_is_the_original_handles_patch_at_the_same_timestep(model):
    s = gd(model)
    recs = s.run(max_steps=12, progress=False)
    ref = s.cache.extract_features(s.spec)
    assert [r.t_index for r in recs][:10] == [0] * 10 and recs[10].t_index == 1     # 10 rounds at t_0 on tiny
    assert recs[0].timestep == ref.ts[0] and recs[10].timestep == ref.ts[1]
    # the loss reads the reference at the ORIGINAL handle: moving the current handle does not change its source
    m, c = s.method, s.config
    feat = ref.feats[1].clone().requires_grad_(True)
    h0, t = torch.tensor([[8.0, 5.0]]), torch.tensor([[8.0, 11.0]])
    a = m.motion_loss(c, feat, ref.at(1), h0, torch.tensor([[8.0, 7.0]]), t)
    from dragnb.drag import sample_patch
    want = 4 * torch.nn.functional.l1_loss(sample_patch(ref.feats[1], h0[0], 1), sample_patch(feat, torch.tensor([8.0, 8.0]), 1))
    assert torch.allclose(a, want)
    assert s.cache.counters["feature_extractions"] == 1                           # the reference never recomputes


def test_restricted_tracking_never_picks_a_farther_candidate():
    feat0 = torch.zeros(1, 2, 12, 12)
    feat0[0, :, 6, 6] = 1.0                      # the original handle's feature
    cur = torch.zeros(1, 2, 12, 12)
    cur[0, :, 6, 3] = 1.0                        # the best match lies BEHIND the handle (target to the right)
    h0, h, t = torch.tensor([[6.0, 6.0]]), torch.tensor([[6.0, 5.0]]), torch.tensor([[6.0, 11.0]])
    free = track_points(feat0, cur, h0, h, r_p=3)
    assert free.tolist() == [[6.0, 3.0]]
    held = track_points(feat0, cur, h0, h, r_p=3, targets_rc=t)
    assert (held - t).norm() <= (h - t).norm() + 1e-6


def test_warp_moves_content_inside_the_mask_only():
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, 4:12] = 1.0
    out = warp_latent(z, [(8.0, 5.0)], [(8.0, 11.0)], 0.5, mask)
    assert torch.equal(out[..., mask[0, 0] == 0], z[..., mask[0, 0] == 0])     # outside: bit-identical
    assert torch.allclose(out[0, :, 8, 8], z[0, :, 8, 5])                      # h + 0.5(t - h) now holds h's content
    assert torch.equal(warp_latent(z, [(8.0, 5.0)], [(8.0, 11.0)], 0.0), z)


def test_auto_mask_covers_the_drag_paths():
    m = drag_path_mask((32, 32), [((10, 16), (22, 16))], min_half_width=2)
    assert m[16, 10] and m[16, 22] and m[16, 16] and not m[2, 2] and not m[16, 30]


@pytest.mark.parametrize("addon", [dict(restrict_tracking=True), dict(warp_init=0.5), dict(auto_mask=True),
                                   dict(lora_targets="attention+conv")])
@pytest.mark.parametrize("method", ["dragdiffusion", "gooddrag"])
def test_addons_run_with_either_method(model, method, addon):
    s = DragSession(model, scene(), config=model.default_config(method=method, drag_steps=4, **{**FAST, **addon}))
    s.add_drag((10, 16), (22, 16))
    recs = s.run(max_steps=4, progress=False)
    assert len(recs) == 4 and all(np.isfinite(r.loss) for r in recs)
    if addon.get("warp_init"):
        assert not torch.equal(s.latent_at(0), s.cache.invert(s.spec).zt)         # started from the warped latent
    if addon.get("auto_mask"):
        assert recs[-1].mask_loss > 0                                            # a mask exists without painting
    assert s.result().size == (32, 32)


def test_conv_lora_adapts_the_resnets(model):
    s = DragSession(model, scene(), config=model.default_config(lora_targets="attention+conv", **FAST))
    state = s.cache.train_lora(s.spec).state
    assert any(".conv1." in k for k in state) and any("to_q" in k for k in state)


@pytest.mark.parametrize("method", ["dragdiffusion", "gooddrag"])
def test_rewind_save_load_stop_resume_are_bit_exact(model, tmp_path, method):
    def fresh():
        s = DragSession(model, scene(), config=model.default_config(method=method, snapshot_every=3, **FAST))
        s.add_drag((10, 16), (22, 16))
        return s
    ref = fresh()
    want = ref.run(max_steps=14, progress=False)
    s = fresh()
    s.step(9)
    s.save(tmp_path / "e.dragnb")
    s.rewind(4)
    got = s.step(5)
    assert [r.loss for r in got] == [r.loss for r in want[5:10]]
    s2 = DragSession.load(tmp_path / "e.dragnb", model)
    assert [r.loss for r in s2.step(5)] == [r.loss for r in want[9:14]]
    assert torch.equal(s2.current_latent(), ref.current_latent())
    # stop from another thread, then resume
    s3 = fresh()

    def cb(rec):
        if rec.step == 3:
            s3.stop()
        return True
    th = threading.Thread(target=s3.run, kwargs=dict(max_steps=14, callback=cb, progress=False))
    th.start(); th.join(60)
    s3.run(max_steps=14 - s3.n_steps, progress=False)
    assert [r.loss for r in s3.history] == [r.loss for r in want]

