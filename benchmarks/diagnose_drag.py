"""Is the shipped model's smear the optimiser's noise or the edit's content? (figure for benchmarks/README.md)

    python benchmarks/diagnose_drag.py [--out docs/demo_model/drag_diagnosis.png]
    python benchmarks/diagnose_drag.py --quick --out /tmp/diag.png     # CI smoke run: 1 case, 10 + 10 steps

For three held-out cases it runs the full method (`DragSession`, default config), takes the edit the drag
made to the step-t latent, d = z_edited - z_t, and denoises three latents the same way `result()` does
(mutual self-attention on): z_t + d (the result), z_t + d with every element's sign drawn at random (same
magnitudes: what per-element noise of that size does), and z_t + d low-passed (a Gaussian blur of σ = 2 px
in image space; the latent is `pixel_unshuffle` of the noisy image). Prints the scores and writes a grid:
input | result | random signs | low-passed | ground truth. It uses the session's `latent_at(0)`,
`current_latent()` and `render_latent()`.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dragnb import DragSession, load_model  # noqa: E402
from dragnb.demo.world import sample_drag, score_edit  # noqa: E402

CASES = (1_000_000_003, 1_000_000_009, 1_000_000_018)


def low_pass(d: torch.Tensor, factor: int, sigma: float = 2.0) -> torch.Tensor:
    """Blur a pixel_unshuffle latent (B, 3·f², h, w) in image space with a separable Gaussian of `sigma` px."""
    img = F.pixel_shuffle(d, factor)
    r = int(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(d)
    img = F.conv2d(F.pad(img, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    img = F.conv2d(F.pad(img, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return F.pixel_unshuffle(img, factor)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/demo_model/drag_diagnosis.png")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: one case, 10 LoRA and 10 drag steps")
    p.add_argument("--weights", default="demo",
                   help="'demo' (shipped) or a folder written by `python -m dragnb.demo.train --out DIR`")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    m = load_model(args.weights)
    if m.codec_factor is None:
        raise SystemExit("this diagnostic needs the pixel-codec demo model (its low-pass works in image space)")
    rows = []
    print("| case | latent | rms of the change | dist / drag | IoU | bg PSNR dB |\n|---|---|---|---|---|---|")
    for seed in CASES[:1] if args.quick else CASES:
        c = sample_drag(seed)
        cfg = m.default_config(**(dict(lora_steps=10, drag_steps=10) if args.quick else {}))
        s = DragSession(m, c.image, seed=0, config=cfg)
        s.add_drag(handle=c.handle, target=c.target)
        s.set_mask(c.mask)
        s.prepare(progress=False)
        s.run(progress=False)
        zt = s.latent_at(0)
        d = s.current_latent() - zt
        g = torch.Generator().manual_seed(0)
        signs = torch.where(torch.rand(d.shape, generator=g) < 0.5, -1.0, 1.0).to(d)
        row = [c.image]
        for name, delta in (("result (z_t + d)", d), ("random signs", d.abs() * signs),
                            ("d low-passed", low_pass(d, m.codec_factor))):
            img = np.asarray(s.render_latent(zt + delta).convert("RGB"))
            sc = score_edit(img, c)
            print(f"| {seed} | {name} | {float(delta.pow(2).mean().sqrt()):.3f} | {sc['dist_frac']:.2f} | "
                  f"{sc['iou']:.2f} | {sc['bg_psnr']:.1f} |", flush=True)
            row.append(img)
        row.append(c.gt_image)
        rows.append(np.concatenate([np.pad(r, ((2, 2), (2, 2), (0, 0)), constant_values=255) for r in row], 1))
    grid = np.concatenate(rows, 0)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(args.out)
    print(f"wrote {args.out} (columns: input | result | random signs | low-passed | ground truth)")


if __name__ == "__main__":
    main()
