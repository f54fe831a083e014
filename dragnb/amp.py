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


def scaled_step(scaler: torch.amp.GradScaler, loss: torch.Tensor, optimizer) -> torch.Tensor | bool:
    """backward of the (scaled) loss, the optimiser step, the scale's update. Returns whether the step was taken:
    True when the scaler is off; else a 0-dim bool tensor on the loss's device, False where the scaler skipped the
    step (an inf/NaN gradient: the parameters are unchanged and the scale halved). A tensor, so that the caller reads
    it together with whatever else it needs from the device, in one synchronisation (`GradScaler.get_scale()` is
    one each)."""
    if not scaler.is_enabled():
        loss.backward()
        optimizer.step()
        return True
    scaled = scaler.scale(loss)                      # creates the scale tensor on first use
    before = _scale_tensor(scaler)
    before = before.clone() if before is not None else torch.tensor(scaler.get_scale(), device=loss.device)
    scaled.backward()
    scaler.step(optimizer)
    scaler.update()
    after = _scale_tensor(scaler)
    return (after if after is not None else torch.tensor(scaler.get_scale(), device=loss.device)) >= before


def _scale_tensor(scaler):
    s = getattr(scaler, "_scale", None)              # GradScaler keeps its scale as a 0-dim device tensor
    return s if isinstance(s, torch.Tensor) else None


def scaler_state(scaler: torch.amp.GradScaler) -> dict:
    """The scaler's state for a snapshot without reading the device: the scale and the growth tracker as tensor
    copies (`GradScaler.state_dict()` reads both to the host, a synchronisation each, and a drag step snapshots its
    state twice). {} for a disabled scaler. `load_scaler_state` and `portable_scaler_state` take either form."""
    if not scaler.is_enabled():
        return {}
    scale, tracker = _scale_tensor(scaler), getattr(scaler, "_growth_tracker", None)
    if scale is None or not isinstance(tracker, torch.Tensor):   # not used yet: nothing on the device to copy
        return scaler.state_dict()
    return {"scale": scale.detach().clone(), "growth_factor": scaler.get_growth_factor(),
            "backoff_factor": scaler.get_backoff_factor(), "growth_interval": scaler.get_growth_interval(),
            "_growth_tracker": tracker.detach().clone()}


def portable_scaler_state(state: dict) -> dict:
    """`scaler_state`'s dict with plain numbers (GradScaler.state_dict()'s form): for saving, and for loading."""
    out = dict(state or {})
    if isinstance(out.get("scale"), torch.Tensor):
        out["scale"] = float(out["scale"])
    if isinstance(out.get("_growth_tracker"), torch.Tensor):
        out["_growth_tracker"] = int(out["_growth_tracker"])
    return out


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Put a `scaler_state` (or `GradScaler.state_dict()`) back into `scaler`; nothing for an empty one."""
    if state:
        scaler.load_state_dict(portable_scaler_state(state))
