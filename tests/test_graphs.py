"""dragnb.graphs (set_speed(model, cuda_graph=True)) on the CPU, with an emulation of
`torch.cuda.make_graphed_callables` that keeps its contract where it matters to the caller: one capture per key
(three warm-up calls), then every call writes into the *same* static output buffers and returns them, and the
backward writes the input gradient into one static buffer. So a caller that kept a graph's output past the next
replay, or a key that misses a change, gives other numbers than the eager path here too.

What the CPU cannot check, the GPU benchmark does: the capture itself (`bench_speed`'s "cuda graphs" row)."""
import warnings

import numpy as np
import pytest
import torch

from dragnb import DragSession, graphs, set_speed
from dragnb.models import tiny_model
from dragnb.speed import speed_of
from scenes import FAST, disc_scene


class Emulation:
    """make_graphed_callables' static-buffer semantics on any device; counts captures. With `unet` set, a replay
    also reads the UNet's weights from the tensors it was captured with, as a graph reads the addresses it
    recorded (so a key that misses a change of weights replays stale ones here too)."""

    def __init__(self, fail=False, unet=None):
        self.captures, self.fail, self.unet = 0, fail, unet

    def __call__(self, fn, sample_args, pool):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        (sample,) = sample_args
        for _ in range(3):                                   # the warm-up passes
            outs = fn(sample)
            torch.autograd.grad(outs, sample, [torch.ones_like(o) for o in outs])
        static_in = sample.detach().clone()
        static_out = [o.detach().clone() for o in fn(sample)]
        static_grad = torch.zeros_like(sample)
        live = {}
        recorded = [] if self.unet is None else [(p, p.data) for p in self.unet.parameters()]

        def run(zi):
            now = [p.data for p, _ in recorded]
            for p, d in recorded:
                p.data = d
            try:
                return fn(zi)
            finally:
                for (p, _), d in zip(recorded, now):
                    p.data = d

        class Graphed(torch.autograd.Function):
            @staticmethod
            def forward(ctx, z):
                static_in.copy_(z)
                with torch.enable_grad():
                    zi = static_in.detach().requires_grad_(True)
                    live["z"], live["outs"] = zi, run(zi)
                for s, o in zip(static_out, live["outs"]):
                    s.copy_(o.detach())
                return tuple(s.detach() for s in static_out)

            @staticmethod
            def backward(ctx, *grads):
                (g,) = torch.autograd.grad(live["outs"], live["z"], grads)
                static_grad.copy_(g)
                return static_grad.detach()

        return lambda z: Graphed.apply(z)


@pytest.fixture
def emulated(monkeypatch):
    emu = Emulation()
    monkeypatch.setattr(graphs, "_make_graphed", emu)
    monkeypatch.setattr(graphs, "_pool", lambda: "pool")
    monkeypatch.setattr(graphs, "check_model", lambda model: None)
    return emu


def _session(model, method="dragdiffusion", **cfg):
    s = DragSession(model, disc_scene(), prompt="a disc", seed=0,
                    config=model.default_config(method=method, **{**FAST, **cfg}))
    s.add_drag((10, 16), (22, 16))
    return s


def _edit(model, method, steps, **cfg):
    s = _session(model, method, **cfg)
    s.prepare(progress=False)
    recs = s.step(steps)
    return s, [(r.loss, r.handles_grid, r.timestep) for r in recs], s.current_latent().detach().clone()


@pytest.mark.parametrize("method, steps", [("dragdiffusion", 5), ("gooddrag", 8)])
def test_graphed_steps_equal_eager_steps(emulated, method, steps):
    cfg = dict(updates_per_round=2, rounds=2) if method == "gooddrag" else {}
    _, recs0, lat0 = _edit(tiny_model(seed=0), method, steps, **cfg)
    m = tiny_model(seed=0)
    set_speed(m, cuda_graph=True)
    emulated.unet = m.unet
    s, recs1, lat1 = _edit(m, method, steps, **cfg)
    assert recs1 == recs0 and torch.equal(lat1, lat0)
    st = graphs.stats(m)
    timesteps = {t for _, _, t in recs1}
    assert st["captures"] == emulated.captures == len(timesteps) and st["graphs"] == len(timesteps)
    assert st["replays"] == steps and st["failures"] == [] and st["eager_calls"] == 0
    if method == "gooddrag":
        assert len(timesteps) >= 2                 # one graph per timestep the method drags at
    assert np.array_equal(np.asarray(s.result()), np.asarray(_edit(tiny_model(seed=0), method, steps, **cfg)[0].result()))


def test_rewind_and_a_new_lora_or_prompt_recapture_and_stay_exact(emulated):
    m0, m = tiny_model(seed=0), tiny_model(seed=0)
    set_speed(m, cuda_graph=True)
    emulated.unet = m.unet
    a, b = _session(m0), _session(m)
    a.step(4); b.step(4)
    a.rewind(3); b.rewind(3)
    a.step(2); b.step(2)
    assert torch.equal(a.current_latent(), b.current_latent()) and a.handles == b.handles
    assert emulated.captures == 1
    for s in (a, b):                                      # another LoRA: the merged weights live elsewhere
        s.configure(lora_steps=3)
        s.step(2)
    assert torch.equal(a.current_latent(), b.current_latent())
    assert emulated.captures == 2 and graphs.stats(m)["graphs"] == 1    # the stale graph was dropped
    for s in (a, b):                                      # another prompt: another embedding tensor
        s.prompt = "a yellow disc"
        s.step(2)
    assert torch.equal(a.current_latent(), b.current_latent())
    assert emulated.captures >= 3


def test_a_failed_capture_warns_once_and_the_edit_goes_on_eagerly(monkeypatch):
    monkeypatch.setattr(graphs, "_make_graphed", Emulation(fail=True))
    monkeypatch.setattr(graphs, "_pool", lambda: "pool")
    monkeypatch.setattr(graphs, "check_model", lambda model: None)
    _, recs0, lat0 = _edit(tiny_model(seed=0), "dragdiffusion", 4)
    m = tiny_model(seed=0)
    set_speed(m, cuda_graph=True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _, recs1, lat1 = _edit(m, "dragdiffusion", 4)
    assert recs1 == recs0 and torch.equal(lat1, lat0)
    assert sum("CUDA graph capture" in str(x.message) for x in w) == 1
    st = graphs.stats(m)
    assert st["captures"] == 0 and st["eager_calls"] == 4 and len(st["failures"]) == 1
    assert "operation not permitted" in st["failures"][0]


def test_set_speed_refuses_cuda_graph_on_a_cpu_model_and_with_compile_or_checkpointing(monkeypatch):
    m = tiny_model(seed=0)
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device; this one is on cpu"):
        set_speed(m, cuda_graph=True)
    assert not speed_of(m)["cuda_graph"]
    monkeypatch.setattr(graphs, "check_model", lambda model: None)
    with pytest.raises(ValueError, match="gradient_checkpointing='lora'"):
        set_speed(m, cuda_graph=True, gradient_checkpointing=True)
    assert speed_of(m) == {"channels_last": False, "gradient_checkpointing": False, "compile": False,
                           "cuda_graph": False}
    set_speed(m, cuda_graph=True, gradient_checkpointing="lora")
    with pytest.raises(ValueError, match="use one of the two"):
        set_speed(m, compile="aot_eager")
    assert speed_of(m)["compile"] is False
    with pytest.raises(TypeError, match="cuda_graph='yes'"):
        set_speed(m, cuda_graph="yes")
    set_speed(m, cuda_graph=False)
    assert graphs.stats(m)["graphs"] == 0


def test_the_command_line_word():
    from dragnb.speed import parse_words
    assert parse_words("cuda_graph,lora_checkpointing") == {"cuda_graph": True, "gradient_checkpointing": "lora"}


def test_bench_speed_row(emulated):
    from dragnb.bench import bench_speed, speed_table
    res = bench_speed("tiny", size=32, drag_steps=3, lora_steps=1, variants=["baseline", "cuda graphs"],
                      verbose=False, re_edit_steps=4)
    rows = {r["variant"]: r for r in res["rows"]}
    assert all("error" not in r for r in rows.values()), rows
    g = rows["cuda graphs"]
    assert g["speed"]["cuda_graph"] and not rows["baseline"]["speed"]["cuda_graph"]
    assert g["max_dlatent_vs_first_row"] == 0 and g["graphs"]["captures"] == 1
    assert g["graphs"]["replays"] == 3 + g["re_edit_steps"] and g["re_edit_steps"] == 4   # the re-drag reuses the graph
    assert rows["baseline"]["re_edit_s"] > 0 and g["re_edit_s"] > 0
    text = speed_table(res)
    assert "re_edit_s" in text and "cuda graphs: 1 captures, 7 replays, 0 eager calls" in text


def test_bench_speed_row_on_a_cpu_says_why_it_cannot_run():
    from dragnb.bench import bench_speed, speed_table
    res = bench_speed("tiny", size=32, drag_steps=2, lora_steps=1, variants=["cuda graphs", "baseline"],
                      verbose=False)
    assert "needs a model on a CUDA device" in res["rows"][0]["error"] and "error" not in res["rows"][1]
    assert "cuda graphs" in speed_table(res) and "failed" in speed_table(res)
