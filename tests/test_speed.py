"""dragnb.set_speed: each option keeps the edit (bit for bit where the kernels are the same), can be undone, and
refuses bad values without changing anything; bench_speed measures them side by side."""
import numpy as np
import pytest
import torch

from dragnb import set_speed
from dragnb.bench import SPEED_VARIANTS, bench_speed, speed_table
from dragnb.models import tiny_model
from dragnb.speed import speed_of
from scenes import disc_session


def _edit(model, steps=3):
    s = disc_session(model)
    s.prepare(progress=False)
    s.step(steps)
    return s.current_latent().detach().clone(), s.handles, np.asarray(s.result()).astype(int)


@pytest.fixture(scope="module")
def baseline():
    return _edit(tiny_model(seed=0))


OFF = {"channels_last": False, "gradient_checkpointing": False, "compile": False, "cuda_graph": False}


def _conv_weight(model):
    return model.unet.conv_in.weight


def test_defaults_are_off_and_set_speed_returns_what_was_before():
    m = tiny_model(seed=0)
    assert speed_of(m) == OFF
    before = set_speed(m, channels_last=True, gradient_checkpointing=True)
    assert before == OFF
    assert speed_of(m)["channels_last"] and speed_of(m)["gradient_checkpointing"]
    assert _conv_weight(m).is_contiguous(memory_format=torch.channels_last)
    assert m.unet.is_gradient_checkpointing
    set_speed(m, **before)
    assert speed_of(m) == before
    assert _conv_weight(m).is_contiguous() and not m.unet.is_gradient_checkpointing


@pytest.mark.parametrize("kwargs, word", [
    (dict(gradient_checkpointing=True, channels_last="yes"), "channels_last='yes'"),
    (dict(channels_last=True, gradient_checkpointing=1), "gradient_checkpointing=1"),
    (dict(channels_last=True, compile=2), "compile=2"),
    (dict(channels_last=True, compile=""), "compile=''"),
])
def test_bad_values_name_the_value_and_change_nothing(kwargs, word):
    m = tiny_model(seed=0)
    with pytest.raises(TypeError, match=word):
        set_speed(m, **kwargs)
    assert speed_of(m) == OFF
    assert _conv_weight(m).is_contiguous() and not m.unet.is_gradient_checkpointing


def test_gradient_checkpointing_gives_the_same_edit_bit_for_bit(baseline):
    m = tiny_model(seed=0)
    set_speed(m, gradient_checkpointing=True)
    lat, handles, img = _edit(m)
    assert torch.equal(lat, baseline[0]) and handles == baseline[1]
    assert np.array_equal(img, baseline[2])


def test_lora_only_checkpointing_is_on_exactly_during_the_fine_tune(baseline):
    m = tiny_model(seed=0)
    set_speed(m, gradient_checkpointing="lora")
    assert not m.unet.is_gradient_checkpointing
    seen = []
    s = disc_session(m)
    s.prepare(progress=False, callback=lambda stage, i, n: seen.append((stage, m.unet.is_gradient_checkpointing)))
    assert {on for stage, on in seen if stage == "lora"} == {True}
    assert {on for stage, on in seen if stage != "lora"} == {False} and not m.unet.is_gradient_checkpointing
    s.step(3)
    assert torch.equal(s.current_latent().detach(), baseline[0]) and s.handles == baseline[1]
    assert speed_of(m)["gradient_checkpointing"] == "lora"


def test_channels_last_agrees_to_float_rounding(baseline):
    m = tiny_model(seed=0)
    set_speed(m, channels_last=True)
    lat, handles, img = _edit(m)
    assert (lat - baseline[0]).abs().max() < 1e-3 and handles == baseline[1]
    assert np.abs(img - baseline[2]).max() <= 2


def test_compiled_unet_gives_the_same_edit_and_cannot_be_uncompiled(baseline):
    m = tiny_model(seed=0)
    set_speed(m, compile="aot_eager")      # graph capture without code generation: the same kernels
    lat, handles, img = _edit(m)           # the render runs mutual self-attention eagerly (no recompile per step)
    assert torch.equal(lat, baseline[0]) and handles == baseline[1]
    assert np.array_equal(img, baseline[2])
    with pytest.raises(ValueError, match="already compiled with compile='aot_eager'.*load the model again"):
        set_speed(m, compile=False)
    assert speed_of(m)["compile"] == "aot_eager"
    assert set_speed(m, compile="aot_eager")["compile"] == "aot_eager"   # asking for what it has is fine


def test_bench_speed_rows_and_table():
    res = bench_speed("tiny", size=32, drag_steps=2, lora_steps=1,
                      variants=["baseline", "gradient_checkpointing", "channels_last"], verbose=False)
    rows = {r["variant"]: r for r in res["rows"]}
    assert list(rows) == ["baseline", "gradient_checkpointing", "channels_last"]
    assert all("error" not in r for r in rows.values())
    assert rows["baseline"]["max_dlatent_vs_first_row"] == 0 == rows["gradient_checkpointing"]["max_dlatent_vs_first_row"]
    assert np.isfinite(rows["channels_last"]["max_dlatent_vs_first_row"])   # other kernels: rounding, amplified by Adam
    assert all(r["drag_step_s"] > 0 and r["lora_s"] > 0 for r in rows.values())
    text = speed_table(res)
    assert "gradient_checkpointing" in text and "drag x base" in text
    # a deadline already passed skips every row, and says so
    res = bench_speed("tiny", size=32, drag_steps=2, lora_steps=1, variants=["baseline", "channels_last"],
                      deadline=0.0, verbose=False)
    assert res["skipped"] == ["baseline", "channels_last"] and "skipped (deadline)" in speed_table(res)


def test_bench_speed_refuses_unknown_rows():
    with pytest.raises(ValueError, match=r"\['fast'\] are unknown"):
        bench_speed("tiny", variants=["fast"])
    assert [n for n, _ in SPEED_VARIANTS][0] == "baseline"


def test_memory_estimate_counts_less_with_checkpointing():
    from benchlib import load_benchmark
    mod = load_benchmark("sd_memory_estimate.py")
    res = mod.estimate("tiny", 32, lora_batch=2)
    plain, ckpt = res["rows"]
    assert not plain["gradient_checkpointing"] and ckpt["gradient_checkpointing"]
    assert 0 < ckpt["drag_step_saved_gib"] < plain["drag_step_saved_gib"]
    assert 0 < ckpt["lora_step_saved_gib"] < plain["lora_step_saved_gib"]
    assert res["weights_gib"]["unet"] > 0 and "LoRA step (batch 2)" in mod.table(res)


def test_a_compile_row_compiles_a_model_of_its_own(monkeypatch):
    """A compilation cannot be undone, so a compile row loads the model afresh: the rows after it run on the
    uncompiled model, in any order. (aot_eager stands in for inductor, which takes a minute to compile on a CPU.)"""
    from dragnb import bench
    monkeypatch.setattr(bench, "SPEED_VARIANTS", bench.SPEED_VARIANTS + (("compile (aot_eager)", {"compile": "aot_eager"}),))
    res = bench_speed("tiny", size=32, drag_steps=2, lora_steps=1,
                      variants=["baseline", "compile (aot_eager)", "gradient_checkpointing"], verbose=False)
    rows = {r["variant"]: r for r in res["rows"]}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["compile (aot_eager)"]["speed"]["compile"] == "aot_eager"
    assert not rows["gradient_checkpointing"]["speed"]["compile"] and not rows["baseline"]["speed"]["compile"]
    assert rows["compile (aot_eager)"]["max_dlatent_vs_first_row"] == 0          # the same seeded weights, same edit
    assert not any("," in n for n, _ in SPEED_VARIANTS)                          # command lines split on commas
