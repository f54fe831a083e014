"""Every use of a model's shared UNet goes through here: one lock per UNet, the LoRA applied inside it.

Several sessions (two editors, an editor's background run and a cell) may share one loaded model. The LoRA
adapter, the feature hooks and the attention processors all live on that one UNet, so each use holds the
UNet's lock from before the adapter is enabled until after hooks and processors are restored. The lock is
re-entrant: a stage may call another inside it. Work between uses (a step, a render) interleaves freely, and
each session's results are bit-identical to the same work done one after the other.

On a CPU model, `using` also sets the working thread's torch thread count for the block (`dragnb.threads`:
the thread policy, so an edit stays quick beside other busy processes; `DRAGNB_THREADS` /
`dragnb.set_threads` override it) and gives the thread its own count back afterwards.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager

import torch

from . import ddim, graphs, lora, threads
from .features import unet_with_features

_LOCKS: "weakref.WeakKeyDictionary[object, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def unet_lock(unet) -> threading.RLock:
    """The one re-entrant lock of this UNet module (created on first use)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(unet)
        if lock is None:
            lock = _LOCKS[unet] = threading.RLock()
        return lock


@contextmanager
def using(model, lora_state: dict | None):
    """Hold the model's UNet for the block, carrying exactly the LoRA weights `lora_state` (None: the base UNet).
    On the CPU, this thread's torch thread count follows the thread policy inside the block (`dragnb.threads.scoped`)."""
    with unet_lock(model.unet), threads.scoped(model.device), lora.applied(model.unet, lora_state):
        yield model.unet


def guided_unet_fn(model, cond, guidance: float):
    """`fn(x, t)` -> UNet output (float32) for latents x (B, C, h, w) with prompt embeddings cond (1, L, D);
    classifier-free guidance (unconditional = the empty prompt) when guidance > 1."""
    def fn(x, t):
        with torch.autocast(model.device.type, dtype=model.dtype, enabled=model.dtype != torch.float32):
            if guidance == 1.0:
                return model.unet_forward(x, t, cond).float()
            unc = model.encode_prompt("")
            b = x.shape[0]
            emb = torch.cat([unc.expand(b, *unc.shape[1:]), cond.expand(b, *cond.shape[1:])])
            u, c = model.unet_forward(torch.cat([x, x]), t, emb).float().chunk(2)
        return u + guidance * (c - u)
    return fn


def replayed_unet_fn(model, cond, guidance: float, context=None):
    """`guided_unet_fn` for calls without a gradient (inversion, denoising, sampling), replayed from CUDA graphs when
    the model's `cuda_graph` option is on (`graphs.replayed`; `context()`: what else shapes the call)."""
    return graphs.replayed(model, guided_unet_fn(model, cond, guidance), cond, guidance, context)


def forward_features(model, cond, latent, t: int, n_steps: int, feature_block: int, grid_hw):
    """One UNet call on `latent` (1, C, h, w) at timestep t (no guidance, as the official drag loop):
    returns (features (1, C', gh, gw) float32 on the supervision grid, x_{t-1} (1, C, h, w) in the n-step
    schedule). The caller holds `using(model, lora_state)`."""
    out, feat = unet_with_features(guided_unet_fn(model, cond, 1.0), model.unet, latent, t, feature_block, grid_hw)
    return feat, ddim.prev_step(model.scheduler, out, latent, t, n_steps)
