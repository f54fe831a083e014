"""Mixed precision: loss scaling for the float16 backward passes (the drag's latent update, the LoRA fine-tune).

A float16 backward pass loses gradients below about 6e-8 (they underflow to zero) and rounds those near it. The
official DragDiffusion code scales its losses for that: `torch.cuda.amp.GradScaler()` in the drag loop, accelerate's
fp16 mixed precision (the same scaler) in the LoRA trainer. dragnb does the same with torch's own `GradScaler`, with
its defaults: the loss times 2^16, the gradient divided back before the optimiser sees it; a step whose gradient
holds inf or NaN is skipped and the scale halved; the scale doubles after 2000 clean steps. Adam is scale-invariant,
so in exact arithmetic nothing changes; in float16 the small gradients survive. bfloat16 has float32's exponent range
and float32 needs nothing, so for them the scaler is a no-op (torch's `enabled=False`).
"""
from __future__ import annotations

import torch


def needs_scaling(dtype: torch.dtype) -> bool:
    """True for float16, the one dtype whose backward pass underflows."""
    return dtype == torch.float16


def loss_scaler(dtype: torch.dtype, device) -> torch.amp.GradScaler:
    """torch's GradScaler for a model of `dtype` on `device` (enabled for float16 only)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=needs_scaling(dtype))


def scaled_step(scaler: torch.amp.GradScaler, loss: torch.Tensor, optimizer) -> bool:
    """backward of the (scaled) loss, the optimiser step, the scale's update. Returns False when the scaler
    skipped the step (an inf/NaN gradient: the parameters are unchanged and the scale halved)."""
    before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return before is None or scaler.get_scale() >= before
