"""Models: `DragModel` (what a drag edit needs from a diffusion model) and the ways to get one.

`load_model(name_or_path)` accepts
  * ``"demo"``   — the small model that dragnb trains and ships inside the package (CPU-friendly),
  * ``"tiny"``   — `tiny_model()`, random weights in an SD shape, for tests,
  * a local diffusers folder of a Stable-Diffusion-1.x pipeline (``model_index.json``, unet/, vae/, ...),
  * a single-file checkpoint (``.safetensors`` / ``.ckpt``, the original LDM layout),
  * a Hugging Face hub id (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``): taken from the local cache, or
    downloaded when the network allows; otherwise a clear error that says how to get the weights.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import DragConfig
from .sd_configs import SD_SCHEDULER_CONFIG, ddim_from_any, ddim_scheduler, make_byte_tokenizer, sd15_configs

# the SD-1.x helpers live in dragnb.sd_configs (shared with dragnb.checkpoint) and stay importable from here
__all__ = ["DragModel", "load_model", "tiny_model", "random_sd15", "save_diffusers_folder", "SD_SCHEDULER_CONFIG",
           "sd15_configs", "make_byte_tokenizer", "ddim_scheduler", "ddim_from_any", "DEFAULT_MAX_SIDE"]
_ddim, _ddim_from_any = ddim_scheduler, ddim_from_any  # former private names, kept for old imports

DEMO_DIR = Path(__file__).parent / "demo" / "weights"
DEFAULT_MAX_SIDE = 1024
"""Default `DragModel.max_side`: the longest side (pixels) an image is worked on at, e.g. a 4000×3000 photo is
worked on at 1024×768 on SD-1.5 (with a warning) and the result resized back. Change it per model."""


@dataclass
class DragModel:
    """Everything a drag edit needs from a latent (or pixel-space) diffusion model.

    Exactly one of `vae` (an `AutoencoderKL`) and `codec_factor` (a fixed pixel codec: latents are
    `pixel_unshuffle(image, factor)`) is set. Prompts come from `text_encoder` + `tokenizer`, or from the
    fixed `prompt_embeds` (1, L, D) of a model trained without text.

    `max_side` bounds the working size: images whose longer side is above it are worked on at that side (aspect
    kept, a warning names the resize) and results are resized back. Default `DEFAULT_MAX_SIDE` (1024, twice
    SD-1.5's native 512); the demo model sets its training size, 64. Set ``model.max_side = 2048`` to work
    larger photos at more detail (time and memory grow with the area), or None for no limit.
    """
    unet: Any
    scheduler: Any
    vae: Any = None
    codec_factor: int | None = None
    text_encoder: Any = None
    tokenizer: Any = None
    prompt_embeds: torch.Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    name: str = "model"
    max_side: int | None = DEFAULT_MAX_SIDE
    config_overrides: dict = field(default_factory=dict)
    speed: dict = field(default_factory=dict)   # the UNet's speed options, set through `dragnb.set_speed`

    def __post_init__(self):
        if (self.vae is None) == (self.codec_factor is None):
            raise ValueError("DragModel needs exactly one of vae= (AutoencoderKL) and codec_factor= (pixel codec)")
        if self.text_encoder is None and self.prompt_embeds is None:
            raise ValueError("DragModel needs text_encoder+tokenizer or fixed prompt_embeds (1, L, D)")
        for m in (self.unet, self.vae, self.text_encoder):
            if m is not None:
                m.requires_grad_(False)
                m.eval()
        self._prompt_cache: dict[str, torch.Tensor] = {}

    # ---- geometry ----------------------------------------------------------------------------
    @property
    def latent_scale(self) -> int:
        """Image pixels per latent cell (8 for SD's VAE)."""
        if self.vae is not None:
            return 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.codec_factor)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE/codec factor × UNet downsampling)."""
        return self.latent_scale * 2 ** (len(self.unet.config.down_block_types) - 1)

    @property
    def native_size(self) -> int:
        """The image side the model was trained at (pixels)."""
        return int(self.unet.config.sample_size) * self.latent_scale

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def default_config(self, **changes) -> DragConfig:
        """Official defaults, then the drag method's own defaults (scaled to this model's supervision grid; e.g.
        `method="gooddrag"`), then this model's overrides (e.g. the demo model's layer counts), then `changes`."""
        from .methods import get_method
        merged = {**self.config_overrides, **changes}
        grid = int(self.native_size * merged.get("sup_res_scale", DragConfig.sup_res_scale))
        method = get_method(merged.get("method", DragConfig.method))
        return DragConfig().replace(**{**method.defaults(grid), **merged})

    # ---- codec -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, image_b3hw: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1] -> latents (B, C, H/s, W/s), float32 on `device`."""
        image_b3hw = image_b3hw.to(self.device)
        if self.vae is not None:
            dist = self.vae.encode(image_b3hw.to(self.dtype)).latent_dist
            z = dist.mean * self.vae.config.scaling_factor  # mean: deterministic, as the official code's sample() with low variance
            return z.float()
        return F.pixel_unshuffle(image_b3hw.float(), self.codec_factor)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) -> image (B, 3, h*s, w*s) in [-1, 1], float32."""
        if self.vae is not None:
            img = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.dtype)).sample
            return img.float().clamp(-1, 1)
        return F.pixel_shuffle(latents.float(), self.codec_factor).clamp(-1, 1)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """prompt -> text embeddings (1, L, D) in the model dtype (fixed embeddings ignore the text)."""
        if self.text_encoder is None:
            return self.prompt_embeds.to(self.device, self.dtype)
        if prompt not in self._prompt_cache:
            ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self._prompt_cache[prompt] = self.text_encoder(ids.to(self.device))[0].to(self.dtype)
        return self._prompt_cache[prompt]

    def unet_forward(self, x, t, cond):
        """UNet output (B, C, h, w) for latents x at timestep t with embeddings cond (B or 1, L, D)."""
        if cond.shape[0] != x.shape[0]:
            cond = cond.expand(x.shape[0], *cond.shape[1:])
        return self.unet(x.to(self.dtype), t, encoder_hidden_states=cond).sample

    def to(self, device=None, dtype=None) -> "DragModel":
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        _check_device_dtype(device, dtype)
        if (device, dtype) != (self.device, self.dtype):
            for m in (self.unet, self.vae, self.text_encoder):
                if m is not None:
                    m.to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype
        self._prompt_cache.clear()
        return self


def _check_device_dtype(device: torch.device, dtype: torch.dtype) -> None:
    if device.type == "cpu" and dtype in (torch.float16,):
        raise ValueError(f"dtype={dtype} on device='cpu' is not supported (half-precision convolutions are slow or "
                         "missing on CPU): use dtype=torch.float32 on CPU, or device='cuda' for float16")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch.cuda.is_available() is False: use device='cpu'")


def _pick_device_dtype(device, dtype):
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    _check_device_dtype(device, dtype)
    return device, dtype


# ---- builders ------------------------------------------------------------------------------------

def tiny_model(seed: int = 0, device=None, dtype=None, prediction_type: str = "epsilon") -> DragModel:
    """An SD-shaped model from small configs (random weights, ~1 s to build) for tests.

    VAE ×2 (latents 4×h/2×w/2), a 3-level UNet with cross-attention, a 2-layer CLIP text encoder and a
    byte-level tokenizer: every code path of Stable Diffusion, at toy size. Image sides must be multiples of 8.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    device, dtype = _pick_device_dtype(device or "cpu", dtype)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513))
    m = DragModel(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=make_byte_tokenizer(),
                  scheduler=ddim_scheduler({**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type}), name=f"tiny-{seed}",
                  config_overrides=dict(attn_start_layer=4))  # 10/16 of SD's blocks ~ 4/7
    return m.to(device, dtype)


def random_sd15(device=None, dtype=None, seed: int = 0) -> DragModel:
    """The SD-1.5 architecture (860 M-param UNet, VAE, CLIP ViT-L text encoder) with random weights, for timing."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    device, dtype = _pick_device_dtype(device, dtype)
    torch.manual_seed(seed)
    c = sd15_configs()
    m = DragModel(unet=UNet2DConditionModel(**c["unet"]), vae=AutoencoderKL(**c["vae"]),
                  text_encoder=CLIPTextModel(CLIPTextConfig(**c["text"])), tokenizer=make_byte_tokenizer(),
                  scheduler=ddim_scheduler(SD_SCHEDULER_CONFIG), name="random-sd15")
    return m.to(device, dtype)


# ---- loading -------------------------------------------------------------------------------------

def load_model(name_or_path: str | os.PathLike = "demo", device=None, dtype=None, vae: str | os.PathLike | None = None,
               local_files_only: bool | None = None, config=None, tokenizer=None) -> DragModel:
    """Load a model for dragging.

    Args:
        name_or_path: "demo", "tiny", a local diffusers SD-1.x folder, a folder in the demo model's layout
            (written by `python -m dragnb.demo.train --out DIR`), a single-file checkpoint (.safetensors/.ckpt),
            or a hub id.
        device: "cpu"/"cuda"; default cuda when available.
        dtype: default float16 on cuda, float32 on cpu (float16 on cpu is refused).
        vae: optional separate VAE (diffusers folder or hub id), e.g. "stabilityai/sd-vae-ft-mse".
        local_files_only: for hub ids; default: True when HF_HUB_OFFLINE=1, else the cache is tried first and
            the network second.
        config, tokenizer: for single-file checkpoints only, see `dragnb.checkpoint.load_single_file`: the
            architecture (a local diffusers folder or a dict like `sd15_configs()`; default SD-1.5's, widths read
            from the weights) and a CLIP tokenizer folder.
    """
    device, dtype = _pick_device_dtype(device, dtype)
    name = os.fspath(name_or_path)
    if name == "demo":
        model = _load_demo()
    elif name == "tiny":
        model = tiny_model()
    elif os.path.isdir(name) and os.path.isfile(os.path.join(name, "dragnb_demo.json")):
        model = _load_demo(Path(name))
    elif os.path.isdir(name):
        model = _load_diffusers_folder(name)
    elif os.path.isfile(name):
        if not name.endswith((".safetensors", ".ckpt")):
            raise ValueError(f"model file {name!r} is not a .safetensors or .ckpt checkpoint: pass a single-file SD-1.x "
                             "checkpoint, a diffusers folder, 'demo', or a hub id")
        from .checkpoint import load_single_file
        model = DragModel(**load_single_file(name, config=config, tokenizer=tokenizer).as_kwargs())
    elif name.endswith((".safetensors", ".ckpt")) or name.startswith((".", "/", "~")):
        raise ValueError(f"model path {name!r} does not exist: check the path, or use 'demo' (the shipped model)")
    elif name.count("/") == 1 and all(name.split("/")):
        model = _load_hub(name, local_files_only)
    else:
        raise ValueError(f"unknown model {name!r}: use 'demo' (the shipped small model), 'tiny' (tests), a local "
                         "diffusers folder, a .safetensors checkpoint, or a hub id such as "
                         "'stable-diffusion-v1-5/stable-diffusion-v1-5'")
    if vae is not None:
        model.vae = _load_vae(os.fspath(vae), local_files_only)
        model.vae.requires_grad_(False).eval()
        model.codec_factor = None
    return model.to(device, dtype)


def _load_demo(folder: Path = DEMO_DIR) -> DragModel:
    """The demo model from `folder` (default: the shipped weights; benchmarks pass a training run's --out)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from safetensors.torch import load_file
    folder = Path(folder)
    meta_path = folder / "dragnb_demo.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"the demo model is missing from {folder} (no dragnb_demo.json): reinstall dragnb, "
                                "or retrain it with `python -m dragnb.demo.train --out dragnb/demo/weights`")
    meta = json.loads(meta_path.read_text())
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    embeds = load_file(str(folder / "prompt_embeds.safetensors"))["prompt_embeds"].float()
    name = "demo" if folder.resolve() == DEMO_DIR.resolve() else str(folder.resolve())
    return DragModel(unet=unet, scheduler=scheduler, codec_factor=int(meta["factor"]), prompt_embeds=embeds,
                     name=name, max_side=int(meta.get("image_size", 64)),
                     config_overrides=dict(meta.get("config_overrides", {})))


def _load_diffusers_folder(path: str, **kw) -> DragModel:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    p = Path(path)
    missing = [sub for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (p / sub).is_dir()]
    if missing:
        raise ValueError(f"{path!r} is not a Stable-Diffusion-1.x diffusers folder: missing {missing}. Save one with "
                         "`StableDiffusionPipeline.save_pretrained(path)` or pass a .safetensors checkpoint")
    sched_cfg = DDIMScheduler.load_config(p / "scheduler")
    return DragModel(
        unet=UNet2DConditionModel.from_pretrained(p / "unet", **kw),
        vae=AutoencoderKL.from_pretrained(p / "vae", **kw),
        text_encoder=CLIPTextModel.from_pretrained(p / "text_encoder", **kw),
        tokenizer=CLIPTokenizer.from_pretrained(p / "tokenizer"),
        scheduler=ddim_from_any(sched_cfg), name=str(p.resolve()),
    )


def _hub_hint(name: str) -> str:
    return (f"download it where the network is reachable with `huggingface-cli download {name}` (then copy the cache, "
            f"~/.cache/huggingface, here), or pass a local diffusers folder or a .safetensors checkpoint to "
            f"load_model(); for a CPU-only try, use load_model('demo')")


def _load_hub(name: str, local_files_only: bool | None) -> DragModel:
    from huggingface_hub import snapshot_download
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    patterns = ["model_index.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*"]
    try:
        folder = snapshot_download(name, allow_patterns=patterns, local_files_only=True)
    except Exception as cached_err:  # not in the cache
        if local_files_only or (local_files_only is None and offline):
            raise ValueError(f"model {name!r} is not in the local Hugging Face cache and downloads are off "
                             f"(HF_HUB_OFFLINE/local_files_only): {_hub_hint(name)}") from cached_err
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
        try:
            folder = snapshot_download(name, allow_patterns=patterns)
        except Exception as e:
            raise ValueError(f"model {name!r} could not be downloaded ({type(e).__name__}: {str(e)[:200]}): "
                             f"{_hub_hint(name)}") from e
    model = _load_diffusers_folder(folder)
    model.name = name
    return model


def _load_vae(path: str, local_files_only: bool | None):
    from diffusers import AutoencoderKL
    if os.path.isdir(path):  # a VAE folder, or a pipeline folder with vae/
        sub = "vae" if os.path.isfile(os.path.join(path, "vae", "config.json")) else None
        return AutoencoderKL.from_pretrained(path, subfolder=sub)
    if os.path.isfile(path):  # offline: diffusers' from_single_file would fetch a config from the hub
        from .checkpoint import load_vae_file
        return load_vae_file(path)
    from huggingface_hub import snapshot_download
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        folder = snapshot_download(path, local_files_only=bool(local_files_only or offline))
    except Exception as e:
        raise ValueError(f"VAE {path!r} is neither a local folder/file nor available from the hub: {_hub_hint(path)}") from e
    return AutoencoderKL.from_pretrained(folder)


def save_diffusers_folder(model: DragModel, path: str | os.PathLike) -> None:
    """Save a VAE+text-encoder model as a StableDiffusionPipeline folder that `load_model(path)` reads."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=model.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(os.fspath(path))
