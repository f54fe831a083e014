"""CUDA graphs of the drag step's UNet call: `set_speed(model, cuda_graph=True)`.

At SD-1.5 size a drag step on an H100 is about 1.35 TFLOP of arithmetic (a few milliseconds) but took 150-180 ms
in eager PyTorch, dragnb's and the official code's alike: the GPU waits for Python to launch some 1,200 UNet
operations forward and more backward. A CUDA graph records those launches once and replays them as one.

What is graphed: exactly the UNet call of `unet.forward_features` for the dragged latent, forward and backward
(`torch.cuda.make_graphed_callables`): the UNet's output and the raw output of the feature block. The resize to
the supervision grid, the DDIM step to x_{t-1}, point tracking and the losses run eagerly around it, so the
numbers are the eager path's (the same kernels in the same order; cuDNN may pick other algorithms).

A graph replays the memory it was recorded with, so one graph serves one combination of: timestep, feature
block, latent shape, dtype, prompt embedding (its tensor) and the addresses of every UNet parameter. The last
one makes it safe with the LoRA: `lora.applied` swaps each adapted weight's storage for the merged W + B·A (the
same tensors as long as the LoRA state is the same), so another LoRA, no LoRA, a reloaded or moved UNet or a
`channels_last` switch all give other addresses and a fresh capture; graphs of other addresses are dropped then.
Methods that drag at several timesteps (GoodDrag) keep one graph each, in one memory pool (a graph's forward
is always followed by its own backward before another graph runs, so they can share it).

Not graphed: the reference features (no gradient, cached), the denoising (mutual self-attention changes the
attention processors at every step), a UNet with gradient checkpointing on in the drag, or a compiled UNet
(`set_speed` refuses those combinations). A capture that fails warns once, runs that call eagerly and is
not tried again for the same key; `stats(model)` says how many captures, replays and failures there were.
"""
from __future__ import annotations

import warnings
import weakref

import torch

from . import ddim
from .features import capture_block_output, resize_features
from .unet import forward_features as eager_forward_features

__all__ = ["forward_features", "stats", "clear", "check_model", "MAX_GRAPHS"]

MAX_GRAPHS = 16
"""Graphs kept per UNet (GoodDrag drags at about 7 timesteps); the oldest goes first beyond it."""


class _Graphs:
    """The graphs of one UNet: key -> graphed callable (or the error of a failed capture), one memory pool."""

    def __init__(self):
        self.entries: dict[tuple, object] = {}     # key -> (graphed fn, t tensor, cond) | Exception
        self.pool = None
        self.params: tuple = ()                    # the parameter addresses the entries were captured with
        self.captures = self.replays = self.eager_calls = 0
        self.failures: list[str] = []


_BY_UNET: "weakref.WeakKeyDictionary[object, _Graphs]" = weakref.WeakKeyDictionary()


def check_model(model) -> None:
    """ValueError unless `model` can use CUDA graphs (a CUDA device)."""
    if model.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a model on a CUDA device; this one is on {model.device}: load it "
                         "with device='cuda', or leave cuda_graph off (on a CPU there is no graph to replay)")


def _pool():
    return torch.cuda.graph_pool_handle()


def _make_graphed(fn, sample_args: tuple, pool):
    """torch's graph capture (a seam: the tests put an emulation with the same static-buffer semantics here)."""
    return torch.cuda.make_graphed_callables(fn, sample_args, pool=pool)


def _param_addresses(unet) -> tuple:
    return tuple(p.data_ptr() for p in unet.parameters())


def _capture(model, cond, latent, t: int, feature_block: int, g: _Graphs):
    """Record the UNet call at timestep t for latents shaped like `latent`; returns (graphed fn, t tensor, cond)."""
    unet, dtype = model.unet, model.dtype
    t_dev = torch.tensor(t, dtype=torch.int64, device=latent.device)   # a tensor: no host copy inside the graph

    def unet_call(z):
        # the eager path's autocast (guided_unet_fn), without its weight cache, which graphs cannot hold
        with torch.autocast(latent.device.type, dtype=dtype, enabled=dtype != torch.float32, cache_enabled=False), \
                capture_block_output(unet, feature_block) as store:
            out = model.unet_forward(z, t_dev, cond).float()
        return out, store["feat"]

    if g.pool is None:
        g.pool = _pool()
    sample = latent.detach().clone().requires_grad_(True)
    with torch.autocast(latent.device.type, enabled=False):   # the session's own autocast caches weights
        fn = _make_graphed(unet_call, (sample,), g.pool)
    return fn, t_dev, cond


def _graphed(model, cond, latent, t: int, feature_block: int):
    """The graphed UNet call for this key, capturing it first; None when capture failed for it."""
    g = _BY_UNET.get(model.unet)
    if g is None:
        g = _BY_UNET[model.unet] = _Graphs()
    params = _param_addresses(model.unet)
    if params != g.params:          # other weights (another LoRA, a moved UNet): the old graphs replay stale memory
        g.entries.clear()
        g.params = params
    key = (int(t), int(feature_block), tuple(latent.shape), str(model.dtype), cond.data_ptr(), tuple(cond.shape))
    hit = g.entries.get(key)
    if hit is None:
        if len(g.entries) >= MAX_GRAPHS:
            g.entries.pop(next(iter(g.entries)))
        try:
            hit = _capture(model, cond, latent, int(t), feature_block, g)
            g.captures += 1
        except Exception as e:  # noqa: BLE001 - the edit goes on eagerly, and says so once
            hit = e
            g.failures.append(f"t={int(t)}: {type(e).__name__}: {e}")
            warnings.warn(f"dragnb: the CUDA graph capture of the drag step at t={int(t)} failed ({type(e).__name__}: "
                          f"{e}); these steps run eagerly (set_speed(model, cuda_graph=False) to stop trying)",
                          RuntimeWarning, stacklevel=3)
        g.entries[key] = hit
    return None if isinstance(hit, Exception) else hit[0]


def forward_features(model, cond, latent, t: int, n_steps: int, feature_block: int, grid_hw):
    """`unet.forward_features` with the UNet call replayed from a CUDA graph: (features (1, C', gh, gw) float32 on
    the supervision grid, x_{t-1} (1, C, h, w)). The caller holds `unet.using(model, lora_state)`."""
    fn = _graphed(model, cond, latent, t, feature_block)
    g = _BY_UNET[model.unet]
    if fn is None:
        g.eager_calls += 1
        return eager_forward_features(model, cond, latent, t, n_steps, feature_block, grid_hw)
    out, raw = fn(latent)           # static buffers, overwritten by the next replay: only new tensors leave here
    g.replays += 1
    return resize_features(raw, grid_hw), ddim.prev_step(model.scheduler, out, latent, t, n_steps)


def stats(model) -> dict:
    """{"graphs": kept, "captures": n, "replays": n, "eager_calls": n (after a failed capture), "failures": [...]}"""
    g = _BY_UNET.get(model.unet)
    if g is None:
        return {"graphs": 0, "captures": 0, "replays": 0, "eager_calls": 0, "failures": []}
    return {"graphs": sum(not isinstance(v, Exception) for v in g.entries.values()), "captures": g.captures,
            "replays": g.replays, "eager_calls": g.eager_calls, "failures": list(g.failures)}


def clear(model) -> None:
    """Drop the model's graphs and their memory (the counts start again)."""
    _BY_UNET.pop(model.unet, None)
