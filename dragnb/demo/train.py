"""Train the demo model on the shape world, for a number of steps or a wall-clock budget.

    python -m dragnb.demo.train --out dragnb/demo/weights --steps 5000 --seed 0 [--batch 32] [--lr 3e-4]
    python -m dragnb.demo.train --out OUT/weights --minutes 7 --arch f2l4 --figures OUT/figures   # on a GPU

Fresh random scenes every step (`--data torch`: drawn and rasterised by `dragnb.demo.world_torch` on the
training device; `--data numpy`: `dragnb.demo.world` on the CPU, scene seeds < 10**9; benchmark seeds are
>= 10**9), v-prediction MSE (optionally min-SNR-weighted, `--min-snr`, and with part of each batch's
timesteps drawn below `--t-focus`; with `--corr-weight`, plus a feature-correspondence loss on scene pairs,
`dragnb.demo.correspond`; with `--shaded P`, a fraction P of the shapes shaded, `dragnb.demo.world`), AdamW
with warm-up then cosine decay, EMA of the weights (the EMA is what ships, in fp16, as safetensors shards under
`--shard-size`). Every `--ckpt-minutes` the current EMA is written to `--out` in the layout `load_model(folder)`
reads, so a usable model exists early; at the end,
figures go to `--figures` (training curve, loss.csv, samples from noise, DDIM inversion round trip,
summary.json with the x0 PSNR per noise level and the samples' shape fidelity).

Wall-clock budget (`--minutes M`): the run stops when M minutes of training have passed (model building
excluded, figures after it). The learning-rate schedule is a cosine over a step count fixed once, at the end
of the warm-up: steps done + 0.97 × (time left / seconds per step measured over the second half of the
warm-up, after any torch.compile). So the schedule reaches its floor near the end of the budget and never
changes after it is set, and `training.reproduce` in dragnb_demo.json repeats the run as a plain
`--steps N [--stop-after K]` command (same device type, same seed).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dragnb import ddim
from dragnb.demo import model as M
from dragnb.demo.stepping import GraphedStep, StepSplit
from dragnb.demo.correspond import correspondence_loss, pair_batch
from dragnb.demo.world import random_batch
from dragnb.features import capture_block_output, resize_features
from dragnb.metrics import psnr

# --------------------------------------------------------------------------------------------------
# DDIM between exact noise levels (clean level 0 included, the UNet evaluated at the level it starts from), for the
# figures' inversion round trip; the arithmetic is the library's (dragnb.ddim), whose inversion is the official one


def ddim_move(unet, x, t_from: int, t_to: int, emb):
    """One deterministic DDIM transition of latents x (B, C, h, w) from noise level t_from to t_to."""
    t = torch.full((x.shape[0],), int(t_from), device=x.device)
    out = unet(x, t, emb.expand(x.shape[0], -1, -1)).sample
    return ddim.ddim_move(unet._sched, out, x, int(t_from), int(t_to))


def ddim_levels(sched, n_steps: int) -> list[int]:
    """Noise levels [0, t_1, ..., t_n] of an n-step DDIM schedule, clean first."""
    return [0] + sorted(ddim.timesteps(sched, n_steps))


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
# writing a weights folder and the figures


def save_weights(out: Path, unet, prompt_embeds, info: dict, factor: int = M.FACTOR,
                 overrides: dict | None = None, shard_size: str = "14MB") -> None:
    """Write the demo layout: unet/ (fp16 safetensors, sharded so that no file exceeds `shard_size`),
    scheduler/, prompt_embeds.safetensors, dragnb_demo.json (codec factor, DragConfig overrides, training)."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "unet.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    half = copy.deepcopy(unet).to("cpu", torch.float16)
    half.save_pretrained(tmp, safe_serialization=True, max_shard_size=shard_size)
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
    meta = {"codec": "pixel_unshuffle", "factor": int(factor), "image_size": M.IMAGE_SIZE,
            "config_overrides": dict(M.DEMO_CONFIG_OVERRIDES if overrides is None else overrides), "training": info}
    (out / "dragnb_demo.json").write_text(json.dumps(meta, indent=2) + "\n")


def default_figures(out: Path) -> Path:
    """Where a run's figures go unless `--figures` says: `docs/demo_model` (of the current folder, the repository's
    root as the docs run it) for a run into the shipped weights folder, else a folder `<out>_figures` beside `out`,
    so that a trial run never overwrites the shipped model's figures."""
    shipped = Path(__file__).resolve().parent / "weights"
    if out.resolve() == shipped:
        return Path("docs/demo_model")
    return out.parent / f"{out.name}_figures"


def make_figures(unet, emb, losses, fig_dir: Path, device, seed: int = 0, factor: int = M.FACTOR,
                 n_samples: int = 64) -> dict:
    """Training curve, samples from noise (DDIM 50) with their shape fidelity, x0 PSNR per noise level,
    inversion round trip (invert 35 of 50, denoise back). Returns the figures' numbers (also summary.json)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from dragnb.demo import evaluate
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
    rep = evaluate.prior_report(unet, unet._sched, emb, factor, n_samples=n_samples, seed=seed)
    out["x0_psnr"] = {str(r["t"]): round(r["x0_psnr"], 2) for r in rep["x0_psnr"]}
    if rep["samples"] is not None:
        grid = evaluate.sample_grid(rep["samples"])
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(fig_dir / "samples_from_noise.png")
        out["shape_fidelity"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in rep["fidelity"].items()}
    # inversion round trip on held-out scenes (seeds >= 10**9)
    src = evaluate.held_out_scenes(8)
    x0 = M.encode(M.uint8_to_tensor(src), factor).to(device)
    rec = M.tensor_to_uint8(M.decode(ddim_denoise(unet, ddim_invert(unet, x0, emb, 50, 35), emb, 50, 35), factor))
    ps = [psnr(a, b) for a, b in zip(src, rec)]
    out["roundtrip_psnr_mean"] = float(np.mean(ps))
    out["roundtrip_psnr_min"] = float(np.min(ps))
    fig, axes = plt.subplots(2, 8, figsize=(12, 3.4))
    for i in range(8):
        axes[0, i].imshow(src[i]); axes[1, i].imshow(rec[i]); axes[1, i].set_title(f"{ps[i]:.1f} dB", fontsize=8)
        axes[0, i].axis("off"); axes[1, i].axis("off")
    fig.suptitle(f"DDIM inversion 35/50 then denoise back (top: input, bottom: reconstruction); mean {np.mean(ps):.1f} dB")
    fig.tight_layout(); fig.savefig(fig_dir / "inversion_roundtrip.png", dpi=100); plt.close(fig)
    (fig_dir / "summary.json").write_text(json.dumps({**out, "x0_psnr_rows": rep["x0_psnr"]}, indent=1) + "\n")
    unet.train()
    return out


# --------------------------------------------------------------------------------------------------
# the run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="dragnb/demo/weights")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default 5000; with --minutes: an upper bound, default none)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget of the training loop; the cosine schedule is fitted to it (see above)")
    p.add_argument("--arch", default="f4l3", choices=sorted(M.ARCHITECTURES),
                   help="UNet and codec (dragnb.demo.model.ARCHITECTURES; f4l3 = the shipped one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="default 32 on a CPU, 256 on a GPU")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--data", choices=("auto", "torch", "numpy"), default="auto",
                   help="scene source: torch (world_torch on the training device), numpy (world on the CPU, the "
                        "shipped run's); auto = torch on a GPU, numpy on a CPU")
    p.add_argument("--min-snr", type=float, default=0.0,
                   help="min-SNR-gamma loss weighting (v-prediction: min(snr, gamma) / (snr + 1)); 0 = off")
    p.add_argument("--t-focus", type=int, default=1000,
                   help="with --t-focus-prob P: a fraction P of each batch draws t below this (the inversion "
                        "strength's timestep: 681 at 0.7), the rest from the whole range")
    p.add_argument("--t-focus-prob", type=float, default=0.0)
    p.add_argument("--corr-weight", type=float, default=0.0,
                   help="weight of a feature-correspondence loss on decoder features (--corr-block; dragnb.demo.correspond: "
                        "pairs of a scene and the same scene with its top shape moved; the true point must be the "
                        "nearest in L1 among all grid cells); 0 = off")
    p.add_argument("--corr-pairs", type=int, default=8,
                   help="with --corr-weight: scene pairs per batch (2 x this many of the batch's samples)")
    p.add_argument("--corr-t", type=int, nargs=2, default=(600, 760), metavar=("LO", "HI"),
                   help="with --corr-weight: the pairs' noise levels, drawn in [LO, HI) (the demo's drag runs "
                        "from t = 741 down to 621)")
    p.add_argument("--corr-tau", type=float, default=0.1, help="with --corr-weight: the InfoNCE temperature")
    p.add_argument("--corr-block", type=int, default=2,
                   help="with --corr-weight: the decoder block whose output the loss reads (default 2, DragDiffusion's "
                        "and the fourteenth session's probe; the demo model drags on 1 since the fifteenth)")
    p.add_argument("--shaded", type=float, default=0.0,
                   help="probability that each shape of a training scene is shaded (dragnb.demo.world: a colour ramp "
                        "and a brighter or darker centre that move with the shape); 0 = the flat world, as shipped")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (off by default)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay the whole update (forward, backward, clipping, AdamW) from one CUDA graph after 3 "
                        "eager steps (dragnb.demo.stepping.GraphedStep); CUDA only. A non-finite loss then ends the "
                        "run (the update is already applied; the EMA, which ships, is kept from the step before)")
    p.add_argument("--data-chunk", type=int, default=None,
                   help="with --data torch: draw this many batches of scenes at once (default 8 on a GPU, where each "
                        "draw is ~1,800 kernel launches whatever its size; 1 on a CPU)")
    p.add_argument("--shard-size", default="14MB", help="largest weights file (diffusers max_shard_size)")
    p.add_argument("--samples", type=int, default=64, help="samples from noise for the figures and the fidelity")
    p.add_argument("--ckpt-minutes", type=float, default=10.0)
    p.add_argument("--figures", default=None,
                   help="folder for the figures; 'none' skips them. Default: docs/demo_model when --out is the "
                        "shipped weights folder (a run that replaces the shipped model replaces its figures), "
                        "else OUT_figures beside --out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--deterministic", action="store_true",
                   help="on CUDA: deterministic kernels (cuDNN's autotuner off, torch.use_deterministic_algorithms, "
                        "a fixed cuBLAS workspace), so two runs from one seed can give the same weights; slower. "
                        "Without it two 300-step H200 runs from one seed ended 0.008 apart in the largest weight "
                        "(benchmarks/train_repeat.py measures it)")
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
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps} is invalid: use a positive number of optimizer steps")
    if args.minutes is not None and not args.minutes > 0:
        raise ValueError(f"--minutes {args.minutes} is invalid: use a positive budget in minutes")
    if args.steps is None and args.minutes is None:
        args.steps = 5000
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch {args.batch} is invalid: use a batch size >= 1")
    if args.data_chunk is not None and args.data_chunk < 1:
        raise ValueError(f"--data-chunk {args.data_chunk} is invalid: use a whole number >= 1")
    if not 0.0 <= args.t_focus_prob <= 1.0 or not 1 <= args.t_focus <= 1000:
        raise ValueError(f"--t-focus {args.t_focus} --t-focus-prob {args.t_focus_prob} are invalid: "
                         "use 1..1000 and a probability in [0, 1]")
    if not 0.0 <= args.shaded <= 1.0:
        raise ValueError(f"--shaded {args.shaded} is invalid: use the probability that a shape is shaded, in [0, 1]")
    if args.cuda_graph and args.compile:
        raise ValueError("--cuda-graph and --compile: use one of the two (a compiled forward is not captured)")
    if args.corr_weight < 0 or (args.corr_weight > 0 and not (
            1 <= args.corr_pairs and 2 * args.corr_pairs <= (args.batch or 32) and 0 <= args.corr_t[0] < args.corr_t[1] <= 1000
            and args.corr_tau > 0)):
        raise ValueError(f"--corr-weight {args.corr_weight} --corr-pairs {args.corr_pairs} --corr-t {args.corr_t} "
                         f"--corr-tau {args.corr_tau} are invalid: use a weight >= 0, 1 <= pairs <= batch / 2, "
                         "0 <= LO < HI <= 1000 and a positive temperature")
    if args.upgrade and not args.init:
        raise ValueError(f"--upgrade {args.upgrade} changes an existing model: pass the folder to start from with --init")
    return args


def make_deterministic():
    """Deterministic kernels for this process: cuDNN without its autotuner (which may pick other algorithms in
    another run) and with deterministic algorithms only, torch's deterministic mode (a warning, not an error, for
    an op without a deterministic kernel), and the cuBLAS workspace setting that mode asks for (read when cuBLAS
    starts, so before the first CUDA matmul)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


_GRAPHS_ON_CPU = False   # tests: let --cuda-graph run on a CPU (with an emulated capture)


def build_unet(args, device):
    """(unet float32 on device, codec factor, init_info): fresh of `--arch`, or from `--init`'s folder."""
    if not args.init:
        return M.build_demo_unet(args.arch).to(device).train(), M.architecture(args.arch)["factor"], None
    init_dir = Path(args.init)
    if not (init_dir / "unet" / "config.json").exists():
        raise FileNotFoundError(f"--init {init_dir}: no unet/ there; pass a folder written by dragnb.demo.train")
    unet = M.load_unet(init_dir / "unet")
    if args.upgrade == "attn16":
        unet = M.upgrade_full_res_attention(unet)
    meta_path = init_dir / "dragnb_demo.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return unet.float().to(device).train(), int(meta.get("factor", M.FACTOR)), meta.get("training")


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not args.deterministic
    if args.deterministic:
        make_deterministic()
    batch = args.batch or (256 if device.type == "cuda" else 32)
    data = args.data if args.data != "auto" else ("torch" if device.type == "cuda" else "numpy")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)          # noise and t for --data numpy (as shipped)
    gdev = torch.Generator(device=device).manual_seed(args.seed)       # everything for --data torch
    chunk = args.data_chunk or (8 if device.type == "cuda" else 1)
    if data == "torch":
        from dragnb.demo.world_torch import SceneStream
        scenes = SceneStream(batch, gdev, chunk, shaded=args.shaded)

    unet, factor, init_info = build_unet(args, device)
    if args.corr_weight > 0 and not 0 <= args.corr_block < len(unet.up_blocks):
        raise ValueError(f"--corr-block {args.corr_block} is invalid: this UNet has {len(unet.up_blocks)} decoder blocks, "
                         f"use 0..{len(unet.up_blocks) - 1}")
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    sched = M.build_demo_scheduler()
    unet._sched = ema._sched = sched  # used by the figure helpers
    ab = sched.alphas_cumprod.to(device)
    emb = M.make_prompt_embeds(0).to(device)
    graphed = None
    if args.cuda_graph:     # a graph-safe AdamW (its step count and learning rate live on the device)
        if device.type != "cuda" and not _GRAPHS_ON_CPU:
            raise ValueError(f"--cuda-graph needs a CUDA device, not {device}: leave it out on a CPU")
        on_gpu = device.type == "cuda"
        opt = torch.optim.AdamW(unet.parameters(), lr=torch.tensor(args.lr, device=device) if on_gpu else args.lr,
                                weight_decay=0.0, capturable=on_gpu, foreach=True)
    else:
        opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    fwd = torch.compile(unet) if args.compile else unet
    overrides = M.config_overrides_for(unet)

    budget = None if args.minutes is None else args.minutes * 60
    cap = args.steps                      # None: only the budget stops the run
    total = args.steps                    # the step count the cosine runs over (set after warm-up with a budget)
    last = None if cap is None else (cap if args.stop_after is None else min(cap, args.stop_after))

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        q = min(1.0, (step - args.warmup) / max(1, (total or step + 1) - args.warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * q)))

    n_params = sum(p.numel() for p in unet.parameters())
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)"
    print(f"dragnb demo model: {n_params / 1e6:.2f} M params ({args.init or args.arch}, pixel_unshuffle x{factor}), "
          f"{dev_name}, batch {batch}, data {data}, "
          + (f"budget {args.minutes} min" if budget else f"{args.steps} steps"), flush=True)
    out = Path(args.out)
    fig_dir = None if args.figures == "none" else Path(args.figures) if args.figures else default_figures(out)
    losses: list[tuple[int, float]] = []
    corr_log: list[tuple[float, float]] = []     # (correspondence loss, accuracy) per step, with --corr-weight
    ema_params, params = list(ema.parameters()), list(unet.parameters())
    bad_in_a_row = skipped = 0
    fixed = False                         # the budget's schedule length is set
    marks: list[tuple[int, float]] = []   # (steps done, seconds) during the warm-up, for the step-time estimate
    t0 = last_ckpt = time.time()

    def info(step):
        recent = [l for _, l in losses[-200:]]
        el = time.time() - t0
        reproduce = (["python -m dragnb.demo.train"] + [a for a in _drop_opt(argv, "--minutes")]
                     + ([] if "--steps" in argv else [f"--steps {total}"])
                     + ([] if "--data-chunk" in argv or data != "torch" else [f"--data-chunk {chunk}"])
                     + ([] if step >= (total or 0) or "--stop-after" in argv else [f"--stop-after {step}"]))
        return {"seed": args.seed, "steps": step, "batch": batch, "lr": args.lr, "ema": args.ema,
                "precision": args.precision, "arch": None if args.init else args.arch, "factor": factor,
                "data": data, "data_chunk": chunk if data == "torch" else None, "min_snr": args.min_snr,
                "t_focus": args.t_focus, "t_focus_prob": args.t_focus_prob,
                **({"shaded": args.shaded} if args.shaded else {}),
                **({} if not corr else {"corr_weight": args.corr_weight, "corr_pairs": n_pairs, "corr_t": list(args.corr_t),
                                        "corr_block": args.corr_block,
                                        "corr_tau": args.corr_tau,
                                        "corr_final": [round(float(np.mean(c)), 4) for c in zip(*corr_log[-200:])] or None}),
                "compile": args.compile, "cuda_graph": args.cuda_graph, "deterministic": args.deterministic,
                **({} if graphed is None else {"graph_replays": graphed.replays, "graph_failure": graphed.failure}),
                "budget_minutes": args.minutes, "schedule_steps": total,
                "skipped_steps": skipped, "params_M": round(n_params / 1e6, 2),
                "minutes": round(el / 60, 1), "s_per_step": round(el / max(1, step), 4), **split.totals(),
                "device": dev_name, "final_loss": round(float(np.mean(recent)), 5) if recent else None,
                "command": " ".join(["python -m dragnb.demo.train"] + argv),
                "reproduce": " ".join(reproduce), "init_from": init_info}

    def save_losses():
        if fig_dir is not None:
            fig_dir.mkdir(parents=True, exist_ok=True)
            np.savetxt(fig_dir / "loss.csv", np.array(losses).reshape(-1, 2), delimiter=",", header="step,loss",
                       fmt=["%d", "%.5f"])

    corr = args.corr_weight > 0
    n_pairs = args.corr_pairs if corr else 0
    grid_hw = (M.IMAGE_SIZE // 2, M.IMAGE_SIZE // 2)        # the drag's supervision grid (sup_res_scale 0.5)

    def forward_loss(xt, t, v, a, pts_a=None, pts_b=None):
        """3. prediction and loss from noised latents: (mse, loss, correspondence loss, its accuracy). The loss is the
        per-sample MSE (optionally min-SNR weighted) plus --corr-weight x the correspondence loss of the batch's last
        2 x --corr-pairs samples (pairs: first scenes, then their moved versions). No host reads; without autocast's
        weight cache under --cuda-graph (a graph cannot hold it; the values are the same)."""
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16",
                            cache_enabled=not args.cuda_graph):
            with capture_block_output(unet, args.corr_block) if corr else contextlib.nullcontext({}) as store:
                pred = fwd(xt, t, emb.expand(batch, -1, -1)).sample
        per = ((pred.float() - v) ** 2).mean(dim=(1, 2, 3))
        mse = per.mean()
        if args.min_snr <= 0:
            loss = mse
        else:
            snr = a.view(-1) / (1 - a.view(-1))
            loss = (per * snr.clamp(max=args.min_snr) / (snr + 1)).mean()
        if not corr:
            zero = mse.detach() * 0
            return mse, loss, zero, zero
        feat = resize_features(store["feat"][batch - 2 * n_pairs:], grid_hw)
        closs, cacc = correspondence_loss(feat[:n_pairs], feat[n_pairs:], pts_a, pts_b, M.IMAGE_SIZE, args.corr_tau)
        return mse, loss + args.corr_weight * closs, closs.detach(), cacc

    def update(xt, t, v, a, *pts):
        """3-4 for --cuda-graph: the whole update, no host reads, gradients set to None before (GraphedStep)."""
        out = forward_loss(xt, t, v, a, *pts)
        out[1].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        return out

    if args.cuda_graph:
        graphed = GraphedStep(update, lambda: opt.zero_grad(set_to_none=True))

    def set_lr(value):
        """The learning rate for the next update (in place where it lives on the device: --cuda-graph's AdamW)."""
        for g_ in opt.param_groups:
            if torch.is_tensor(g_["lr"]):
                g_["lr"].fill_(value)
            else:
                g_["lr"] = value

    step = 0
    split = StepSplit(device)
    while True:
        el = time.time() - t0
        if (last is not None and step >= last) or (budget is not None and el >= budget):
            break
        split.start()
        # 1. scenes -> clean latents x0 (B, 3f², 64/f, 64/f), half of them mirrored
        if data == "torch":
            imgs = scenes.next().permute(0, 3, 1, 2)                                 # (B, 3, H, W) uint8
            flip = torch.rand(batch, generator=gdev, device=device) < 0.5
            imgs = torch.where(flip.view(-1, 1, 1, 1), imgs.flip(-1), imgs)
            if corr:        # the pairs come from the numpy world (a few per batch), in the batch's last places
                pair_a, pair_b, pts_a, pts_b = pair_batch(rng, n_pairs)
                pairs = torch.from_numpy(np.concatenate([pair_a, pair_b])).to(device).permute(0, 3, 1, 2)
                imgs = torch.cat([imgs[:batch - 2 * n_pairs], pairs])
            x0 = M.encode(imgs.float() / 127.5 - 1.0, factor)
            noise = torch.randn(x0.shape, generator=gdev, device=device)
            t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gdev, device=device)
            if args.t_focus_prob > 0:
                low = torch.randint(0, args.t_focus, (batch,), generator=gdev, device=device)
                t = torch.where(torch.rand(batch, generator=gdev, device=device) < args.t_focus_prob, low, t)
            if corr:
                tp = torch.randint(args.corr_t[0], args.corr_t[1], (n_pairs,), generator=gdev, device=device)
                t = torch.cat([t[:batch - 2 * n_pairs], tp, tp])
        else:
            imgs = random_batch(rng, batch - 2 * n_pairs, shaded=args.shaded)
            flip = rng.random(len(imgs)) < 0.5
            imgs[flip] = imgs[flip][:, :, ::-1]
            if corr:
                pair_a, pair_b, pts_a, pts_b = pair_batch(rng, n_pairs)
                imgs = np.concatenate([imgs, pair_a, pair_b])
            x0 = M.encode(M.uint8_to_tensor(imgs), factor).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
            if args.t_focus_prob > 0:
                low = torch.randint(0, args.t_focus, (batch,), generator=gen)
                t = torch.where(torch.rand(batch, generator=gen) < args.t_focus_prob, low, t)
            if corr:        # one noise level per pair, drawn in the drag's range
                tp = torch.randint(args.corr_t[0], args.corr_t[1], (n_pairs,), generator=gen)
                t = torch.cat([t[:batch - 2 * n_pairs], tp, tp])
            t = t.to(device)
        # 2. noised latents and the v target
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        pts = (torch.from_numpy(pts_a).to(device), torch.from_numpy(pts_b).to(device)) if corr else ()
        split.data_done()
        if graphed is not None:
            # 3-4. the whole update as one CUDA graph (after 3 eager steps): it cannot skip a step
            set_lr(lr_at(step))
            mse, loss, closs, cacc = graphed(xt, t, v, a, *pts)
            mse_v = float(mse.item())
            if not math.isfinite(mse_v) or not math.isfinite(float(loss.detach())):
                skipped += 1
                print(f"step {step + 1}: loss is {mse_v}; with --cuda-graph the update is already applied: stopping with "
                      f"the EMA of step {step} (lower --lr, now {args.lr})", flush=True)
                break
        else:
            mse, loss, closs, cacc = forward_loss(xt, t, v, a, *pts)
            # 4. update (a non-finite loss skips the step; ten in a row end the run with the EMA so far)
            set_lr(lr_at(step))
            opt.zero_grad(set_to_none=True)
            mse_v = float(mse.item())
            if not math.isfinite(mse_v) or not torch.isfinite(loss):
                skipped += 1
                bad_in_a_row += 1
                print(f"step {step + 1}: loss is {mse_v}, update skipped ({bad_in_a_row} in a row)", flush=True)
                if bad_in_a_row >= 10:
                    print(f"ten non-finite losses in a row at step {step + 1}: stopping; lower --lr (now {args.lr})",
                          flush=True)
                    break
                step += 1
                continue
            bad_in_a_row = 0
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        d = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - d)
        split.step_done()
        step += 1
        losses.append((step, mse_v))
        if corr:
            corr_log.append((float(closs), float(cacc)))
        # 5. with a budget: fix the schedule's length once, at the end of the warm-up
        if budget is not None and not fixed:
            if step > args.warmup // 2:
                marks.append((step, time.time() - t0))
            if step >= args.warmup:
                now = time.time() - t0
                first = marks[0] if len(marks) > 1 else (0, 0.0)
                per_step = (now - first[1]) / max(1, step - first[0])
                est = step + int(0.97 * max(0.0, budget - now) / max(per_step, 1e-9))
                total = est if cap is None else min(cap, est)
                last = total if last is None else min(last, total)
                fixed = True
                print(f"budget {args.minutes} min: {per_step:.3f} s/step after the warm-up -> cosine over {total} steps",
                      flush=True)
        if step % args.log_every == 0 or step == 1:
            el = time.time() - t0
            recent = np.mean([l for _, l in losses[-args.log_every:]])
            left = (budget - el) if budget is not None else (last - step) * el / step
            sp = split.read()
            where = "" if sp is None else f" (data {sp[0] * 1e3:.1f} ms, model {sp[1] * 1e3:.1f} ms)"
            cl = "" if not corr else " corr {:.3f} acc {:.2f}".format(*np.mean(corr_log[-args.log_every:], axis=0))
            print(f"step {step}/{total or '?'} loss {recent:.4f}{cl} lr {lr_at(step - 1):.2e} "
                  f"{el / step:.3f} s/step{where} elapsed {el / 60:.1f} min left {left / 60:.1f} min", flush=True)
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            save_weights(out, ema, emb, info(step), factor, overrides, args.shard_size)
            save_losses()
            print(f"checkpoint at step {step} -> {out}", flush=True)
            last_ckpt = time.time()

    final = info(step)
    print(f"trained {step} steps in {final['minutes']} min ({final['s_per_step']} s/step, "
          f"{batch / max(final['s_per_step'], 1e-9):.0f} samples/s)", flush=True)
    if fig_dir is not None:
        t_fig = time.time()
        final.update(make_figures(ema, emb, losses, fig_dir, device, args.seed, factor, args.samples))
        print(f"figures in {time.time() - t_fig:.0f} s -> {fig_dir}", flush=True)
    save_weights(out, ema, emb, final, factor, overrides, args.shard_size)
    save_losses()
    print(json.dumps(final, indent=2), flush=True)
    return final


def _drop_opt(argv: list[str], name: str) -> list[str]:
    """argv without option `name` and its value (either `--name v` or `--name=v`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


if __name__ == "__main__":
    main()
