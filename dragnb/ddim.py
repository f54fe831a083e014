"""DDIM steps in both directions, inversion to step t and denoising from t (pure functions).

Works for every `prediction_type` a diffusers scheduler may carry (epsilon, v_prediction, sample).
A `unet_fn(x (B, C, h, w), t (int)) -> model output (B, C, h, w)` hides the UNet, the prompt and guidance.

Timesteps follow the official DragDiffusion code: `set_timesteps(n)` gives a descending list; the
inversion walks it backwards for `k = round(strength * n)` steps, so the drag latent sits at
`timesteps[n - k]`, and the denoising runs `timesteps[n - k:]`.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

UnetFn = Callable[[torch.Tensor, int], torch.Tensor]


def timesteps(scheduler, n_steps: int) -> list[int]:
    """The descending DDIM timesteps of an `n_steps` schedule, as ints (e.g. [981, 961, ..., 1] for SD).

    Pure: computed on a shallow copy, so threads sharing one scheduler never see each other's schedule."""
    own = copy.copy(scheduler)        # set_timesteps rebinds attributes: the shared scheduler stays untouched
    own.set_timesteps(n_steps)
    return [int(t) for t in own.timesteps]


def step_size(scheduler, n_steps: int) -> int:
    return scheduler.config.num_train_timesteps // n_steps


def alpha_bar(scheduler, t: int) -> torch.Tensor:
    """ᾱ_t; for t < 0 the scheduler's final ᾱ (1.0 with set_alpha_to_one, else ᾱ_0), as DDIM does."""
    if t < 0:
        return scheduler.final_alpha_cumprod.float()
    return scheduler.alphas_cumprod[int(t)].float()


def predict_x0_eps(scheduler, model_out: torch.Tensor, x_t: torch.Tensor, t: int):
    """(x0, eps) predicted from the model output at timestep t, for any prediction type."""
    a = alpha_bar(scheduler, t).to(x_t.device)
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    model_out = model_out.to(x_t.dtype)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        eps = model_out
        x0 = (x_t - s1a * eps) / sa
    elif kind == "v_prediction":
        x0 = sa * x_t - s1a * model_out
        eps = sa * model_out + s1a * x_t
    elif kind == "sample":
        x0 = model_out
        eps = (x_t - sa * x0) / s1a
    else:
        raise ValueError(f"prediction_type {kind!r} is not supported: use epsilon, v_prediction or sample")
    return x0, eps


def ddim_move(scheduler, model_out: torch.Tensor, x_t: torch.Tensor, t: int, t_to: int) -> torch.Tensor:
    """Deterministic DDIM (η = 0) move of x_t from timestep t to t_to (t_to < t denoises, t_to > t inverts)."""
    x0, eps = predict_x0_eps(scheduler, model_out, x_t, t)
    a_to = alpha_bar(scheduler, t_to).to(x_t.device)
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


def prev_step(scheduler, model_out, x_t, t: int, n_steps: int) -> torch.Tensor:
    """x_{t-1} in the n-step schedule (used by the mask term: official `model.step`)."""
    return ddim_move(scheduler, model_out, x_t, t, t - step_size(scheduler, n_steps))


@torch.no_grad()
def invert(unet_fn: UnetFn, scheduler, z0: torch.Tensor, n_steps: int, k: int, callback=None) -> list[torch.Tensor]:
    """DDIM inversion of clean latents z0 (B, C, h, w) through the first k steps of an n-step schedule.

    Returns [z0, z_1, ..., z_k] (k + 1 latents, the last at `timesteps[n - k]`). As in the official code the
    UNet is evaluated at the *target* timestep with the current latent (the usual DDIM-inversion approximation).
    """
    ts = list(reversed(timesteps(scheduler, n_steps)))[:k]
    d = step_size(scheduler, n_steps)
    out, x = [z0], z0
    for i, t in enumerate(ts):
        x = ddim_move(scheduler, unet_fn(x, t), x, t - d, t)
        out.append(x)
        if callback is not None:
            callback(i + 1, k)
    return out


@torch.no_grad()
def denoise(unet_fn: UnetFn, scheduler, z_t: torch.Tensor, n_steps: int, k: int, callback=None,
            step_hook=None) -> torch.Tensor:
    """DDIM-denoise latents z_t sitting at `timesteps[n - k]` through the last k steps to clean latents.

    `step_hook(i)` is called before the i-th step (0-based; mutual attention uses it to gate by step).
    """
    ts = timesteps(scheduler, n_steps)[n_steps - k:]
    d = step_size(scheduler, n_steps)
    x = z_t
    for i, t in enumerate(ts):
        if step_hook is not None:
            step_hook(i)
        x = ddim_move(scheduler, unet_fn(x, t), x, t, t - d)
        if callback is not None:
            callback(i + 1, k)
    return x


@torch.no_grad()
def sample(unet_fn: UnetFn, scheduler, z_T: torch.Tensor, n_steps: int) -> list[torch.Tensor]:
    """Generate from noise z_T with the whole n-step schedule; returns [z_T, ..., z_0] (n + 1 latents).

    Item i is the latent at `timesteps[i]`, so item `n - k` is exactly the drag latent of strength k / n.
    """
    ts = timesteps(scheduler, n_steps)
    d = step_size(scheduler, n_steps)
    out, x = [z_T], z_T
    for t in ts:
        x = ddim_move(scheduler, unet_fn(x, t), x, t, t - d)
        out.append(x)
    return out
