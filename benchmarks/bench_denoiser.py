"""How well the shipped demo model denoises, by noise level: one UNet call on held-out scenes.

    python benchmarks/bench_denoiser.py                     # the shipped weights
    python benchmarks/bench_denoiser.py --weights DIR       # another folder in the same layout

For each timestep t, 16 held-out scenes (world seeds 10**9 ...) are noised to t with a fixed generator and the
model predicts x0 in one call (v-prediction: x0 = sqrt(abar) x_t - sqrt(1 - abar) v). Printed: abar, the
v-prediction MSE (the training loss at that t) and the PSNR of the predicted x0 against the clean scene.
A model that drags well must denoise well around the drag timestep (t = 681 at the default strength 0.7).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

TIMESTEPS = (10, 50, 100, 200, 400, 600, 681, 800, 950)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="demo",
                   help="'demo' (shipped) or a folder written by `python -m dragnb.demo.train --out DIR`")
    p.add_argument("--n", type=int, default=16, help="held-out scenes (default 16)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from dragnb import ddim
    from dragnb.demo import model as M
    from dragnb.demo.world import random_scene, render
    from dragnb.metrics import psnr
    from dragnb import load_model

    model = load_model(args.weights, device="cpu")
    unet, sched = model.unet.eval(), model.scheduler
    src = np.stack([render(random_scene(10**9 + i)) for i in range(args.n)])
    x0 = M.encode(M.uint8_to_tensor(src))
    emb = model.prompt_embeds.expand(args.n, -1, -1)
    g = torch.Generator().manual_seed(0)
    rows = []
    print("| t | abar | v MSE | x0 PSNR dB (one call) |\n|---|---|---|---|")
    for t in TIMESTEPS:
        a = ddim.alpha_bar(sched, t)
        noise = torch.randn(x0.shape, generator=g)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.no_grad():
            v = unet(xt, torch.full((args.n,), t), emb).sample
        x0p, _ = ddim.predict_x0_eps(sched, v, xt, t)
        mse = float(((v - (a.sqrt() * noise - (1 - a).sqrt() * x0)) ** 2).mean())
        rec = M.tensor_to_uint8(M.decode(x0p))
        ps = float(np.mean([psnr(r, s) for r, s in zip(rec, src)]))
        rows.append(dict(t=t, abar=float(a), v_mse=mse, x0_psnr=ps))
        print(f"| {t} | {float(a):.3f} | {mse:.4f} | {ps:.1f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
