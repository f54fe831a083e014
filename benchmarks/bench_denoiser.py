"""The demo model's prior: how well it denoises by noise level, and how crisp its samples from noise are.

    python benchmarks/bench_denoiser.py                     # the shipped weights
    python benchmarks/bench_denoiser.py --weights DIR       # another folder in the same layout
    python benchmarks/bench_denoiser.py --samples 0         # the x0 table only
    python benchmarks/bench_denoiser.py --samples 0 --bound 741   # and how high x0 PSNR can go at t = 741

x0 PSNR: for each timestep t, 16 held-out scenes (world seeds 10**9 ...) are noised to t with a fixed generator
and the model predicts x0 in one call (v-prediction: x0 = sqrt(abar) x_t - sqrt(1 - abar) v). Printed: abar, the
v-prediction MSE (the training loss at that t) and the PSNR of the predicted x0 against the clean scene.
A model that drags well must denoise well around the drag timestep (t = 681 at the default strength 0.7).

Bound (`--bound 741[,681...]`): how high the one-call x0 PSNR could go at those timesteps, by the posterior
variance of the model's own draws from p(x0 | x_t) (`dragnb.demo.evaluate.x0_psnr_bound`: `--bound-k` draws a scene
by stochastic DDIM every `--bound-stride` timesteps). The best estimate of x0 from x_t is the posterior mean, whose
error is that variance. A calibration near 1 says the draws spread as the truth does; above 1 they are too narrow
(coarse steps do that: on Gaussian data, where the posterior is known, stride 10 gives 7 % too little variance and a
calibration of 1.03), and the true bound is lower than printed. Minutes on a CPU: about 5 per timestep at the
defaults with 2 threads.

Shape fidelity: `--samples` images generated from noise (DDIM 50 steps, seed 0); the fraction of the shapes
found in them that a circle, square, triangle or ellipse fits with IoU >= 0.85 and a flat fill
(`dragnb.demo.fidelity`; 1.0 on the world's own scenes). Issue 17's target: >= 0.8.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dragnb.demo.evaluate import TIMESTEPS  # noqa: E402,F401  (re-exported: the levels printed)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="demo",
                   help="'demo' (shipped) or a folder written by `python -m dragnb.demo.train --out DIR`")
    p.add_argument("--n", type=int, default=16, help="held-out scenes per noise level (default 16)")
    p.add_argument("--samples", type=int, default=32, help="samples from noise for the shape fidelity (0: skip)")
    p.add_argument("--bound", default=None, metavar="T[,T...]",
                   help="timesteps at which to measure how high one-call x0 PSNR can go (e.g. 741, GoodDrag's first)")
    p.add_argument("--bound-k", type=int, default=8, help="posterior draws a scene for --bound (default 8)")
    p.add_argument("--bound-stride", type=int, default=10, help="timesteps between the draws' steps (default 10)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the rows and the fidelity here")
    p.add_argument("--grid", default=None, help="save the samples as one PNG here")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from dragnb import load_model
    from dragnb.demo import evaluate
    from dragnb.demo.fidelity import shape_fidelity

    model = load_model(args.weights, device=args.device)
    unet, sched, factor = model.unet.eval(), model.scheduler, model.codec_factor
    if factor is None:
        raise ValueError(f"--weights {args.weights!r} is not a pixel-codec (demo-layout) model: this benchmark "
                         "renders the shape world in pixels")
    rows = evaluate.x0_psnr_by_level(unet, sched, model.prompt_embeds, factor, n=args.n)
    print(evaluate.format_levels(rows), flush=True)
    out = {"weights": args.weights, "x0_psnr": rows}
    if args.bound:
        try:
            levels = [int(v) for v in args.bound.split(",")]
        except ValueError:
            raise SystemExit(f"--bound {args.bound!r}: give timesteps as whole numbers, e.g. --bound 741,681")
        out["bound"] = []
        for t in levels:
            t0 = time.perf_counter()
            b = evaluate.x0_psnr_bound(unet, sched, model.prompt_embeds, factor, t, n=args.n, k=args.bound_k,
                                       stride=args.bound_stride)
            print(f"\nbound at t = {t} ({args.n} scenes, {args.bound_k} posterior draws each, a step every "
                  f"{args.bound_stride} timesteps): one-call x0 PSNR can reach about {b['bound_db']:.2f} dB (the "
                  f"posterior's variance); this model's one call on the same x_t: {b['one_call_db']:.2f} dB; "
                  f"calibration {b['calibration']:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            out["bound"].append(b)
    if args.samples:
        t0 = time.perf_counter()
        imgs = evaluate.samples_from_noise(unet, sched, model.prompt_embeds, factor, n=args.samples)
        t1 = time.perf_counter()
        fid = shape_fidelity(imgs)
        print(f"\nshape fidelity of {args.samples} samples from noise (DDIM 50): {fid['fidelity']:.2f} of "
              f"{fid['shapes']} shapes fit a primitive (IoU >= 0.85, flat); {fid['shapes_per_image']:.2f} shapes "
              f"an image, {100 * fid['images_with_shapes']:.0f} % of images with a shape, mean best IoU "
              f"{fid['mean_iou']:.2f} (sampling {t1 - t0:.1f} s, scoring {time.perf_counter() - t1:.1f} s)", flush=True)
        out["fidelity"] = fid
        if args.grid:
            from PIL import Image
            grid = evaluate.sample_grid(imgs)
            Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(args.grid)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
