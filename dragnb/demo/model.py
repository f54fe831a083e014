"""Architecture of the shipped small model: a pixel-space diffusers UNet for the 64×64 shape world.

Pixel codec (fixed, no VAE): latents (B, 3·F², 64/F, 64/F) = `F.pixel_unshuffle(image_in_[-1, 1], F)`,
decode = `F.pixel_shuffle(latents, F)`. With F = 4: latents (B, 48, 16, 16).

The UNet is a `diffusers.UNet2DConditionModel` with cross-attention transformer blocks (so LoRA on
to_q/to_k/to_v/to_out.0 and mutual self-attention apply as on Stable Diffusion) and three up blocks
(DragDiffusion's features come from `unet.up_blocks[2]`, here at 16×16 with 128 channels).
The prompt is fixed: `prompt_embeds` (1, L, D) drawn once from a seeded normal distribution.
Training target: v-prediction with the `squaredcos_cap_v2` schedule (epsilon + linear betas gave a
model that could invert but not sample, see /work/shared/FACTS.md).

`ARCHITECTURES` lists what `python -m dragnb.demo.train --arch NAME` can train (the shipped one is "f4l3");
a trained folder records its codec factor and DragConfig overrides in dragnb_demo.json, which
`load_model(folder)` reads, so FACTOR below is the shipped model's, not every model's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FACTOR = 4
IMAGE_SIZE = 64
PROMPT_LEN = 4
CROSS_ATTENTION_DIM = 128

DEMO_UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // FACTOR,
    in_channels=3 * FACTOR * FACTOR,
    out_channels=3 * FACTOR * FACTOR,
    layers_per_block=1,
    block_out_channels=(128, 128, 224),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=CROSS_ATTENTION_DIM,
    attention_head_dim=8,
    norm_num_groups=32,
)
"""16×16 → 8×8 (cross-attn) → 4×4 (mid cross-attn) → 8×8 (cross-attn) → 16×16.
Transformer blocks counted down → mid → up: down 1, mid 1, up 2 = 4 (SD-1.5 has 16)."""

N_TRANSFORMER_BLOCKS = 4

DEMO_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)

DEMO_CONFIG_OVERRIDES = dict(
    # GoodDrag's alternating drag and denoise, measured best on 24 held-out benchmark cases (0.61 of the drag
    # left vs 0.75, IoU 0.22 vs 0.11, no shape lost vs 4; background 31.7 vs 34.5 dB: benchmarks/README.md, the
    # method table), without its round-ending loss threshold, which is set for SD's features: this model's motion
    # loss is always below it, so every round would end after one update
    method="gooddrag",
    round_loss_threshold=0.0,
    # the official reach (2 cells) ends a drag when the handle is within one cell of the target: 2 px here, up to
    # half of the shortest drags. One cell: 0.51 of the drag left instead of 0.65 on the 50 cases (IoU 0.26 vs
    # 0.24, 2 shapes lost vs 1, 114 steps vs 93); drags of 2-4 px, refused at 2, can be made
    reach_distance=1.0,
    # twice GoodDrag's drag learning rate (0.02): on the model shipped since the tenth session, 12 tuning cases
    # (seeds 2e9..) gave 0.35 of the drag left at 0.04 against 0.55 (IoU 0.37 vs 0.31; 0.03: 0.51, 0.05: 0.37,
    # 0.06 and 0.08 lost a shape), and the 50 held-out benchmark cases 0.46 against 0.50 (IoU 0.38 vs 0.36; 31 of 50
    # cases better on each, paired mean -0.034 +- 0.026), in 70 drag steps instead of 108
    drag_lr=0.04,
    # motion supervision on 7x7-cell patches (r_m 3) instead of GoodDrag's radius scaled to this grid (1: 3x3): with
    # drag_lr 0.04, 12 tuning cases gave 0.24 of the drag left against 0.35 (IoU 0.47 vs 0.37; r_m 2: 0.30 / 0.47,
    # r_m 4: 0.34 / 0.43, 1 lost), and the 50 held-out cases 0.27 against 0.46 (IoU 0.48 vs 0.38, no shape lost;
    # paired -0.19 +- 0.03 and +0.10 +- 0.02). A patch that covers the shape moves the shape, not a colour blob.
    # Since the fifteenth session: the features of up_blocks[1] (the 8x8 cross-attention block, upsampled to 16x16
    # at its end) with 9x9-cell patches (r_m 4, the best of a re-tune of r_m and drag_lr on the 12 tuning cases).
    # They find a truly moved shape better (benchmarks/bench_tracking.py: 0.95 cells off against 1.63) and drag as
    # well in under half the steps: over 150 held-out cases (three sets of 50) -0.033 +- 0.021 of the drag left
    # and -0.003 +- 0.019 IoU paired against up_blocks[2] with r_m 3, in 35-40 drag steps instead of 74-91
    # (benchmarks/README.md, "Another block's features track better")
    feature_block=1,
    r_m=4,
    # GoodDrag's drag in 5 rounds a timestep instead of 10 (105 updates in all instead of 210), since the fifteenth
    # session: one handle rarely needs more (median 37 steps), and with up to five points (spread_drag), where most
    # drags used all 210, the same quality in about half the steps. On 100 held-out cases with one handle, paired
    # against 10 rounds: -0.012 +- 0.016 of the drag left, -0.001 +- 0.015 IoU; spread_drag on the benchmark's 50:
    # +0.006 +- 0.007 and +0.005 +- 0.011, 82 steps instead of 153 (benchmarks/README.md, "More handle points")
    rounds=5,
    # SD-1.5 starts mutual self-attention at transformer block 10 of 16 (its up-path blocks);
    # this UNet has 4 (down 0, mid 1, up 2, 3): start at its up path.
    attn_start_layer=2,
    # half the official LoRA fine-tune (80 steps at 5e-4) at twice the rate: on the 50 benchmark cases
    # the same quality within noise (0.78 vs 0.77 of the drag left, IoU 0.13 both, 6 vs 4 shapes lost)
    # in half the time (benchmarks/README.md, "LoRA 40 steps, lr 1e-3")
    lora_steps=40,
    lora_lr=1e-3,
)


FULL_RES_ATTENTION = dict(
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2D",
)
"""The `attn16` upgrade: transformer blocks at 16×16 too (down_blocks[0], up_blocks[2]: LoRA and mutual
self-attention reach the full-resolution features that motion supervision reads), and a 4×4 mid block of
one resnet (diffusers' `UNetMidBlock2D` here: no transformer block and no second resnet, whose 1.4 M
parameters would take the weights over 25 MB)."""


def upgrade_full_res_attention(unet):
    """A copy of a DEMO_UNET_CONFIG-shaped `unet` with FULL_RES_ATTENTION's block types.

    Every weight of `unet` with a place in the new UNet is kept; the mid block's transformer block and
    second resnet are dropped; the new 16×16 transformer blocks start with `proj_out` zeroed, so each adds
    nothing until trained. Raises ValueError for a UNet that already has attention at 16×16.
    """
    from diffusers import UNet2DConditionModel
    cfg = dict(unet.config)
    if cfg["down_block_types"][0].startswith("CrossAttn"):
        raise ValueError("this UNet already has attention at its first level: it needs no attn16 upgrade")
    cfg.update({k: list(v) if isinstance(v, tuple) else v for k, v in FULL_RES_ATTENTION.items()})
    new = UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    assert all(k.startswith("mid_block.") for k in unexpected), unexpected
    fresh = {"down_blocks.0.attentions.", "up_blocks.2.attentions."}
    assert all(any(k.startswith(f) for f in fresh) for k in missing), missing
    for blk in (*new.down_blocks[0].attentions, *new.up_blocks[-1].attentions):
        torch.nn.init.zeros_(blk.proj_out.weight)
        torch.nn.init.zeros_(blk.proj_out.bias)
    return new


_DOWN4 = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_UP4 = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
_COMMON = dict(layers_per_block=1, cross_attention_dim=CROSS_ATTENTION_DIM, attention_head_dim=8, norm_num_groups=32)


def _unet_config(factor: int, channels: tuple, down: tuple, up: tuple, mid: str = "UNetMidBlock2DCrossAttn",
                 **extra) -> dict:
    return dict(sample_size=IMAGE_SIZE // factor, in_channels=3 * factor * factor, out_channels=3 * factor * factor,
                block_out_channels=channels, down_block_types=down, up_block_types=up, mid_block_type=mid,
                **{**_COMMON, **extra})


ARCHITECTURES = {
    # the shipped model: 16×16 → 8×8 (cross-attn) → 4×4; up_blocks[2] works at full latent resolution (16×16)
    "f4l3": dict(factor=4, unet=DEMO_UNET_CONFIG),
    # 4 levels, 16 → 8 (cross-attn) → 4 (cross-attn) → 2: up_blocks[2] is a cross-attention block working at
    # 8×8 (upsampled to 16×16 at its end), a mid-resolution block as SD's up_blocks[2]; 11.7 M params, 23.5 MB
    "f4l4": dict(factor=4, unet=_unet_config(4, (128, 128, 128, 160), _DOWN4, _UP4)),
    # pixel_unshuffle ×2 (12×32×32 latents, a finer codec), 4 levels 32 → 16 (cross-attn) → 8 (cross-attn) → 4:
    # up_blocks[2] is a cross-attention block at 16×16 whose output is 32×32 = half the image, as SD's at
    # 512 px; 9.7 M params, 19.4 MB; about 1.5× the CPU cost of f4l3 per UNet call
    "f2l4": dict(factor=2, unet=_unet_config(2, (64, 128, 128, 160), _DOWN4, _UP4)),
    # for tests and smoke runs only: the f2l4 layout at 32 channels a level (0.6 M params)
    "tiny": dict(factor=2, unet=_unet_config(2, (32, 32, 32, 32), _DOWN4, _UP4, attention_head_dim=4)),
}
"""Architectures `python -m dragnb.demo.train --arch NAME` can train: the codec factor and the UNet config.
All keep `up_blocks[2]` as DragDiffusion's feature block (DragConfig.feature_block = 2, the official choice) and
a fixed prompt; the shipped f4l3 model drags on `up_blocks[1]` (DEMO_CONFIG_OVERRIDES)."""


def architecture(name: str) -> dict:
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} is unknown: choose one of {sorted(ARCHITECTURES)}")
    a = ARCHITECTURES[name]
    return dict(factor=a["factor"], unet=dict(a["unet"]))


def build_demo_unet(arch: str = "f4l3"):
    """A fresh (randomly initialised) UNet2DConditionModel of architecture `arch` (default the shipped one)."""
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**architecture(arch)["unet"])


def config_overrides_for(unet) -> dict:
    """The DragConfig overrides a demo-layout model ships (dragnb_demo.json): DEMO_CONFIG_OVERRIDES with
    `attn_start_layer` set to this UNet's first up-path transformer block (mutual self-attention on the
    decoder only, as SD-1.5's 10 of 16)."""
    from dragnb.attention import self_attention_modules
    n_before_up = len(self_attention_modules(unet)) - sum(
        1 for b in unet.up_blocks for n, m in b.named_modules() if n.endswith("attn1") and hasattr(m, "to_q"))
    return {**DEMO_CONFIG_OVERRIDES, "attn_start_layer": n_before_up}


def load_unet(unet_dir):
    """The UNet of a demo-layout folder's unet/, built from its config and its weights (one
    diffusion_pytorch_model.safetensors, or shards listed in diffusion_pytorch_model.safetensors.index.json),
    float32, without recording the folder in the config (from_pretrained would add _name_or_path)."""
    import json
    from pathlib import Path

    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    unet_dir = Path(unet_dir)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(unet_dir))
    single, index = unet_dir / "diffusion_pytorch_model.safetensors", unet_dir / "diffusion_pytorch_model.safetensors.index.json"
    if single.exists():
        state = load_file(str(single))
    elif index.exists():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(unet_dir / shard)))
    else:
        raise FileNotFoundError(f"{unet_dir} has no diffusion_pytorch_model.safetensors nor its .index.json: "
                                "pass a folder written by `python -m dragnb.demo.train --out DIR`")
    unet.load_state_dict(state)
    return unet.float()


def build_demo_scheduler():
    from diffusers import DDIMScheduler
    return DDIMScheduler(**DEMO_SCHEDULER_CONFIG)


def make_prompt_embeds(seed: int = 0) -> torch.Tensor:
    """The fixed prompt embedding (1, PROMPT_LEN, CROSS_ATTENTION_DIM) float32, N(0, 1) from `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, PROMPT_LEN, CROSS_ATTENTION_DIM, generator=g)


def encode(image_bchw: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """images (B, 3, H, W) in [-1, 1] -> latents (B, 3·f², H/f, W/f)."""
    if image_bchw.shape[-1] % factor or image_bchw.shape[-2] % factor:
        raise ValueError(f"image size {tuple(image_bchw.shape[-2:])} is not divisible by the codec factor {factor}")
    return F.pixel_unshuffle(image_bchw, factor)


def decode(latents: torch.Tensor, factor: int = FACTOR) -> torch.Tensor:
    """latents (B, 3·f², h, w) -> images (B, 3, h·f, w·f) in about [-1, 1]."""
    return F.pixel_shuffle(latents, factor)


def uint8_to_tensor(images) -> torch.Tensor:
    """(B, H, W, 3) or (H, W, 3) uint8 numpy -> (B, 3, H, W) float32 in [-1, 1]."""
    t = torch.as_tensor(images)
    if t.ndim == 3:
        t = t[None]
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_uint8(images_bchw: torch.Tensor):
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 numpy."""
    x = ((images_bchw.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
