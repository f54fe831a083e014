"""Train the shipped small model on the shape world.

    python -m dragnb.demo.train --out dragnb/demo/weights --steps 5000 --seed 0 [--batch 32] [--lr 3e-4]

Fresh random scenes every step (seeded: scene seeds < 10**9, benchmark seeds are >= 10**9), v-prediction
MSE, AdamW with warm-up then cosine decay, EMA of the weights (the EMA is what ships, in fp16). Every
`--ckpt-minutes` the current EMA is written to `--out` in the layout `load_model("demo")` reads, so a
usable model exists early; at the end, figures go to `--figures` (training curve, samples from noise,
DDIM inversion round trip).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from dragnb.demo import model as M
from dragnb.demo.world import random_batch, random_scene, render
from dragnb.metrics import psnr

# --------------------------------------------------------------------------------------------------
# minimal DDIM (v-prediction) used for the figures; the library's own lives in dragnb/ddim.py


def _ab(sched, t: int) -> torch.Tensor:
    return sched.alphas_cumprod[max(int(t), 0)]


def ddim_move(unet, x, t_from: int, t_to: int, emb):
    """One deterministic DDIM transition of latents x (B, C, h, w) from noise level t_from to t_to."""
    a_f, a_t = _ab(unet._sched, t_from), _ab(unet._sched, t_to)
    t = torch.full((x.shape[0],), int(t_from), device=x.device)
    v = unet(x, t, emb.expand(x.shape[0], -1, -1)).sample
    x0 = a_f.sqrt() * x - (1 - a_f).sqrt() * v
    eps = a_f.sqrt() * v + (1 - a_f).sqrt() * x
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps


def ddim_levels(sched, n_steps: int) -> list[int]:
    """Noise levels [0, t_1, ..., t_n] of an n-step DDIM schedule, clean first."""
    sched.set_timesteps(n_steps)
    return [0] + sorted(int(t) for t in sched.timesteps)


@torch.no_grad()
def ddim_invert(unet, x0, emb, n_steps=50, k=35):
    lv = ddim_levels(unet._sched, n_steps)
    x = x0
    for i in range(k):
        x = ddim_move(unet, x, lv[i], lv[i + 1], emb)
    return x


@torch.no_grad()
def ddim_denoise(unet, x, emb, n_steps=50, k=50):
    lv = ddim_levels(unet._sched, n_steps)
    for i in range(k, 0, -1):
        x = ddim_move(unet, x, lv[i], lv[i - 1], emb)
    return x


# --------------------------------------------------------------------------------------------------


def save_weights(out: Path, unet, prompt_embeds, info: dict) -> None:
    """Write the shipped layout: unet/ (fp16 safetensors), scheduler/, prompt_embeds.safetensors, dragnb_demo.json."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "unet.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    half = copy.deepcopy(unet).to("cpu", torch.float16)
    half.save_pretrained(tmp, safe_serialization=True)
    old = out / "unet.old"
    if old.exists():
        shutil.rmtree(old)
    if (out / "unet").exists():
        os.replace(out / "unet", old)
    os.replace(tmp, out / "unet")
    if old.exists():
        shutil.rmtree(old)
    M.build_demo_scheduler().save_pretrained(out / "scheduler")
    save_file({"prompt_embeds": prompt_embeds.detach().float().cpu().contiguous()}, str(out / "prompt_embeds.safetensors"))
    meta = {"codec": "pixel_unshuffle", "factor": M.FACTOR, "image_size": M.IMAGE_SIZE,
            "config_overrides": dict(M.DEMO_CONFIG_OVERRIDES), "training": info}
    (out / "dragnb_demo.json").write_text(json.dumps(meta, indent=2) + "\n")


def make_figures(unet, emb, losses, fig_dir: Path, device, seed: int = 0) -> dict:
    """Training curve, 4×8 samples from noise (DDIM 50), inversion round trip (invert 35 of 50, denoise back)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig_dir.mkdir(parents=True, exist_ok=True)
    unet.eval()
    out = {}
    if losses:
        s, l = np.array(losses).T
        k = 50
        smooth = np.convolve(l, np.ones(k) / k, mode="valid") if len(l) > k else l
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(s, l, lw=0.3, alpha=0.4, label="batch loss")
        ax.plot(s[len(s) - len(smooth):], smooth, lw=1.5, label=f"mean of {k}")
        ax.set_yscale("log"); ax.set_xlabel("step"); ax.set_ylabel("v-prediction MSE"); ax.legend()
        ax.set_title("dragnb demo model: training loss")
        fig.tight_layout(); fig.savefig(fig_dir / "training_curve.png", dpi=110); plt.close(fig)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3 * M.FACTOR**2, M.IMAGE_SIZE // M.FACTOR, M.IMAGE_SIZE // M.FACTOR, generator=g).to(device)
    imgs = M.tensor_to_uint8(M.decode(ddim_denoise(unet, x, emb, 50, 50)))
    grid = np.concatenate([np.concatenate(list(imgs[r * 8:(r + 1) * 8]), 1) for r in range(4)], 0)
    from PIL import Image
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(fig_dir / "samples_from_noise.png")
    # inversion round trip on held-out scenes (seeds >= 10**9)
    src = np.stack([render(random_scene(10**9 + i)) for i in range(8)])
    x0 = M.encode(M.uint8_to_tensor(src)).to(device)
    rec = M.tensor_to_uint8(M.decode(ddim_denoise(unet, ddim_invert(unet, x0, emb, 50, 35), emb, 50, 35)))
    ps = [psnr(a, b) for a, b in zip(src, rec)]
    out["roundtrip_psnr_mean"] = float(np.mean(ps))
    out["roundtrip_psnr_min"] = float(np.min(ps))
    fig, axes = plt.subplots(2, 8, figsize=(12, 3.4))
    for i in range(8):
        axes[0, i].imshow(src[i]); axes[1, i].imshow(rec[i]); axes[1, i].set_title(f"{ps[i]:.1f} dB", fontsize=8)
        axes[0, i].axis("off"); axes[1, i].axis("off")
    fig.suptitle(f"DDIM inversion 35/50 then denoise back (top: input, bottom: reconstruction); mean {np.mean(ps):.1f} dB")
    fig.tight_layout(); fig.savefig(fig_dir / "inversion_roundtrip.png", dpi=100); plt.close(fig)
    unet.train()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="dragnb/demo/weights")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--ckpt-minutes", type=float, default=10.0)
    p.add_argument("--figures", default="docs/demo_model", help="folder for the figures; 'none' skips them")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                   help="autocast dtype of the forward pass (bf16: about 1.3x faster on a CPU with avx512_bf16; "
                        "weights, optimizer and EMA stay float32)")
    p.add_argument("--init", default=None,
                   help="start from the UNet of this weights folder (e.g. the shipped dragnb/demo/weights) instead of "
                        "random weights: a second run with a fresh warm-up and cosine schedule continues training")
    p.add_argument("--upgrade", choices=("attn16",), default=None,
                   help="with --init: change the architecture first; attn16 adds zero-initialised transformer blocks "
                        "at 16x16 and drops the mid block's (dragnb.demo.model.upgrade_full_res_attention)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps while keeping the learning-rate schedule of --steps")
    args = p.parse_args(argv)
    if args.steps < 1:
        raise ValueError(f"--steps {args.steps} is invalid: use a positive number of optimizer steps")
    if args.batch < 1:
        raise ValueError(f"--batch {args.batch} is invalid: use a batch size >= 1")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)

    init_info = None
    if args.init:
        from diffusers import UNet2DConditionModel
        from safetensors.torch import load_file
        init_dir = Path(args.init)
        if not (init_dir / "unet" / "config.json").exists():
            raise FileNotFoundError(f"--init {init_dir}: no unet/ there; pass a folder written by dragnb.demo.train")
        # built from the folder's config and state dict rather than from_pretrained, which would record the
        # folder in the config as _name_or_path and so in every folder this run writes
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(init_dir / "unet"))
        unet.load_state_dict(load_file(str(init_dir / "unet" / "diffusion_pytorch_model.safetensors")))
        if args.upgrade == "attn16":
            unet = M.upgrade_full_res_attention(unet)
        unet = unet.float().to(device).train()
        meta_path = init_dir / "dragnb_demo.json"
        init_info = json.loads(meta_path.read_text()).get("training") if meta_path.exists() else None
    else:
        if args.upgrade:
            raise ValueError(f"--upgrade {args.upgrade} changes an existing model: "
                             "pass the folder to start from with --init")
        unet = M.build_demo_unet().to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    sched = M.build_demo_scheduler()
    unet._sched = ema._sched = sched  # used by the figure helpers
    ab = sched.alphas_cumprod.to(device)
    emb = M.make_prompt_embeds(0).to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        q = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * q)))

    n_params = sum(p.numel() for p in unet.parameters())
    print(f"dragnb demo model: {n_params / 1e6:.2f} M params, device {device}, {args.steps} steps, batch {args.batch}", flush=True)
    out, fig_dir = Path(args.out), None if args.figures == "none" else Path(args.figures)
    losses: list[tuple[int, float]] = []
    t0 = last_ckpt = time.time()
    ema_params, params = list(ema.parameters()), list(unet.parameters())

    def info(step):
        recent = [l for _, l in losses[-200:]]
        return {"seed": args.seed, "steps": step, "batch": args.batch, "lr": args.lr, "ema": args.ema,
                "precision": args.precision,
                "minutes": round((time.time() - t0) / 60, 1), "device": str(device) if device.type != "cpu"
                else f"cpu ({args.threads} threads)", "final_loss": round(float(np.mean(recent)), 5) if recent else None,
                "command": f"python -m dragnb.demo.train --out {args.out} --steps {args.steps} --seed {args.seed} "
                           f"--batch {args.batch} --lr {args.lr} --precision {args.precision} --threads {args.threads}"
                           + ("" if args.init is None else f" --init {args.init}")
                           + ("" if args.upgrade is None else f" --upgrade {args.upgrade}")
                           + ("" if args.stop_after is None else f" --stop-after {args.stop_after}"),
                "init_from": init_info}

    def save_losses():
        if fig_dir is not None:
            fig_dir.mkdir(parents=True, exist_ok=True)
            np.savetxt(fig_dir / "loss.csv", np.array(losses), delimiter=",", header="step,loss", fmt=["%d", "%.5f"])

    last = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    for step in range(last):
        imgs = random_batch(rng, args.batch)
        flip = rng.random(args.batch) < 0.5
        imgs[flip] = imgs[flip][:, :, ::-1]
        x0 = M.encode(M.uint8_to_tensor(imgs)).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen).to(device)
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            pred = unet(xt, t, emb.expand(args.batch, -1, -1)).sample
        loss = torch.nn.functional.mse_loss(pred.float(), v)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()} at step {step}: lower --lr (now {args.lr})")
        for g_ in opt.param_groups:
            g_["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - d)
        losses.append((step + 1, float(loss.item())))
        if (step + 1) % args.log_every == 0 or step == 0:
            el = time.time() - t0
            recent = np.mean([l for _, l in losses[-args.log_every:]])
            print(f"step {step + 1}/{args.steps} loss {recent:.4f} lr {lr_at(step):.2e} "
                  f"{el / (step + 1):.3f} s/step elapsed {el / 60:.1f} min "
                  f"eta {(last - step - 1) * el / (step + 1) / 60:.1f} min", flush=True)
        if time.time() - last_ckpt > args.ckpt_minutes * 60 and step + 1 < last:
            save_weights(out, ema, emb, info(step + 1))
            save_losses()
            print(f"checkpoint at step {step + 1} -> {out}", flush=True)
            last_ckpt = time.time()

    final = info(last)
    if fig_dir is not None:
        final.update(make_figures(ema, emb, losses, fig_dir, device, args.seed))
    save_weights(out, ema, emb, final)
    save_losses()
    print(json.dumps(final, indent=2), flush=True)


if __name__ == "__main__":
    main()
