"""Single-file Stable-Diffusion-1.x checkpoints (the original LDM/CompVis layout), loaded offline.

A checkpoint such as ``v1-5-pruned-emaonly.safetensors`` holds three state dicts under fixed prefixes:

    model.diffusion_model.*            the UNet           (``input_blocks``, ``middle_block``, ``output_blocks``)
    first_stage_model.*                the VAE            (``encoder.down.{i}.block.{j}``, ``decoder.up...``)
    cond_stage_model.transformer.*     the CLIP text encoder (transformers' ``text_model.*`` names)

`load_single_file` converts them with diffusers' own converters (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`) into diffusers/transformers modules whose
architecture comes from, in this order: ``config=`` (a local diffusers folder or a dict like
`dragnb.models.sd15_configs()`), else the SD-1.5 configs with every width/depth read from the tensor shapes.
Nothing here touches the network: no ``from_single_file``, no hub config look-up.

This module returns components (`SingleFileComponents`); `dragnb.models.load_model` builds the `DragModel` from
them, so `checkpoint` never imports `models` (both take the shared SD-1.x pieces from `dragnb.sd_configs`).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .sd_configs import SD_SCHEDULER_CONFIG, ddim_from_any, ddim_scheduler, make_byte_tokenizer, sd15_configs

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
CLIP_VOCAB_SIZE = 49408  # openai/clip-vit-large-patch14, the SD-1.x text encoder
_CACHED_CLIP_TOKENIZERS = (("openai/clip-vit-large-patch14", None),
                           ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
                           ("runwayml/stable-diffusion-v1-5", "tokenizer"))


@dataclass
class SingleFileComponents:
    """What `load_single_file` reads: float32 CPU modules and a DDIM scheduler, ready for a `DragModel`.

    `dragnb.models.load_model` builds the model: ``DragModel(**components.as_kwargs())``.
    """
    unet: Any           # diffusers UNet2DConditionModel
    vae: Any            # diffusers AutoencoderKL
    text_encoder: Any   # transformers CLIPTextModel
    tokenizer: Any      # a CLIPTokenizer (or the byte-level stand-in, see `load_single_file`)
    scheduler: Any      # a diffusers DDIMScheduler
    name: str           # the file's base name, e.g. "v1-5-pruned-emaonly.safetensors"

    def as_kwargs(self) -> dict:
        """The fields as keyword arguments of `DragModel`."""
        return dict(unet=self.unet, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                    scheduler=self.scheduler, name=self.name)


# ---- reading -------------------------------------------------------------------------------------

def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The flat state dict {name: tensor} of a ``.safetensors`` or ``.ckpt`` file (``.ckpt``: weights_only)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist: check the path")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path!r} is not a readable .safetensors file ({e}): re-download it, or check that it "
                             "is a model checkpoint") from e
    if path.endswith(".ckpt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, zip errors, objects refused by weights_only
            raise ValueError(f"{path!r} could not be read as a .ckpt with torch.load(weights_only=True) "
                             f"({type(e).__name__}: {str(e)[:200]}): if it holds more than tensors, convert it to "
                             ".safetensors where you trust the file, or pass a diffusers folder") from e
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state dict: it is not a model checkpoint")
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise ValueError(f"{path!r} is not a .safetensors or .ckpt checkpoint: pass a single-file SD-1.x checkpoint")


def _check_sd1(path: str, sd: dict[str, torch.Tensor]) -> None:
    keys = list(sd)
    sample = ", ".join(keys[:5]) or "(no tensors)"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise ValueError(f"{path!r} is an SDXL checkpoint (found keys like {sample}): dragnb's single-file loader "
                         "reads SD-1.x; convert it to a diffusers folder and pass that folder")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise ValueError(f"{path!r} is an SD-2.x (OpenCLIP) checkpoint (found keys like {sample}): dragnb's "
                         "single-file loader reads SD-1.x; convert it to a diffusers folder and pass that folder")
    have = {p: any(k.startswith(p) for k in keys) for p in (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)}
    if not all(have.values()):
        missing = [p + "*" for p, ok in have.items() if not ok]
        raise ValueError(f"{path!r} is not an SD-1.x checkpoint: found keys like {sample}, but no {missing}. "
                         f"An SD-1.x single file has {UNET_PREFIX}* (UNet), {VAE_PREFIX}* (VAE) and "
                         f"{CLIP_PREFIX}* (text encoder); for a diffusers folder pass the folder instead")


# ---- architecture from shapes --------------------------------------------------------------------

def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def infer_configs(sd: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Component configs {unet, vae, text} like `sd15_configs()`, with widths and depths read from the shapes.

    What shapes cannot tell (GroupNorm groups, attention heads, activation, sample size) stays SD-1.5's.
    """
    c = sd15_configs()
    # UNet: input_blocks = conv_in, then per level `layers_per_block` resnets and a downsampler (not the last level)
    u = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    n_in = len(_indices(u, r"input_blocks\.(\d+)\."))
    levels = len(_indices(u, r"input_blocks\.(\d+)\.0\.op\.weight")) + 1
    lpb, rem = divmod(n_in - levels, levels)
    if rem or lpb < 1:
        raise ValueError(f"cannot read the UNet layout from {n_in} input blocks and {levels} levels")
    first = [1 + lvl * (lpb + 1) for lvl in range(levels)]
    widths = tuple(int(u[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]) for i in first)
    attn = [any(k.startswith(f"input_blocks.{i}.1.") for k in u) for i in first]
    k_proj = next((v for k, v in u.items() if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((v for k, v in u.items() if k.endswith(".proj_in.weight")), None)
    c["unet"].update(
        in_channels=int(u["input_blocks.0.0.weight"].shape[1]), out_channels=int(u["out.2.weight"].shape[0]),
        block_out_channels=widths, layers_per_block=lpb,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
    )
    if k_proj is not None:
        c["unet"]["cross_attention_dim"] = int(k_proj.shape[1])
    if proj_in is not None and proj_in.ndim == 2:
        c["unet"]["use_linear_projection"] = True
    c["vae"] = _infer_vae({k[len(VAE_PREFIX):]: t for k, t in sd.items() if k.startswith(VAE_PREFIX)})
    # CLIP text encoder
    t = _clip_state_dict(sd)
    tok = t["embeddings.token_embedding.weight"]
    c["text"].update(
        vocab_size=int(tok.shape[0]), hidden_size=int(tok.shape[1]),
        max_position_embeddings=int(t["embeddings.position_embedding.weight"].shape[0]),
        num_hidden_layers=len(_indices(t, r"encoder\.layers\.(\d+)\.")),
        intermediate_size=int(t["encoder.layers.0.mlp.fc1.weight"].shape[0]),
    )
    return c


def _infer_vae(v: dict[str, torch.Tensor]) -> dict:
    """SD's VAE config with widths/depths from the (prefix-free) LDM VAE keys ``encoder.down.{i}.block.{j}...``."""
    cfg = sd15_configs()["vae"]
    lev = _indices(v, r"encoder\.down\.(\d+)\.")
    lpb = len(_indices(v, r"encoder\.down\.0\.block\.(\d+)\."))
    cfg.update(
        in_channels=int(v["encoder.conv_in.weight"].shape[1]), out_channels=int(v["decoder.conv_out.weight"].shape[0]),
        latent_channels=int(v["post_quant_conv.weight"].shape[0]), layers_per_block=lpb,
        block_out_channels=tuple(int(v[f"encoder.down.{i}.block.{lpb - 1}.conv2.weight"].shape[0]) for i in lev),
        down_block_types=("DownEncoderBlock2D",) * len(lev), up_block_types=("UpDecoderBlock2D",) * len(lev),
    )
    return cfg


def _check_guessable(path: str, c: dict) -> None:
    """Refuse shapes that SD-1.5's unreadable settings (norm groups, heads) cannot fit; warn when they differ."""
    ref, problems = sd15_configs(), []
    groups = c["unet"].get("norm_num_groups", 32)
    bad = [w for w in c["unet"]["block_out_channels"] + c["vae"]["block_out_channels"] if w % groups]
    if bad:
        problems.append(f"widths {bad} are not multiples of SD's {groups} GroupNorm groups")
    heads = c["text"]["num_attention_heads"]
    if c["text"]["hidden_size"] % heads:
        problems.append(f"text width {c['text']['hidden_size']} is not a multiple of SD's {heads} attention heads")
    if problems:
        raise ValueError(f"{path!r} is not SD-1.5-sized and its architecture cannot be read from the weights alone "
                         f"({'; '.join(problems)}): pass config= a local diffusers folder (unet/, vae/, text_encoder/ "
                         "with config.json) or a dict like dragnb.models.sd15_configs() that describes it")
    differs = [f"{part}.{k}" for part in ("unet", "vae", "text") for k, val in c[part].items()
               if ref[part].get(k) != val]
    if differs:
        warnings.warn(f"{path!r} differs from SD-1.5 in {differs}: the architecture was read from the tensor shapes, "
                      "with SD-1.5's GroupNorm groups and attention heads; pass config= a diffusers folder to be exact",
                      stacklevel=3)


# ---- conversion ----------------------------------------------------------------------------------

def _clip_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cond_stage_model.transformer.[text_model.]* -> transformers' CLIPTextModel names (flat since 5.6)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    t = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)})
    return {k.removeprefix("text_model."): v for k, v in t.items() if not k.endswith("position_ids")}


def _build(cls_or_fn, state: dict[str, torch.Tensor], what: str, path: str):
    """Build a module without random init (params on meta) and assign the checkpoint's float32 tensors, strictly."""
    from accelerate import init_empty_weights
    with init_empty_weights():
        module = cls_or_fn()
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
             if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[:2]})" if wrong else ""]
        raise ValueError(f"the {what} weights in {path!r} do not fit the architecture: "
                         f"{'; '.join(p for p in parts if p)}. Pass config= a local diffusers folder whose "
                         f"{what} config describes this checkpoint")
    # copies: fresh (aligned) float32 storage, not views into the file buffer (misaligned data changes CPU kernels)
    module.load_state_dict({k: state[k].to(torch.float32, memory_format=torch.contiguous_format, copy=True)
                            for k in expected}, strict=True, assign=True)
    return module


def _unet(sd, cfg: dict, path: str, extract_ema: bool):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    state = convert_ldm_unet_checkpoint(sd, cfg, extract_ema=extract_ema)
    return _build(lambda: UNet2DConditionModel(**cfg), state, "UNet", path)


def _vae(sd, cfg: dict, path: str):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    state = convert_ldm_vae_checkpoint(sd, cfg)
    return _build(lambda: AutoencoderKL(**cfg), state, "VAE", path)


def _text(sd, cfg: dict, path: str):
    from transformers import CLIPTextConfig, CLIPTextModel
    config = cfg if isinstance(cfg, CLIPTextConfig) else CLIPTextConfig(**cfg)
    return _build(lambda: CLIPTextModel(config), _clip_state_dict(sd), "text encoder", path)


def _configs_from(config: Any) -> tuple[dict, dict, Any, Path | None]:
    """config= -> (unet dict, vae dict, text config, folder or None)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig
    if isinstance(config, dict):
        missing = [k for k in ("unet", "vae", "text") if k not in config]
        if missing:
            raise ValueError(f"config= dict lacks {missing}: give unet, vae and text like dragnb.models.sd15_configs()")
        return dict(config["unet"]), dict(config["vae"]), dict(config["text"]), None
    folder = Path(os.fspath(config))
    missing = [s for s in ("unet", "vae", "text_encoder") if not (folder / s / "config.json").is_file()]
    if missing:
        raise ValueError(f"config={os.fspath(config)!r} is not a local diffusers folder with component configs: "
                         f"missing {[m + '/config.json' for m in missing]}. Save one with "
                         "StableDiffusionPipeline.save_pretrained(folder) or dragnb.models.save_diffusers_folder")
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    return (strip(UNet2DConditionModel.load_config(folder / "unet")),
            strip(AutoencoderKL.load_config(folder / "vae")),
            CLIPTextConfig.from_pretrained(folder / "text_encoder"), folder)


def _cached_clip_tokenizer_folder() -> Path | None:
    """A folder holding a CLIP tokenizer already in the local Hugging Face cache; never the network."""
    from huggingface_hub import hf_hub_download
    for repo, sub in _CACHED_CLIP_TOKENIZERS:
        try:
            files = [hf_hub_download(repo, name, subfolder=sub, local_files_only=True)
                     for name in ("vocab.json", "merges.txt")]
        except Exception:  # not cached: try the next
            continue
        return Path(files[0]).parent
    return None


def _is_tokenizer_folder(d: Path) -> bool:
    return (d / "tokenizer.json").is_file() or ((d / "vocab.json").is_file() and (d / "merges.txt").is_file())


def _tokenizer(tokenizer: Any, folder: Path | None, vocab_size: int, max_length: int):
    """The tokenizer: tokenizer= (folder or object), config='s tokenizer/, a cached CLIP one, else the byte stand-in.

    Folders must hold tokenizer.json or vocab.json + merges.txt: transformers' from_pretrained returns an empty
    2-token tokenizer (no error) when they are missing, which would map every prompt to the same ids.
    """
    from transformers import CLIPTokenizer
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    tdir = None
    if tokenizer is not None:
        tdir = Path(os.fspath(tokenizer))
        tdir = tdir / "tokenizer" if _is_tokenizer_folder(tdir / "tokenizer") else tdir
        if not _is_tokenizer_folder(tdir):
            raise ValueError(f"tokenizer={os.fspath(tokenizer)!r} is not a CLIP tokenizer folder (tokenizer.json, or "
                             "vocab.json + merges.txt): pass e.g. the tokenizer/ folder of stable-diffusion-v1-5")
    elif folder is not None and _is_tokenizer_folder(folder / "tokenizer"):
        tdir = folder / "tokenizer"
    elif vocab_size == CLIP_VOCAB_SIZE:  # the real CLIP vocabulary: use a cached CLIP tokenizer if there is one
        tdir = _cached_clip_tokenizer_folder()
        if tdir is None:
            warnings.warn("no CLIP tokenizer given or cached: using a byte-level stand-in whose token ids do not "
                          "match CLIP's, so prompts (even '') give wrong text embeddings; pass tokenizer= (or "
                          "config=) a folder with the real CLIP tokenizer, e.g. stable-diffusion-v1-5's tokenizer/",
                          stacklevel=3)
    if tdir is None:
        return make_byte_tokenizer(max_length)
    tok = CLIPTokenizer.from_pretrained(str(tdir))
    if len(tok) <= 2:
        raise ValueError(f"the tokenizer in {str(tdir)!r} loaded empty ({len(tok)} tokens): check its files")
    if len(tok) > vocab_size:
        raise ValueError(f"the tokenizer in {str(tdir)!r} has {len(tok)} tokens but the text encoder only "
                         f"{vocab_size}: pass the tokenizer that belongs to this checkpoint")
    tok.model_max_length = min(int(tok.model_max_length), max_length)
    return tok


def load_single_file(path: str | os.PathLike, config: Any = None, tokenizer: Any = None,
                     extract_ema: bool = True) -> SingleFileComponents:
    """Load a single-file SD-1.x checkpoint (``.safetensors``, or ``.ckpt`` read with ``weights_only=True``), offline.

    Args:
        path: a checkpoint in the original LDM layout (``model.diffusion_model.*``, ``first_stage_model.*``,
            ``cond_stage_model.transformer.*``), e.g. ``v1-5-pruned-emaonly.safetensors`` or a fine-tune of it.
        config: the architecture. None: SD-1.5's configs (`dragnb.models.sd15_configs()`) with channel widths,
            depths and attention placement read from the tensor shapes (GroupNorm groups and attention heads
            cannot be read from shapes and stay SD-1.5's: 32 and 8/12). A local diffusers folder (``unet/``,
            ``vae/``, ``text_encoder/`` with ``config.json``; its ``tokenizer/`` and ``scheduler/`` are used when
            present), or a dict ``{unet, vae, text}`` like `sd15_configs()`, gives the exact architecture.
        tokenizer: a CLIP tokenizer folder (or a tokenizer object). Without one (and without ``config=``'s
            ``tokenizer/``) a cached ``openai/clip-vit-large-patch14`` tokenizer is used when the checkpoint has
            CLIP's vocabulary; otherwise `make_byte_tokenizer()`, a byte-level stand-in: its ids do not match
            CLIP's, so real prompts need ``tokenizer=`` (or ``config=``) a folder with the real CLIP tokenizer.
        extract_ema: take the EMA UNet weights (``model_ema.*``) when the file holds both (better for sampling).

    Returns:
        `SingleFileComponents`: float32 CPU unet, vae, text encoder, the tokenizer and a DDIM scheduler (SD's
        betas, `SD_SCHEDULER_CONFIG`, or ``config=``'s ``scheduler/``). ``load_model(path)`` builds the
        `DragModel` from them and moves it to the device and dtype asked for.
    """
    path = os.fspath(path)
    sd = read_state_dict(path)
    _check_sd1(path, sd)
    if config is None:
        c = infer_configs(sd)
        _check_guessable(path, c)
        unet_cfg, vae_cfg, text_cfg, folder = c["unet"], c["vae"], c["text"], None
    else:
        unet_cfg, vae_cfg, text_cfg, folder = _configs_from(config)
    get = (lambda k: getattr(text_cfg, k)) if not isinstance(text_cfg, dict) else text_cfg.get  # noqa: E731
    tok = _tokenizer(tokenizer, folder, int(get("vocab_size")), int(get("max_position_embeddings")))
    if isinstance(text_cfg, dict):  # token ids only steer the pooled output; keep them those of the tokenizer
        text_cfg = {**text_cfg, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                    "pad_token_id": tok.pad_token_id}
    if folder is not None and (folder / "scheduler").is_dir():
        from diffusers import DDIMScheduler
        scheduler = ddim_from_any(DDIMScheduler.load_config(folder / "scheduler"))
    else:
        scheduler = ddim_scheduler(SD_SCHEDULER_CONFIG)
    return SingleFileComponents(unet=_unet(sd, unet_cfg, path, extract_ema), vae=_vae(sd, vae_cfg, path),
                                text_encoder=_text(sd, text_cfg, path), tokenizer=tok, scheduler=scheduler,
                                name=os.path.basename(path))


def load_vae_file(path: str | os.PathLike, config: Any = None):
    """An `AutoencoderKL` from a single-file VAE (e.g. ``vae-ft-mse-840000-ema-pruned.safetensors``: bare
    ``encoder.*``/``decoder.*`` keys, or ``first_stage_model.*``), offline; ``config``: a VAE config dict or folder
    (default: SD's, widths read from the shapes)."""
    from diffusers import AutoencoderKL
    path = os.fspath(path)
    sd = read_state_dict(path)
    if not any(k.startswith(VAE_PREFIX) for k in sd):
        if not any(k.startswith("encoder.conv_in.") for k in sd):
            raise ValueError(f"{path!r} is not a VAE checkpoint: found keys like {', '.join(list(sd)[:5])}, but no "
                             "encoder.conv_in.* or first_stage_model.encoder.*")
        sd = {VAE_PREFIX + k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    if config is None:
        cfg = _infer_vae({k[len(VAE_PREFIX):]: t for k, t in sd.items()})
        groups = cfg.get("norm_num_groups", 32)
        bad = [w for w in cfg["block_out_channels"] if w % groups]
        if bad:
            raise ValueError(f"{path!r}: VAE widths {bad} are not multiples of SD's {groups} GroupNorm "
                             "groups, so its architecture cannot be read from the weights: pass config= a VAE config "
                             "folder or dict")
    elif isinstance(config, dict):
        cfg = dict(config)
    else:
        folder = Path(os.fspath(config))
        folder = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
        cfg = {k: v for k, v in AutoencoderKL.load_config(folder).items() if not k.startswith("_")}
    return _vae(sd, cfg, path)
