"""Stable-Diffusion-1.x building blocks shared by `dragnb.models` and `dragnb.checkpoint`.

This module sits below both and imports neither (only the standard library at import time; diffusers and
transformers inside the functions), so `checkpoint` can build components without importing `models`, and
`models` can build a `DragModel` from them. Every name here is also importable from `dragnb.models`.

    SD_SCHEDULER_CONFIG   SD-1.x's noise schedule as DDIM settings (scaled-linear betas 0.00085 -> 0.012)
    sd15_configs()        the SD-1.5 component configs {unet, vae, text}
    make_byte_tokenizer() a CLIP tokenizer with a byte-level vocabulary, built locally (no hub)
    ddim_scheduler(cfg)   a `DDIMScheduler` from DDIM settings
    ddim_from_any(cfg)    a `DDIMScheduler` from any scheduler's config (PNDM in SD-1.5 folders)
"""
from __future__ import annotations

import json
import os
import tempfile

SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    timestep_spacing="leading",
)


def sd15_configs() -> dict:
    """The Stable Diffusion 1.5 component configs {unet, vae, text} (fresh dicts: the caller may change them)."""
    return dict(
        unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
                  block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                 layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215),
        text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                  vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
                  bos_token_id=512, eos_token_id=513, pad_token_id=513),
    )


def write_byte_tokenizer_files(folder) -> tuple[str, str]:
    """The byte-level CLIP vocabulary (no merges) as `vocab.json` and `merges.txt` in `folder`, the files a slow
    `CLIPTokenizer` reads (transformers 5 saves only the fast tokenizer's `tokenizer.json`; older code such as the
    official DragDiffusion trainer loads the slow one). Returns the two paths."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    paths = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(paths[0], "w") as f:
        json.dump(vocab, f)
    with open(paths[1], "w") as f:
        f.write("#version: 0.2\n")
    return paths


def make_byte_tokenizer(model_max_length: int = 77):
    """A CLIP tokenizer with a byte-level vocabulary (no merges) built locally: no hub needed."""
    from transformers import CLIPTokenizer
    with tempfile.TemporaryDirectory(prefix="dragnb_tok_") as d:   # read at construction, then removed
        return CLIPTokenizer(*write_byte_tokenizer_files(d), model_max_length=model_max_length)


def ddim_scheduler(config: dict):
    """A `DDIMScheduler` from DDIM settings, e.g. ``{**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}``."""
    from diffusers import DDIMScheduler
    return DDIMScheduler(**config)


def ddim_from_any(cfg: dict):
    """A DDIMScheduler from any scheduler's config (PNDM in SD-1.5 folders), keeping betas and prediction type."""
    from diffusers import DDIMScheduler
    keep = {k: v for k, v in cfg.items() if not k.startswith("_")}
    s = DDIMScheduler.from_config(keep)
    if "clip_sample" not in keep:
        s.register_to_config(clip_sample=False)
    return s
