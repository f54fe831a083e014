"""Quality of drag edits on the shipped demo model, against the shape world's rendered ground truth.

    python benchmarks/bench_quality.py                 # 50 held-out cases, full method + ablations
    python benchmarks/bench_quality.py --n 50 --methods full
    python benchmarks/bench_quality.py --quick         # CI smoke run: 2 cases, full method, 10 drag steps

Each case is `dragnb.demo.world.sample_drag(seed)` with seed >= 10**9 (training scenes use seeds < 10**9):
the top shape of a scene, handle at its centroid, a drag of 6-25 % of the width, the editable mask
covering the shape's start and end. Every edit runs through the normal `DragSession` (prepare, run, result).

Measures (see `dragnb.demo.world.score_edit`): where the shape ended up (colour-segmented centroid inside the
mask) vs the target, in pixels and as a fraction of the drag length; IoU of that segment with the true
moved shape; PSNR outside the mask against the input. Baselines: the unedited image (the shape did not
move) and the ground truth itself (checks the measures).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dragnb.demo.world import sample_drag, score_edit  # noqa: E402

BENCH_SEED0 = 10**9
FORM_OK = 0.85           # a result whose form (score_edit) reaches this is still its shape (fidelity.FIT_IOU)

METHODS = {
    "full": {},
    "no LoRA (lora_steps=0)": dict(lora_steps=0),
    "no mask term (lam=0)": dict(lam=0.0),
    "no mutual self-attention": dict(mutual_attention=False),
    "20 drag steps": dict(drag_steps=20),
    "LoRA 40 steps, lr 5e-4": dict(lora_steps=40, lora_lr=5e-4),
    "official LoRA (80 steps, lr 5e-4)": dict(lora_steps=80, lora_lr=5e-4),
    "LoRA 40 steps, lr 1e-3": dict(lora_steps=40, lora_lr=1e-3),
    "LoRA batch 2": dict(lora_batch_size=2),
    "patch tracker (track_patch=2)": dict(track_patch=2),
    "r_m=2 (5x5-cell patch)": dict(r_m=2),
    "r_m=3 (7x7-cell patch)": dict(r_m=3),
    "r_m=5 (11x11-cell patch)": dict(r_m=5),
    # the official reach, step size, patch and feature block too (the demo model's overrides are for GoodDrag)
    "DragDiffusion (official loop)": dict(method="dragdiffusion", reach_distance=2.0, drag_lr=0.01, r_m=1,
                                          feature_block=2),
    "GoodDrag (alternating drag and denoise)": dict(method="gooddrag"),
    "restricted tracking": dict(restrict_tracking=True),
    "warp init 0.5": dict(warp_init=0.5),
    "auto mask (no painted mask)": dict(auto_mask=True, _no_mask=True),
    "no painted mask": dict(_no_mask=True),
    "conv LoRA (attention+conv)": dict(lora_targets="attention+conv"),
    "GoodDrag + restricted tracking": dict(method="gooddrag", restrict_tracking=True),
    "GoodDrag + warp init 0.5": dict(method="gooddrag", warp_init=0.5),
    "GoodDrag + conv LoRA": dict(method="gooddrag", lora_targets="attention+conv"),
    "GoodDrag without early stops": dict(method="gooddrag", round_loss_threshold=0.0, max_rounds_no_change=1000),
    "reach_distance 1 cell": dict(reach_distance=1.0),
    "reach_distance 2 cells (official)": dict(reach_distance=2.0),
    "drag_lr 0.02": dict(drag_lr=0.02),
    "drag_lr 0.04": dict(drag_lr=0.04),
    "drag_lr 0.05": dict(drag_lr=0.05),
    "beta 1.5 cells": dict(beta=1.5),
    "beta 2 cells": dict(beta=2.0),
    "beta 3 cells": dict(beta=3.0),
    # the decoder block the drag reads: up_blocks[1] (the 8x8 cross-attention block, upsampled to 16x16 at its end)
    # tracks a truly moved shape better than the default up_blocks[2] on the shipped model (bench_tracking.py)
    "feature_block 1 (the 8x8 attention block)": dict(feature_block=1),
    "feature_block 1, r_m 4": dict(feature_block=1, r_m=4),
    # the demo model's default before the fifteenth session (up_blocks[2], 7x7-cell patches, 10 rounds a timestep)
    "feature_block 2, r_m 3 (the default before)": dict(feature_block=2, r_m=3, rounds=10),
    # up to five handle points on the shape instead of one, each dragged by the same offset (what a user can click)
    "up to 5 handle points on the shape": dict(_points=5),
    # the same from the image alone, as a user gets it: dragnb.points.spread on the handle's colour region
    "spread_drag: up to 5 points from the image": dict(_spread=5),
    # the same in half GoodDrag's budget (5 rounds a timestep instead of 10: 105 steps): most spread drags use all 210
    "spread_drag, 5 rounds (105 steps)": dict(_spread=5, rounds=5, drag_steps=105),
    "5 rounds a timestep (105 steps)": dict(rounds=5, drag_steps=105),
    "10 rounds a timestep (210 steps)": dict(rounds=10, drag_steps=210),
}
SHORT = {"full": "full", "nolora": "no LoRA (lora_steps=0)", "nomask": "no mask term (lam=0)",
         "nomutual": "no mutual self-attention", "steps20": "20 drag steps",
         "lora40": "LoRA 40 steps, lr 5e-4", "lora80": "official LoRA (80 steps, lr 5e-4)",
         "lora40lr": "LoRA 40 steps, lr 1e-3", "lorab2": "LoRA batch 2", "trackpatch": "patch tracker (track_patch=2)",
         "rm2": "r_m=2 (5x5-cell patch)", "rm3": "r_m=3 (7x7-cell patch)", "rm5": "r_m=5 (11x11-cell patch)",
         "dragdiffusion": "DragDiffusion (official loop)", "gooddrag": "GoodDrag (alternating drag and denoise)",
         "restrict": "restricted tracking", "warp": "warp init 0.5", "automask": "auto mask (no painted mask)",
         "nopaint": "no painted mask", "convlora": "conv LoRA (attention+conv)",
         "gd_restrict": "GoodDrag + restricted tracking", "gd_warp": "GoodDrag + warp init 0.5",
         "gd_convlora": "GoodDrag + conv LoRA", "gd_nostop": "GoodDrag without early stops",
         "reach1": "reach_distance 1 cell", "reach2": "reach_distance 2 cells (official)",
         "lr02": "drag_lr 0.02", "lr04": "drag_lr 0.04", "lr05": "drag_lr 0.05",
         "beta15": "beta 1.5 cells", "beta2": "beta 2 cells", "beta3": "beta 3 cells",
         "fb1": "feature_block 1 (the 8x8 attention block)", "fb1rm4": "feature_block 1, r_m 4",
         "fb2rm3": "feature_block 2, r_m 3 (the default before)",
         "points5": "up to 5 handle points on the shape", "spread5": "spread_drag: up to 5 points from the image",
         "spread5r5": "spread_drag, 5 rounds (105 steps)", "r5": "5 rounds a timestep (105 steps)",
         "r10": "10 rounds a timestep (210 steps)"}


def run_methods(model, case, overrides_list: list[dict], seed: int = 0) -> list[tuple]:
    """Every method on one case through ONE DragSession, as a notebook user would run ablations.

    Between methods the session is re-`configure`d to the defaults plus the method's overrides and `reset`:
    its caches keep what the change does not touch (a lam or step-count change reuses the LoRA, the
    inverted latent and the source features), so only the first method's time includes those stages.
    Returns [(result uint8 HxWx3, seconds, steps taken), ...] in the order given.
    """
    from dragnb import DragSession
    out, s = [], None
    for ov in overrides_list:
        ov = dict(ov)
        painted = None if ov.pop("_no_mask", False) else case.mask    # `_no_mask`: the user painted nothing
        drags = handle_points(case, ov.pop("_points", 1))
        if ov.get("_spread"):       # what DragSession.spread_drag adds: points on the handle's colour region
            from dragnb.points import spread
            drags = spread(case.image, case.handle, case.target, ov.pop("_spread"), within=painted)
        cfg = model.default_config(**ov)
        if s is None:
            s = DragSession(model, case.image, seed=seed, config=cfg)
        else:
            s.configure(**cfg.to_dict())
            s.reset()
        s.set_drags(drags)
        s.set_mask(painted)
        t0 = time.perf_counter()
        s.prepare(progress=False)
        s.run(progress=False)
        img = np.asarray(s.result().convert("RGB"))
        out.append((img, time.perf_counter() - t0, s.n_steps))
    return out


def handle_points(case, n: int = 1) -> list[tuple]:
    """The case's drags as (handle, target) pairs: its one handle at the shape's centroid, or with n = 5 up to four
    more on the shape, each moved by the same offset: `dragnb.points.spread` on the true shape (not the colour
    region a user's session finds: that is the `spread5` variant). What a user can click for a shape the drag should
    carry whole."""
    if n == 1:
        return [(case.handle, case.target)]
    if n != 5:
        raise ValueError(f"_points={n}: use 1 (the centroid) or 5 (the centroid and four points on the shape)")
    from dragnb.demo.world import shape_mask
    from dragnb.points import spread
    return spread(case.image, case.handle, case.target, 5, region=shape_mask(case.scene, case.index))


_MODEL = None


def _worker_init(threads: int, weights: str = "demo") -> None:
    global _MODEL
    import torch
    torch.set_num_threads(threads)
    from dragnb import load_model
    _MODEL = load_model(weights)


def score_methods(model, case, ovs: list[dict]) -> list[tuple]:
    """`run_methods`, each result scored against the case's ground truth: [(score dict, seconds, steps), ...]."""
    return [(score_edit(img, case), sec, steps) for img, sec, steps in run_methods(model, case, ovs)]


def _worker_case(job):
    return score_methods(_MODEL, *job)


def summarise(rows: list[dict]) -> dict:
    d = np.array([r["dist"] for r in rows])
    f = np.array([r["dist_frac"] for r in rows])
    iou = np.array([r["iou"] for r in rows])
    bg = np.array([min(r["bg_psnr"], 99.0) for r in rows])
    out = dict(n=len(rows), dist=float(d.mean()), dist_frac=float(f.mean()), dist_frac_median=float(np.median(f)),
               iou=float(iou.mean()), bg_psnr=float(np.median(bg)), bg_psnr_mean=float(bg.mean()),
               lost=int(sum(r["lost"] for r in rows)), within_15pct=float((f <= 0.15).mean()))
    if "form" in rows[0]:       # rows written before the form measure have none
        form = np.array([r["form"] for r in rows])
        out.update(form=float(form.mean()), form_ok=float((form >= FORM_OK).mean()))
    if "seconds" in rows[0]:
        out["seconds"] = float(np.mean([r["seconds"] for r in rows]))
        out["steps"] = float(np.mean([r["steps"] for r in rows]))
    return out


def fmt_table(results: dict) -> str:
    head = ("| method | n | dist px (mean) | dist / drag (mean) | dist / drag (median) | ≤ 15 % of drag | IoU (mean) "
            f"| form (mean) | form ≥ {FORM_OK} | bg PSNR dB (median) | shape lost | s/edit | drag steps |")
    lines = [head, "|" + "---|" * 13]
    for name, s in results.items():
        sec = f"{s['seconds']:.1f}" if "seconds" in s else "–"
        st = f"{s['steps']:.0f}" if "steps" in s else "–"
        bg = "∞" if s["bg_psnr"] >= 99 else f"{s['bg_psnr']:.1f}"
        form = f"{s['form']:.2f} | {100 * s['form_ok']:.0f} %" if "form" in s else "– | –"
        lines.append(f"| {name} | {s['n']} | {s['dist']:.2f} | {s['dist_frac']:.2f} | {s['dist_frac_median']:.2f} | "
                     f"{100 * s['within_15pct']:.0f} % | {s['iou']:.2f} | {form} | {bg} | {s['lost']} | {sec} | {st} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="cases for the full method (default 50)")
    p.add_argument("--n-ablation", type=int, default=None, help="cases for each ablation (default: --n)")
    p.add_argument("--methods", default="full,nolora,nomask,nomutual,steps20",
                   help=f"comma-separated subset of {list(SHORT)}")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 cases, full method, 10 drag steps, 10 LoRA steps")
    p.add_argument("--threads", type=int, default=2, help="torch threads in all (split between workers)")
    p.add_argument("--workers", type=int, default=1, help="processes, each editing whole cases (default 1)")
    p.add_argument("--json", default=None, help="write per-case rows and the summary here")
    p.add_argument("--first-seed", type=int, default=BENCH_SEED0,
                   help=f"seed of the first case (default {BENCH_SEED0}, the benchmark's 50); another start >= "
                        f"{BENCH_SEED0} gives a fresh set of held-out cases, to check a choice made on these")
    p.add_argument("--weights", default="demo",
                   help="the model: 'demo' (shipped) or a folder written by `python -m dragnb.demo.train --out DIR`")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from dragnb import load_model

    if args.n < 1:
        raise ValueError(f"--n {args.n} is invalid: use at least 1 case")
    if args.first_seed < BENCH_SEED0:
        raise ValueError(f"--first-seed {args.first_seed} is a training seed: use one >= {BENCH_SEED0} (held out)")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in names if m not in SHORT]
    if bad:
        raise ValueError(f"--methods has unknown {bad}: choose from {list(SHORT)}")
    n_full = 2 if args.quick else args.n
    n_abl = 2 if args.quick else (args.n_ablation or args.n)
    if args.quick:
        names = ["full"]
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers} is invalid: use 1 or more processes")
    model = load_model(args.weights)
    cases = [sample_drag(args.first_seed + i) for i in range(max(n_full, n_abl))]
    results, rows_all = {}, {}
    results["unedited input"] = summarise([score_edit(c.image, c) for c in cases[:n_full]])
    results["ground truth (check)"] = summarise([score_edit(c.gt_image, c) for c in cases[:n_full]])
    # one session per case runs its methods in this order: the LoRA-free ablation last, since it is the
    # one change that invalidates the LoRA (and what depends on it)
    names.sort(key=lambda m: (m != "full", m == "nolora"))
    n_case = {m: (n_full if m == "full" else n_abl) for m in names}
    jobs = []
    for i, c in enumerate(cases):
        mine = [m for m in names if i < n_case[m]]
        ovs = []
        for m in mine:
            ov = dict(METHODS[SHORT[m]])
            if args.quick:
                ov.update(drag_steps=10, lora_steps=10)
            ovs.append(ov)
        if mine:
            jobs.append((i, c, mine, ovs))
    rows_by = {m: [] for m in names}
    if args.workers > 1:
        import multiprocessing as mp
        pool = mp.get_context("spawn").Pool(args.workers, _worker_init,
                                            (max(1, args.threads // args.workers), args.weights))
        results_iter = pool.imap(_worker_case, [(c, ovs) for _, c, _, ovs in jobs])
    else:
        results_iter = (score_methods(model, c, ovs) for _, c, _, ovs in jobs)
    for (i, c, mine, _), res in zip(jobs, results_iter):
        for m, (r, sec, steps) in zip(mine, res):
            r.update(seconds=sec, steps=steps, seed=c.seed)
            rows_by[m].append(r)
            print(f"[{SHORT[m]}] case {i + 1} seed {c.seed}: dist {r['dist']:.2f} px ({r['dist_frac']:.2f} of "
                  f"{c.drag_length:.1f}), IoU {r['iou']:.2f}, form {r['form']:.2f}, bg {r['bg_psnr']:.1f} dB, "
                  f"{sec:.1f} s, {steps} steps", flush=True)
    if args.workers > 1:
        pool.close()
        pool.join()
    for m in names:
        results[SHORT[m]] = summarise(rows_by[m])
        rows_all[SHORT[m]] = rows_by[m]
    print()
    print(fmt_table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(summary=results, rows=rows_all, config=model.default_config().to_dict(),
                           first_seed=args.first_seed), fh, indent=1,
                      default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    return results


if __name__ == "__main__":
    main()
