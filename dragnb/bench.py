"""Stage timings of one edit (LoRA, inversion, source features, one drag step, denoise, whole edit) and the
naive no-cache baseline, so the speed-up of the session's caches is a measured ratio.

Used by `python -m dragnb bench` and `benchmarks/bench_stages.py`.
"""
from __future__ import annotations

import platform
import resource
import time

import numpy as np
import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def model_by_name(name, device=None, dtype=None):
    """"tiny", "random-sd15" (the SD-1.5 architecture, random weights: for timing), or anything `load_model` takes."""
    from .models import load_model, random_sd15, tiny_model
    if name == "tiny":
        return tiny_model(device=device or "cpu", dtype=dtype)
    if name == "random-sd15":
        return random_sd15(device=device, dtype=dtype)
    return load_model(name, device=device, dtype=dtype)


def _scene(size):
    """A smooth synthetic image with a blob to drag (no model-specific content needed for timing)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.3 + 0.4 * xx, 0.5 - 0.3 * yy, 0.6 + 0.0 * xx], -1)
    blob = ((xx - 0.35) ** 2 + (yy - 0.5) ** 2) < 0.02
    img[blob] = (0.9, 0.2, 0.1)
    return (img * 255).astype(np.uint8)


def bench_session(model, size: int, config, mask: bool = True):
    """The timing edit: a `DragSession` on `_scene(size)` with one drag across the blob and, with `mask`, an
    editable middle band."""
    from .session import DragSession
    s = DragSession(model, _scene(size), prompt="a photo", config=config)
    s.add_drag((0.35 * size, 0.5 * size), (0.6 * size, 0.5 * size))
    if mask:
        band = np.zeros((size, size), bool)
        band[size // 4: 3 * size // 4, size // 6: 5 * size // 6] = True
        s.set_mask(band)
    return s


def bench_stages(model="tiny", size=None, device=None, dtype=None, drag_steps=10, lora_steps=80, repeats=1,
                 verbose=True, speed: dict | None = None) -> dict:
    """Each stage of one edit timed with its peak memory, the whole edit (the first drag step, which builds the
    optimiser and captures a CUDA graph, counted as taken), a cached re-edit and the naive no-cache one.
    `speed`: `set_speed` options for the model (e.g. {"cuda_graph": True})."""
    from .speed import set_speed, speed_of
    t0 = time.perf_counter()
    m = model_by_name(model, device, dtype)
    if speed:
        set_speed(m, **speed)
    t_load = time.perf_counter() - t0
    dev = m.device
    size = size or m.native_size
    cfg = m.default_config(lora_steps=lora_steps, drag_steps=drag_steps, reach_distance=0.5)
    rows = []
    for rep in range(repeats):
        s = bench_session(m, size, cfg)
        r = _edit_once(s, drag_steps, dev)
        r["whole_edit_s"] = (r["lora_s"] + r["inversion_and_features_s"] + r["first_drag_step_s"]
                             + (drag_steps - 1) * r["drag_step_s"] + r["denoise_s"])
        # cached re-edit after moving a target: the session keeps LoRA, inversion and source features
        t = time.perf_counter()
        s.set_drags([((0.35 * size, 0.5 * size), (0.6 * size, 0.6 * size))])
        s.step(drag_steps); s.result(); _sync(dev)
        r["re_edit_cached_s"] = time.perf_counter() - t
        # naive baseline: every re-edit recomputes LoRA, inversion and source features (no caching), and every
        # drag step runs a second full UNet forward for the source features
        s.clear_caches()
        t = time.perf_counter()
        s.set_drags([((0.35 * size, 0.5 * size), (0.6 * size, 0.45 * size))])
        s.prepare(progress=False)
        for _ in range(drag_steps):
            s.cache.discard(s.spec, "features")
            s.prepare(progress=False)   # re-extract source features (one full UNet forward)
            s.step(1)
        s.result(); _sync(dev)
        r["re_edit_naive_s"] = time.perf_counter() - t
        r["speedup_cached_vs_naive"] = r["re_edit_naive_s"] / r["re_edit_cached_s"]
        rows.append(r)
    res = {k: float(np.median([row[k] for row in rows])) for k in rows[0]}
    res.update(model=model, size=size, device=str(dev), dtype=str(m.dtype).replace("torch.", ""),
               drag_steps=drag_steps, lora_steps=lora_steps, repeats=repeats, load_s=t_load,
               threads=torch.get_num_threads(), machine=platform.processor() or platform.machine(),
               gpu=torch.cuda.get_device_name() if dev.type == "cuda" else None, torch=torch.__version__,
               speed=speed_of(m))
    if dev.type == "cuda":
        res["reserved_mb"] = torch.cuda.memory_reserved() / 2**20   # what the allocator holds, graph pools included
    if m.speed.get("cuda_graph"):
        from . import graphs
        res["graphs"] = graphs.stats(m)
    if verbose:
        print(f"dragnb bench: model={model} size={size} device={res['device']} dtype={res['dtype']} "
              f"threads={res['threads']} repeats={repeats}"
              + "".join(f" {k}={v}" for k, v in res["speed"].items() if v))
        for k in ("lora_s", "inversion_and_features_s", "first_drag_step_s", "drag_step_s", "denoise_s", "whole_edit_s",
                  "re_edit_cached_s", "re_edit_naive_s", "speedup_cached_vs_naive", "lora_peak_mb",
                  "invert_peak_mb", "drag_peak_mb", "denoise_peak_mb"):
            print(f"  {k:28s} {res[k]:10.3f}")
    return res


#: The speed-option rows `bench_speed` measures, in order: the likely large levers first, since a deadline may cut the
#: list. A compile row and a dtype row each load the model afresh (a compiled UNet stays compiled; a dtype is the
#: model's), so they leave the others' model alone. Names hold no comma (the command lines split lists on commas).
SPEED_VARIANTS = (
    ("baseline", {}),
    ("cuda graphs", {"cuda_graph": True}),
    ("cuda graphs + channels_last", {"cuda_graph": True, "channels_last": True}),
    ("compile (regional)", {"compile": True}),
    ("checkpointing (LoRA only)", {"gradient_checkpointing": "lora"}),
    ("channels_last", {"channels_last": True}),
    ("gradient_checkpointing", {"gradient_checkpointing": True}),
    ("channels_last + checkpointing", {"channels_last": True, "gradient_checkpointing": True}),
    ("bfloat16", {"dtype": "bfloat16"}),
)


def _edit_once(s, drag_steps: int, dev) -> dict:
    """One edit of session `s` from empty caches, each stage timed on its own through the cache's public stages
    (prepare() then finds the LoRA cached), with its peak memory."""
    r = {}
    s.clear_caches()
    _sync(dev); _reset_peak(dev)
    t = time.perf_counter(); s.cache.train_lora(s.spec); _sync(dev)
    r["lora_s"] = time.perf_counter() - t; r["lora_peak_mb"] = _peak_mb(dev); _reset_peak(dev)
    t = time.perf_counter(); s.prepare(progress=False); _sync(dev)
    r["inversion_and_features_s"] = time.perf_counter() - t; r["invert_peak_mb"] = _peak_mb(dev); _reset_peak(dev)
    t = time.perf_counter(); s.step(1); _sync(dev)
    r["first_drag_step_s"] = time.perf_counter() - t      # builds the optimiser (and compiles, when compiled)
    t = time.perf_counter(); recs = s.step(drag_steps - 1); _sync(dev)
    r["drag_step_s"] = (time.perf_counter() - t) / max(1, len(recs)); r["drag_peak_mb"] = _peak_mb(dev)
    _reset_peak(dev)
    t = time.perf_counter(); s.result(); _sync(dev)
    r["denoise_s"] = time.perf_counter() - t; r["denoise_peak_mb"] = _peak_mb(dev)
    return r


def _re_edit(s, steps: int, dev) -> dict:
    """A re-drag on the cached LoRA and inversion: back to the inverted latent, `steps` drag steps, the result."""
    _sync(dev)
    t = time.perf_counter(); s.reset(); recs = s.step(steps); s.result(); _sync(dev)
    return {"re_edit_s": time.perf_counter() - t, "re_edit_steps": len(recs)}


def _device_us(ev) -> float:
    """An averaged profiler event's own device (kernel) time in microseconds (torch renamed the field in 2.4)."""
    return float(getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0.0) or 0.0)


def profile_drag(model="tiny", size=None, device=None, dtype=None, speed=None, lora_steps=2, warmup_steps=3,
                 steps=10, top=12) -> dict:
    """Where a drag step's wall time goes: `steps` steps of a prepared session (after `warmup_steps`, which capture the
    CUDA graphs when `speed` asks for them) under torch's profiler. Reports the wall time per step, the kernel time per
    step (the GPU's busy time; 0 on a CPU), their ratio, the operators launched from Python per step, and the
    kernels with the most time and the host operators with the most time. A GPU busy for most of the wall time is bound by its
    arithmetic and memory; one idle for most of it waits for the host (launches, synchronisations, Python). Then the
    same for one render (`render_latent`: the final denoising with mutual self-attention and the decoding), after a
    first render that captures its graphs, under `"render"`."""
    from .speed import set_speed
    if steps < 1 or warmup_steps < 1:
        raise ValueError(f"steps={steps}, warmup_steps={warmup_steps}: use 1 or more of each")
    m = model if not isinstance(model, str) else model_by_name(model, device, dtype)
    before = set_speed(m, **(speed or {}))
    try:
        return _profile(m, size, lora_steps, warmup_steps, steps, top)
    finally:   # the model's options as they were (a compilation stays: it cannot be undone in place)
        set_speed(m, **{k: v for k, v in before.items() if k != "compile"})


def _profile(m, size, lora_steps, warmup_steps, steps, top) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from .speed import speed_of
    dev = m.device
    size = size or m.native_size
    cfg = m.default_config(lora_steps=lora_steps, drag_steps=warmup_steps + steps, reach_distance=0.5)
    s = bench_session(m, size, cfg)
    s.prepare(progress=False)
    s.step(warmup_steps)
    _sync(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        recs = s.step(steps)
        _sync(dev)
        wall = time.perf_counter() - t
    res = dict(model=m.name, size=size, device=str(dev), dtype=str(m.dtype).replace("torch.", ""), speed=speed_of(m),
               steps=len(recs), **_summary(prof, wall, max(1, len(recs)), top, dev))
    # the final denoising with mutual self-attention and the decoding, as result() runs them: once to warm up (and
    # capture its graphs), then once profiled
    s.render_latent(s.current_latent())
    _sync(dev)
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        s.render_latent(s.current_latent())
        _sync(dev)
        wall = time.perf_counter() - t
    res["render"] = _summary(prof, wall, 1, top, dev)
    if m.speed.get("cuda_graph"):
        from . import graphs
        res["graphs"] = graphs.stats(m)
    return res


def _summary(prof, wall: float, n: int, top: int, dev) -> dict:
    """Per-unit (a drag step, a render) figures of one profiler run over `n` units that took `wall` seconds."""
    from torch.autograd import DeviceType
    ev = prof.key_averages()
    # the kernels are the events on the device (a host operator's device time repeats its kernels'): their sum is
    # the GPU's busy time, as the footer of torch's profiler table counts it. Their count per step shows whether the
    # kernels inside graph replays were traced (about as many as eagerly) or not (far fewer)
    kernels = [e for e in ev if getattr(e, "device_type", DeviceType.CPU) != DeviceType.CPU]
    device_us = sum(_device_us(e) for e in kernels)
    top_device = sorted(kernels, key=_device_us, reverse=True)[:top]
    on_device = {id(e) for e in kernels}
    top_host = sorted((e for e in ev if id(e) not in on_device), key=lambda e: e.self_cpu_time_total,
                      reverse=True)[:top]
    ops = sum(e.count for e in ev if e.key.startswith("aten::"))
    row = lambda e: dict(op=e.key, calls_per_step=e.count / n, device_ms_per_step=_device_us(e) / 1e3 / n,  # noqa: E731
                         host_ms_per_step=e.self_cpu_time_total / 1e3 / n)
    return dict(wall_s_per_step=wall / n, device_s_per_step=device_us / 1e6 / n,
                gpu_busy=(device_us / 1e6) / wall if dev.type == "cuda" else None, aten_ops_per_step=ops / n,
                kernels_per_step=sum(e.count for e in kernels) / n,
                top_device=[row(e) for e in top_device if _device_us(e) > 0], top_host=[row(e) for e in top_host])


def profile_table(res: dict) -> str:
    """The profile as text: for the drag step, and for the render where it was profiled, one summary line and the
    two top lists."""
    on = ", ".join(k for k, v in res["speed"].items() if v) or "eager"
    head = f"{res['model']} {res['size']} px, {res['device']} {res['dtype']}, {on}"
    lines = _summary_lines(res, f"drag step profile ({head}, {res['steps']} steps)", "a step")
    if res.get("render"):
        lines += _summary_lines(res["render"], f"render profile ({head}: denoising with mutual self-attention and "
                                               f"decoding, one call)", "a call")
    return "\n".join(lines)


def _summary_lines(r: dict, title: str, unit: str) -> list[str]:
    busy = "n/a (no GPU)" if r["gpu_busy"] is None else f"{r['gpu_busy']:.0%}"
    lines = [f"{title}: wall {r['wall_s_per_step'] * 1e3:.1f} ms {unit}, kernels {r['device_s_per_step'] * 1e3:.1f} ms "
             f"in {r['kernels_per_step']:.0f} kernels (GPU busy {busy}), {r['aten_ops_per_step']:.0f} aten ops "
             f"launched from Python"]
    for label, key, ms in (("kernels with the most time", "top_device", "device_ms_per_step"),
                           ("most host time", "top_host", "host_ms_per_step")):
        if r[key]:
            lines.append(f"  {label}: " + "; ".join(f"{x['op']} {x[ms]:.2f} ms ({x['calls_per_step']:g}/{unit[2:]})"
                                                    for x in r[key]))
    return lines


def bench_speed(model="tiny", size=None, device=None, dtype=None, drag_steps=6, lora_steps=6, variants=None,
                deadline=None, on_row=None, verbose=True, re_edit_steps=0) -> dict:
    """Each `dragnb.set_speed` option (and bfloat16) on the same edit: per stage seconds and peak memory, and how
    far the dragged latent lands from the baseline's (the options change kernels, not the algorithm).

    `variants`: names from `SPEED_VARIANTS` (default all). `deadline`: a `time.perf_counter()` value; a row
    that would likely end after it is skipped and named in `skipped`. `on_row(result)` after each row.
    Rows are measured on one loaded model (a dtype row loads it again), each from empty caches, with
    `lora_steps` LoRA updates and `drag_steps` drag steps (the first, which builds the optimiser and
    compiles a compiled UNet, is reported apart). `re_edit_steps` > 0: each row then also times a re-drag of that
    many steps on the cached LoRA and inversion, with the result (`re_edit_s`: the "re-drag within 2 s" figure)."""
    from . import graphs
    from .speed import set_speed, speed_of
    names = [n for n, _ in SPEED_VARIANTS]
    variants = list(variants or names)
    bad = [v for v in variants if v not in names]
    if bad:
        raise ValueError(f"speed variants {bad} are unknown: use some of {names}")
    if drag_steps < 2:
        raise ValueError(f"drag_steps={drag_steps}: use 2 or more (the first step is reported apart)")
    m = model_by_name(model, device, dtype)
    dev = m.device
    size = size or m.native_size
    res = dict(model=model, size=size, device=str(dev), dtype=str(m.dtype).replace("torch.", ""),
               drag_steps=drag_steps, lora_steps=lora_steps, torch=torch.__version__,
               gpu=torch.cuda.get_device_name() if dev.type == "cuda" else None, rows=[], skipped=[])
    base_latent = None
    last_s = 0.0
    for name in variants:
        opts = dict(SPEED_VARIANTS)[name]
        # a reload (dtype row) or a compilation costs more than the row before it: a floor on the estimate
        extra = 0.0 if dev.type == "cpu" else 150.0 if "compile" in opts else 30.0 if "dtype" in opts else 0.0
        if deadline is not None and time.perf_counter() + max(1.5 * last_s, extra) > deadline:
            res["skipped"].append(name)
            continue
        t_row = time.perf_counter()
        row = {"variant": name}
        try:
            mm = m
            if "dtype" in opts or "compile" in opts:   # a model of its own (the same seeded weights)
                mm = model_by_name(model, device, getattr(torch, opts["dtype"]) if "dtype" in opts else m.dtype)
            set_speed(mm, channels_last=opts.get("channels_last", False),
                      gradient_checkpointing=opts.get("gradient_checkpointing", False),
                      compile=opts.get("compile") or None, cuda_graph=opts.get("cuda_graph", False))
            row["speed"] = speed_of(mm)
            cfg = mm.default_config(lora_steps=lora_steps, drag_steps=drag_steps, reach_distance=0.5)
            s = bench_session(mm, size, cfg)
            row.update(_edit_once(s, drag_steps, dev))
            lat = s.current_latent().detach().float().cpu()
            if re_edit_steps:
                row.update(_re_edit(s, re_edit_steps, dev))
            if base_latent is None:
                base_latent = lat
            row["max_dlatent_vs_first_row"] = float((lat - base_latent).abs().max())
            if opts.get("cuda_graph"):
                row["graphs"] = graphs.stats(mm)
            if dev.type == "cuda":   # what the allocator holds after the row, graph pools included (peaks count tensors)
                row["reserved_mb"] = torch.cuda.memory_reserved() / 2**20
            if mm is not m:
                del s, mm
        except Exception as e:  # noqa: BLE001 - a row that fails is reported, the others still run
            row["error"] = f"{type(e).__name__}: {e}"
        row["row_s"] = last_s = time.perf_counter() - t_row
        res["rows"].append(row)
        if verbose:
            print("  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if on_row is not None:
            on_row(res)
    return res


def speed_table(res: dict) -> str:
    """`bench_speed`'s rows as a text table, with the drag step's ratio to the first row."""
    rows = [r for r in res["rows"] if "error" not in r]
    if not rows:
        return ("speed options: no row ran" + "".join(f"\n  {r['variant']}: {r['error']}" for r in res["rows"])
                + (f"\nskipped (deadline): {', '.join(res['skipped'])}" if res["skipped"] else ""))
    b = rows[0]
    cols = ("lora_s", "lora_peak_mb", "inversion_and_features_s", "first_drag_step_s", "drag_step_s", "drag_peak_mb",
            "denoise_s") + (("re_edit_s",) if all("re_edit_s" in r for r in rows) else ())
    head = f"{'variant':30s} " + " ".join(f"{c:>12s}" for c in cols) + f" {'drag x base':>11s} {'max dlat':>9s}"
    lines = [f"speed options: {res['model']} {res['size']} px, {res['device']} {res['dtype']}, {res['lora_steps']} LoRA "
             f"and {res['drag_steps']} drag steps per row"
             + (f"; re_edit_s: a re-drag of {rows[0]['re_edit_steps']} steps on the cached LoRA and inversion, with "
                "the result" if "re_edit_s" in cols else ""), head]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"{r['variant']:30s} failed: {r['error']}")
            continue
        lines.append(f"{r['variant']:30s} " + " ".join(f"{r[c]:12.3f}" for c in cols)
                     + f" {b['drag_step_s'] / r['drag_step_s']:11.2f} {r['max_dlatent_vs_first_row']:9.2g}")
    for r in rows:
        if "graphs" in r:
            from .graphs import stats_line
            lines.append(f"{r['variant']}: {stats_line(r['graphs'])}")
    if res["skipped"]:
        lines.append(f"skipped (deadline): {', '.join(res['skipped'])}")
    return "\n".join(lines)
