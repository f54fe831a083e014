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

The UNet calls without a gradient, the DDIM inversion and the final denoising (with mutual self-attention
or without), are graphed too (`unet_fn`, forward only): one graph per timestep, batch shape, guidance and
attention setting (`context`: whether mutual self-attention is on at that step, from which layer). With the
LoRA and the inversion cached, a re-drag is then graph replays and the eager arithmetic between them.

Not graphed: the reference features (computed once, cached), GoodDrag's one DDIM step between timesteps, the
LoRA fine-tune, a UNet with gradient checkpointing on in the drag, or a compiled UNet (`set_speed` refuses
those combinations). A capture that fails warns once, runs that call eagerly and is
not tried again for the same key; `stats(model)` says how many captures, replays and failures there were.
"""
from __future__ import annotations

import warnings
import weakref

import torch

from . import ddim
from .features import capture_block_output, resize_features
from .unet import forward_features as eager_forward_features
from .unet import guided_unet_fn

__all__ = ["forward_features", "unet_fn", "stats", "clear", "check_model", "MAX_GRAPHS"]

MAX_GRAPHS = 16
"""Drag-step graphs kept per UNet (GoodDrag drags at about 7 timesteps); the oldest goes first beyond it."""
MAX_NO_GRAD_GRAPHS = 128
"""Graphs of UNet calls without a gradient kept per UNet (inversion and denoising: 35 timesteps each by default)."""


class _Graphs:
    """The graphs of one UNet: key -> graphed callable (or the error of a failed capture), one memory pool."""

    def __init__(self):
        self.entries: dict[tuple, object] = {}     # key -> (graphed fn, t tensor, cond) | Exception
        self.no_grad: dict[tuple, object] = {}     # key -> (replay, static x, static output, t tensor, cond) | Exception
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


def _graph_no_grad(run, pool):
    """Capture `run()` (no gradient; it reads only static inputs) as a CUDA graph after two warm-up calls on a side
    stream, as torch's documentation does. Returns (replay, static output). A seam, as `_make_graphed`."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):   # other threads may use the GPU
        out = run()
    return graph.replay, out


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
        _new_pool(g)
    sample = latent.detach().clone().requires_grad_(True)
    with torch.autocast(latent.device.type, enabled=False):   # the session's own autocast caches weights
        fn = _make_graphed(unet_call, (sample,), g.pool)
    return fn, t_dev, cond


def _graphs_of(model) -> _Graphs:
    """The UNet's graphs, emptied first when its parameters moved (another LoRA merged in, a moved UNet, channels_last):
    a graph replays the memory it recorded, so graphs of other addresses would read stale weights."""
    g = _BY_UNET.get(model.unet)
    if g is None:
        g = _BY_UNET[model.unet] = _Graphs()
    params = _param_addresses(model.unet)
    if params != g.params:
        g.entries.clear()
        g.no_grad.clear()
        g.params = params
    return g


def _lookup(g: _Graphs, table: dict, limit: int, key: tuple, what: str, capture):
    """table[key], capturing it first (`capture()`); a failed capture is kept as its exception, warned about once."""
    hit = table.get(key)
    if hit is None:
        if len(table) >= limit:
            table.pop(next(iter(table)))
        try:
            hit = capture()
            g.captures += 1
        except Exception as e:  # noqa: BLE001 - the edit goes on eagerly, and says so once
            hit = e
            g.failures.append(f"{what}: {type(e).__name__}: {e}")
            warnings.warn(f"dragnb: the CUDA graph capture of {what} failed ({type(e).__name__}: {e}); these calls run "
                          f"eagerly (set_speed(model, cuda_graph=False) to stop trying)", RuntimeWarning, stacklevel=4)
        table[key] = hit
    return None if isinstance(hit, Exception) else hit


def _graphed(model, cond, latent, t: int, feature_block: int):
    """The graphed UNet call of the drag step for this key, capturing it first; None when capture failed for it."""
    g = _graphs_of(model)
    key = (int(t), int(feature_block), tuple(latent.shape), str(model.dtype), cond.data_ptr(), tuple(cond.shape))
    hit = _lookup(g, g.entries, MAX_GRAPHS, key, f"the drag step at t={int(t)}",
                  lambda: _capture(model, cond, latent, int(t), feature_block, g))
    return None if hit is None else hit[0]


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


def unet_fn(model, cond, guidance: float, context=None):
    """`unet.guided_unet_fn(model, cond, guidance)`, replayed from CUDA graphs when the model's `cuda_graph` option is
    on (else that function itself). For calls without a gradient (inversion, denoising): one graph per timestep,
    batch shape and `context()` (a hashable the caller gives for what else shapes the call, e.g. whether mutual
    self-attention is active at this step), captured on first use."""
    fn = guided_unet_fn(model, cond, guidance)
    if not model.speed.get("cuda_graph"):
        return fn

    def call(x, t):
        g = _graphs_of(model)
        key = (int(t), tuple(x.shape), str(x.dtype), str(model.dtype), float(guidance), cond.data_ptr(),
               tuple(cond.shape), None if context is None else context())

        def capture():
            static_x = x.detach().clone()
            t_dev = torch.tensor(int(t), dtype=torch.int64, device=x.device)
            replay, out = _graph_no_grad(lambda: fn(static_x, t_dev), g.pool if g.pool is not None else _new_pool(g))
            return replay, static_x, out, t_dev, cond
        hit = _lookup(g, g.no_grad, MAX_NO_GRAD_GRAPHS, key, f"a UNet call at t={int(t)}", capture)
        if hit is None:
            g.eager_calls += 1
            return fn(x, t)
        replay, static_x, out = hit[:3]
        static_x.copy_(x)
        replay()
        g.replays += 1
        return out.clone()          # the static output is overwritten by the next replay
    return call


def _new_pool(g: _Graphs):
    g.pool = _pool()
    return g.pool


def stats(model) -> dict:
    """{"graphs": drag-step graphs kept, "no_grad_graphs": the others kept, "captures": n, "replays": n,
    "eager_calls": n (after a failed capture), "failures": [...]}"""
    g = _BY_UNET.get(model.unet)
    if g is None:
        return {"graphs": 0, "no_grad_graphs": 0, "captures": 0, "replays": 0, "eager_calls": 0, "failures": []}
    return {"graphs": sum(not isinstance(v, Exception) for v in g.entries.values()),
            "no_grad_graphs": sum(not isinstance(v, Exception) for v in g.no_grad.values()), "captures": g.captures,
            "replays": g.replays, "eager_calls": g.eager_calls, "failures": list(g.failures)}


def clear(model) -> None:
    """Drop the model's graphs and their memory (the counts start again)."""
    _BY_UNET.pop(model.unet, None)
