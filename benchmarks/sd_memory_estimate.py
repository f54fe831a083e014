"""How much memory an SD-1.5-size edit keeps for its backward passes, counted on the CPU (no GPU needed).

A GPU's peak during a drag step or a LoRA update is about: the weights + the activations autograd saves in the
forward pass for the backward + a transient of the backward itself. The first two do not depend on the device:
this script builds `random_sd15()` in bfloat16 (the byte size of float16) under the same autocast as an edit,
runs one drag-step forward (a latent that needs grad; the full UNet output and `up_blocks[2]`'s features) and one
LoRA-update forward (batch 4, rank-16 adapters on the attention projections, the only trainable weights), and sums
the distinct storages that autograd saved (`torch.autograd.graph.saved_tensors_hooks`). Then again with
`dragnb.set_speed(model, gradient_checkpointing=True)`.

    python benchmarks/sd_memory_estimate.py                 # SD-1.5 at 512 px: about 1 minute on 2 cores
    python benchmarks/sd_memory_estimate.py --model tiny --size 64   # smoke run

It is an estimate, not a GPU measurement: CPU autocast keeps a few ops in another dtype than CUDA's, the
backward's transient and the allocator's slack come on top, and CUDA kernels may save other tensors.
`benchmarks/gpu_sd_timings.sh` measures the real peaks (`torch.cuda.max_memory_allocated`) on the GPU machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from dragnb import lora, set_speed  # noqa: E402
from dragnb.bench import bench_session, model_by_name  # noqa: E402

GIB = 2 ** 30


def saved_bytes(fn) -> tuple[int, object]:
    """(bytes of the distinct storages autograd saves while `fn()` runs, fn's result)."""
    seen: dict[tuple, int] = {}

    def pack(t):
        s = t.untyped_storage()
        seen[(s.data_ptr(), s.nbytes())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def estimate(model_name: str = "random-sd15", size: int = 512, lora_batch: int = 4, rank: int = 16) -> dict:
    """Saved-activation bytes of one drag step (`DragSession.step`, the official defaults but 4 inference steps and
    no LoRA, to keep the CPU set-up short) and of one LoRA update (`lora.train_lora`, one step), without and with
    gradient checkpointing, on `model_name` in bfloat16."""
    dt = torch.bfloat16
    m = model_by_name(model_name, "cpu", dt)
    weights = {name: sum(p.numel() * p.element_size() for p in mod.parameters()) / GIB
               for name, mod in (("unet", m.unet), ("vae", m.vae), ("text_encoder", m.text_encoder)) if mod is not None}
    s = bench_session(m, size, m.default_config(lora_steps=0, n_inference_steps=4, drag_steps=4, reach_distance=0.5),
                      mask=False)
    s.prepare(progress=False)
    z0 = m.encode(s.spec.image_tensor())
    cond = m.encode_prompt("a photo")
    res = dict(model=model_name, size=size, lora_batch=lora_batch, rank=rank, weights_gib=weights, rows=[])
    for ckpt in (False, True):
        set_speed(m, gradient_checkpointing=ckpt)
        t0 = time.perf_counter()
        s.reset()
        drag_b, _ = saved_bytes(lambda: s.step(1))
        lora_b, _ = saved_bytes(lambda: lora.train_lora(m, z0, cond, rank=rank, steps=1, batch_size=lora_batch))
        res["rows"].append(dict(gradient_checkpointing=ckpt, drag_step_saved_gib=drag_b / GIB,
                                lora_step_saved_gib=lora_b / GIB, seconds=time.perf_counter() - t0))
    return res


def table(res: dict) -> str:
    w = res["weights_gib"]
    wsum = sum(w.values())
    lines = [f"{res['model']} at {res['size']} px, 16-bit: weights {wsum:.2f} GiB ("
             + ", ".join(f"{k} {v:.2f}" for k, v in w.items()) + ")",
             f"{'gradient checkpointing':24s} {'drag step: saved':>17s} {'+ weights':>10s} "
             f"{'LoRA step (batch ' + str(res['lora_batch']) + '): saved':>27s} {'+ weights':>10s}"]
    for r in res["rows"]:
        lines.append(f"{str(r['gradient_checkpointing']):24s} {r['drag_step_saved_gib']:13.2f} GiB "
                     f"{r['drag_step_saved_gib'] + wsum:6.2f} GiB {r['lora_step_saved_gib']:23.2f} GiB "
                     f"{r['lora_step_saved_gib'] + wsum:6.2f} GiB")
    lines.append("(a lower bound on the GPU peak of each stage: the backward's transient and the allocator's slack "
                 "come on top)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-sd15", help="random-sd15 (default), tiny, or anything load_model takes")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--lora-batch", type=int, default=4, help="LoRA batch (official 4)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = estimate(a.model, a.size, a.lora_batch)
    print(table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
