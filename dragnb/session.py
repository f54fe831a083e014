"""`DragSession`: one image being dragged — a façade over a `SourceCache` (LoRA, inversion, reference features)
and a `DragState` (latent, optimiser, handles, history), with inputs, observers, verbs and rendering.

What each change invalidates is in `dragnb/invalidation.py`; the drag method is a strategy (`dragnb/methods/`).
"""
from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F
from PIL import Image

from . import ddim, render
from .cache import SourceCache, SourceSpec, image_digest
from .config import DragConfig
from .coords import Geometry, load_image, load_mask
from .invalidation import restarts_state
from .methods import get_method
from .state import DragDiverged, DragState, StepContext, StepRecord
from .unet import forward_features, guided_unet_fn, using

__all__ = ["DragSession", "DragDiverged", "StepRecord"]


def _tqdm(total, desc, enabled):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


class DragSession:
    """Drag points of one image, one optimisation step at a time if you like.

    Args:
        model: a `DragModel` (`load_model("demo")`, `tiny_model()`, SD-1.x).
        image: PIL.Image, HxWx3 uint8 array, or a path (RGBA/gray/16-bit are converted, with a warning).
        prompt: text prompt (ignored by models with fixed prompt embeddings, such as "demo").
        seed: seeds the LoRA fine-tune (the rest is deterministic).
        config: a `DragConfig`; default `model.default_config()` (official values + the model's overrides).
        mask: optional editable region (see `set_mask`).
        cache: a `SourceCache` to share between sessions of one model (default: a new one, default bounds).
    """

    def __init__(self, model, image, prompt: str = "", seed: int = 0, config: DragConfig | None = None, mask=None,
                 cache: SourceCache | None = None):
        if not all(hasattr(model, a) for a in ("unet", "scheduler", "default_config")):
            raise TypeError(f"model={model!r} is not a DragModel: get one with dragnb.load_model('demo')")
        if config is not None and not isinstance(config, DragConfig):
            raise TypeError(f"config={config!r} is not a DragConfig: use model.default_config(**changes)")
        self.model = model
        self._prompt, self._seed = self._check_prompt(prompt), self._check_seed(seed)
        self._config = config if config is not None else model.default_config()
        self._config.validate()
        self._method = get_method(self._config.method)
        self.cache = cache if cache is not None else SourceCache(model)
        self._observers: list = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._drags: list[tuple[tuple[float, float], tuple[float, float]]] = []
        self._mask = None
        self._state: DragState | None = None
        self._result_cache = None
        self.stop_reason: str | None = None
        self._set_image(load_image(image))
        if mask is not None:
            self._mask = load_mask(mask, self.size)

    # ---------------------------------------------------------------- inputs
    @staticmethod
    def _check_prompt(value) -> str:
        if not isinstance(value, str):
            raise TypeError(f"prompt={value!r} is not a string: give text ('' for none)")
        return value

    @staticmethod
    def _check_seed(value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) and not (hasattr(value, "__index__")):
            raise TypeError(f"seed={value!r} is not a whole number: give an int such as 0")
        return int(value)

    def _set_image(self, img: Image.Image):
        self._image = img
        self._image_sha = image_digest(img)
        self._geom = Geometry.for_model(img.size, self.model, self._config.sup_res_scale)
        self._reset_state()

    image = property(lambda self: self._image, doc="The user's RGB image (original size).")
    size = property(lambda self: self._image.size, doc="(width, height) of the image.")
    config = property(lambda self: self._config, doc="The frozen `DragConfig`; change it with `configure`.")
    method = property(lambda self: self._method, doc="The `DragMethod` strategy that `config.method` names.")
    geometry = property(lambda self: self._geom, doc="Image, working, grid and latent sizes (`coords.Geometry`).")
    grid_size = property(lambda self: self._geom.grid_hw, doc="(h, w) of the supervision grid.")

    @property
    def prompt(self) -> str:
        return self._prompt

    @prompt.setter
    def prompt(self, value: str) -> None:
        """A new prompt needs a new LoRA and inversion (cached per prompt): the optimisation restarts."""
        value = self._check_prompt(value)
        with self._lock:
            if value != self._prompt:
                self._prompt = value
                self._reset_state()
        self._emit("config")

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        value = self._check_seed(value)
        with self._lock:
            if value != self._seed:
                self._seed = value
                self._reset_state()
        self._emit("config")

    def image_to_grid(self, xy):
        return self._geom.image_to_grid(xy)

    def grid_to_image(self, rc):
        return self._geom.grid_to_image(rc)

    def set_image(self, image) -> None:
        """Replace the image (drags and mask are cleared; caches for the old image stay until evicted)."""
        img = load_image(image)
        with self._lock:
            self._drags, self._mask = [], None
            self._set_image(img)
        self._emit("image")

    def configure(self, **changes) -> DragConfig:
        """Change settings; invalidates exactly what depends on them (`dragnb/invalidation.py`)."""
        with self._lock:
            new = self._config.replace(**changes)  # raises on unknown fields / bad values, state untouched
            method = get_method(new.method) if new.method != self._config.method else self._method
            changed = {k for k in changes if getattr(new, k) != getattr(self._config, k)}
            if new.sup_res_scale != self._config.sup_res_scale:
                geom = Geometry.for_model(self.size, self.model, new.sup_res_scale)
                for h, t in self._drags:
                    self._check_pair(h, t, geom)
                self._geom = geom
            self._config, self._method = new, method
            if restarts_state(changed):
                self._reset_state()
            self._result_cache = None
        self._emit("config")
        return new

    @property
    def drags(self) -> list:
        return list(self._drags)

    def _check_pair(self, handle, target, geom=None):
        g = geom or self._geom
        h, t = g.check_point(handle, "handle"), g.check_point(target, "target")
        if h == t:
            raise ValueError(f"target {t} equals its handle: drag to a different point")
        if g.image_to_grid(h) == g.image_to_grid(t):
            cell = self.size[0] / g.grid_hw[1]
            raise ValueError(f"handle {h} and target {t} fall in the same feature cell ({cell:.1f} px wide): "
                             "drag farther")
        return h, t

    def add_drag(self, handle, target) -> int:
        """Add a handle → target pair, (x, y) image pixels; returns its index. Resets the optimisation."""
        pair = self._check_pair(handle, target)
        with self._lock:
            self._drags.append(pair)
            self._reset_state()
        self._emit("drags")
        return len(self._drags) - 1

    def set_drags(self, drags) -> None:
        checked = [self._check_pair(*self._unpack(d)) for d in drags]
        with self._lock:
            if checked == self._drags:
                return
            self._drags = checked
            self._reset_state()
        self._emit("drags")

    @staticmethod
    def _unpack(d):
        try:
            h, t = d
        except (TypeError, ValueError):
            raise TypeError(f"drag {d!r} is not a (handle, target) pair: give ((x, y), (x, y))") from None
        return h, t

    def remove_drag(self, i: int) -> None:
        if isinstance(i, bool) or not isinstance(i, int) or not -len(self._drags) <= i < len(self._drags):
            raise ValueError(f"drag index {i!r} does not exist: there are {len(self._drags)} drags")
        with self._lock:
            del self._drags[i]
            self._reset_state()
        self._emit("drags")

    def clear_drags(self) -> None:
        self.set_drags([])

    @property
    def mask(self):
        return None if self._mask is None else self._mask.copy()

    def set_mask(self, mask) -> None:
        """Editable region: HxW bool/uint8 array or PIL 'L' (True/255 = may change), or None (all may change)."""
        m = load_mask(mask, self.size)
        with self._lock:
            self._mask = m
            self._result_cache = None
        self._emit("mask")

    def observe(self, fn) -> None:
        if fn not in self._observers:
            self._observers.append(fn)

    def unobserve(self, fn) -> None:
        if fn in self._observers:
            self._observers.remove(fn)

    def _emit(self, event: str) -> None:
        for fn in list(self._observers):
            try:
                fn(event)
            except Exception as e:  # an observer's bug must not break the session
                warnings.warn(f"dragnb observer {fn!r} raised {e!r} on event {event!r}")

    # ---------------------------------------------------------------- source side (cached)
    @property
    def spec(self) -> SourceSpec:
        """What the source side of this edit is made from (the cache's input)."""
        return SourceSpec(self._image, self._geom.work_wh, self._geom.grid_hw, self._prompt, self._seed,
                          self._config, self._method.reference_steps(self._config), self._image_sha)

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
        if self._mask is None:
            return None
        grid = torch.from_numpy(self._geom.mask_to_grid(self._mask))[None, None]
        return F.interpolate(grid, size=self._geom.latent_hw, mode="nearest").to(self.model.device)

    # ---------------------------------------------------------------- the drag state
    def _reset_state(self):
        self._state = None
        self._result_cache = None

    def _ensure_state(self) -> DragState:
        if self._state is None:
            if not self._drags:
                raise ValueError("no drags: add one with session.add_drag(handle=(x, y), target=(x, y)) before "
                                 "step()/run()")
            _, inv, _ = self._source()
            grid = lambda pts: torch.tensor([self._geom.image_to_grid(p) for p in pts], dtype=torch.float32)  # noqa
            self._state = DragState(self._method, inv.zt, grid([h for h, _ in self._drags]),
                                    grid([t for _, t in self._drags]), self._config.drag_lr)
        return self._state

    def _context(self, lora_state, ref) -> StepContext:
        m, c, cond = self.model, self._config, self.model.encode_prompt(self._prompt)
        fwd = lambda z, t: forward_features(m, cond, z, t, c.n_inference_steps, c.feature_block, self._geom.grid_hw)  # noqa
        den = lambda z, t: ddim.prev_step(m.scheduler, guided_unet_fn(m, cond, 1.0)(z, t), z, t, c.n_inference_steps)  # noqa
        return StepContext(c, ref, fwd, den, self._mask_latent(), self._geom.grid_to_image)

    n_steps = property(lambda self: 0 if self._state is None else self._state.n_steps, doc="Steps since the reset.")
    reached = property(lambda self: self._state is not None and self._state.reached,
                       doc="True when tracking puts every handle at its target (or the method has no step left).")
    history = property(lambda self: [] if self._state is None else list(self._state.history),
                       doc="Per-step `StepRecord`s (loss terms, handles, timestep).")
    targets = property(lambda self: [t for _, t in self._drags], doc="Targets (x, y) in image pixels.")

    @property
    def handles(self) -> list:
        """Current handle points (x, y) in image pixels (the drags' handles before any step)."""
        if self._state is None:
            return [h for h, _ in self._drags]
        return [self._geom.grid_to_image(rc.tolist()) for rc in self._state.handles_rc]

    @property
    def position(self):
        """Where the drag is in the method's schedule (`methods.Position`: reference index, round, update)."""
        return None if self._state is None else self._state.position

    def step(self, n: int = 1) -> list[StepRecord]:
        """Run n optimisation steps (prepares first if needed). Returns the records of the steps taken: fewer than
        n when every handle reached its target."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r}: step a whole number of times, at least 1")
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
                                            f"{self._config.drag_lr}) or use float32")
                        raise DragDiverged(self.stop_reason) from None
                    if rec is None:
                        self.stop_reason = "tracking puts every handle at its target" if not \
                            self._method.finished(self._config, state.position) else "the method's schedule is done"
                        break
                    out.append(rec)
            self._result_cache = None
        self._emit("step")
        return out

    def run(self, max_steps: int | None = None, callback=None, progress: bool = True) -> list[StepRecord]:
        """Optimise until every handle reaches its target, `max_steps` steps (default: up to config.drag_steps in
        all), `callback(record)` returns False, or `stop()` is called from another thread."""
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0):
            raise ValueError(f"max_steps={max_steps!r}: give a whole number >= 0, or None for config.drag_steps")
        if not self._drags:
            raise ValueError("no drags: add one with session.add_drag(handle=(x, y), target=(x, y)) before run()")
        self._stop.clear()
        self.stop_reason = None
        n = max(0, self._config.drag_steps - self.n_steps) if max_steps is None else max_steps
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
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= self.n_steps:
            raise ValueError(f"cannot rewind {k!r} steps: {self.n_steps} steps were taken")
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
        with self._lock:
            if self._state is not None:
                return self._state.latent_at(step)
            if int(step) == 0 and self.is_prepared:
                return self.cache.invert(self.spec).zt.clone()
            return None

    def current_latent(self) -> torch.Tensor:
        """A copy of the latent as the drag has left it (the inverted latent before any step), (1, C, h, w)."""
        with self._lock:
            if self._state is not None:
                return self._state.latent.detach().clone()
            return self._source()[1].zt.clone()

    # ---------------------------------------------------------------- looking
    def _render(self, z, index: int, mutual: bool) -> Image.Image:
        lora_state, _, ref = self._source()
        img = render.denoise(self.model, self.model.encode_prompt(self._prompt), lora_state, self._config,
                             ref.latents[index], z, index, mutual)
        self.cache.counters["denoisings"] += 1
        return render.to_pil(img, self.size)

    def result(self) -> Image.Image:
        """The edited image: DDIM-denoise the current latent (mutual self-attention per config), at image size."""
        with self._lock:
            z, index = self.current_latent(), 0 if self._state is None else self._state.position.index
            c = self._config
            key = (self.n_steps, index, c.mutual_attention, c.attn_start_layer, c.attn_start_step,
                   float(z.double().sum()))
            if self._result_cache is None or self._result_cache[0] != key:
                self._result_cache = (key, self._render(z, index, c.mutual_attention))
            return self._result_cache[1].copy()

    def render_latent(self, latent, mutual: bool | None = None) -> Image.Image:
        """DDIM-denoise any drag-timestep latent (1, C, h, w) to an image at the session's size, as `result()` does.

        For experiments on the edit: `render_latent(latent_at(0) + d)` renders an edit `d` of your own.
        `mutual`: mutual self-attention with the source path (default: the config's `mutual_attention`).
        """
        with self._lock:
            zt = self._source()[1].zt
            z = torch.as_tensor(latent)
            if tuple(z.shape) != tuple(zt.shape):
                raise ValueError(f"latent has shape {tuple(z.shape)} but this session's step-t latents are "
                                 f"{tuple(zt.shape)}: start from latent_at(0) or current_latent()")
            return self._render(z.to(zt.device, zt.dtype), 0,
                                self._config.mutual_attention if mutual is None else bool(mutual))

    def reconstruction(self) -> Image.Image:
        """Denoise the unedited inverted latent (no mutual attention): how faithful the inversion is."""
        with self._lock:
            return self._render(self._source()[1].zt, 0, False)

    def preview(self) -> Image.Image:
        """A rough, cheap look at the current latent: the decoded one-step x0 prediction (one UNet call)."""
        with self._lock:
            lora_state, _, ref = self._source()
            index = 0 if self._state is None else min(self._state.position.index, len(ref.ts) - 1)
            img = render.one_step_x0(self.model, self.model.encode_prompt(self._prompt), lora_state,
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
            m, c = self.model, self._config
            with using(m, lora_state):
                feat, _ = forward_features(m, m.encode_prompt(self._prompt), self.current_latent(), ref.ts[index],
                                           c.n_inference_steps, c.feature_block, self._geom.grid_hw)
            return feat[0].float().cpu()

    # ---------------------------------------------------------------- generated images
    @classmethod
    @torch.no_grad()
    def generate(cls, model, prompt: str = "", seed: int = 0, config: DragConfig | None = None,
                 guidance_scale: float = 7.5, size: tuple[int, int] | None = None) -> "DragSession":
        """Generate an image from a prompt and a seed (DDIM with CFG) and return a session that drags it without
        inversion error: the drag starts from the generation's own latent at step t.

        No LoRA is trained (as the official code for generated images); the drag's motion supervision uses the
        conditional branch, the final denoising uses `guidance_scale` with mutual attention.
        """
        cfg = (config or model.default_config()).replace(guidance_scale=float(guidance_scale), lora_steps=0)
        W, H = size or (model.native_size, model.native_size)
        geom = Geometry.for_model((W, H), model, cfg.sup_res_scale)
        if geom.work_wh != (W, H):
            raise ValueError(f"size {W}×{H} cannot be generated: use sides that are multiples of {model.size_multiple}"
                             + (f" up to {model.max_side}" if model.max_side else ""))
        g = torch.Generator().manual_seed(int(seed))
        z_T = torch.randn((1, model.unet.config.in_channels, *geom.latent_hw), generator=g).to(model.device)
        with using(model, None):
            lats = ddim.sample(guided_unet_fn(model, model.encode_prompt(str(prompt)), cfg.guidance_scale),
                               model.scheduler, z_T, cfg.n_inference_steps)
        image = render.to_pil(model.decode(lats[-1]))
        cache = SourceCache(model)
        cache.add_generation(image_digest(image), lats, cfg.n_inference_steps)
        return cls(model, image, prompt=prompt, seed=seed, config=cfg, cache=cache)

    # ---------------------------------------------------------------- save / load
    def state_dict(self) -> dict:
        """Inputs, the cache entries this edit uses and the drag state: everything to continue bit-exactly."""
        with self._lock:
            return {"model": self.model.name, "prompt": self._prompt, "seed": self._seed,
                    "config": self._config.to_dict(), "image": self._image, "mask": self._mask,
                    "drags": [list(map(list, d)) for d in self._drags], "counters": dict(self.counters),
                    "stop_reason": self.stop_reason, "cache": self.cache.state_dict(self.spec),
                    "state": None if self._state is None else self._state.state_dict()}

    @classmethod
    def from_state_dict(cls, sd: dict, model) -> "DragSession":
        """A session rebuilt from `state_dict()` on `model` (same name required)."""
        s = cls(model, sd["image"], prompt=sd["prompt"], seed=sd["seed"], config=DragConfig.from_dict(sd["config"]))
        s.set_drags([(tuple(h), tuple(t)) for h, t in sd["drags"]])
        if sd["mask"] is not None:
            s.set_mask(sd["mask"])
        s.cache.load_state_dict(s.spec, sd["cache"])
        s.cache.counters.update(sd["counters"])
        s.stop_reason = sd["stop_reason"]
        if sd["state"] is not None:
            s._ensure_state().load_state_dict(sd["state"])
        return s

    def save(self, path) -> None:
        """Everything needed to continue bit-exactly, in one safetensors file (tensors + a JSON header)."""
        from .persist import model_fingerprint, save_session
        save_session({**self.state_dict(), "fingerprint": model_fingerprint(self.model)}, path)

    @classmethod
    def load(cls, path, model) -> "DragSession":
        from .persist import load_session
        return cls.from_state_dict(load_session(path, model), model)

    def __repr__(self):
        return (f"DragSession({self.size[0]}×{self.size[1]}, model={self.model.name!r}, "
                f"method={self._config.method!r}, drags={len(self._drags)}, steps={self.n_steps}, "
                f"prepared={self.is_prepared}, reached={self.reached})")
