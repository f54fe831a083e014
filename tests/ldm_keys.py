"""diffusers -> original LDM/CompVis state-dict names, for building single-file checkpoints in tests.

The inverse of diffusers' `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` /
`convert_ldm_clip_checkpoint`, written from the LDM layout (as in diffusers'
scripts/convert_diffusers_to_original_stable_diffusion.py, which the package does not ship), so that a test can
write an SD-1.x-style file from a tiny model and check that `dragnb.checkpoint` reads it back exactly.
"""
from __future__ import annotations

import re

import torch

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
}
_UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def _resnet(rest: str, table) -> str:
    head, _, tail = rest.partition(".")
    for new, old in table:
        if head == new:
            return f"{old}.{tail}"
    return rest


def unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> ``model.diffusion_model.*`` (SD-1.x: conv proj_in/out, no class embeds)."""
    lpb = layers_per_block
    attn_up = {int(m.group(1)) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for k, v in state.items():
        if (top := next((p for p in _UNET_TOP if k.startswith(p)), None)) is not None:
            ldm = _UNET_TOP[top] + k[len(top):]
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            ldm = f"input_blocks.{i * (lpb + 1) + j + 1}.0." + _resnet(rest, _UNET_RESNET)
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", k):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            ldm = f"input_blocks.{i * (lpb + 1) + j + 1}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
            ldm = f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", k):
            ldm = f"middle_block.{2 * int(m[1])}." + _resnet(m[2], _UNET_RESNET)
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", k):
            ldm = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            ldm = f"output_blocks.{i * (lpb + 1) + j}.0." + _resnet(rest, _UNET_RESNET)
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", k):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            ldm = f"output_blocks.{i * (lpb + 1) + j}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
            i = int(m[1])
            ldm = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if i in attn_up else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet key {k!r}")
        out["model.diffusion_model." + ldm] = v
    return out


_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def vae_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> ``first_stage_model.*`` (attention projections as 1x1 convs, as in LDM)."""
    n_up = len({int(m.group(1)) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))})
    out = {}
    for k, v in state.items():
        ldm = k
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", k):
            rest = m[2]
            for new, old in _VAE_ATTN:
                if rest.startswith(new + "."):
                    rest = old + rest[len(new):]
            ldm = f"{m[1]}.mid.attn_1.{rest}"
            if v.ndim == 2:
                v = v[:, :, None, None]
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", k):
            ldm = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            ldm = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", k):
            ldm = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            ldm = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", k):
            ldm = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.{m[2]}"
        ldm = ldm.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        out["first_stage_model." + ldm] = v
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict (flat or ``text_model.*``) -> ``cond_stage_model.transformer.text_model.*``,
    with the ``position_ids`` buffer that real SD-1.x files carry."""
    out = {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v for k, v in state.items()}
    n_pos = out["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"].shape[0]
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n_pos)[None]
    return out


def model_to_ldm(model) -> dict[str, torch.Tensor]:
    """A DragModel (unet, vae, text encoder) -> one SD-1.x single-file state dict (contiguous CPU tensors)."""
    sd = {**unet_to_ldm(model.unet.state_dict(), model.unet.config.layers_per_block),
          **vae_to_ldm(model.vae.state_dict()), **clip_to_ldm(model.text_encoder.state_dict())}
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}
