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
from dragnb.attention import self_attention_modules
from dragnb.models import tiny_model
from dragnb.speed import speed_of
from scenes import FAST, disc_scene


class Emulation:
    """make_graphed_callables' static-buffer semantics on any device; counts captures. With `unet` set, a replay
    also reads the UNet's weights from the tensors it was captured with, as a graph reads the addresses it
    recorded (so a key that misses a change of weights replays stale ones here too)."""

    def __init__(self, fail=False, unet=None):
        self.captures, self.no_grad_captures, self.fail, self.unet = 0, 0, fail, unet
        self.warmups = []
        # the Python functions captured: a CUDA graph keeps none (only its kernels and memory), so the emulation's
        # replays reach them through this list alone, which a test can clear to see what else dragnb keeps
        self.fns = []

    def _keep(self, fn) -> int:
        self.fns.append(fn)
        return len(self.fns) - 1

    def _recorded(self):
        """What a graph freezes at capture: the weights' memory and the Python branches taken, here the
        self-attention processors and the mutual-attention step they gated on."""
        if self.unet is None:
            return [], []
        procs = [(m, m.processor, getattr(getattr(m.processor, "control", None), "step", None))
                 for m in self_attention_modules(self.unet)]
        return [(p, p.data) for p in self.unet.parameters()], procs

    @staticmethod
    def _with(recorded, f, *args):
        params, procs = recorded
        now = [p.data for p, _ in params], [(m.processor, getattr(getattr(pr, "control", None), "step", None))
                                              for m, pr, _ in procs]
        for p, d in params:
            p.data = d
        for m, pr, step in procs:
            m.processor = pr
            if step is not None:
                pr.control.step = step
        try:
            return f(*args)
        finally:
            for (p, _), d in zip(params, now[0]):
                p.data = d
            for (m, pr, _), (cur, step) in zip(procs, now[1]):
                if step is not None:
                    pr.control.step = step
                m.processor = cur

    def no_grad(self, run, pool, warmup=2):
        """`graphs._graph_no_grad`: warm-up calls, then one static output that every replay overwrites."""
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.no_grad_captures += 1
        self.warmups.append(warmup)
        for _ in range(warmup):
            run()
        out, recorded, i = run(), self._recorded(), self._keep(run)
        return (lambda: out.copy_(self._with(recorded, self.fns[i]))), out

    def __call__(self, fn, sample_args, pool, warmup=3):
        """`graphs._make_graphed` (torch.cuda.make_graphed_callables): static inputs and outputs; the backward writes
        the gradients of the inputs and, for a module, of its trainable parameters into static buffers."""
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        n_user = len(sample_args)
        module = isinstance(fn, torch.nn.Module)
        params = tuple(fn.parameters()) if module else ()
        surface = tuple(sample_args) + params
        wants = [i for i, x in enumerate(surface) if x.requires_grad]
        k = self._keep(fn.forward if module else fn)

        def outputs(*args):
            o = self.fns[k](*args)
            return (o,) if isinstance(o, torch.Tensor) else tuple(o)
        self.warmups.append(warmup)
        for _ in range(warmup):                              # the warm-up passes
            outs = outputs(*sample_args)
            torch.autograd.grad(outs, [surface[i] for i in wants], [torch.ones_like(o) for o in outs])
        single = len(outputs(*sample_args)) == 1 and isinstance(self.fns[k](*sample_args), torch.Tensor)
        static_in = [a.detach().clone() for a in sample_args]
        static_out = [o.detach().clone() for o in outputs(*sample_args)]
        static_grad = {i: torch.zeros_like(surface[i]) for i in wants}
        recorded = self._recorded()
        live = {}

        class Graphed(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *inputs):
                for s_, x in zip(static_in, inputs[:n_user]):
                    s_.copy_(x)
                with torch.enable_grad():
                    zi = [s_.detach().requires_grad_(a.requires_grad) for s_, a in zip(static_in, sample_args)]
                    live["targets"] = [(zi + list(params))[i] for i in wants]
                    live["outs"] = self._with(recorded, outputs, *zi)
                for s_, o in zip(static_out, live["outs"]):
                    s_.copy_(o.detach())
                return tuple(s_.detach() for s_ in static_out)

            @staticmethod
            def backward(ctx, *grads):
                gs = torch.autograd.grad(live["outs"], live["targets"], grads)
                for i, gr in zip(wants, gs):
                    static_grad[i].copy_(gr)
                return tuple(static_grad[i].detach() if i in static_grad else None for i in range(len(surface)))

        def graphed(*args):
            out = Graphed.apply(*(tuple(args) + params))
            return out[0] if single else out
        if module:                     # as torch: the module comes back, its forward replaced by the graphed one
            fn.forward = graphed
            return fn
        return graphed


@pytest.fixture
def emulated(monkeypatch):
    emu = Emulation()
    monkeypatch.setattr(graphs, "_make_graphed", emu)
    monkeypatch.setattr(graphs, "_graph_no_grad", emu.no_grad)
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
    # one drag graph for every timestep (it reads the timestep from its own tensor), and the LoRA fine-tune's
    assert st["drag_graphs"] == 1 and st["lora_graphs"] == 1 and emulated.captures == 2
    if method == "gooddrag":
        assert len(timesteps) >= 2                 # replayed at each timestep the method drags at
    # the inversion's calls were graphed too: one graph, replayed at each of its timesteps
    assert st["no_grad_graphs"] == emulated.no_grad_captures == 1
    inversion = s.config.drag_step_index
    lora_steps = s.config.lora_steps
    assert st["replays"] == lora_steps + steps + inversion and st["failures"] == [] and st["eager_calls"] == 0
    # the final denoising (mutual self-attention) in graphs: the same image; a second render only replays
    assert np.array_equal(np.asarray(s.result()), np.asarray(_edit(tiny_model(seed=0), method, steps, **cfg)[0].result()))
    n = emulated.no_grad_captures
    assert n > 1 and graphs.stats(m)["eager_calls"] == 0
    if method == "dragdiffusion":                   # render_latent denoises from the drag timestep, as result() here
        before = graphs.stats(m)["replays"]
        s.render_latent(s.current_latent())
        assert emulated.no_grad_captures == n and graphs.stats(m)["replays"] > before
    # one graph per kind of call, each with its warm-up calls
    w = emulated.warmups
    assert w.count(3) == 2 and w.count(1) == 0                          # the fine-tune's and the drag's
    families = 2 if method == "dragdiffusion" else 3     # inversion, denoising (GoodDrag: before and after mutual attn)
    assert w.count(2) == families == emulated.no_grad_captures and w.count(0) == 0


def test_mutual_attention_from_a_later_step_is_another_graph(emulated):
    """The same timesteps, with mutual self-attention switched on from step 2 instead of step 0: the graphs of the
    steps before 2 must be other graphs (the key's context), or the render would replay the wrong attention."""
    m0, m = tiny_model(seed=0), tiny_model(seed=0)
    set_speed(m, cuda_graph=True)
    emulated.unet = m.unet
    images = []
    for model in (m0, m):
        s = _session(model)
        s.step(2)
        first = np.asarray(s.result())
        s.configure(attn_start_step=2)
        images.append((first, np.asarray(s.result())))
    assert np.array_equal(images[0][0], images[1][0]) and np.array_equal(images[0][1], images[1][1])
    assert not np.array_equal(images[0][0], images[0][1])         # the setting changes the image


def test_rewind_and_a_new_lora_or_prompt_recapture_and_stay_exact(emulated):
    m0, m = tiny_model(seed=0), tiny_model(seed=0)
    set_speed(m, cuda_graph=True)
    emulated.unet = m.unet
    a, b = _session(m0), _session(m)
    a.step(4); b.step(4)
    a.rewind(3); b.rewind(3)
    a.step(2); b.step(2)
    assert torch.equal(a.current_latent(), b.current_latent()) and a.handles == b.handles
    assert emulated.captures == 2                         # the LoRA fine-tune's step and the drag step
    for s in (a, b):                                      # another LoRA: the merged weights live elsewhere
        s.configure(lora_steps=3)
        s.step(2)
    assert torch.equal(a.current_latent(), b.current_latent())
    assert emulated.captures == 3        # the fine-tune's graph replayed; the first LoRA's drag graph kept (its addresses)
    for s in (a, b):                                      # back to the first LoRA (merged again), then a new prompt
        s.configure(lora_steps=2)
        s.step(2)
        s.prompt = "a yellow disc"
        s.step(2)
    assert torch.equal(a.current_latent(), b.current_latent()) and a.handles == b.handles
    assert emulated.captures >= 4 and graphs.stats(m)["eager_calls"] == 0


def test_a_failed_capture_warns_once_and_the_edit_goes_on_eagerly(monkeypatch):
    emu = Emulation(fail=True)
    monkeypatch.setattr(graphs, "_make_graphed", emu)
    monkeypatch.setattr(graphs, "_graph_no_grad", emu.no_grad)
    monkeypatch.setattr(graphs, "_pool", lambda: "pool")
    monkeypatch.setattr(graphs, "check_model", lambda model: None)
    _, recs0, lat0 = _edit(tiny_model(seed=0), "dragdiffusion", 4)
    m = tiny_model(seed=0)
    set_speed(m, cuda_graph=True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _, recs1, lat1 = _edit(m, "dragdiffusion", 4)
    assert recs1 == recs0 and torch.equal(lat1, lat0)
    assert sum("CUDA graph capture of the drag step" in str(x.message) for x in w) == 1   # once for its key
    st = graphs.stats(m)
    inversion, lora_steps = m.default_config(**FAST).drag_step_index, FAST["lora_steps"]
    assert st["captures"] == 0 and st["eager_calls"] == lora_steps + 4 + inversion
    assert len(st["failures"]) == 3                # each key once: the fine-tune, the drag, the inversion's UNet call
    assert all("operation not permitted" in f for f in st["failures"])


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
    assert graphs.stats(m)["drag_graphs"] == 0


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
    assert g["max_dlatent_vs_first_row"] == 0 and g["graphs"]["drag_graphs"] == 1 and g["graphs"]["lora_graphs"] == 1
    assert g["graphs"]["no_grad_graphs"] > 1
    assert g["re_edit_steps"] == 4 and g["graphs"]["eager_calls"] == 0
    assert rows["baseline"]["re_edit_s"] > 0 and g["re_edit_s"] > 0
    text = speed_table(res)
    assert "re_edit_s" in text and f"cuda graphs: {g['graphs']['captures']} captures" in text


def test_bench_speed_row_on_a_cpu_says_why_it_cannot_run():
    from dragnb.bench import bench_speed, speed_table
    res = bench_speed("tiny", size=32, drag_steps=2, lora_steps=1, variants=["cuda graphs", "baseline"],
                      verbose=False)
    assert "needs a model on a CUDA device" in res["rows"][0]["error"] and "error" not in res["rows"][1]
    assert "cuda graphs" in speed_table(res) and "failed" in speed_table(res)


def test_the_prepared_gpu_call_with_cuda_graphs_on_the_cpu(emulated, tmp_path):
    """benchmarks/gpu_sd_timings.py as the GPU session runs it (--speed cuda_graph, the two speed rows with a
    re-drag), on the tiny model with the emulation: every stage graphed, nothing eager, the table says so."""
    import json

    from benchlib import load_benchmark
    mod = load_benchmark("gpu_sd_timings.py")
    mod.main([str(tmp_path), "--quick", "--speed", "cuda_graph", "--speed-variants",
              "baseline,cuda graphs,cuda graphs + channels_last", "--re-edit-steps", "3", "--no-official",
              "--lora-steps", "2", "--profile", "cuda_graph+channels_last"])
    res = json.loads((tmp_path / "gpu_sd_timings.json").read_text())
    b = res["bench_stages"]
    assert res["setup"]["speed"] == {"cuda_graph": True} and b["speed"]["cuda_graph"]
    assert b["graphs"]["eager_calls"] == 0 and b["graphs"]["drag_graphs"] >= 1 and b["graphs"]["lora_graphs"] == 1
    assert b["first_drag_step_s"] > 0 and b["whole_edit_s"] > b["lora_s"]
    rows = {r["variant"]: r for r in res["speed"]["rows"]}
    assert all("error" not in r for r in rows.values()) and rows["cuda graphs"]["re_edit_steps"] == 3
    assert rows["cuda graphs + channels_last"]["speed"]["channels_last"] and rows["cuda graphs + channels_last"]["graphs"]
    (prof,) = res["profile"]                                  # two speed words joined by '+' make one profiled run
    assert "error" not in prof and prof["speed"]["cuda_graph"] and prof["speed"]["channels_last"]
    text = (tmp_path / "gpu_sd_timings.txt").read_text()
    assert "first_drag_step_s" in text and "cuda graphs:" in text and "re_edit_s" in text


def test_graphs_do_not_keep_a_dropped_model_alive(emulated):
    """The graphs live as long as their UNet (a weak key) and must not hold it: a notebook that loads models again
    and again would keep every UNet and its graph memory otherwise."""
    import gc
    import weakref
    m = tiny_model(seed=0)
    set_speed(m, cuda_graph=True)
    s = _session(m)
    s.step(2)
    s.result()
    st = graphs.stats(m)
    assert st["drag_graphs"] == st["lora_graphs"] == 1 and st["no_grad_graphs"] > 0
    ref = weakref.ref(m.unet)
    emulated.fns.clear()                   # what a real graph does not keep
    del s, m
    gc.collect()
    assert ref() is None


def test_a_model_moved_off_the_gpu_runs_eagerly_without_trying(emulated, monkeypatch):
    """cuda_graph stays set on a model moved to the CPU afterwards: its edits run eagerly, nothing is captured and
    nothing warns (graphs.active is False there)."""
    m = tiny_model(seed=0)
    set_speed(m, cuda_graph=True)                              # accepted (the fixture lets a CPU model pass)
    monkeypatch.undo()                                         # the real check: this model is on the CPU
    assert m.speed["cuda_graph"] and not graphs.active(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, recs1, lat1 = _edit(m, "dragdiffusion", 3)
    _, recs0, lat0 = _edit(tiny_model(seed=0), "dragdiffusion", 3)
    assert recs1 == recs0 and torch.equal(lat1, lat0)
    assert emulated.captures == emulated.no_grad_captures == 0 and graphs.stats(m)["replays"] == 0


def test_a_generated_image_in_graphs_is_the_eager_one(emulated):
    """DragSession.generate samples with classifier-free guidance (the empty prompt's embeddings read by the graph):
    graphed, the same image and latents; a second generation replays."""
    m0, m = tiny_model(seed=0), tiny_model(seed=0)
    set_speed(m, cuda_graph=True)
    emulated.unet = m.unet
    kw = dict(prompt="a disc", seed=3, config=m.default_config(n_inference_steps=8))
    a, b = DragSession.generate(m0, **kw), DragSession.generate(m, **kw)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    n = emulated.no_grad_captures
    assert n == 1 and graphs.stats(m)["eager_calls"] == 0      # one graph for the 8 sampling steps
    DragSession.generate(m, **kw)
    assert emulated.no_grad_captures == n


def test_profile_of_a_drag_step_eager_and_graphed(emulated):
    """dragnb.bench.profile_drag (part 4 of the GPU call): per-step figures from torch's profiler, the kernel time 0
    on a CPU, and the model's options put back afterwards (graphs dropped, as set_speed(cuda_graph=False) does)."""
    from dragnb.bench import profile_drag, profile_table
    m = tiny_model(seed=0)
    eager = profile_drag(m, size=32, lora_steps=1, warmup_steps=1, steps=2)
    assert eager["steps"] == 2 and eager["wall_s_per_step"] > 0 and eager["device_s_per_step"] == 0
    assert eager["gpu_busy"] is None and eager["aten_ops_per_step"] > 50 and eager["top_host"]
    assert not eager["speed"]["cuda_graph"] and "graphs" not in eager
    graphed = profile_drag(m, size=32, speed={"cuda_graph": True}, lora_steps=1, warmup_steps=1, steps=2)
    assert graphed["speed"]["cuda_graph"] and graphed["graphs"]["drag_graphs"] == 1
    assert graphed["graphs"]["eager_calls"] == 0 and not m.speed["cuda_graph"]
    text = profile_table(graphed)
    assert text.startswith("drag step profile (tiny-0 32 px, cpu float32, cuda_graph, 2 steps)")
    assert "GPU busy n/a (no GPU)" in text and "in 0 kernels" in text and "most host time" in text
    assert eager["kernels_per_step"] == 0 and not eager["top_device"]        # no device events on a CPU
    # the render (the final denoising and decoding) is profiled too, after a first render that captures its graphs
    for r in (eager["render"], graphed["render"]):
        assert r["wall_s_per_step"] > 0 and r["aten_ops_per_step"] > 10 and r["top_host"]
    assert graphed["graphs"]["no_grad_graphs"] >= 1
    assert "render profile (tiny-0 32 px, cpu float32, cuda_graph: denoising" in text and "a call" in text
    with pytest.raises(ValueError, match="steps=0"):
        profile_drag(m, size=32, steps=0)


def test_the_prepared_gpu_call_refuses_unknown_words_before_it_starts(tmp_path, capsys):
    """A misspelt speed row or profile run is refused at once, naming it, before any part spends GPU time."""
    from benchlib import load_benchmark
    mod = load_benchmark("gpu_sd_timings.py")
    with pytest.raises(SystemExit):
        mod.main([str(tmp_path / "a"), "--quick", "--speed-variants", "baseline,cuda graph"])
    assert "['cuda graph'] are not rows of bench_speed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main([str(tmp_path / "b"), "--quick", "--profile", "eager,cuda_graph+channel_last"])
    assert "the run 'cuda_graph+channel_last' is neither" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
