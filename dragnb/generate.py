"""Generated images to drag: DDIM sampling with classifier-free guidance, whose own latents then replace the
inversion (no inversion error), as the official code does for generated images."""
from __future__ import annotations

import torch

from . import ddim, render
from .cache import SourceCache, image_digest
from .config import DragConfig
from .coords import Geometry
from .unet import replayed_unet_fn, using


@torch.no_grad()
def generate(model, prompt: str = "", seed: int = 0, config: DragConfig | None = None, guidance_scale: float = 7.5,
             size: tuple[int, int] | None = None):
    """Generate an image; returns (PIL image, the config to drag it with, a `SourceCache` holding its latents).

    No LoRA is trained (`lora_steps=0`, as the official code for generated images); the drag's motion supervision
    uses the conditional branch, the final denoising `guidance_scale` with mutual attention.
    """
    cfg = (config or model.default_config()).replace(guidance_scale=float(guidance_scale), lora_steps=0)
    W, H = size or (model.native_size, model.native_size)
    geom = Geometry.for_model((W, H), model, cfg.sup_res_scale)
    if geom.work_wh != (W, H):
        raise ValueError(f"size {W}×{H} cannot be generated: use sides that are multiples of {model.size_multiple}"
                         + (f" up to {model.max_side}" if model.max_side else ""))
    g = torch.Generator().manual_seed(int(seed))
    z_T = torch.randn((1, model.unet.config.in_channels, *geom.latent_hw), generator=g).to(model.device)
    with using(model, None):
        lats = ddim.sample(replayed_unet_fn(model, model.encode_prompt(str(prompt)), cfg.guidance_scale),
                           model.scheduler, z_T, cfg.n_inference_steps)
    image = render.to_pil(model.decode(lats[-1]))
    cache = SourceCache(model)
    cache.add_generation(image_digest(image), lats, cfg.n_inference_steps)
    return image, cfg, cache
