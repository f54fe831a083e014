"""Command line: `python -m dragnb demo | edit | bench`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _point_pair(text: str):
    try:
        a, b = text.split(":")
        h = tuple(float(v) for v in a.split(","))
        t = tuple(float(v) for v in b.split(","))
        if len(h) != 2 or len(t) != 2:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--drag {text!r} is not of the form x0,y0:x1,y1 (e.g. 20,30:40,30)") from None
    return h, t


def _dtype(name):
    import torch
    if name is None:
        return None
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise argparse.ArgumentTypeError(f"--dtype {name!r}: use float32, float16 or bfloat16")
    return table[name]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dragnb", description="DragDiffusion drag editing from the command line.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="edit the shipped demo scene with preset drags on the shipped model",
                       description="Edit a shipped demo scene with preset drags and mask on the shipped small model; "
                                   "writes before.png, after.png, drag.gif and record.json into --out.")
    d.add_argument("--out", required=True, help="output folder (created)")
    d.add_argument("--steps", type=int, default=None, help="most drag steps (default: the model's config)")

    e = sub.add_parser("edit", help="drag points of an image",
                       description="Drag handle points of IMAGE to targets and write the edited image plus a JSON "
                                   "record (parameters, final handles, timings) next to it.")
    e.add_argument("image", help="input image (PNG/JPEG; RGBA, grayscale and 16-bit are converted)")
    e.add_argument("--drag", action="append", type=_point_pair, required=True, metavar="x0,y0:x1,y1",
                   help="handle x0,y0 to target x1,y1 in image pixels (x right, y down); repeat for several")
    e.add_argument("--mask", help="editable-region image (white = may change); default: the whole image")
    e.add_argument("--prompt", default="", help="text prompt (ignored by the demo model)")
    e.add_argument("--model", default="demo",
                   help="'demo' (shipped), a diffusers folder, a .safetensors checkpoint or a hub id (default: demo)")
    e.add_argument("--vae", default=None, help="optional separate VAE (folder or hub id)")
    e.add_argument("--steps", type=int, default=None, help="most drag steps (default 80)")
    e.add_argument("--lora-steps", type=int, default=None,
                   help="LoRA fine-tune steps (default: the model's: 80 official, 40 for the demo model; 0 = no LoRA)")
    e.add_argument("--lam", type=float, default=None, help="weight of the masked term (default 0.1)")
    e.add_argument("--inversion-strength", type=float, default=None, help="fraction inverted (default 0.7)")
    e.add_argument("--no-mutual-attention", action="store_true", help="plain denoising at the end")
    e.add_argument("--seed", type=int, default=0, help="seed of the LoRA fine-tune (default 0)")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.add_argument("--dtype", default=None, help="float32, float16, bfloat16 (default: float16 on cuda, float32 on cpu)")
    e.add_argument("--out", required=True, help="output image path (.png); the record goes to the same name .json")
    e.add_argument("--save-session", default=None, help="also save the session (.dragnb) to continue in a notebook")

    b = sub.add_parser("bench", help="time each stage (LoRA, inversion, drag step, denoise) and peak memory",
                       description="Time each stage of an edit and the naive no-cache baseline; see benchmarks/README.md.")
    b.add_argument("--model", default="tiny", help="tiny, demo, random-sd15, or anything load_model takes")
    b.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's native size)")
    b.add_argument("--device", default=None)
    b.add_argument("--dtype", default=None)
    b.add_argument("--drag-steps", type=int, default=10, help="drag steps to time (default 10)")
    b.add_argument("--lora-steps", type=int, default=80)
    b.add_argument("--repeats", type=int, default=1)
    b.add_argument("--json", default=None, help="write the figures to this JSON file")
    return p


def cmd_edit(a) -> int:
    from . import DragSession, load_model
    t0 = time.perf_counter()
    model = load_model(a.model, device=a.device, dtype=_dtype(a.dtype), vae=a.vae)
    t_load = time.perf_counter() - t0
    changes = {k: v for k, v in dict(drag_steps=a.steps, lora_steps=a.lora_steps, lam=a.lam,
                                     inversion_strength=a.inversion_strength).items() if v is not None}
    if a.no_mutual_attention:
        changes["mutual_attention"] = False
    s = DragSession(model, a.image, prompt=a.prompt, seed=a.seed, config=model.default_config(**changes))
    for h, t in a.drag:
        s.add_drag(h, t)
    if a.mask:
        s.set_mask(a.mask)
    timings = {"load_model": t_load}
    t = time.perf_counter(); s.prepare(); timings["prepare"] = time.perf_counter() - t
    t = time.perf_counter(); s.run(); timings["drag"] = time.perf_counter() - t
    t = time.perf_counter(); img = s.result(); timings["denoise"] = time.perf_counter() - t
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    img.save(a.out)
    record = dict(image=a.image, out=a.out, model=model.name, prompt=a.prompt, seed=a.seed, mask=a.mask,
                  config=s.config.to_dict(), drags=[dict(handle=h, target=t) for h, t in s.drags],
                  final_handles=s.handles, steps=s.n_steps, reached=s.reached, stop_reason=s.stop_reason,
                  final_loss=s.history[-1].loss if s.history else None,
                  timings_s={k: round(v, 3) for k, v in timings.items()}, counters=s.counters)
    rec_path = os.path.splitext(a.out)[0] + ".json"
    with open(rec_path, "w") as f:
        json.dump(record, f, indent=2)
    if a.save_session:
        s.save(a.save_session)
    print(f"wrote {a.out} and {rec_path}: {s.n_steps} steps, {s.stop_reason}, handles {s.handles}")
    return 0


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        if a.command == "edit":
            return cmd_edit(a)
        if a.command == "demo":
            from .demo.run import run_demo
            rec = run_demo(a.out, steps=a.steps)
            print(json.dumps({k: rec[k] for k in rec if k in ("timings_s", "final_handles", "drags")}, indent=1))
            print(f"wrote before.png, after.png, drag.gif, record.json into {a.out}")
            return 0
        if a.command == "bench":
            from .bench import bench_stages
            res = bench_stages(model=a.model, size=a.size, device=a.device, dtype=_dtype(a.dtype),
                               drag_steps=a.drag_steps, lora_steps=a.lora_steps, repeats=a.repeats)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(res, f, indent=2)
            return 0
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"dragnb: error: {e}", file=sys.stderr)
        return 2
    return 1
