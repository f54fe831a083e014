"""The final denoising of a drag: from the latent the drag left, with mutual self-attention to the un-dragged
reference path, to an image. Pure functions over a model; the caller holds nothing (the UNet is taken here)."""
from __future__ import annotations

import torch
from PIL import Image

from . import ddim
from .attention import mutual_self_attention
from .unet import guided_unet_fn, replayed_unet_fn, using


@torch.no_grad()
def denoise(model, cond, lora_state, config, source_latent: torch.Tensor, z_hat: torch.Tensor, index: int,
            mutual: bool, attn_start: int | None = None) -> torch.Tensor:
    """DDIM-denoise z_hat (1, C, h, w), sitting `index` reference steps past the drag timestep, to an image
    (1, 3, H, W) in [-1, 1]. With `mutual`, the un-dragged `source_latent` at the same step is denoised beside it
    in one batch, and the edited branch attends to its keys and values (from `attn_start_layer`, and from the
    denoising step `attn_start`, default `attn_start_step`).
    """
    c = config
    k = c.drag_step_index - int(index)
    with using(model, lora_state):
        if mutual:
            start = c.attn_start_step if attn_start is None else attn_start
            with mutual_self_attention(model.unet, start, c.attn_start_layer) as ctl:
                # (graphed when the model's cuda_graph option is on: one graph per attention setting, replayed at every step)
                fn = replayed_unet_fn(model, cond, c.guidance_scale,
                                      lambda: ("mutual", c.attn_start_layer, ctl.step >= start))
                z = ddim.denoise(fn, model.scheduler, torch.cat([source_latent, z_hat]), c.n_inference_steps, k,
                                 step_hook=lambda i: setattr(ctl, "step", i))[1:]
        else:
            fn = replayed_unet_fn(model, cond, c.guidance_scale)
            z = ddim.denoise(fn, model.scheduler, z_hat, c.n_inference_steps, k)
    return model.decode(z)


@torch.no_grad()
def one_step_x0(model, cond, lora_state, latent: torch.Tensor, t: int) -> torch.Tensor:
    """The x0 that one UNet call predicts from `latent` at t, decoded: a rough, cheap look (1, 3, H, W)."""
    with using(model, lora_state):
        out = guided_unet_fn(model, cond, 1.0)(latent, t)
    x0, _ = ddim.predict_x0_eps(model.scheduler, out, latent.float(), t)
    return model.decode(x0)


def to_pil(x_b3hw: torch.Tensor, size_wh: tuple[int, int] | None = None) -> Image.Image:
    """First image of a (B, 3, h, w) batch in [-1, 1] -> PIL, resized to `size_wh` when given and different."""
    arr = ((x_b3hw[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(arr)
    return img.resize(size_wh, Image.BILINEAR) if size_wh is not None and img.size != tuple(size_wh) else img
