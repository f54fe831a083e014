"""`DragSession`: one image being dragged — a façade over a `SourceCache` (LoRA, inversion, reference features)
and a `DragState` (latent, optimiser, handles, history), with inputs, observers, verbs and rendering.

What each change invalidates is in `dragnb/invalidation.py`; the drag method is a strategy (`dragnb/methods/`).
"""
from __future__ import annotations

import os
import threading

import torch
import torch.nn.functional as F
from PIL import Image

from . import ddim, graphs, render, validate
from .cache import SourceCache, SourceSpec
from .config import DragConfig
from .coords import drag_path_mask
from .drag import warp_latent
from .inputs import EditInputs
from .methods import Position
from .state import DragDiverged, DragState, StepContext, StepRecord
from .unet import forward_features, guided_unet_fn, using

__all__ = ["DragSession", "DragDiverged", "StepRecord"]


def _tqdm(total, desc, enabled):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


class DragSession(EditInputs):
    """Drag points of one image, one optimisation step at a time if you like.

    Args:
        model: a `DragModel` (`load_model("demo")`, `tiny_model()`, SD-1.x).
        image: PIL.Image, HxWx3 uint8 array, or a path (RGBA/gray/16-bit are converted, with a warning).
        prompt: text prompt (ignored by models with fixed prompt embeddings, such as "demo").
        seed: seeds the LoRA fine-tune (the rest is deterministic).
        config: a `DragConfig`; default `model.default_config()` (official values + the model's overrides).
        mask: optional editable region (see `set_mask`).
        cache: a `SourceCache` of this same model object to share between its sessions, e.g. `other.cache`, or one
            with your bounds, `SourceCache(model, max_entries=2, max_bytes=2**29)` (default: a new one, 4 entries per
            store, 2 GiB). Sessions on one model may run in several threads: every UNet use is serialised.
    """

    def __init__(self, model, image, prompt: str = "", seed: int = 0, config: DragConfig | None = None, mask=None,
                 cache: SourceCache | None = None):
        self._state: DragState | None = None
        self._result_cache = None
        self.stop_reason: str | None = None
        cache = validate.cache(cache, validate.model(model))
        self.cache = cache if cache is not None else SourceCache(model)
        self._stop = threading.Event()
        super().__init__(model, image, prompt, seed, config, mask)

    # ---------------------------------------------------------------- source side (cached)
    @property
    def spec(self) -> SourceSpec:
        """What the source side of this edit is made from (the cache's input)."""
        return SourceSpec(self.image, self.geometry.work_wh, self.geometry.grid_hw, self.prompt, self.seed,
                          self.config, self.method.reference_steps(self.config), self.image_sha)

    @property
    def counters(self) -> dict:
        """LoRA trainings, inversions, feature extractions and denoisings this session's cache has run."""
        return self.cache.counters

    @property
    def is_prepared(self) -> bool:
        return self.cache.is_prepared(self.spec)

    def clear_caches(self) -> None:
        """Drop every cached LoRA, inversion and feature entry (the drag state is kept)."""
        with self._lock:
            self.cache.clear()

    def prepare(self, progress: bool = True, callback=None) -> "DragSession":
        """# 1. LoRA fine-tune, # 2. DDIM inversion to step t, # 3. reference features: each computed once, cached.

        `callback(stage, i, n)` reports progress (stage in "lora", "inversion", "features").
        """
        with self._lock:
            self.cache.prepare(self.spec, progress, callback)
        self._emit("prepare")
        return self

    def _source(self):
        """(LoRA state, inversion, reference) of the current spec, prepared if needed."""
        if not self.is_prepared:
            self.prepare(progress=False)
        lw, inv, ref = self.cache.prepare(self.spec)
        return lw.state, inv, ref

    def _mask_latent(self):
        """(1, 1, h, w) editable region on the latent grid: the painted mask, else the drag paths (`auto_mask`)."""
        mask = self.mask
        if mask is None and self.config.auto_mask and self.drags:
            mask = drag_path_mask(self.size, self.drags, min_half_width=self.size[0] / self.grid_size[1])
        if mask is None:
            return None
        grid = torch.from_numpy(self.geometry.mask_to_grid(mask))[None, None]
        return F.interpolate(grid, size=self.geometry.latent_hw, mode="nearest").to(self.model.device)

    # ---------------------------------------------------------------- the drag state
    def _inputs_changed(self, restart: bool) -> None:
        if restart:
            self._state = None
        elif self._state is not None:      # the next steps use new settings: a rewind must not replay old ones
            self._state.keep_recent()
        self._result_cache = None

    def _reset_state(self):
        self._inputs_changed(restart=True)

    def _ensure_state(self) -> DragState:
        if self._state is None:
            if not self.drags:
                raise ValueError("no drags: add one with session.add_drag(handle=(x, y), target=(x, y)) before "
                                 "step()/run()")
            _, inv, _ = self._source()
            g = self.geometry
            grid = lambda pts: torch.tensor([g.image_to_grid(p) for p in pts], dtype=torch.float32)  # noqa: E731
            latent0 = inv.zt
            if self.config.warp_init > 0:
                latent0 = warp_latent(inv.zt, [g.image_to_latent(h) for h, _ in self.drags],
                                      [g.image_to_latent(t) for t in self.targets], self.config.warp_init,
                                      self._mask_latent())
            self._state = DragState(self.method, latent0, grid([h for h, _ in self.drags]),
                                    grid(self.targets), self.config.drag_lr, dtype=self.model.dtype)
        return self._state

    def _context(self, lora_state, ref) -> StepContext:
        m, c, cond = self.model, self.config, self.model.encode_prompt(self.prompt)
        fwd = lambda z, t: forward_features(m, cond, z, t, c.n_inference_steps, c.feature_block, self.geometry.grid_hw)  # noqa
        if graphs.active(m):               # set_speed(model, cuda_graph=True): the UNet call replayed from a CUDA graph
            fwd = graphs.drag_forward(m, cond, c.n_inference_steps, c.feature_block, self.geometry.grid_hw, fwd)
        den = lambda z, t: ddim.prev_step(m.scheduler, guided_unet_fn(m, cond, 1.0)(z, t), z, t, c.n_inference_steps)  # noqa
        return StepContext(c, ref, fwd, den, self._mask_latent(), self.geometry.grid_to_image)

    n_steps = property(lambda self: 0 if self._state is None else self._state.n_steps, doc="Steps since the reset.")
    reached = property(lambda self: self._state is not None and self._state.reached,
                       doc="True when tracking puts every handle at its target (or the method has no step left).")
    history = property(lambda self: [] if self._state is None else list(self._state.history),
                       doc="Per-step `StepRecord`s (loss terms, handles, timestep).")
    targets = property(lambda self: [t for _, t in self.drags], doc="Targets (x, y) in image pixels.")

    @property
    def handles(self) -> list:
        """Current handle points (x, y) in image pixels (the drags' handles before any step)."""
        if self._state is None:
            return [h for h, _ in self.drags]
        return [self.geometry.grid_to_image(rc.tolist()) for rc in self._state.handles_rc]

    @property
    def position(self):
        """Where the drag is in the method's schedule (`methods.Position`: reference index, round, update)."""
        return None if self._state is None else self._state.position

    def step(self, n: int = 1) -> list[StepRecord]:
        """Run n optimisation steps (prepares first if needed). Returns the records of the steps taken: fewer than
        n when every handle reached its target."""
        n = validate.whole(n, "n", minimum=1)
        out = []
        with self._lock:
            state = self._ensure_state()
            lora_state, _, ref = self._source()
            ctx = self._context(lora_state, ref)
            m = self.model
            with using(m, lora_state), torch.autocast(m.device.type, dtype=m.dtype, enabled=m.dtype != torch.float32):
                for _ in range(n):
                    try:
                        rec = state.step(ctx)
                    except DragDiverged as e:
                        self.stop_reason = (f"step {state.n_steps + 1} produced a non-finite loss/latent ({e}); the "
                                            f"session keeps the state after step {state.n_steps}. Lower drag_lr (now "
                                            f"{self.config.drag_lr}) or use float32")
                        raise DragDiverged(self.stop_reason) from None
                    if rec is None:
                        self.stop_reason = "tracking puts every handle at its target" if not \
                            self.method.finished(self.config, state.position) else "the method's schedule is done"
                        break
                    out.append(rec)
            self._result_cache = None
        self._emit("step")
        return out

    def run(self, max_steps: int | None = None, callback=None, progress: bool = True) -> list[StepRecord]:
        """Optimise until every handle reaches its target, `max_steps` steps (default: up to config.drag_steps in
        all), `callback(record)` returns False, or `stop()` is called from another thread."""
        max_steps = validate.whole(max_steps, "max_steps", minimum=0, allow_none=True)
        validate.callback(callback)
        if not self.drags:
            raise ValueError("no drags: add one with session.add_drag(handle=(x, y), target=(x, y)) before run()")
        self._stop.clear()
        self.stop_reason = None
        n = max(0, self.config.drag_steps - self.n_steps) if max_steps is None else max_steps
        records = []
        bar = _tqdm(n, "drag", progress)
        try:
            for _ in range(n):
                if self._stop.is_set():
                    self.stop_reason = "stopped by stop()"
                    break
                recs = self.step(1)
                if not recs:
                    break
                records += recs
                bar.update(1)
                bar.set_postfix(loss=f"{recs[-1].loss:.4f}")
                if callback is not None and callback(recs[-1]) is False:
                    self.stop_reason = "stopped by the callback"
                    break
            else:
                if self.stop_reason is None:
                    self.stop_reason = f"{n} steps done"
        finally:
            bar.close()
        return records

    def stop(self) -> None:
        """Ask a running `run()` to stop before its next step (thread-safe)."""
        self._stop.set()

    def reset(self) -> None:
        """Back to the inverted latent: handles to the drags' handles, history cleared (caches kept)."""
        with self._lock:
            self._reset_state()
        self._emit("reset")

    def rewind(self, k: int = 1) -> None:
        """Undo the last k steps exactly (restores the nearest snapshot, then replays the steps in between)."""
        k = validate.whole(k, "k", minimum=0)
        if k > self.n_steps:
            raise ValueError(f"cannot rewind {k} steps: {self.n_steps} steps were taken")
        if k == 0:
            return
        with self._lock:
            lora_state, _, ref = self._source()
            m = self.model
            with using(m, lora_state), torch.autocast(m.device.type, dtype=m.dtype, enabled=m.dtype != torch.float32):
                self._state.rewind(k, self._context(lora_state, ref))
            self._result_cache = None
        self._emit("rewind")

    def latent_at(self, step: int):
        """The latent after `step` (0 = the inverted latent) if a snapshot holds it, else None."""
        step = validate.whole(step, "step", minimum=0)
        with self._lock:
            if self._state is not None:
                return self._state.latent_at(step)
            if step == 0 and self.is_prepared:
                return self.cache.invert(self.spec).zt.clone()
            return None

    def current_latent(self) -> torch.Tensor:
        """A copy of the latent as the drag has left it (the inverted latent before any step), (1, C, h, w)."""
        with self._lock:
            if self._state is not None:
                return self._state.latent.detach().clone()
            return self._source()[1].zt.clone()

    # ---------------------------------------------------------------- looking
    def _render(self, z, index: int, mutual: bool, attn_start: int | None = None) -> Image.Image:
        lora_state, _, ref = self._source()
        img = render.denoise(self.model, self.model.encode_prompt(self.prompt), lora_state, self.config,
                             ref.latents[index], z, index, mutual, attn_start)
        self.cache.counters["denoisings"] += 1
        return render.to_pil(img, self.size)

    def result(self) -> Image.Image:
        """The edited image: DDIM-denoise the current latent (mutual self-attention per config), at image size."""
        with self._lock:
            z, pos = self.current_latent(), self.position or Position()
            c = self.config
            start = self.method.render_attn_start(c, pos)
            key = (self.n_steps, pos.index, c.mutual_attention, c.attn_start_layer, start, float(z.double().sum()))
            if self._result_cache is None or self._result_cache[0] != key:
                self._result_cache = (key, self._render(z, pos.index, c.mutual_attention, start))
            return self._result_cache[1].copy()

    def render_latent(self, latent, mutual: bool | None = None) -> Image.Image:
        """DDIM-denoise any drag-timestep latent (1, C, h, w) to an image at the session's size, as `result()` does.

        For experiments on the edit: `render_latent(latent_at(0) + d)` renders an edit `d` of your own.
        `mutual`: mutual self-attention with the source path (default: the config's `mutual_attention`).
        """
        mutual = validate.flag(mutual, "mutual", allow_none=True)
        with self._lock:
            zt = self._source()[1].zt
            z = validate.latent(latent, zt.shape)
            mutual = self.config.mutual_attention if mutual is None else mutual
            return self._render(z.to(zt.device, zt.dtype), 0, mutual)

    def reconstruction(self) -> Image.Image:
        """Denoise the unedited inverted latent (no mutual attention): how faithful the inversion is."""
        with self._lock:
            return self._render(self._source()[1].zt, 0, False)

    def preview(self) -> Image.Image:
        """A rough, cheap look at the current latent: the decoded one-step x0 prediction (one UNet call)."""
        with self._lock:
            lora_state, _, ref = self._source()
            index = 0 if self._state is None else min(self._state.position.index, len(ref.ts) - 1)
            img = render.one_step_x0(self.model, self.model.encode_prompt(self.prompt), lora_state,
                                     self.current_latent(), ref.ts[index])
            return render.to_pil(img, self.size)

    @torch.no_grad()
    def features(self, which: str = "source") -> torch.Tensor:
        """Decoder features (C, gh, gw) float32 on CPU: of the inverted latent ("source") or the current one."""
        if which not in ("source", "current"):
            raise ValueError(f"which={which!r}: use 'source' or 'current'")
        with self._lock:
            lora_state, _, ref = self._source()
            if which == "source":
                return ref.feats[0][0].float().cpu().clone()
            index = 0 if self._state is None else min(self._state.position.index, len(ref.ts) - 1)
            m, c = self.model, self.config
            with using(m, lora_state):
                feat, _ = forward_features(m, m.encode_prompt(self.prompt), self.current_latent(), ref.ts[index],
                                           c.n_inference_steps, c.feature_block, self.geometry.grid_hw)
            return feat[0].float().cpu()

    # ---------------------------------------------------------------- generated images
    @classmethod
    def generate(cls, model, prompt: str = "", seed: int = 0, config: DragConfig | None = None,
                 guidance_scale: float = 7.5, size: tuple[int, int] | None = None) -> "DragSession":
        """Generate an image from a prompt and a seed (DDIM with CFG) and return a session that drags it without
        inversion error (see `dragnb.generate.generate`)."""
        from .generate import generate
        image, cfg, cache = generate(model, prompt, seed, config, guidance_scale, size)
        return cls(model, image, prompt=prompt, seed=seed, config=cfg, cache=cache)

    # ---------------------------------------------------------------- save / load
    def state_dict(self) -> dict:
        """Inputs, the cache entries this edit uses and the drag state: everything to continue bit-exactly."""
        with self._lock:
            return {"model": self.model.name, "prompt": self.prompt, "seed": self.seed,
                    "config": self.config.to_dict(), "image": self.image, "mask": self.mask,
                    "drags": [list(map(list, d)) for d in self.drags], "counters": dict(self.counters),
                    "stop_reason": self.stop_reason, "cache": self.cache.state_dict(self.spec),
                    "state": None if self._state is None else self._state.state_dict()}

    @classmethod
    def from_state_dict(cls, sd: dict, model) -> "DragSession":
        """A session rebuilt from `state_dict()` on `model` (same name required)."""
        s = cls(model, sd["image"], prompt=sd["prompt"], seed=sd["seed"], config=DragConfig.from_dict(sd["config"]))
        s.set_drags(sd["drags"])
        if sd["mask"] is not None:
            s.set_mask(sd["mask"])
        s.cache.load_state_dict(s.spec, sd["cache"])
        s.cache.counters.update(sd["counters"])
        s.stop_reason = sd["stop_reason"]
        if sd["state"] is not None:
            s._ensure_state().load_state_dict(sd["state"])
        return s

    def load_state_dict(self, sd: dict) -> None:
        """Put this session back to one of its `state_dict()`s (same model), in place: inputs, the cache entries it
        used and the drag state, so a run that an edit reset comes back exactly (the editor's Redo). Everything is
        checked first: on an error nothing changes."""
        other = type(self).from_state_dict(sd, self.model)
        with self._lock:
            self._adopt_inputs(other)
            self.cache.load_state_dict(self.spec, sd["cache"])
            self._state, self.stop_reason, self._result_cache = other._state, other.stop_reason, None
        self._emit("rewind")

    def save(self, path) -> None:
        """Everything needed to continue bit-exactly, in one safetensors file (tensors + a JSON header)."""
        from .persist import model_fingerprint, save_session
        path = validate.path(path)
        save_session({**self.state_dict(), "fingerprint": model_fingerprint(self.model)}, path)

    @classmethod
    def load(cls, path, model) -> "DragSession":
        from .persist import damaged, load_session
        sd = load_session(validate.path(path), validate.model(model))
        try:
            return cls.from_state_dict(sd, model)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:   # consistent file, wrong content
            what = f"it lacks {e}" if isinstance(e, KeyError) else str(e)
            raise damaged(os.fspath(path), f"holds a session that cannot be rebuilt ({what})") from None

    def __repr__(self):
        return (f"DragSession({self.size[0]}×{self.size[1]}, model={self.model.name!r}, "
                f"method={self.config.method!r}, drags={len(self.drags)}, steps={self.n_steps}, "
                f"prepared={self.is_prepared}, reached={self.reached})")
