"""The house: SourceCache (keys, bounded eviction), frozen DragConfig, the invalidation table against the counters,
DragState round trips, a toy method plugged in, old session files."""
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dragnb import DragConfig, DragSession, SourceCache
from dragnb.cache import SourceSpec
from dragnb.invalidation import INPUT_STAGE_OF, STAGE_OF, STAGES
from dragnb.methods import DragMethod, Position, available, get_method, register
from dragnb.methods.base import Advance
from dragnb.models import tiny_model
from scenes import FAST, disc_scene as scene, disc_session as session

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


# ----------------------------------------------------------------------------- config
def test_config_is_frozen_and_checks_types():
    c = DragConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lam = 0.3
    assert c.replace(drag_steps=12.0).drag_steps == 12 and isinstance(c.replace(drag_steps=12.0).drag_steps, int)
    with pytest.raises(TypeError, match=r"DragConfig.drag_steps=2.5 is not a whole number"):
        c.replace(drag_steps=2.5)
    with pytest.raises(TypeError, match=r"DragConfig.lam=nan is not a finite number"):
        c.replace(lam=float("nan"))
    with pytest.raises(TypeError, match=r"DragConfig.mutual_attention=1 is not True or False"):
        c.replace(mutual_attention=1)
    with pytest.raises(TypeError, match=r"DragConfig.r_p='3' is not a whole number"):
        c.replace(r_p="3")
    with pytest.raises(ValueError, match=r"drag method 'nope' is unknown: use one of \['dragdiffusion'"):
        get_method("nope")


def test_invalidation_table_covers_every_field_and_input():
    names = {f.name for f in dataclasses.fields(DragConfig)}
    assert set(STAGE_OF) == names, "every DragConfig field needs a row in invalidation.STAGE_OF"
    assert set(STAGE_OF.values()) <= set(STAGES) and set(INPUT_STAGE_OF.values()) <= set(STAGES)


# a value to change each field to (valid on the tiny model), to check the table against what really happens
CHANGE = dict(lora_rank=4, lora_steps=3, lora_lr=1e-3, lora_batch_size=2, n_inference_steps=12,
              inversion_strength=0.5, guidance_scale=2.0, feature_block=1, sup_res_scale=0.25, r_m=2, r_p=2,
              track_patch=1, lam=0.3, drag_lr=0.02, drag_steps=7, reach_distance=1.5, mutual_attention=False,
              attn_start_layer=1, attn_start_step=1, snapshot_every=3)
COUNTER = {"lora": "lora_trainings", "inversion": "inversions", "features": "feature_extractions"}


def _expected(stage):
    """Which counters a change at `stage` increments on the next prepare()."""
    up_to = STAGES.index(stage)
    return {c for s, c in COUNTER.items() if STAGES.index(s) >= up_to} if stage in COUNTER else set()


@pytest.mark.parametrize("field", sorted(STAGE_OF))
def test_each_config_field_invalidates_what_the_table_says(model, field):
    if field not in CHANGE:
        pytest.skip(f"{field}: the method and its settings are covered by the method tests below")
    s = session(model)
    s.step(1)
    before = dict(s.counters)
    assert CHANGE[field] != getattr(s.config, field), f"CHANGE[{field!r}] must differ from the default"
    s.configure(**{field: CHANGE[field]})
    s.prepare(progress=False)
    grown = {k for k in COUNTER.values() if s.counters[k] > before[k]}
    stage = STAGE_OF[field]
    assert grown == _expected(stage), (field, stage, grown)
    restarted = s.n_steps == 0
    assert restarted == (STAGES.index(stage) <= STAGES.index("state")), field


@pytest.mark.parametrize("name", sorted(INPUT_STAGE_OF))
def test_each_input_setter_invalidates_what_the_table_says(model, name):
    s = session(model)
    s.step(1)
    before = dict(s.counters)
    if name == "image":
        s.set_image(scene(shift=2))
        s.add_drag((10, 16), (22, 16))
    elif name == "prompt":
        s.prompt = "another"
    elif name == "seed":
        s.seed = 5
    elif name == "drags":
        s.add_drag((4, 4), (4, 20))
    elif name == "mask":
        m = np.zeros((32, 32), bool); m[4:28, 2:30] = True
        s.set_mask(m)
    s.prepare(progress=False)
    grown = {k for k in COUNTER.values() if s.counters[k] > before[k]}
    assert grown == _expected(INPUT_STAGE_OF[name])
    assert (s.n_steps == 0) == (STAGES.index(INPUT_STAGE_OF[name]) <= STAGES.index("state"))


# ----------------------------------------------------------------------------- cache
def _spec(model, prompt, **cfg):
    from PIL import Image
    return SourceSpec(Image.fromarray(scene()), (32, 32), (16, 16), prompt, 0, model.default_config(**{**FAST, **cfg}))


def test_cache_evicts_by_count_least_recently_used(model):
    c = SourceCache(model, max_entries=2, max_bytes=None)
    a, b, d = (_spec(model, p) for p in ("a", "b", "d"))
    c.train_lora(a); c.train_lora(b)
    c.train_lora(a)                       # a is the most recent now
    c.train_lora(d)                       # evicts b
    assert c.has(a, "lora") and c.has(d, "lora") and not c.has(b, "lora")
    assert c.counters["lora_trainings"] == 3 and c.evictions == 1
    with pytest.raises(ValueError, match="max_entries=0"):
        SourceCache(model, max_entries=0)


def test_cache_evicts_by_bytes_but_keeps_what_it_just_made(model):
    c = SourceCache(model, max_entries=10, max_bytes=None)
    a, b = _spec(model, "a"), _spec(model, "b")
    c.prepare(a)
    one = c.nbytes
    c.max_bytes = int(one * 1.5)          # room for one spec's entries, not two
    c.prepare(b)
    assert c.is_prepared(b) and not c.is_prepared(a)           # a went, b (just made) and its upstream stayed
    assert c.nbytes <= c.max_bytes
    c.max_bytes = 0                       # a bound smaller than one entry still keeps the entries in use
    c.prepare(b)
    assert c.is_prepared(b)
    c.clear()
    assert len(c) == 0 and c.nbytes == 0


def test_session_cache_is_bounded_and_clearable(model):
    s = session(model)
    s.cache.max_entries = 1
    for p in ("x", "y", "z"):
        s.prompt = p
        s.prepare(progress=False)
    assert len(s.cache) == 3              # one entry per store
    s.clear_caches()
    assert len(s.cache) == 0 and not s.is_prepared


def test_cache_keys_share_upstream_stages(model):
    c = SourceCache(model)
    k1 = c.key(_spec(model, "a"))
    k2 = c.key(_spec(model, "a", inversion_strength=0.5))
    assert k1.stage("lora") == k2.stage("lora") and k1.stage("inversion") != k2.stage("inversion")


# ----------------------------------------------------------------------------- state
def test_state_dict_round_trip_is_bit_exact(model, tmp_path):
    s = session(model)
    m = np.zeros((32, 32), bool); m[8:24, 4:30] = True
    s.set_mask(m)
    s.step(3)
    s2 = DragSession.from_state_dict(s.state_dict(), model)
    assert s2.counters == s.counters and s2.n_steps == 3 and s2.position == s.position
    assert [r.loss for r in s.step(2)] == [r.loss for r in s2.step(2)]
    assert torch.equal(s.current_latent(), s2.current_latent())
    s2.rewind(3)
    assert s2.n_steps == 2 and torch.equal(s2.current_latent(), s.latent_at(2))


def test_a_failing_step_leaves_nothing_half_done(model, monkeypatch):
    s = session(model)
    s.step(2)
    lat, handles = s.current_latent(), s.handles
    import dragnb.state as st
    real = st.DragState.step

    def boom(self, ctx):   # the update happens, then something fails before the step is recorded
        real_adam_step = self.optimizer.step

        def step_then_fail(*a, **k):
            real_adam_step(*a, **k)
            raise KeyboardInterrupt
        self.optimizer.step = step_then_fail
        return real(self, ctx)
    monkeypatch.setattr(st.DragState, "step", boom)
    with pytest.raises(KeyboardInterrupt):
        s.step(1)
    monkeypatch.setattr(st.DragState, "step", real)
    assert s.n_steps == 2 and torch.equal(s.current_latent(), lat) and s.handles == handles
    ref = session(model)
    assert [r.loss for r in ref.step(3)][2] == s.step(1)[0].loss     # continues as if nothing happened


# ----------------------------------------------------------------------------- methods
class ToyMethod(DragMethod):
    """Drags at two timesteps, two updates each, then one DDIM step; tracks after every update."""
    name = "toy-two-timesteps"

    def reference_steps(self, config):
        return 1

    def track_before(self, config, position, n_taken):
        return False

    def motion_loss(self, config, feat, ref, handles0_rc, handles_rc, targets_rc):
        from dragnb.drag import motion_supervision_loss
        return motion_supervision_loss(feat, handles_rc, targets_rc, config.r_m, config.reach_distance)

    def advance(self, config, position, motion_loss):
        if position.update + 1 < 2:
            return Advance(Position(position.index, 0, position.update + 1), track=True)
        return Advance(Position(position.index + 1, 0, 0), track=True, denoise=True)


def test_a_toy_method_plugs_in_without_touching_the_session(model):
    register(ToyMethod)
    assert "toy-two-timesteps" in available() and isinstance(get_method("toy-two-timesteps"), ToyMethod)
    s = session(model, method="toy-two-timesteps", reach_distance=0.5)
    recs = s.run(progress=False)
    assert [r.t_index for r in recs] == [0, 0, 1, 1]                     # two updates at each of two timesteps
    assert recs[0].timestep > recs[2].timestep                           # the second timestep is later in denoising
    assert s.reached and s.stop_reason == "the method's schedule is done"
    assert s.position == Position(2, 0, 0)
    assert s.result().size == (32, 32)
    s.rewind(3)
    assert s.n_steps == 1 and s.position == Position(0, 0, 1)
    again = s.step(3)
    assert [r.loss for r in again] == [r.loss for r in recs[1:]]
    with pytest.raises(TypeError, match="not a DragMethod subclass"):
        register(object)


def test_method_switch_keeps_lora_and_inversion(model):
    register(ToyMethod)
    s = session(model)
    with pytest.raises(ValueError, match=r"drag method 'nope' is unknown"):
        s.configure(method="nope")
    assert s.config.method == "dragdiffusion"
    s.prepare(progress=False)
    s.configure(method="toy-two-timesteps")
    s.prepare(progress=False)
    assert s.counters["lora_trainings"] == 1 and s.counters["inversions"] == 1
    assert s.counters["feature_extractions"] == 2                        # a longer reference trajectory


# ----------------------------------------------------------------------------- files
def test_a_version_1_session_file_still_loads_and_continues(model):
    expect = json.loads((DATA / "v1_tiny_expect.json").read_text())
    s = DragSession.load(DATA / "v1_tiny.dragnb", model)
    assert s.n_steps == 3 and s.counters["lora_trainings"] == 1 and s.is_prepared
    recs = s.step(2)
    assert [r.loss for r in recs] == expect["losses"]
    # the code that wrote the file ran its LoRA unmerged: the same losses to float32 rounding
    assert [r.loss for r in recs] == pytest.approx(expect["losses_before_the_lora_merge"], rel=1e-5)
    assert [list(h) for h in s.handles] == expect["handles"]
    assert hashlib.sha256(np.asarray(s.result()).tobytes()).hexdigest() == expect["result_sha256"]


def test_load_state_dict_puts_a_run_back_in_place(model):
    s = session(model)
    s.step(3)
    sd, latent, handles = s.state_dict(), s.current_latent(), s.handles
    events = []
    s.observe(events.append)
    s.clear_drags()
    assert s.n_steps == 0
    s.load_state_dict(sd)
    assert s.n_steps == 3 and torch.equal(s.current_latent(), latent) and s.handles == handles
    assert events[-1] == "rewind" and s.counters["lora_trainings"] == 1          # nothing retrained
    ref = session(model)
    assert [r.loss for r in s.step(2)] == [r.loss for r in ref.step(5)[3:]]
    bad = dict(sd, drags=[[[300, 1], [2, 2]]])
    with pytest.raises(ValueError, match="outside"):
        s.load_state_dict(bad)
    assert s.n_steps == 5                                                      # a refused state changes nothing
