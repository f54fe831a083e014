"""Fine-tune a LoRA on one image with peft; keep adapters as plain state dicts; save/load as safetensors.

The base UNet weights are never changed (peft freezes them; only `lora_A`/`lora_B` train). A session
keeps its adapter weights itself and applies them around each use with `applied(unet, state)`.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .amp import loss_scaler, scaled_step
from .speed import lora_stage

ADAPTER = "dragnb"
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
#: `DragConfig.lora_targets` -> the module names peft adapts (the official recipe adapts attention only).
TARGETS = {"attention": TARGET_MODULES, "attention+conv": TARGET_MODULES + ["conv1", "conv2"]}


def targets_of(state: dict) -> str:
    """Which `TARGETS` entry a LoRA state dict was trained with."""
    return "attention+conv" if any(".conv1." in n or ".conv2." in n for n in state) else "attention"


def _ensure_adapter(unet, rank: int, targets: str = "attention") -> None:
    from peft import LoraConfig
    if targets not in TARGETS:
        raise ValueError(f"lora_targets={targets!r}: use one of {sorted(TARGETS)}")
    cfg = getattr(unet, "peft_config", {}).get(ADAPTER)
    if cfg is not None and cfg.r == rank and set(cfg.target_modules) == set(TARGETS[targets]):
        return
    if cfg is not None:
        unet.delete_adapters(ADAPTER)
    _TUNER_LAYERS.pop(unet, None)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=list(TARGETS[targets])), adapter_name=ADAPTER)
    for p in _lora_params(unet).values():   # adapters train in float32 even on a float16 UNet (peft casts inputs)
        p.data = p.data.float()


def _lora_params(unet):
    return {n: p for n, p in unet.named_parameters() if "lora_" in n and f".{ADAPTER}." in n}


def _disable(unet) -> None:
    """Switch every adapter off (the base UNet); nothing to do when none was ever added. What diffusers'
    `unet.disable_adapters()` does, without its walk over every module at each call (8.7 ms on the tiny UNet, and a
    drag step calls this twice): the tuner layers are listed once per set of adapters, and only those on are switched
    off."""
    config = getattr(unet, "peft_config", None)
    if not (getattr(unet, "_hf_peft_config_loaded", False) or config):
        return
    key = tuple(sorted(config or {}))
    cached = _TUNER_LAYERS.get(unet)
    if cached is None or cached[0] != key:
        from peft.tuners.tuners_utils import BaseTunerLayer
        cached = _TUNER_LAYERS[unet] = (key, [m for m in unet.modules() if isinstance(m, BaseTunerLayer)])
    for m in cached[1]:
        if not m.disable_adapters:
            m.enable_adapters(False)


#: unet -> (its adapter names, its peft tuner layers): the layers `_disable` switches off.
_TUNER_LAYERS: "weakref.WeakKeyDictionary[object, tuple]" = weakref.WeakKeyDictionary()


@contextmanager
def applied(unet, state: dict | None, rank: int | None = None):
    """Run the block with the UNet carrying exactly the LoRA weights `state` (None: the base UNet).

    The LoRA is merged into the adapted layers' weights for the block (W + B·A, computed by peft's
    `get_delta_weight` and rounded once to the UNet's dtype) and the adapter stays off, so a UNet call costs what the
    base UNet's does: no LoRA layers to run (1,218 top-level ops per call instead of 1,986 at SD size, which is what
    a launch-bound GPU pays for) and no float32 adapter casts under float16 autocast. Only the fine-tune itself
    (`train_lora`) runs the adapter unmerged.

    The merged weights are built once per `state` (one extra copy of the adapted weights: 93.5 M parameters at SD
    size) and swapped in by pointing each base parameter's `.data` at them; the original tensors are put back on the
    way out, never written, so the base UNet is bit for bit what it was. A drag step enters this block at every step:
    a swap costs no arithmetic. The merged copy is rebuilt when `state` is another dict or the base weights changed
    (another tensor, or one written in place: torch's version counter). Pass a new dict to change a LoRA, rather
    than writing into one that was applied.

    Blocks nest (a stage may call another under the re-entrant UNet lock): an inner block with the same `state` runs
    as it is; one with another state, or None, takes the outer LoRA off for its time and puts it back.

    Everything that changes the UNet (adding the adapter, copying its weights, the swap) happens inside the protected
    block, so an interrupt at any point leaves the base UNet.
    """
    outer = _ACTIVE.get(unet)
    if outer is not None and outer.state is state:     # nested in a block that carries this very LoRA
        yield unet
        return
    entered = None
    try:
        if outer is not None:                          # nested in another LoRA's block: take that one off first
            _ACTIVE.pop(unet, None)
            _point(outer.params, outer.originals)
        if state is not None:
            merged = _MERGED.get(unet)
            if merged is None or not merged.valid(state):
                _MERGED.pop(unet, None)
                merged = _merge(unet, state, rank)
                _MERGED[unet] = merged
            _disable(unet)
            entered = merged                           # from here on the way out puts its originals back
            _point(merged.params, merged.merged)
            _ACTIVE[unet] = merged
        else:
            _disable(unet)
        yield unet
    finally:
        if entered is not None:                        # every original back (those never swapped already are)
            _point(entered.params, entered.originals)
        _ACTIVE.pop(unet, None)
        _disable(unet)
        if outer is not None:                          # the outer block's LoRA back on
            _point(outer.params, outer.merged)
            _ACTIVE[unet] = outer


def _point(params, tensors) -> None:
    """Each Parameter's `.data` to its tensor (a pointer swap: no arithmetic, nothing written)."""
    for p, t in zip(params, tensors):
        p.data = t


class _Merged:
    """The merged weights of one LoRA state on one UNet, and what they were built from."""

    def __init__(self, state, params, merged):
        self.state = state                                     # the dict (kept: its identity is the key)
        self.params = params                                   # the adapted layers' base weight Parameters
        self.originals = [p.data for p in params]              # their tensors then (put back after each block)
        # in-place writes then: through the Parameter (load_state_dict, p.mul_) and through the tensor; the `.data`
        # swaps below move neither counter
        self.versions = [(p._version, t._version) for p, t in zip(params, self.originals)]
        self.merged = merged                                   # W + B·A per layer, the weights' dtype and device
        self.merged_versions = [t._version for t in merged]

    def valid(self, state) -> bool:
        return state is self.state and all(
            p.data.data_ptr() == o.data_ptr() and p.data.shape == o.shape and p.dtype == o.dtype
            and (p._version, o._version) == v for p, o, v in zip(self.params, self.originals, self.versions)) and all(
            t._version == v for t, v in zip(self.merged, self.merged_versions))


_MERGED: "weakref.WeakKeyDictionary[object, _Merged]" = weakref.WeakKeyDictionary()   # unet -> its last merge
_ACTIVE: "weakref.WeakKeyDictionary[object, _Merged]" = weakref.WeakKeyDictionary()   # unet -> the merge on it now


def _merge(unet, state: dict, rank: int | None) -> _Merged:
    """Fill the adapter with `state` and compute every adapted layer's W + B·A (the base weights are not written)."""
    r = rank or infer_rank(state)
    _ensure_adapter(unet, r, targets_of(state))
    with torch.no_grad():
        for n, p in _lora_params(unet).items():
            p.copy_(state[n].to(p.device, p.dtype))
        params, merged = [], []
        for layer in _lora_layers(unet):
            base = layer.get_base_layer().weight
            params.append(base)
            merged.append((base.float() + layer.get_delta_weight(ADAPTER).float()).to(base.dtype))
    return _Merged(state, params, merged)


def _lora_layers(unet) -> list:
    """The peft LoRA layers of the dragnb adapter in `unet`."""
    from peft.tuners.lora import LoraLayer
    return [m for m in unet.modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]


def is_active(unet) -> bool:
    """True when the dragnb adapter is enabled (unmerged) on some layer of `unet`: only during `train_lora`."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    return any(isinstance(m, BaseTunerLayer) and not m.disable_adapters and ADAPTER in m.active_adapters
               for m in unet.modules())


def infer_rank(state: dict) -> int:
    for n, v in state.items():
        if "lora_A" in n:
            return int(v.shape[0])
    raise ValueError("the LoRA state has no lora_A weight: it is not a dragnb LoRA")


def train_lora(model, z0: torch.Tensor, cond: torch.Tensor, *, rank: int = 16, steps: int = 80, lr: float = 5e-4,
               batch_size: int = 4, seed: int = 0, callback=None, targets: str = "attention", unet_call=None) -> dict:
    """Fine-tune LoRA adapters so the UNet reconstructs the clean latents z0 (1, C, h, w) (official recipe:
    random timesteps, the scheduler's training target, MSE, AdamW). Returns the adapter state dict (CPU float32).
    `unet_call(noisy, t, emb) -> prediction` replaces the UNet call (`graphs.training_call`: a CUDA graph)."""
    unet, sched = model.unet, model.scheduler
    gen = torch.Generator().manual_seed(seed)
    device = z0.device
    x0 = z0.float().expand(batch_size, *z0.shape[1:])
    params: dict = {}
    with lora_stage(model):   # the model's gradient_checkpointing="lora": checkpointing on for the fine-tune only
        try:  # adding, initialising and enabling the adapter all inside: an interrupt at any point leaves the base UNet
            _ensure_adapter(unet, rank, targets)
            params = _lora_params(unet)
            with torch.no_grad():  # fresh, seeded initialisation: A gaussian, B zero (the adapter starts as identity)
                for n, p in params.items():
                    if "lora_A" in n:
                        p.copy_(torch.randn(p.shape, generator=gen) / rank)
                    else:
                        p.zero_()
            opt = torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
            scaler = loss_scaler(model.dtype, device)   # float16: the official trainer's fp16 loss scaling
            unet.set_adapter(ADAPTER)
            unet.enable_adapters()
            for p in params.values():
                p.requires_grad_(True)
            unet.train()
            for i in range(steps):
                noise = torch.randn(x0.shape, generator=gen).to(device)
                t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
                noisy = sched.add_noise(x0, noise, t)
                kind = sched.config.prediction_type
                target = (noise if kind == "epsilon" else sched.get_velocity(x0, noise, t) if kind == "v_prediction"
                          else x0)
                emb = cond.expand(batch_size, *cond.shape[1:])
                if unet_call is not None:
                    pred = unet_call(noisy, t, emb)
                else:
                    with torch.autocast(device.type, dtype=model.dtype, enabled=model.dtype != torch.float32):
                        pred = unet(noisy.to(model.dtype), t, encoder_hidden_states=emb).sample
                loss = F.mse_loss(pred.float(), target.float())
                opt.zero_grad(set_to_none=True)
                scaled_step(scaler, loss, opt)
                if callback is not None:
                    callback(i + 1, steps, float(loss.detach()))
        finally:
            unet.eval()
            for p in params.values():
                p.requires_grad_(False)
            _disable(unet)
    return {n: p.detach().float().cpu().clone() for n, p in params.items()}


def save_lora(state: dict, path: str, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, path,
              metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_lora(path: str) -> dict:
    from safetensors.torch import load_file
    return load_file(path)
