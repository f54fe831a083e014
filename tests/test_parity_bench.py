"""benchmarks/parity_official.py: the adapters' own logic on a stand-in for the official drag loop (no official
code needed), and, where a DragDiffusion checkout is named by DRAGNB_OFFICIAL_DIR, a short run against it."""
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from benchlib import load_benchmark

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def po():
    return load_benchmark("parity_official.py")


def _cfg_args(po, size=64):
    from dragnb import DragConfig
    return po.official_args(DragConfig(), "p", (size, size), 5)


def test_official_points_land_where_dragnb_puts_them(po):
    from dragnb import DragSession, tiny_model
    s = DragSession(tiny_model(), po.scene(64))
    args = _cfg_args(po)
    pts = [(22.4, 32.0), (38.4, 32.0), (5.1, 60.9), (62.0, 0.0), (17.0, 33.0), (47.0, 15.0)]
    handles, targets = po.official_points(pts, (64, 64), args)
    official = [tuple(int(v) for v in p) for pair in zip(handles, targets) for p in pair]
    assert official == [s.image_to_grid(p) for p in pts]
    # kept on purpose: on the last pixel the official rounding lands one cell past the grid (31.5 -> 32, which its
    # F0[:, :, r, c] indexing cannot take); dragnb clamps to the last cell
    h, _ = po.official_points([(63.0, 0.0), (10.0, 10.0)], (64, 64), args)
    assert int(h[0][1]) == 32 and s.image_to_grid((63.0, 0.0)) == (0, 31)


def test_official_mask_and_uint8_conversions(po):
    args = _cfg_args(po)
    _, _, mask = po.drag_case(64)
    m = po.official_mask(mask, args, "cpu")
    assert m.shape == (1, 1, 32, 32) and set(m.unique().tolist()) == {0.0, 1.0}
    img = torch.tensor([0.0, 0.5, 0.999, 1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert po.official_uint8(img)[..., 0].ravel().tolist() == [0, 127, 254, 255]   # truncation, as run_drag
    assert po.psnr(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)) == float("inf")


def test_mask_grid_check_counts_disagreeing_cells(po):
    from dragnb import DragSession, tiny_model
    s = DragSession(tiny_model(), po.scene(64))
    bad, total = po.mask_grid_check(s, 64, _cfg_args(po))
    assert (bad, total) == (0, 32 * 32)        # dragnb's mask_to_grid follows the official nearest rule
    for size in (48, 64):                      # a random mask, cell for cell (PIL's centre rule fails this)
        args = po.official_args(__import__("dragnb").DragConfig(), "p", (size, size), 5)
        s = DragSession(tiny_model(), po.scene(size))
        rnd = np.random.default_rng(size).random((size, size)) > 0.5
        ours = s.geometry.mask_to_grid(rnd)
        theirs = po.official_mask(rnd, args, "cpu")[0, 0].numpy()
        assert ours.shape == theirs.shape and (ours == theirs).all()


def test_official_commit_prefers_the_commit_file(po, tmp_path):
    d = tmp_path / "DragDiffusion"
    d.mkdir()
    assert po.official_commit(str(d)) == "unknown"
    (d / "COMMIT").write_text("ebe659a9c5b722f25d9690e74d813fca96531f97\n")
    assert po.official_commit(str(d)) == "ebe659a9c5b722f25d9690e74d813fca96531f97"
    # a folder inside another repository (this one's ignored .official/) must not report that repository's HEAD
    inner = os.path.join(HERE, "..", "dragnb")
    assert po.official_commit(inner) == "unknown"


def test_drag_loop_taps_on_a_stand_in(po):
    """A stand-in with the official loop's call pattern: F0 call, then per step forward, step, tracking (from the
    second step), a printed total; the taps must give per-step latents, handles and loss terms."""
    calls = []

    def point_tracking(F0, F1, handle_points, handle_points_init, args):
        for h in handle_points:
            h[1] += 1
        return handle_points

    def drag_diffusion_update(model, init_code, emb, t, handle_points, target_points, mask, args):
        with torch.no_grad():
            out, _ = model.forward_unet_features(init_code, t, emb)
            model.step(out, t, init_code)
        init_code.requires_grad_(True)
        opt = torch.optim.SGD([init_code], lr=0.5)
        for i in range(args.n_pix_step):
            out, _ = model.forward_unet_features(init_code, t, emb)
            x_prev, _ = model.step(out, t, init_code)
            if i:
                handle_points = stand_in.point_tracking(None, None, handle_points, None, args)
            loss = 1.0 + (x_prev - 0).abs().sum() * 0  # a total with a known value
            loss = loss + init_code.sum()
            print("loss total=%f" % loss.item())
            loss.backward()
            opt.step()
            opt.zero_grad()
            calls.append(i)
        return init_code

    stand_in = SimpleNamespace(point_tracking=point_tracking, drag_diffusion_update=drag_diffusion_update)
    off = SimpleNamespace(drag=stand_in)
    tap = po._Tap(lambda z, t, e, **kw: (z * 2, None), lambda o, t, x: (x + 0.25, None))
    z0 = torch.zeros(1, 1, 2, 2)
    args = SimpleNamespace(n_pix_step=3, lam=0.1)
    mask = torch.ones(1, 1, 2, 2)
    z, recs = po.run_drag_loop(off, tap, z0, None, 1, [torch.tensor([1.0, 1.0])], [torch.tensor([1.0, 9.0])], mask, args)
    assert stand_in.point_tracking is point_tracking            # the tap is removed again
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert [r["handles_rc"] for r in recs] == [[[1.0, 1.0]], [[1.0, 2.0]], [[1.0, 3.0]]]
    # SGD on sum(): each step subtracts 0.5 from every element; latents after steps 1..3
    assert [float(r["latent"][0, 0, 0, 0]) for r in recs] == [-0.5, -1.0, -1.5]
    assert torch.equal(recs[-1]["latent"], z.float())
    # total = 1 + sum(latent before the step); mask all-editable -> mask term 0, motion = total
    assert [round(r["loss"], 6) for r in recs] == [1.0, -1.0, -3.0]
    assert all(r["mask_loss"] == 0.0 and r["motion_loss"] == r["loss"] for r in recs)
    assert len(tap.latents) == 4 and len(tap.x_prevs) == 4      # the F0 call + one per step


from test_graphs import emulated  # noqa: E402,F401  (the stand-in for torch's CUDA graph capture, a fixture)

OFFICIAL = os.environ.get("DRAGNB_OFFICIAL_DIR", "")


@pytest.mark.skipif(not os.path.isfile(os.path.join(OFFICIAL, "utils", "drag_utils.py")),
                    reason="no DragDiffusion checkout: set DRAGNB_OFFICIAL_DIR (benchmarks/PARITY.md)")
def test_short_parity_run_against_the_official_code(po, capsys):
    pytest.importorskip("einops")
    res = po.main(["--official", OFFICIAL, "--steps", "4", "--lora-steps", "2", "--quiet"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(r"parity: max \|dlatent\| = \S+ over 4 steps, handles identical: yes, final PSNR = \S+ dB", line)
    assert res["summary"]["max_dlatent"] <= 1e-5
    assert res["stages"]["inversion_z_t"] <= 1e-5 and res["stages"]["whole_edit_image_max_levels_same_rounding"] <= 1


@pytest.mark.skipif(not os.path.isfile(os.path.join(OFFICIAL, "utils", "drag_utils.py")),
                    reason="no DragDiffusion checkout: set DRAGNB_OFFICIAL_DIR (benchmarks/PARITY.md)")
def test_graphed_parity_run_under_the_stand_in(po, emulated, monkeypatch, capsys):
    """The whole side-by-side run with dragnb's CUDA graphs on, under the CPU stand-in for torch's capture: every
    stage equals the official code's in float32, the graphed inversion and its eager rerun included (the GPU runs'
    inversion gap is then not the graphs' logic), and the eager-rerun line is printed."""
    pytest.importorskip("einops")
    import dragnb.bench
    from dragnb import set_speed
    load = dragnb.bench.model_by_name

    def graphed(name, device=None, dtype=None):
        m = load(name, device, dtype)
        set_speed(m, cuda_graph=True)
        emulated.unet = m.unet
        return m
    monkeypatch.setattr(dragnb.bench, "model_by_name", graphed)
    res = po.main(["--official", OFFICIAL, "--steps", "4", "--lora-steps", "2", "--quiet"])
    out = capsys.readouterr().out
    st = res["stages"]
    assert st["inversion_z_t"] <= 1e-5 and st["inversion_z_t_eager"] <= 1e-5 and st["inversion_graphed_vs_eager"] == 0
    cfg = res["config"]
    assert len(res["inversion_per_step_eager_vs_official"]) == round(cfg["n_inference_steps"] *
                                                                     cfg["inversion_strength"]) + 1
    assert res["summary"]["max_dlatent"] <= 1e-5 and res["summary"]["graphed_vs_eager_max_dlatent"] == 0
    assert "dragnb eager (graphs off, same session)" in out and emulated.no_grad_captures >= 1


def test_eager_rerun_of_a_graphed_session(po, emulated):
    """With CUDA graphs on, parity_sd reruns dragnb's drag loop eagerly in the same session: the same z_t and LoRA,
    the graphs neither used nor dropped, and the option back on afterwards. Under the stand-in for torch's capture
    the graphed and eager loops agree exactly, so the rerun's records equal the graphed ones."""
    from dragnb import DragSession, graphs, set_speed
    from dragnb.models import tiny_model
    from scenes import FAST, disc_scene
    m = tiny_model(seed=0)
    set_speed(m, cuda_graph=True)
    emulated.unet = m.unet
    s = DragSession(m, disc_scene(), prompt="a disc", seed=0, config=m.default_config(method="dragdiffusion", **FAST))
    s.add_drag((10, 16), (22, 16))
    graphed = [(r.handles_grid, s.current_latent().clone()) for r in (s.step(1)[0] for _ in range(4))]
    before = graphs.stats(m)
    recs = po.eager_drag_rerun(s, 4)
    after = graphs.stats(m)
    assert m.speed["cuda_graph"] and after["drag_graphs"] == before["drag_graphs"] == 1
    assert (after["captures"], after["replays"], after["eager_calls"]) == (before["captures"], before["replays"], 0)
    assert len(recs) == 4 and s.n_steps == 4
    for (h, lat), r in zip(graphed, recs):
        assert r["handles_rc"] == [list(map(float, x)) for x in h] and torch.equal(r["latent"], lat)
    sm = dict(eager_max_dlatent=0.25, eager_n_steps=80, eager_handles_identical=False, graphed_vs_eager_max_dlatent=0.1)
    assert po.eager_line(sm) == ("dragnb eager (graphs off, same session): max |dlatent| = 0.25 over 80 steps against "
                                 "the official loop, handles identical: no; graphed against eager: max |dlatent| = 0.1")
    assert po.eager_line({"max_dlatent": 0.0}) is None


def test_eager_inversion_of_a_graphed_session(po, emulated):
    """parity_sd inverts once more with the graphs off, to place a gap at z_t between the codes: the same LoRA and
    image give [z0, ..., z_t] whose last latent is the session's z_t (under the stand-in for torch's capture graphed
    and eager agree exactly), no graph is captured, replayed or dropped, and the option is back on afterwards."""
    from dragnb import DragSession, graphs, set_speed
    from dragnb.models import tiny_model
    from scenes import FAST, disc_scene
    m = tiny_model(seed=0)
    set_speed(m, cuda_graph=True)
    emulated.unet = m.unet
    s = DragSession(m, disc_scene(), prompt="a disc", seed=0, config=m.default_config(**{**FAST, "lora_steps": 2}))
    s.prepare(progress=False)
    before = graphs.stats(m)
    lats = po.eager_inversion(s, po.session_lora(s))
    after = graphs.stats(m)
    assert m.speed["cuda_graph"] and (after["captures"], after["replays"]) == (before["captures"], before["replays"])
    assert len(lats) == s.config.drag_step_index + 1
    assert torch.equal(lats[-1], s.latent_at(0)) and not torch.equal(lats[0], lats[-1])


def test_inversion_precision_paths(po):
    """eager_inversion's precision paths: on a float32 model the three are one computation (bit for bit); on a
    bfloat16 model they differ, the 'float32' path leaves the UNet's dtype and weights as they were, and a bad name or
    a guided config is refused with the fix."""
    from dragnb import DragSession
    from dragnb.models import tiny_model
    from scenes import FAST, disc_scene
    m = tiny_model(seed=0)
    s = DragSession(m, disc_scene(), prompt="a disc", seed=0, config=m.default_config(**{**FAST, "lora_steps": 2}))
    s.prepare(progress=False)
    ls = po.session_lora(s)
    ref = po.eager_inversion(s, ls)
    for prec in ("plain", "float32"):
        assert all(torch.equal(a, b) for a, b in zip(ref, po.eager_inversion(s, ls, precision=prec))), prec
    with pytest.raises(ValueError, match="use one of"):
        po.eager_inversion(s, ls, precision="half")
    m16 = tiny_model(seed=0).to(dtype=torch.bfloat16)
    s16 = DragSession(m16, disc_scene(), prompt="a disc", seed=0, config=m16.default_config(**{**FAST, "lora_steps": 2}))
    s16.prepare(progress=False)
    ls16 = po.session_lora(s16)
    before = {k: v.clone() for k, v in m16.unet.state_dict().items() if "lora_" not in k}   # the base weights
    lats = {p_: po.eager_inversion(s16, ls16, precision=p_) for p_ in po.INVERSION_PRECISIONS}
    after = m16.unet.state_dict()
    assert len(before) > 50 and all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert all(z.dtype == torch.float32 for z in lats["plain"])
    assert not torch.equal(lats["plain"][-1], lats["float32"][-1])
    assert not torch.equal(lats["autocast"][-1], lats["float32"][-1])
    guided = DragSession(m, disc_scene(), prompt="a disc", seed=0,
                         config=m.default_config(**{**FAST, "lora_steps": 0, "guidance_scale": 2.0}))
    with pytest.raises(ValueError, match="guidance 1 only"):
        po.eager_inversion(guided, None, precision="plain")


@pytest.mark.skipif(not os.path.isfile(os.path.join(OFFICIAL, "utils", "drag_utils.py")),
                    reason="no DragDiffusion checkout: set DRAGNB_OFFICIAL_DIR (benchmarks/PARITY.md)")
def test_low_precision_inversion_gap_is_the_precision_path(po, capsys):
    """In bfloat16 on the CPU the two codes' inversions part (autocast on float32 latents against plain low-precision
    latents), and dragnb's inversion run on the official precision path equals the official one bit for bit: the gap
    is the precision path, not the method. Both low-precision paths are measured against float32."""
    pytest.importorskip("einops")
    res = po.main(["--official", OFFICIAL, "--steps", "2", "--lora-steps", "2", "--dtype", "bfloat16", "--quiet"])
    st, sm = res["stages"], res["summary"]
    assert st["inversion_z_t_eager"] > 1e-3 and st["inversion_plain_vs_official"] == 0
    assert 0 < st["inversion_float32_vs_dragnb"] < 1 and 0 < st["inversion_float32_vs_official"] < 1
    assert "dragnb on the official precision path (float16 latents, no autocast) against the official code: 0;" in \
        po.inversion_line(sm)
    assert po.inversion_line(sm) in capsys.readouterr().out


def test_the_float16_reference_diagnostic_autocasts_only_the_official_loop_s_reference_pass(po):
    """The official loop computes its reference (F0, x_prev_0) outside its float16 autocast and its steps inside it;
    the diagnostic run (`reference_dtype`) puts the first call, the reference, under the steps' autocast too. The tap
    must never switch the steps' own autocast off (a disabled `torch.autocast` around the call would: the bug of the
    run of 2026-11-27, whose 'official' loop ran its steps in float32)."""
    seen = []

    def ff(z, t, e, **kw):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return z, None

    def loop(tap):   # as drag_diffusion_update calls it: the reference outside autocast, then steps inside
        tap.forward_unet_features(torch.zeros(1, 1, 2, 2), 1, None)
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                tap.forward_unet_features(torch.zeros(1, 1, 2, 2), 1, None)

    loop(po._Tap(ff, lambda o, t, x: (x, None), reference_dtype=torch.bfloat16))
    assert seen == [torch.bfloat16, torch.bfloat16, torch.bfloat16]
    seen.clear()
    loop(po._Tap(ff, lambda o, t, x: (x, None)))
    assert seen == [False, torch.bfloat16, torch.bfloat16]
    sm = dict(f16_reference_max_dlatent=0.21, f16_reference_n_steps=80, f16_reference_handles_identical=True,
              step1_mask_loss=[0.0, 0.166, 0.0])
    assert po.f16_reference_line(sm) == (
        "official loop with its reference pass in float16 (as dragnb's): max |dlatent| = 0.21 over 80 steps against "
        "dragnb, handles identical: yes; mask term at step 1: dragnb 0, official 0.166, official with a float16 "
        "reference 0")
    assert po.f16_reference_line({"max_dlatent": 0.0}) is None


def test_the_official_stages_get_the_session_s_own_lora(po):
    """parity_sd and parity_drag_only hand the official code the LoRA the dragnb session trained (its cache entry),
    not a second training: on a GPU the session trains through CUDA graphs and a retrain would run eagerly, and in
    float16 the two differ. Taking the weights trains nothing; a session without a LoRA gives None."""
    from dragnb import DragSession
    from dragnb.models import tiny_model
    from scenes import FAST, disc_scene
    m = tiny_model(seed=0)
    s = DragSession(m, disc_scene(), prompt="a disc", seed=0, config=m.default_config(**{**FAST, "lora_steps": 2}))
    s.prepare(progress=False)
    assert s.cache.counters["lora_trainings"] == 1
    state = po.session_lora(s)
    assert s.cache.counters["lora_trainings"] == 1 and state
    cached = s.cache.train_lora(s.spec).state
    assert state.keys() == cached.keys() and all(torch.equal(state[k], cached[k]) for k in state)
    s0 = DragSession(m, disc_scene(), prompt="a disc", seed=0, config=m.default_config(**{**FAST, "lora_steps": 0}))
    s0.prepare(progress=False)
    assert po.session_lora(s0) is None


def test_one_float16_step_moves_half_the_entries_by_one_float16_value_and_the_inversion_line_reads_it(po):
    z = torch.tensor([[0.5, -0.5, 1.0, -2.0] * 64])
    for dtype in (torch.float32, torch.float16):
        w = po.one_float16_step(z.to(dtype))
        assert w.dtype == dtype
        moved = w.float() != z
        assert 0.3 < moved.float().mean().item() < 0.7           # about half, drawn from a fixed seed
        step = (w.float() - z)[moved] / z[moved]                  # away from zero, by one float16 step
        assert torch.allclose(step, torch.full_like(step, 2.0 ** -10))
        assert torch.equal(po.one_float16_step(z.to(dtype)), w)
    sm = dict(inversion_gap=0.99, inversion_noise_floor=1.02, inversion_first_step=[2.5e-4, 4.9e-4])
    assert po.inversion_line(sm) == (
        "inversion: dragnb eager against the official code max |dz_t| = 0.99 (after its first step 0.00025); noise "
        "floor: dragnb's inversion against itself from z0 moved by one float16 step in half its entries (max change "
        "0.00049): max |dz_t| = 1.02")
    assert po.inversion_line({"max_dlatent": 0.0}) is None
