"""`DragConfig`: every knob of a drag edit in one place, defaults equal to the official DragDiffusion code.

The official values come from Yujun-Shi/DragDiffusion (`drag_ui.py`, `utils/ui_utils.py`,
`utils/drag_utils.py`). The config is frozen: `replace(**changes)` (or `DragSession.configure`) is the only way
to change it, so no change can skip invalidation. What each field invalidates is in `dragnb/invalidation.py`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class DragConfig:
    # --- the drag method ---------------------------------------------------------------------------
    method: str = "dragdiffusion"
    """Drag method, by name (`dragnb.methods.available()`): "dragdiffusion" is the official loop (one timestep,
    motion supervision against the current handle's features); "gooddrag" alternates drag and denoising over the
    first `drag_timesteps` steps with the original handle's features as the reference (arXiv 2404.07206).
    `model.default_config(method=...)` also sets that method's own defaults (`DragMethod.defaults`)."""

    # --- LoRA fine-tune on the input image (cached; see LORA_FIELDS) -----------------------------
    lora_rank: int = 16
    """Rank of the LoRA adapters on the attention projections (to_q, to_k, to_v, to_out.0)."""
    lora_steps: int = 80
    """Optimizer steps of the LoRA fine-tune; 0 disables LoRA (the base UNet is used)."""
    lora_lr: float = 5e-4
    """AdamW learning rate of the LoRA fine-tune."""
    lora_batch_size: int = 4
    """Noised copies of the image per LoRA step (each at a random timestep)."""

    # --- DDIM inversion (cached; see INVERSION_FIELDS) ---------------------------------------------
    n_inference_steps: int = 50
    """DDIM steps of the full schedule (inversion and denoising use the same schedule)."""
    inversion_strength: float = 0.7
    """Fraction of the schedule inverted: the drag happens at step round(strength * n) from clean (t = 35 of 50)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance during inversion/denoising of a real image (1.0 = none, as the official code)."""

    # --- drag optimisation (changes here retrain nothing) -----------------------------------------
    feature_block: int = 2
    """Decoder features = output of `unet.up_blocks[feature_block]` (official: index 3 of [mid, up0, up1, up2, up3])."""
    sup_res_scale: float = 0.5
    """Features are resized bilinearly to this fraction of the image size (the supervision grid)."""
    r_m: int = 1
    """Motion-supervision patch radius, in supervision-grid cells."""
    r_p: int = 3
    """Point-tracking search radius, in supervision-grid cells."""
    track_patch: int = 0
    """Point tracking compares (2k+1)² patches of features, k = track_patch, instead of single feature vectors.
    0 = the official tracker. A handle inside a flat region (a flat-coloured shape) matches any cell of it by its
    own vector; a patch also sees the region's edges."""
    lam: float = 0.1
    """Weight of the masked term |(x_{t-1}(z^) - x_{t-1}(z)) * (1 - mask)|.sum()."""
    drag_lr: float = 0.01
    """Adam learning rate on the step-t latent."""
    drag_steps: int = 80
    """Most optimisation steps `run()` takes."""
    reach_distance: float = 2.0
    """A handle has reached its target when their grid distance is below this (official: 2.0, i.e. within one cell)."""

    # --- GoodDrag (method="gooddrag"; the official DragDiffusion loop ignores these) -------------------
    drag_timesteps: int = 7
    """T: drag at each of the first T timesteps of the denoising, one DDIM step of the dragged latent between them
    (at most the `drag_step_index` steps there are)."""
    rounds: int = 10
    """R: rounds of point tracking at each timestep (official `track_per_denoise` / "drag_per_step")."""
    updates_per_round: int = 3
    """S: motion-supervision updates between two trackings (official `max_drag_per_track`)."""
    beta: float = 4.0
    """Step of the supervision toward the target, in grid cells: the patch at h + d·min(beta, |t - h|) is pulled
    toward the original handle's reference patch (GoodDrag: 4 on a 256-cell grid)."""
    round_loss_threshold: float = 4.0
    """A round ends early once the motion loss is below this × (2 r_m)² (official `drag_loss_threshold`)."""
    max_rounds_no_change: int = 10
    """Dragging stops after this many rounds in a row whose tracking moved no handle (official early stop)."""

    # --- add-ons (either method) -------------------------------------------------------------------
    restrict_tracking: bool = False
    """Point tracking only picks candidates no farther from the target than the current handle (CLIPDrag,
    DragLoRA): a handle never jumps backwards."""
    warp_init: float = 0.0
    """Start from the inverted latent with the content around each handle copied this fraction of the way toward
    its target, inside the editable region only (0 = off; FastDrag/DirectDrag-style initialisation)."""
    auto_mask: bool = False
    """With no painted mask, make one from the drag paths: a band around each handle → target segment, as wide as
    the distance (a hard mask on the latent grid). Off: no mask, the whole image may change (official)."""
    lora_targets: str = "attention"
    """Layers the LoRA adapts: "attention" (to_q, to_k, to_v, to_out.0; official) or "attention+conv" (also the
    resnet convolutions conv1, conv2: reaches feature maps that attention does not, as on small models)."""

    # --- final denoising --------------------------------------------------------------------------
    mutual_attention: bool = True
    """Share self-attention keys/values of the source branch with the edited branch while denoising."""
    attn_start_layer: int = 10
    """First transformer block (counted down -> mid -> up) that uses the source keys/values (SD-1.5 has 16)."""
    attn_start_step: int = 0
    """First denoising step (0 = the drag step) that uses the source keys/values."""

    # --- bookkeeping ------------------------------------------------------------------------------
    snapshot_every: int = 5
    """`history` keeps a copy of the latent every this many steps (for `rewind`); 1 = every step."""

    def __post_init__(self):
        """Coerce each field to its declared type, refusing what would be misread (2.5 steps, NaN, "3")."""
        import math
        import numbers
        for f in fields(self):
            v = getattr(self, f.name)
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            if kind == "bool":
                ok = isinstance(v, (bool,)) or type(v).__name__ == "bool_"
                new = bool(v)
            elif kind == "int":
                ok = (isinstance(v, numbers.Integral) and not isinstance(v, bool)) or \
                    (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and float(v).is_integer())
                new = int(v) if ok else v
            elif kind == "float":
                ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                new = float(v) if ok else v
            else:
                ok, new = isinstance(v, str), v
            if not ok:
                what = {"int": "a whole number", "float": "a finite number", "bool": "True or False"}.get(kind, "a string")
                raise TypeError(f"DragConfig.{f.name}={v!r} is not {what}: give {what} (default "
                                f"{getattr(type(self), f.name)!r})")
            object.__setattr__(self, f.name, new)

    def replace(self, **changes) -> "DragConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown DragConfig field(s) {sorted(unknown)}; known: {[f.name for f in fields(self)]}")
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise ValueError naming the field, the value and the allowed range."""
        def need(cond, name, rule):
            if not cond:
                raise ValueError(f"DragConfig.{name}={getattr(self, name)!r} is invalid: {rule}")
        need(self.lora_rank >= 1, "lora_rank", "use a rank >= 1 (official 16)")
        need(self.lora_steps >= 0, "lora_steps", "use >= 0 (0 = no LoRA; official 80)")
        need(self.lora_lr > 0, "lora_lr", "use a positive learning rate (official 5e-4)")
        need(self.lora_batch_size >= 1, "lora_batch_size", "use >= 1 (official 4)")
        need(self.n_inference_steps >= 2, "n_inference_steps", "use >= 2 (official 50)")
        need(0.0 < self.inversion_strength < 1.0, "inversion_strength", "use a value in (0, 1) (official 0.7)")
        need(self.guidance_scale >= 1.0, "guidance_scale", "use >= 1.0 (1.0 = no guidance)")
        need(self.feature_block >= 0, "feature_block", "use the index of a decoder block (official 2)")
        need(0.0 < self.sup_res_scale <= 1.0, "sup_res_scale", "use a value in (0, 1] (official 0.5)")
        need(self.r_m >= 0, "r_m", "use a radius >= 0 (official 1)")
        need(self.r_p >= 1, "r_p", "use a radius >= 1 (official 3)")
        need(self.track_patch >= 0, "track_patch", "use a patch radius >= 0 (0 = the official single-vector tracker)")
        need(self.lam >= 0, "lam", "use a weight >= 0 (official 0.1)")
        need(self.drag_lr > 0, "drag_lr", "use a positive learning rate (official 0.01)")
        need(self.drag_steps >= 1, "drag_steps", "use >= 1 (official 80)")
        need(self.reach_distance > 0, "reach_distance", "use a positive distance (official 2.0)")
        need(self.attn_start_layer >= 0, "attn_start_layer", "use a layer index >= 0 (official 10)")
        need(self.attn_start_step >= 0, "attn_start_step", "use a step index >= 0 (official 0)")
        need(self.snapshot_every >= 1, "snapshot_every", "use >= 1")
        need(bool(self.method), "method", "name a drag method (dragnb.methods.available())")
        need(self.drag_timesteps >= 1, "drag_timesteps", "use >= 1 (GoodDrag 7)")
        need(self.rounds >= 1, "rounds", "use >= 1 (GoodDrag 10)")
        need(self.updates_per_round >= 1, "updates_per_round", "use >= 1 (GoodDrag 3)")
        need(self.beta > 0, "beta", "use a positive step in grid cells (GoodDrag 4 on a 256-cell grid)")
        need(self.round_loss_threshold >= 0, "round_loss_threshold", "use >= 0 (GoodDrag 4.0)")
        need(self.max_rounds_no_change >= 1, "max_rounds_no_change", "use >= 1 (GoodDrag 10)")
        need(0.0 <= self.warp_init <= 1.0, "warp_init", "use a fraction in [0, 1] (0 = off)")
        need(self.lora_targets in ("attention", "attention+conv"), "lora_targets",
             "use 'attention' (official) or 'attention+conv'")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DragConfig":
        return cls().replace(**d)

    @property
    def drag_step_index(self) -> int:
        """How many DDIM steps are inverted: round(strength * n) (official `n_actual_inference_step`)."""
        return round(self.inversion_strength * self.n_inference_steps)

