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


def bench_stages(model="tiny", size=None, device=None, dtype=None, drag_steps=10, lora_steps=80, repeats=1,
                 verbose=True) -> dict:
    from .session import DragSession
    t0 = time.perf_counter()
    m = model_by_name(model, device, dtype)
    t_load = time.perf_counter() - t0
    dev = m.device
    size = size or m.native_size
    cfg = m.default_config(lora_steps=lora_steps, drag_steps=drag_steps, reach_distance=0.5)
    rows = []
    for rep in range(repeats):
        s = DragSession(m, _scene(size), prompt="a photo", config=cfg)
        s.add_drag((0.35 * size, 0.5 * size), (0.6 * size, 0.5 * size))
        mask = np.zeros((size, size), bool)
        mask[size // 4: 3 * size // 4, size // 6: 5 * size // 6] = True
        s.set_mask(mask)
        r = {}
        _sync(dev); _reset_peak(dev)
        # each stage timed on its own through the cache's public stages (prepare() runs them in order, cached)
        t = time.perf_counter()
        s.cache.train_lora(s.spec)
        _sync(dev); r["lora_s"] = time.perf_counter() - t; r["lora_peak_mb"] = _peak_mb(dev); _reset_peak(dev)
        t = time.perf_counter(); s.prepare(progress=False)  # inversion + features (LoRA cached above)
        _sync(dev); r["inversion_and_features_s"] = time.perf_counter() - t; r["invert_peak_mb"] = _peak_mb(dev)
        _reset_peak(dev)
        s.step(1)  # the first step builds the optimiser; time the next ones
        _sync(dev)
        t = time.perf_counter(); recs = s.step(drag_steps - 1); _sync(dev)
        r["drag_step_s"] = (time.perf_counter() - t) / max(1, len(recs)); r["drag_peak_mb"] = _peak_mb(dev)
        _reset_peak(dev)
        t = time.perf_counter(); s.result(); _sync(dev)
        r["denoise_s"] = time.perf_counter() - t; r["denoise_peak_mb"] = _peak_mb(dev)
        r["whole_edit_s"] = r["lora_s"] + r["inversion_and_features_s"] + drag_steps * r["drag_step_s"] + r["denoise_s"]
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
               gpu=torch.cuda.get_device_name() if dev.type == "cuda" else None, torch=torch.__version__)
    if verbose:
        print(f"dragnb bench: model={model} size={size} device={res['device']} dtype={res['dtype']} "
              f"threads={res['threads']} repeats={repeats}")
        for k in ("lora_s", "inversion_and_features_s", "drag_step_s", "denoise_s", "whole_edit_s",
                  "re_edit_cached_s", "re_edit_naive_s", "speedup_cached_vs_naive", "lora_peak_mb",
                  "invert_peak_mb", "drag_peak_mb", "denoise_peak_mb"):
            print(f"  {k:28s} {res[k]:10.3f}")
    return res
