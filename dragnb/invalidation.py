"""What each change invalidates: the one table every other module reads.

A drag edit is a chain of stages, each cached by exactly what it depends on::

    image, prompt, seed ──▶ LoRA ──▶ inversion ──▶ reference features ──▶ drag state ──▶ result
                                                                             ▲
                                                     drags ──────────────────┘   mask, drag settings: next step

| change                                                       | recomputes                    | drag state |
|--------------------------------------------------------------|-------------------------------|------------|
| image, prompt, seed                                          | LoRA, inversion, features     | restarts   |
| lora_rank, lora_steps, lora_lr, lora_batch_size, lora_targets | LoRA, inversion, features    | restarts   |
| n_inference_steps, inversion_strength, guidance_scale        | inversion, features           | restarts   |
| feature_block, sup_res_scale                                 | features                      | restarts   |
| method and its schedule settings (drag_timesteps, rounds,    | features only if the method   | restarts   |
|   updates_per_round), warp_init                              |   needs a longer reference    |            |
| drags (add, remove, set)                                     | nothing                       | restarts   |
| mask, drag settings (lam, drag_lr, r_m, r_p, beta, restrict_ | nothing (next step / render)  | kept       |
|   tracking, auto_mask, ...), rendering settings (mutual_attention, attn_start_*), bookkeeping |   |   |

"restarts" means the optimisation goes back to the inverted latent (history cleared); the caches keep every
stage that the change does not reach, so going back to an earlier value is a cache hit. The features stage
holds the un-dragged reference trajectory from the drag timestep on; its key counts how many DDIM steps of it
the method reads (`DragMethod.reference_steps`: 0 for DragDiffusion, the drag timesteps for GoodDrag). `STAGE_OF` below is the
table for `DragConfig`; a test enumerates every field of `DragConfig` against it and against the counters.
"""
from __future__ import annotations

from dataclasses import fields

#: The stages, upstream first. A change at one stage invalidates it and every stage after it.
STAGES = ("lora", "inversion", "features", "state", "none")

#: For every `DragConfig` field: the first stage it invalidates ("none": only the next step or render reads it).
STAGE_OF: dict[str, str] = {
    "lora_rank": "lora", "lora_steps": "lora", "lora_lr": "lora", "lora_batch_size": "lora", "lora_targets": "lora",
    "n_inference_steps": "inversion", "inversion_strength": "inversion", "guidance_scale": "inversion",
    "feature_block": "features", "sup_res_scale": "features",
    "method": "state", "drag_timesteps": "state", "rounds": "state", "updates_per_round": "state",
    "warp_init": "state",
    "r_m": "none", "r_p": "none", "track_patch": "none", "lam": "none", "drag_lr": "none", "drag_steps": "none",
    "reach_distance": "none", "beta": "none", "round_loss_threshold": "none", "max_rounds_no_change": "none",
    "restrict_tracking": "none", "auto_mask": "none",
    "mutual_attention": "none", "attn_start_layer": "none", "attn_start_step": "none",
    "snapshot_every": "none",
}

#: For every input setter of `DragSession`: the first stage it invalidates.
INPUT_STAGE_OF: dict[str, str] = {
    "image": "lora", "prompt": "lora", "seed": "lora", "drags": "state", "mask": "none",
}


def fields_of(stage: str, config_cls=None) -> tuple[str, ...]:
    """The `DragConfig` fields whose first invalidated stage is `stage` (in declaration order)."""
    if config_cls is None:
        from .config import DragConfig as config_cls
    return tuple(f.name for f in fields(config_cls) if STAGE_OF[f.name] == stage)


def first_stage(changed) -> str:
    """The most upstream stage that a set of changed field names invalidates ("none" if none)."""
    stages = [STAGE_OF[name] for name in changed] or ["none"]
    return min(stages, key=STAGES.index)


def restarts_state(changed) -> bool:
    """True when a change of these fields sends the optimisation back to the inverted latent."""
    return STAGES.index(first_stage(changed)) <= STAGES.index("state")
