"""The packaged demo: one fixed shape-world scene dragged on the shipped model, on a CPU in seconds.

    from dragnb.demo.run import run_demo
    record = run_demo("out/demo")        # before.png, after.png, drag.gif, record.json

`python -m dragnb demo --out DIR` (the CLI) calls `run_demo`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dragnb.demo.world import sample_drag, score_edit
from dragnb.drawing import draw_pairs_pil, pair_shapes

DEMO_SEED = 1_000_000_003
"""A held-out world case (seeds >= 10**9 are never trained on) on which the shipped model edits well."""
GIF_SCALE = 4


def demo_case():
    """The fixed demo case: scene, handle, target, mask and ground truth (`dragnb.demo.world.DragCase`)."""
    return sample_drag(DEMO_SEED)


def _draw(img: Image.Image, handles, targets, start_handles, caption: str) -> Image.Image:
    """Upscale `img` and draw the drags in the house's drawing vocabulary (`dragnb.drawing`): each drag's
    colour and 1-based label, an arrow from its start to its target, a cross where the handle is now."""
    k = GIF_SCALE
    big = img.convert("RGB").resize((img.width * k, img.height * k), Image.NEAREST)
    d = ImageDraw.Draw(big)
    scaled = lambda points: [(x * k, y * k) for x, y in points]
    draw_pairs_pil(d, pair_shapes(scaled(start_handles), scaled(targets), scaled(handles), radius=5.0, head=8.0))
    d.rectangle([0, 0, big.width, 14], fill=(0, 0, 0))
    d.text((4, 2), caption, fill=(255, 255, 255))
    return big


def check_weights_folder(weights, option: str = "weights=") -> None:
    """Refuse, with the fix, anything but a folder in the demo model's layout."""
    p = Path(weights)
    if not p.is_dir() or not (p / "dragnb_demo.json").is_file():
        sep = "" if option.endswith("=") else " "
        raise ValueError(f"{option}{sep}{str(weights)!r} is not a demo-model weights folder (a folder holding "
                         "dragnb_demo.json, unet/ and scheduler/, as `python -m dragnb.demo.train --out DIR` writes): "
                         "give such a folder, or leave it out for the shipped weights")


def run_demo(out_dir, model=None, steps: int | None = None, gif_every: int = 4, weights=None, spread: int = 1) -> dict:
    """Edit the fixed demo scene with its preset drag and mask; write before.png, after.png, drag.gif,
    record.json under `out_dir` and return the record (drags, final handles, scores, timings per stage).

    Args:
        out_dir: folder to write to (created).
        model: a `DragModel`; default `load_model("demo")`.
        steps: most drag steps (default: the model's config, 80; the run stops when the handle arrives).
        gif_every: draw a GIF frame (one `preview()`) every this many steps.
        weights: with `model` None, a folder in the demo model's layout to load instead of the shipped weights
            (written by `python -m dragnb.demo.train --out DIR` or `benchmarks/gpu_train.sh --unpack`).
        spread: with n > 1, `DragSession.spread_drag(0, n)` adds up to n - 1 more handle points on the dragged
            shape before the run, each moved by the drag's offset (what the editor's Spread button does).
    """
    import torch

    from dragnb import DragSession, load_model
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps={steps} is invalid: use at least 1 drag step (or None for the model's default)")
    if int(gif_every) < 1:
        raise ValueError(f"gif_every={gif_every} is invalid: use at least 1")
    if isinstance(spread, bool) or not isinstance(spread, (int, np.integer)) or spread < 1:
        raise ValueError(f"spread={spread!r} is invalid: use a whole number of handle points >= 1 (1: the one preset drag)")
    if weights is not None and model is None:
        check_weights_folder(weights)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    if model is None:
        t = time.perf_counter()
        model = load_model("demo" if weights is None else str(weights))
        timings["load_model"] = time.perf_counter() - t
    case = demo_case()
    cfg = model.default_config(**({} if steps is None else {"drag_steps": int(steps)}))
    s = DragSession(model, case.image, seed=0, config=cfg)
    s.add_drag(handle=case.handle, target=case.target)
    s.set_mask(case.mask)
    if spread > 1:
        s.spread_drag(0, int(spread))
    Image.fromarray(case.image).save(out / "before.png")

    # prepare's callback fires after each unit of work: the time since the previous call belongs to its stage
    stage_t: dict[str, float] = {}
    last = [time.perf_counter()]

    def on_stage(stage, i, n):
        now = time.perf_counter()
        stage_t[stage] = stage_t.get(stage, 0.0) + now - last[0]
        last[0] = now

    t_prep = last[0] = time.perf_counter()
    s.prepare(progress=False, callback=on_stage)
    timings["prepare"] = time.perf_counter() - t_prep
    timings.update({f"prepare.{k}": v for k, v in stage_t.items()})

    start = [tuple(h) for h in s.handles]
    frames = [_draw(s.preview(), s.handles, s.targets, start, "step 0")]
    preview_time = [0.0]

    def on_step(rec):
        if rec.step % gif_every == 0:
            t = time.perf_counter()
            frames.append(_draw(s.preview(), rec.handles, s.targets, start, f"step {rec.step}  loss {rec.loss:.3f}"))
            preview_time[0] += time.perf_counter() - t
        return True

    t = time.perf_counter()
    s.run(callback=on_step, progress=False)
    timings["drag"] = time.perf_counter() - t - preview_time[0]
    timings["gif_previews"] = preview_time[0]
    t = time.perf_counter()
    after = s.result()
    timings["denoise"] = time.perf_counter() - t
    after.save(out / "after.png")
    frames.append(_draw(after, s.handles, s.targets, start, f"result after {s.n_steps} steps"))
    frames[0].save(out / "drag.gif", save_all=True, append_images=frames[1:] + [frames[-1]] * 6, duration=120, loop=0)
    timings["total"] = time.perf_counter() - t_all
    score = score_edit(np.asarray(after.convert("RGB")), case)
    record = dict(
        model=model.name, demo_seed=DEMO_SEED, image_size=list(s.size),
        drags=[dict(handle=list(h), target=list(t_)) for h, t_ in s.drags],
        final_handles=[list(h) for h in s.handles], steps=s.n_steps, reached=s.reached, stop_reason=s.stop_reason,
        config=s.config.to_dict(),
        score=dict(dist_px=round(score["dist"], 3), dist_frac=round(score["dist_frac"], 3), iou=round(score["iou"], 3),
                   bg_psnr_db=round(score["bg_psnr"], 2), form=round(score["form"], 3),
                   centroid=[round(v, 2) for v in score["centroid"]]),
        figures=dict(before="before.png", after="after.png", gif="drag.gif", gif_frames=len(frames)),
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    import sys
    rec = run_demo(sys.argv[1] if len(sys.argv) > 1 else "out/demo", weights=sys.argv[2] if len(sys.argv) > 2 else None)
    print(json.dumps(rec["timings_s"], indent=1), rec["score"])
