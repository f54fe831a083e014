"""Command line: `python -m dragnb demo | edit | bench | dragbench`.

Every user error — a bad option, an unreadable image or mask, a drag outside the image, an output path that
cannot be written — is one line on stderr and exit status 2, never a traceback. Output paths, the image, the mask
and the drags are checked before any model is loaded, so a mistake costs no waiting.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DTYPES = ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), like every other user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def _dtype_name(name: str) -> str:
    """--dtype: checked when the command line is read, before any work."""
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"{name!r} is not a dtype: use float32, float16 or bfloat16")
    return name


def _spread_count(text: str) -> int:
    n = _whole(1)(text)
    if n > 5:
        raise argparse.ArgumentTypeError(f"{text!r}: use 1 to 5 points a drag (the handle and up to four more)")
    return n


def _whole(least: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ {least}")
        return n
    return parse


def _speed_options(text: str) -> dict:
    """--speed: checked when the command line is read, before any work (`dragnb.speed.parse_words`)."""
    from .speed import parse_words
    try:
        return parse_words(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--speed {e}") from None


def _dtype(name):
    """A --dtype name -> torch dtype (None stays None, the device's default)."""
    import torch
    if name is None:
        return None
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"--dtype {name!r}: use float32, float16 or bfloat16")
    return table[name]


# ---- output paths, checked before any work -------------------------------------------------------

def _first_existing(path: str) -> str:
    """The path itself or its nearest existing ancestor."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    return p


def _check_new_file(path: str, option: str, extensions=None, create_folder: bool = True) -> None:
    """A file that will be written: not a folder, a known extension, and a folder that exists (or can be made)."""
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a folder: give a file path, e.g. "
                         f"{os.path.join(path, 'out' + (extensions or ('',))[0])!r}")
    ext = os.path.splitext(path)[1].lower()
    if extensions is not None and ext not in extensions:
        raise ValueError(f"{option} {path!r} does not end in an image extension ({ext or 'none'}): "
                         f"end it with one of {', '.join(extensions)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not create_folder and not os.path.isdir(folder):
        raise ValueError(f"{option} {path!r}: the folder {folder!r} does not exist: create it first, or give a "
                         "path in an existing folder")
    base = _first_existing(folder)
    if not os.path.isdir(base):
        raise ValueError(f"{option} {path!r}: {base!r} is a file, so the folder {folder!r} cannot be made: "
                         "choose another path")
    if not os.access(base, os.W_OK):
        raise ValueError(f"{option} {path!r}: the folder {base!r} is not writable: choose another path")


def _check_new_folder(path: str, option: str) -> None:
    """A folder that will be written into (created when missing): not a file, under a writable folder."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is an existing file, not a folder: give a folder path "
                         "(it is created when missing)")
    base = _first_existing(path)
    if not os.path.isdir(base):
        raise ValueError(f"{option} {path!r}: {base!r} is a file, so the folder cannot be made: choose another path")
    if not os.access(base, os.W_OK):
        raise ValueError(f"{option} {path!r}: the folder {base!r} is not writable: choose another path")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m dragnb", description="DragDiffusion drag editing from the command line.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="edit the shipped demo scene with preset drags on the shipped model",
                       description="Edit a shipped demo scene with preset drags and mask on the shipped small model; "
                                   "writes before.png, after.png, drag.gif and record.json into --out.")
    d.add_argument("--out", required=True, help="output folder (created)")
    d.add_argument("--steps", type=_whole(1), default=None, help="most drag steps (default: the model's config)")
    d.add_argument("--weights", default=None, metavar="DIR",
                   help="a demo-model weights folder to use instead of the shipped one (written by "
                        "`python -m dragnb.demo.train --out DIR` or `benchmarks/gpu_train.sh --unpack`)")
    d.add_argument("--spread", type=_spread_count, default=1, metavar="N",
                   help="N points on the dragged shape instead of one, each moved by the drag's offset, so the shape "
                        "moves whole (DragSession.spread_drag, the editor's Spread button; default 1: the preset drag)")

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
    e.add_argument("--steps", type=_whole(1), default=None, help="most drag steps (default 80)")
    e.add_argument("--lora-steps", type=_whole(0), default=None,
                   help="LoRA fine-tune steps (default: the model's: 80 official, 40 for the demo model; 0 = no LoRA)")
    e.add_argument("--lam", type=float, default=None, help="weight of the masked term (default 0.1)")
    e.add_argument("--inversion-strength", type=float, default=None, help="fraction inverted (default 0.7)")
    e.add_argument("--no-mutual-attention", action="store_true", help="plain denoising at the end")
    from .methods import available
    e.add_argument("--method", default=None, choices=available(),
                   help="drag method (default: the model's, 'dragdiffusion' for SD); 'gooddrag' alternates drag "
                        "and denoising with its own defaults")
    e.add_argument("--restrict-tracking", action="store_true",
                   help="tracking never moves a handle farther from its target")
    e.add_argument("--warp-init", type=float, default=None, metavar="F",
                   help="start with the handles' content moved this fraction (0-1) toward the targets, in the mask")
    e.add_argument("--auto-mask", action="store_true", help="without --mask, make one from the drag paths")
    e.add_argument("--conv-lora", action="store_true", help="LoRA on the resnet convolutions too")
    e.add_argument("--spread", type=_spread_count, default=1, metavar="N",
                   help="give each drag up to N (at most 5) handle points on the region of its handle's colour, each "
                        "moved alike, so a flat region moves whole (DragSession.spread_drag; default 1: as given)")
    e.add_argument("--seed", type=int, default=0, help="seed of the LoRA fine-tune (default 0)")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.add_argument("--dtype", default=None, type=_dtype_name,
                   help="float32, float16, bfloat16 (default: float16 on cuda, float32 on cpu)")
    e.add_argument("--speed", type=_speed_options, default=None, metavar="OPTIONS",
                   help="UNet speed options, comma-separated: channels_last, checkpointing (less memory, more time) or "
                        "lora_checkpointing (only in the LoRA fine-tune), compile (regional torch.compile; the first "
                        "edit pays the compilation), cuda_graph (every UNet call replayed from CUDA graphs; cuda only); see "
                        "dragnb.speed")
    e.add_argument("--max-side", type=_whole(0), default=None,
                   help="work on images at most this many pixels on their longer side (default: the model's, 1024 "
                        "for SD models, 64 for the demo model; 0 = no limit); results come back at the input's size")
    e.add_argument("--out", required=True,
                   help="output image path (.png, .jpg, ...; its folder is created); the record goes to the same "
                        "name .json")
    e.add_argument("--save-session", default=None,
                   help="also save the session (.dragnb, into an existing folder) to continue in a notebook")

    b = sub.add_parser("bench", help="time each stage (LoRA, inversion, drag step, denoise) and peak memory",
                       description="Time each stage of an edit and the naive no-cache baseline; see benchmarks/README.md.")
    b.add_argument("--model", default="tiny", help="tiny, demo, random-sd15, or anything load_model takes")
    b.add_argument("--size", type=_whole(8), default=None,
                   help="image side in pixels (default: the model's native size)")
    b.add_argument("--device", default=None)
    b.add_argument("--dtype", default=None, type=_dtype_name)
    b.add_argument("--drag-steps", type=_whole(1), default=10, help="drag steps to time (default 10)")
    b.add_argument("--lora-steps", type=_whole(0), default=80)
    b.add_argument("--repeats", type=_whole(1), default=1)
    b.add_argument("--json", default=None, help="write the figures to this JSON file")
    b.add_argument("--speed-options", action="store_true",
                   help="instead: time each speed option of dragnb.set_speed (and bfloat16) on the same edit "
                        "(dragnb.bench.bench_speed; --lora-steps and --drag-steps per row)")

    db = sub.add_parser("dragbench", help="run drag methods on a DragBench-format dataset (resumable, many GPUs)",
                        description="Run every sample of DATA_DIR (category folders of DragBench samples) with every "
                                    "method, write each edit and its JSON record under --out, resume where a previous "
                                    "run stopped, and end with tables per method and category (MD, fidelity, time). "
                                    "Under `accelerate launch --multi_gpu --num_processes N` the samples are split "
                                    "across the processes. See docs/dragbench.md.")
    db.add_argument("data_dir", metavar="DATA_DIR", help="dataset folder: category folders of sample folders")
    db.add_argument("--out", required=True, help="results folder (created; a second run resumes into it)")
    db.add_argument("--model", default="demo", help="the editing model: 'demo' (default), a diffusers folder, a "
                                                     "checkpoint or a hub id")
    db.add_argument("--methods", default="dragdiffusion", type=_method_list,
                    help="comma-separated drag methods, run on each image in one session (default dragdiffusion)")
    db.add_argument("--limit", type=_whole(1), default=None, help="only the first N samples (sorted by category, name)")
    db.add_argument("--steps", type=_whole(1), default=None, help="most drag steps (default: each method's)")
    db.add_argument("--lora-steps", type=_whole(0), default=None, help="LoRA fine-tune steps (default: the model's)")
    db.add_argument("--inference-steps", type=_whole(2), default=None,
                    help="DDIM steps of the schedule (default 50; fewer for smoke runs)")
    db.add_argument("--seed", type=int, default=0, help="seed of each LoRA fine-tune (default 0)")
    db.add_argument("--device", default=None, help="cpu or cuda (default: the process's accelerator, else cuda when "
                                                   "available)")
    db.add_argument("--dtype", default=None, type=_dtype_name, help="float32, float16, bfloat16")
    db.add_argument("--md-model", default=None, help="model whose features measure MD (default: --model; the "
                                                     "official uses stabilityai/stable-diffusion-2-1)")
    db.add_argument("--md-timestep", type=_whole(0), default=None,
                    help="MD noise timestep (default: the noise level of SD's t = 261)")
    db.add_argument("--md-block", type=_whole(0), default=1, help="MD feature up-block (default 1, as official)")
    db.add_argument("--md-ensemble", type=_whole(1), default=8, help="MD noise draws averaged (default 8)")
    db.add_argument("--no-md", action="store_true", help="skip the MD measure")
    db.add_argument("--retry-errors", action="store_true", help="run again the samples whose record is an error")
    db.add_argument("--report-only", action="store_true", help="only assemble the tables from the records in --out")
    db.add_argument("--wait", type=float, default=3600.0,
                    help="seconds process 0 waits for the other processes' records when no barrier is available "
                         "(default 3600)")
    return p


def _method_list(text: str) -> tuple:
    """--methods: known method names, comma-separated, no repeats (checked when the command line is read)."""
    from .methods import available
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in available()]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct methods from {', '.join(available())}, "
                                         "comma-separated (e.g. dragdiffusion,gooddrag)")
    return tuple(names)


def check_dragbench(a):
    """Everything the dragbench command can check before any model work: the dataset, --out, --wait."""
    from .dragbench.format import find_samples
    data = os.path.abspath(a.data_dir)
    if not os.path.isdir(data):
        raise ValueError(f"DATA_DIR {a.data_dir!r} is not a folder: give the folder that holds the category folders")
    _check_new_folder(a.out, "--out")
    out = os.path.abspath(a.out)
    if out == data or out.startswith(data + os.sep):
        raise ValueError(f"--out {a.out!r} lies inside DATA_DIR {a.data_dir!r}: results would be read as samples; "
                         "give a folder outside the dataset")
    if a.wait < 0:
        raise ValueError(f"--wait {a.wait}: give seconds ≥ 0")
    if a.report_only:
        if not os.path.isdir(a.out):
            raise ValueError(f"--report-only: --out {a.out!r} does not exist: run the benchmark into it first")
        return []
    refs = find_samples(data)
    if not refs:
        raise ValueError(f"DATA_DIR {a.data_dir!r} holds no samples: a DragBench dataset is category folders of "
                         "sample folders, each with original_image.png and meta_data.pkl (or meta.json)")
    return refs


def cmd_dragbench(a) -> int:
    from .dragbench.parallel import this_process, wait_for_files
    from .dragbench.report import write_report
    from .dragbench.runner import RunOptions, plan, record_path, run_dragbench
    check_dragbench(a)
    if a.report_only:
        _, text = write_report(a.out)
        print(text)
        return 0
    changes = {k: v for k, v in dict(drag_steps=a.steps, lora_steps=a.lora_steps,
                                     n_inference_steps=a.inference_steps).items() if v is not None}
    opts = RunOptions(model=a.model, methods=a.methods, limit=a.limit, changes=changes, seed=a.seed,
                      device=a.device, dtype=_dtype(a.dtype), md=not a.no_md, md_model=a.md_model,
                      md_t=a.md_timestep, md_block=a.md_block, md_ensemble=a.md_ensemble, retry_errors=a.retry_errors)
    proc = this_process()
    os.makedirs(a.out, exist_ok=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    stats = run_dragbench(a.data_dir, a.out, opts, proc, log)
    tag = f"process {proc.rank + 1}/{proc.world}: " if proc.world > 1 else ""
    log(f"{tag}ran {stats['ran']} edit(s) ({stats['errors']} error(s)), kept {stats['skipped']} finished, "
        f"{stats['seconds']:.1f} s")
    if proc.barrier is not None:
        proc.barrier()
    if proc.rank != 0:
        return 0
    expected = [record_path(a.out, m, r) for r in plan(a.data_dir, a.limit) for m in a.methods]
    if proc.world > 1 and proc.barrier is None:
        wait_for_files(expected, a.wait, log)
    _, text = write_report(a.out, expected=len(expected))
    print()
    print(text)
    print(f"\nwrote {os.path.join(a.out, 'summary.md')} and summary.json")
    return 0


def check_edit(a):
    """Everything the edit can check before loading a model: output paths, the image, the mask, the drags.
    Returns (image, mask) read once, so the session does not read them again."""
    from .coords import Geometry, load_image, load_mask
    _check_new_file(a.out, "--out", IMAGE_EXTENSIONS)
    if a.warp_init is not None and not 0.0 <= a.warp_init <= 1.0:
        raise ValueError(f"--warp-init {a.warp_init}: give a fraction from 0 to 1 (0.5 moves the content half way)")
    record = os.path.splitext(a.out)[0] + ".json"
    if os.path.isdir(record):
        raise ValueError(f"--out {a.out!r}: its record {record!r} would overwrite a folder: choose another name")
    if a.save_session:
        _check_new_file(a.save_session, "--save-session", create_folder=False)
    image = load_image(a.image)
    mask = load_mask(a.mask, image.size) if a.mask else None
    page = Geometry(image.size, image.size, (1, 1), (1, 1))  # only its image size is read: points in image pixels
    for h, t in a.drag:
        page.check_point(h, "handle")
        page.check_point(t, "target")
    return image, mask


def cmd_edit(a) -> int:
    from . import DragSession, load_model
    image, mask = check_edit(a)
    t0 = time.perf_counter()
    model = load_model(a.model, device=a.device, dtype=_dtype(a.dtype), vae=a.vae)
    if a.max_side is not None:
        model.max_side = a.max_side or None
    if a.speed:
        from .speed import set_speed
        set_speed(model, **a.speed)
    t_load = time.perf_counter() - t0
    changes = {k: v for k, v in dict(drag_steps=a.steps, lora_steps=a.lora_steps, lam=a.lam,
                                     inversion_strength=a.inversion_strength).items() if v is not None}
    if a.no_mutual_attention:
        changes["mutual_attention"] = False
    for flag, key, value in ((a.method, "method", a.method), (a.restrict_tracking, "restrict_tracking", True),
                             (a.warp_init is not None, "warp_init", a.warp_init), (a.auto_mask, "auto_mask", True),
                             (a.conv_lora, "lora_targets", "attention+conv")):
        if flag:
            changes[key] = value
    s = DragSession(model, image, prompt=a.prompt, seed=a.seed, config=model.default_config(**changes))
    for h, t in a.drag:
        s.add_drag(h, t)
    if mask is not None:
        s.set_mask(mask)
    if a.spread > 1:
        for i in range(len(a.drag)):
            s.spread_drag(i, a.spread)
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
                  timings_s={k: round(v, 3) for k, v in timings.items()}, counters=s.counters,
                  speed=model.speed)
    rec_path = os.path.splitext(a.out)[0] + ".json"
    with open(rec_path, "w") as f:
        json.dump(record, f, indent=2)
    if a.save_session:
        s.save(a.save_session)
    print(f"wrote {a.out} and {rec_path}: {s.n_steps} steps, {s.stop_reason}, handles {s.handles}")
    return 0


def main(argv=None) -> int:
    """Run the command line; returns the exit status: 0 done, 2 a user error (one line on stderr), 130 interrupted."""
    p = build_parser()
    try:
        a = p.parse_args(argv)
    except SystemExit as e:  # usage errors (already one line on stderr) and --help
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2
    try:
        if a.command == "edit":
            return cmd_edit(a)
        if a.command == "demo":
            _check_new_folder(a.out, "--out")
            from .demo.run import check_weights_folder, run_demo
            if a.weights is not None:
                check_weights_folder(a.weights, option="--weights")
            rec = run_demo(a.out, steps=a.steps, weights=a.weights, spread=a.spread)
            print(json.dumps({k: rec[k] for k in rec if k in ("timings_s", "final_handles", "drags")}, indent=1))
            print(f"wrote before.png, after.png, drag.gif, record.json into {a.out}")
            return 0
        if a.command == "dragbench":
            return cmd_dragbench(a)
        if a.command == "bench":
            if a.json:
                _check_new_file(a.json, "--json")
            from .bench import bench_speed, bench_stages, speed_table
            if a.speed_options:
                res = bench_speed(model=a.model, size=a.size, device=a.device, dtype=_dtype(a.dtype),
                                  drag_steps=max(2, a.drag_steps), lora_steps=a.lora_steps, verbose=False)
                print(speed_table(res))
            else:
                res = bench_stages(model=a.model, size=a.size, device=a.device, dtype=_dtype(a.dtype),
                                   drag_steps=a.drag_steps, lora_steps=a.lora_steps, repeats=a.repeats)
            if a.json:
                os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
                with open(a.json, "w") as f:
                    json.dump(res, f, indent=2)
            return 0
    except (ValueError, TypeError, OSError) as e:  # user errors (and files that cannot be written): one line
        print(f"dragnb: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dragnb: interrupted", file=sys.stderr)
        return 130
    return 1
