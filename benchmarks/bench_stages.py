"""Time each stage of an edit (LoRA, inversion + source features, one drag step, denoise, whole edit), peak
memory, and the naive no-cache baseline (every re-edit recomputes LoRA, inversion and, at every drag step,
the source features with an extra full UNet forward), so the speed-up of the session's caches is a ratio.

    python benchmarks/bench_stages.py --model tiny --size 64            # CPU, seconds
    python benchmarks/bench_stages.py --model demo                       # the shipped model, CPU
    python benchmarks/bench_stages.py --model random-sd15 --size 512 --device cuda --dtype float16   # GPU
    python benchmarks/bench_stages.py --quick                            # CI smoke run (tiny, few steps)
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dragnb.bench import bench_stages  # noqa: E402
from dragnb.cli import _dtype  # noqa: E402
from dragnb.speed import parse_words  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default="tiny", help="tiny, demo, random-sd15 or anything load_model takes")
p.add_argument("--size", type=int, default=None)
p.add_argument("--device", default=None)
p.add_argument("--dtype", default=None)
p.add_argument("--drag-steps", type=int, default=10)
p.add_argument("--lora-steps", type=int, default=80)
p.add_argument("--repeats", type=int, default=1)
p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
p.add_argument("--json", default=None)
p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 32 px, 3 drag steps, 2 LoRA steps")
p.add_argument("--speed", default=None, metavar="OPTIONS",
               help="dragnb.set_speed options as the CLI's --speed words, e.g. cuda_graph (GPU) or channels_last")
a = p.parse_args()
if a.threads:
    import torch
    torch.set_num_threads(a.threads)
if a.quick:
    a.model, a.size, a.drag_steps, a.lora_steps = "tiny", 32, 3, 2
res = bench_stages(model=a.model, size=a.size, device=a.device, dtype=_dtype(a.dtype), drag_steps=a.drag_steps,
                   lora_steps=a.lora_steps, repeats=a.repeats, speed=parse_words(a.speed) if a.speed else None)
if a.json:
    with open(a.json, "w") as f:
        json.dump(res, f, indent=2)
