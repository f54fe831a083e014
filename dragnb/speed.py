"""Speed and memory options of a loaded model's UNet, each measured before it becomes a default.

    from dragnb import set_speed
    before = set_speed(model, channels_last=True, gradient_checkpointing=True)   # returns the previous options
    set_speed(model, **before)                                                    # and back

The options, all off by default (what a win is depends on the card; `benchmarks/gpu_sd_timings.py` measures
each one on the drag step, the LoRA fine-tune and the denoising, and benchmarks/README.md says which won where):

* ``channels_last``: the UNet's weights in NHWC memory order (`torch.channels_last`), which tensor-core
  convolutions prefer. Same arithmetic, other kernels: results agree to float rounding. With ``cuda_graph`` at SD
  size on an H200 it removes cuDNN's layout conversions (a drag step 0.035 -> 0.030 s, the render 0.70 -> 0.60 s,
  0.2 GiB more at the LoRA stage's peak).
* ``gradient_checkpointing``: diffusers' `enable_gradient_checkpointing()`: the blocks keep no activations for
  the backward pass of a drag step or a LoRA update and recompute them instead. Less memory, more time;
  results are bit-identical (the recomputation runs the same kernels). ``"lora"`` checkpoints only the LoRA
  fine-tune (batch 4: the stage that keeps the most, about 4.9 GiB at SD-1.5 size in 16 bits against 2.2 GiB for a
  drag step, `benchmarks/sd_memory_estimate.py`), so the interactive drag steps keep their speed.
* ``compile``: regional `torch.compile` of the UNet's repeated transformer blocks (diffusers'
  `compile_repeated_blocks`, so the first call compiles a few small graphs instead of the whole UNet).
  True uses torch's default backend (inductor); a string names another backend (``"aot_eager"``: no code
  generation, for tests). The first drag step pays the compilation. The final denoising with mutual
  self-attention always runs eagerly (`dragnb.attention` changes the attention processors at every step,
  which would recompile). Compilation cannot be undone on a loaded model: ``compile=False`` afterwards is
  refused; load the model again instead.
* ``cuda_graph``: every UNet call of an edit recorded once as a CUDA graph and replayed (`dragnb.graphs`): the
  LoRA fine-tune's step and the drag step (forward and backward), the inversion's and the final denoising's
  calls (forward): the launch overhead of some 1,200 operations a pass goes. A CUDA model only; not with
  ``compile`` or with ``gradient_checkpointing=True`` (``"lora"`` is accepted and leaves the fine-tune eager). The
  first call of each kind, shape and attention setting pays the capture (warm-up passes and the recording; the
  timestep is an input of the graph); the numbers are the eager path's to float16 noise (measured at SD size on
  an H200: a drag step 3× faster, the graphed latent 0.13 from the eager one after 80 steps, under the official
  loop's own 0.19 from a float16 rounding of its input).

The options live on the model (``model.speed``), so every session using that model shares them.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from . import graphs

__all__ = ["set_speed", "speed_of", "lora_stage", "parse_words", "OPTIONS", "WORDS"]

OPTIONS = ("channels_last", "gradient_checkpointing", "compile", "cuda_graph")

WORDS = {"channels_last": ("channels_last", True), "checkpointing": ("gradient_checkpointing", True),
         "gradient_checkpointing": ("gradient_checkpointing", True),
         "lora_checkpointing": ("gradient_checkpointing", "lora"), "compile": ("compile", True),
         "cuda_graph": ("cuda_graph", True)}
"""The command line's words for the options (`python -m dragnb edit --speed channels_last,lora_checkpointing`)."""


def parse_words(text: str) -> dict:
    """"channels_last,lora_checkpointing" -> {"channels_last": True, "gradient_checkpointing": "lora"} (set_speed's
    keywords); an unknown word, none, or two words for one option raise a ValueError naming the text."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    keys = [WORDS[w][0] for w in words if w in WORDS]
    if not words or len(keys) < len(words) or len(set(keys)) < len(keys):
        raise ValueError(f"{text!r}: use a comma-separated list of channels_last, checkpointing or "
                         f"lora_checkpointing, compile, cuda_graph (e.g. channels_last,lora_checkpointing)")
    return dict(WORDS[w] for w in words)


def speed_of(model) -> dict:
    """The model's current options: {"channels_last": bool, "gradient_checkpointing": bool | "lora",
    "compile": False | True | str, "cuda_graph": bool}."""
    return {k: model.speed.get(k, False) for k in OPTIONS}


def _check(name: str, value) -> None:
    if name == "compile":
        if not isinstance(value, (bool, str)) or value == "":
            raise TypeError(f"compile={value!r}: use True (torch's default backend), False, or a backend name such "
                            f"as 'inductor' or 'aot_eager'")
        return
    if name == "gradient_checkpointing" and value == "lora":
        return
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: use True or False" + (" (or 'lora': only the LoRA fine-tune)"
                                                                  if name == "gradient_checkpointing" else ""))


def set_speed(model, *, channels_last: bool | None = None, gradient_checkpointing: bool | str | None = None,
              compile: bool | str | None = None, cuda_graph: bool | None = None) -> dict:
    """Set the given options on `model`'s UNet (None leaves an option as it is). Returns the options as they
    were before, so ``set_speed(model, **previous)`` restores them (except a compilation, which stays).
    Nothing changes when a value is invalid."""
    asked = {"channels_last": channels_last, "gradient_checkpointing": gradient_checkpointing, "compile": compile,
             "cuda_graph": cuda_graph}
    for k, v in asked.items():
        if v is not None:
            _check(k, v)
    before = speed_of(model)
    after = {k: (before[k] if v is None else v) for k, v in asked.items()}
    if after["cuda_graph"]:
        graphs.check_model(model)
        if after["compile"]:
            raise ValueError(f"cuda_graph=True with compile={after['compile']!r}: use one of the two (a compiled "
                             "UNet is not captured); load the model again to drop a compilation")
        if after["gradient_checkpointing"] is True:
            raise ValueError("cuda_graph=True with gradient_checkpointing=True: the drag step is not captured with "
                             "checkpointing; use gradient_checkpointing='lora' (only the LoRA fine-tune) or False")
    if compile is not None and before["compile"] and compile != before["compile"]:
        raise ValueError(f"compile={compile!r}, but this model's UNet is already compiled with "
                         f"compile={before['compile']!r}: a compilation cannot be undone or redone in place; load "
                         f"the model again (dragnb.load_model) for other compile settings")
    unet = model.unet
    if channels_last is not None and channels_last != before["channels_last"]:
        unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        model.speed["channels_last"] = channels_last
    if gradient_checkpointing is not None and gradient_checkpointing != before["gradient_checkpointing"]:
        _checkpointing(unet, gradient_checkpointing is True, gradient_checkpointing)
        model.speed["gradient_checkpointing"] = gradient_checkpointing
    if cuda_graph is not None and cuda_graph != before["cuda_graph"]:
        graphs.clear(model)
        model.speed["cuda_graph"] = cuda_graph
    if compile and not before["compile"]:
        kwargs = {} if compile is True else {"backend": compile}
        unet.compile_repeated_blocks(**kwargs)
        model.speed["compile"] = compile
    return before


def _checkpointing(unet, on: bool, asked) -> None:
    try:
        unet.enable_gradient_checkpointing() if on else unet.disable_gradient_checkpointing()
    except ValueError as e:   # diffusers: the model class does not support it
        raise ValueError(f"gradient_checkpointing={asked!r}: {e}") from None


@contextmanager
def lora_stage(model):
    """Around a LoRA fine-tune (`lora.train_lora` runs inside it): checkpointing on for the block when the model's
    option is ``"lora"``."""
    if model.speed.get("gradient_checkpointing") != "lora":
        yield
        return
    _checkpointing(model.unet, True, "lora")
    try:
        yield
    finally:
        _checkpointing(model.unet, False, "lora")
