"""CUDA graphs of an edit's UNet calls: `set_speed(model, cuda_graph=True)`.

At SD-1.5 size a drag step on an H100 is about 1.35 TFLOP of arithmetic (a few milliseconds) but took 150-180 ms
in eager PyTorch, dragnb's and the official code's alike: the GPU waits for Python to launch some 1,200 UNet
operations forward and more backward. A CUDA graph records those launches once and replays them as one.

What is graphed, each captured on first use and replayed after:
* the drag step's UNet call (`drag_forward`), forward and backward (`torch.cuda.make_graphed_callables`): the
  UNet's output and the raw output of the feature block. The resize to the supervision grid, the DDIM step to
  x_{t-1}, point tracking and the losses run eagerly around it;
* the LoRA fine-tune's UNet call (`training_call`), forward and backward into the trainable adapter weights; the
  noise, the loss, the loss scaling and AdamW stay eager. Not when the fine-tune is checkpointed;
* the calls without a gradient, the DDIM inversion and the final denoising with or without mutual
  self-attention (`replayed`, forward only), one graph per batch shape, guidance and attention setting (`context`:
  whether mutual self-attention is on at that step, from which layer).

The timestep is not part of a key: every graph reads it from a small device tensor of its own, set before each
replay (a copy on the GPU, no host synchronisation). The UNet never reads the timestep on the host (a capture would
fail if it did: reading a GPU value stops the stream), so one graph serves every timestep of its call: the 35 calls
of an inversion are one capture and 34 replays, and GoodDrag's drag timesteps share one drag graph.
The numbers are the eager path's (the same kernels in the same order; cuDNN may pick other algorithms). With the
LoRA and the inversion cached, a re-drag is graph replays and the eager arithmetic between them.

A graph replays the memory it was recorded with, so every key holds the addresses of all UNet parameters and of
every other tensor it reads from outside (the prompt embeddings, which its entry keeps alive), besides the
shapes and dtype. That makes it safe with the LoRA: `lora.applied` swaps each adapted weight's storage
for the merged W + B·A (the same tensors as long as the LoRA state is the same), so another LoRA, no LoRA, a
moved UNet or `channels_last` give other keys and fresh captures, and a graph is replayed only while the weights
it read sit where it read them. All graphs of a UNet share one memory pool: a drag graph's forward is always
followed by its own backward before another graph runs.

Not graphed: the reference features (computed once, cached), GoodDrag's one DDIM step between timesteps, a UNet
with gradient checkpointing on in the drag, or a compiled UNet (`set_speed` refuses those combinations). A
capture that fails warns once, runs that call eagerly and is not tried again for the same key; `stats(model)`
says how many captures, replays and failures there were.
"""
from __future__ import annotations

import os
import traceback
import warnings
import weakref

import torch

from . import ddim
from .features import capture_block_output, resize_features

__all__ = ["active", "drag_forward", "replayed", "training_call", "stats", "stats_line", "failure_text", "clear", "check_model", "MAX_GRAPHS"]

MAX_GRAPHS = 16
"""Drag-step graphs kept per UNet (one per feature block, latent shape and set of weights); the oldest goes first."""
MAX_NO_GRAD_GRAPHS = 32
"""Graphs of UNet calls without a gradient kept per UNet (one per batch shape, guidance, attention setting and set
of weights: an edit makes two or three)."""


class _Graphs:
    """The graphs of one UNet: key -> graphed callable (or the error of a failed capture), one memory pool."""

    def __init__(self):
        self.entries: dict[tuple, object] = {}     # drag step: key -> (graphed fn, t tensor, cond) | Exception
        # (every entry's t tensor is set to the call's timestep before its replay: keys hold no timestep)
        self.lora: dict[tuple, object] = {}        # LoRA fine-tune step: key -> (graphed module,) | Exception
        self.no_grad: dict[tuple, object] = {}     # key -> (replay, static x, static output, t tensor, cond) | Exception
        self.pool = None
        self.captures = self.replays = self.eager_calls = 0
        self.failures: list[str] = []
        self.warm: set = set()                     # call families captured once already (see `_warmups`)


_BY_UNET: "weakref.WeakKeyDictionary[object, _Graphs]" = weakref.WeakKeyDictionary()


def check_model(model) -> None:
    """ValueError unless `model` can use CUDA graphs (a CUDA device)."""
    if model.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a model on a CUDA device; this one is on {model.device}: load it "
                         "with device='cuda', or leave cuda_graph off (on a CPU there is no graph to replay)")


def active(model) -> bool:
    """The model's `cuda_graph` option is on and the model is where graphs exist (a model moved to the CPU after
    `set_speed(cuda_graph=True)` runs eagerly)."""
    if not model.speed.get("cuda_graph"):
        return False
    try:
        check_model(model)
    except ValueError:
        return False
    return True


def _pool():
    return torch.cuda.graph_pool_handle()


def _make_graphed(fn, sample_args: tuple, pool, warmup: int = 3):
    """torch's graph capture (a seam: the tests put an emulation with the same static-buffer semantics here)."""
    return torch.cuda.make_graphed_callables(fn, sample_args, num_warmup_iters=warmup, pool=pool)


def _graph_no_grad(run, pool, warmup: int = 2):
    """Capture `run()` (no gradient; it reads only static inputs) as a CUDA graph after `warmup` eager calls on a side
    stream, as torch's documentation does. Returns (replay, static output). A seam, as `_make_graphed`."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):   # other threads may use the GPU
        out = run()
    return graph.replay, out


def _param_addresses(unet) -> tuple:
    """Where each parameter's memory is, and whether it trains (a fine-tune graph computes those gradients)."""
    return tuple((p.data_ptr(), p.requires_grad) for p in unet.parameters())


def _capture(model, cond, latent, t: int, feature_block: int, g: _Graphs):
    """Record the UNet call for latents shaped like `latent`, reading its timestep from a device tensor (t at the
    capture; the caller sets it before each replay); returns (graphed fn, t tensor, cond)."""
    unet, dtype = model.unet, model.dtype
    t_dev = torch.tensor(t, dtype=torch.int64, device=latent.device)   # a tensor: no host copy inside the graph

    def unet_call(z):
        # the eager path's autocast (guided_unet_fn), without its weight cache, which graphs cannot hold
        with torch.autocast(latent.device.type, dtype=dtype, enabled=dtype != torch.float32, cache_enabled=False), \
                capture_block_output(unet, feature_block) as store:
            out = model.unet_forward(z, t_dev, cond).float()
        return out, store["feat"]

    sample = latent.detach().clone().requires_grad_(True)
    with torch.autocast(latent.device.type, enabled=False):   # the session's own autocast caches weights
        fn = _make_graphed(unet_call, (sample,), _pool_of(g),
                           _warmups(g, ("drag", feature_block, tuple(latent.shape), str(dtype)), 3, 1))
    return fn, t_dev, cond


def _graphs_of(model) -> tuple[_Graphs, tuple]:
    """The UNet's graphs and the addresses of its parameters now. A graph replays the memory it recorded, so every key
    holds the addresses it was captured with: another LoRA merged in, a moved UNet or channels_last give other keys
    (and fresh captures), and a graph is replayed only while the weights it read sit where it read them. Keys also hold
    every other tensor a graph reads from outside (the prompt embeddings), and the entries keep those alive."""
    g = _BY_UNET.get(model.unet)
    if g is None:
        g = _BY_UNET[model.unet] = _Graphs()
    return g, _param_addresses(model.unet)


def _warmups(g: _Graphs, family: tuple, first: int, later: int) -> int:
    """Warm-up calls before a capture: `first` for the first graph of a family (the same call but for the weights'
    addresses: cuDNN's choices and CUDA's lazy loading happen there), `later` after. Capturing records and does not
    compute, so a known call under new weights (another LoRA) costs about one eager call, not three."""
    if family in g.warm:
        return later
    g.warm.add(family)
    return first


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
            g.failures.append(f"{what}: {failure_text(e)}")
            warnings.warn(f"dragnb: the CUDA graph capture of {what} failed ({type(e).__name__}: {e}); these calls run "
                          f"eagerly (set_speed(model, cuda_graph=False) to stop trying)", RuntimeWarning, stacklevel=4)
        table[key] = hit
    return None if isinstance(hit, Exception) else hit


def drag_forward(model, cond, n_steps: int, feature_block: int, grid_hw, eager):
    """The drag step's forward `(latent, t) -> (features (1, C', gh, gw) float32 on the supervision grid, x_{t-1})`
    with the UNet call replayed from a CUDA graph; `eager` (the same function, `unet.forward_features` bound to these
    arguments) runs where a capture failed. Called inside `unet.using(model, lora_state)`."""
    def forward(latent, t):
        g, params = _graphs_of(model)
        key = (int(feature_block), tuple(latent.shape), str(model.dtype), cond.data_ptr(), tuple(cond.shape), params)
        hit = _lookup(g, g.entries, MAX_GRAPHS, key, "the drag step",
                      lambda: _capture(model, cond, latent, int(t), feature_block, g))
        if hit is None:
            g.eager_calls += 1
            return eager(latent, t)
        hit[1].fill_(int(t))        # the timestep the graph reads (a kernel on the stream, before the replay's)
        out, raw = hit[0](latent)   # static buffers, overwritten by the next replay: only new tensors leave here
        g.replays += 1
        return resize_features(raw, grid_hw), ddim.prev_step(model.scheduler, out, latent, t, n_steps)
    return forward


def replayed(model, fn, cond, guidance: float, context=None):
    """`fn` (`unet.guided_unet_fn(model, cond, guidance)`: (x, t) -> UNet output, no gradient) replayed from CUDA
    graphs when the model's `cuda_graph` option is on, else `fn` itself. One graph per batch shape, guidance and
    `context()` (a hashable the caller gives for what else shapes the call, e.g. whether mutual self-attention is
    active at this step), captured on first use and replayed at every timestep (set in the graph's own timestep
    tensor before each replay); the inversion and the final denoising use it."""
    if not active(model):
        return fn

    def call(x, t):
        g, params = _graphs_of(model)
        unc = model.encode_prompt("") if guidance != 1.0 else cond     # guidance reads the empty prompt's embeddings
        key = (tuple(x.shape), str(x.dtype), str(model.dtype), float(guidance), cond.data_ptr(),
               tuple(cond.shape), unc.data_ptr(), None if context is None else context(), params)

        def capture():
            static_x = x.detach().clone()
            t_dev = torch.tensor(int(t), dtype=torch.int64, device=x.device)
            replay, out = _graph_no_grad(lambda: fn(static_x, t_dev), _pool_of(g),
                                         _warmups(g, ("no_grad",) + key[:-1], 2, 0))   # all but the addresses
            return replay, static_x, out, t_dev, cond, unc
        hit = _lookup(g, g.no_grad, MAX_NO_GRAD_GRAPHS, key, "a UNet call without a gradient", capture)
        if hit is None:
            g.eager_calls += 1
            return fn(x, t)
        replay, static_x, out, t_dev = hit[:4]
        static_x.copy_(x)
        t_dev.fill_(int(t))
        replay()
        g.replays += 1
        return out.clone()          # the static output is overwritten by the next replay
    return call


class _TrainCall(torch.nn.Module):
    """The LoRA fine-tune's UNet call as a module, for `make_graphed_callables` (which takes the gradients of a
    module's trainable parameters): (noisy latents, timesteps, embeddings) -> prediction, under the model's autocast
    without its weight cache, as `lora.train_lora` calls the UNet."""

    def __init__(self, unet, dtype):
        super().__init__()
        # a weak reference, not a submodule: the graph keeps this module, and `_BY_UNET` keeps the graph as long
        # as the UNet lives, so a strong one would keep the UNet (and its graphs) alive for ever
        self._unet, self.dtype = weakref.ref(unet), dtype

    def parameters(self, recurse: bool = True):
        return self._unet().parameters(recurse)

    def buffers(self, recurse: bool = True):
        return self._unet().buffers(recurse)

    def forward(self, noisy, t, emb):
        with torch.autocast(noisy.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32,
                            cache_enabled=False):
            return self._unet()(noisy.to(self.dtype), t, encoder_hidden_states=emb).sample


def training_call(model):
    """For `lora.train_lora(unet_call=...)`: `(noisy, t, emb) -> prediction`, forward and backward (into the trainable
    LoRA weights) replayed from a CUDA graph; None when the model's `cuda_graph` option is off or the fine-tune is
    checkpointed (then `train_lora` calls the UNet itself). One graph per batch shape, dtype and set of trainable
    weights at their addresses (the adapter is reused between images, so is the graph)."""
    if not active(model) or model.speed.get("gradient_checkpointing"):
        return None

    def call(noisy, t, emb):
        g, params = _graphs_of(model)      # the addresses say which weights train too
        key = ("lora", tuple(noisy.shape), str(noisy.dtype), tuple(t.shape), tuple(emb.shape), str(emb.dtype),
               str(model.dtype), params)

        def capture():
            module = _TrainCall(model.unet, model.dtype)
            sample = (noisy.detach().clone(), t.detach().clone(), emb.detach().clone())
            with torch.autocast(noisy.device.type, enabled=False):
                return (_make_graphed(module, sample, _pool_of(g),
                                      _warmups(g, key[:-1], 3, 1)),)
        hit = _lookup(g, g.lora, MAX_GRAPHS, key, "a LoRA fine-tune step", capture)
        if hit is None:
            g.eager_calls += 1
            return _TrainCall(model.unet, model.dtype)(noisy, t, emb)
        g.replays += 1
        return hit[0](noisy, t, emb)   # a static buffer: train_lora only reads it into its loss before the next call
    return call


def _pool_of(g: _Graphs):
    """The UNet's one memory pool, made on first use."""
    if g.pool is None:
        g.pool = _pool()
    return g.pool


def failure_text(e: BaseException) -> str:
    """"Type: message (at file:line function; ...)" of a failed capture: where it failed, its last three frames."""
    where = "; ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                      for f in traceback.extract_tb(e.__traceback__)[-3:])
    return f"{type(e).__name__}: {e} (at {where})"


def stats_line(st: dict) -> str:
    """A `stats()` result in one line, for the benchmarks' tables."""
    return (f"{st['captures']} captures, {st['replays']} replays, {st['eager_calls']} eager calls"
            + (f"; failures: {'; '.join(st['failures'])}" if st["failures"] else ""))


def stats(model) -> dict:
    """{"drag_graphs", "lora_graphs", "no_grad_graphs": graphs kept of each kind, "captures": n, "replays": n,
    "eager_calls": n (after a failed capture), "failures": [...]}"""
    g = _BY_UNET.get(model.unet) or _Graphs()
    kept = lambda table: sum(not isinstance(v, Exception) for v in table.values())  # noqa: E731
    return {"drag_graphs": kept(g.entries), "lora_graphs": kept(g.lora), "no_grad_graphs": kept(g.no_grad),
            "captures": g.captures, "replays": g.replays, "eager_calls": g.eager_calls, "failures": list(g.failures)}


def clear(model) -> None:
    """Drop the model's graphs and their memory (the counts start again)."""
    _BY_UNET.pop(model.unet, None)
