"""Mutual self-attention for the final denoising (MasaCtrl, as DragDiffusion uses it).

The batch is laid out in pairs `[source, edited, source, edited, ...]` (two pairs with classifier-free
guidance: unconditional then conditional). In the self-attention (`attn1`) of every transformer block
from `start_layer` on (blocks counted down → mid → up; SD-1.5 has 16) and from denoising step
`start_step` on, *both* branches attend to the **source** branch's keys and values, so the edited image
keeps the source's appearance while its layout follows the edited latent.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


def self_attention_modules(unet) -> list:
    """The `attn1` modules of the UNet's transformer blocks, in order down → mid → up."""
    mods = []
    for part in (unet.down_blocks, [unet.mid_block], unet.up_blocks):
        for block in part:
            for name, m in block.named_modules():
                if name.endswith("attn1") and hasattr(m, "to_q"):
                    mods.append(m)
    return mods


class MutualControl:
    """Shared state of the processors: the current denoising step and the gating."""

    def __init__(self, start_step: int = 0, start_layer: int = 10):
        self.start_step, self.start_layer, self.step = start_step, start_layer, 0

    def active(self, layer: int) -> bool:
        return self.step >= self.start_step and layer >= self.start_layer


class MutualSelfAttnProcessor:
    def __init__(self, control: MutualControl, layer: int):
        self.control, self.layer = control, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kw):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b, c, hh * ww).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q = attn.to_q(hidden_states)
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        k, v = attn.to_k(ctx), attn.to_v(ctx)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if encoder_hidden_states is None and batch % 2 == 0 and self.control.active(self.layer):
            # every pair (source, edited) uses the source's keys and values
            k = k[0::2].repeat_interleave(2, dim=0)
            v = v[0::2].repeat_interleave(2, dim=0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, hh, ww)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def mutual_self_attention(unet, start_step: int = 0, start_layer: int = 10):
    """Install mutual self-attention processors on `attn1` for the block; restores the originals after.

    Yields the `MutualControl`; set `control.step` before each denoising step.
    """
    control = MutualControl(start_step, start_layer)
    mods = self_attention_modules(unet)
    old = [m.processor for m in mods]
    for i, m in enumerate(mods):
        m.set_processor(MutualSelfAttnProcessor(control, i))
    try:
        # a compiled UNet (dragnb.set_speed(compile=...)) would recompile at every step, as control.step changes
        with torch.compiler.set_stance("force_eager"):
            yield control
    finally:
        for m, p in zip(mods, old):
            m.set_processor(p)
