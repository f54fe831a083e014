"""`DragSession`: one image being dragged — its inputs, its caches, the optimisation state and its history.

Caches, each keyed by exactly what it depends on (see `_keys`):
  LoRA weights      <- model, image, prompt, seed, LoRA settings
  inverted latents  <- the LoRA key + n_inference_steps, inversion_strength, guidance_scale
  source features   <- the inversion key + feature_block, sup_res_scale
Changing drags or the mask retrains nothing; drag settings (lam, lr, r_m, r_p, ...) change the next step only.
"""
from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import ddim, lora
from .attention import mutual_self_attention
from .config import FEATURE_FIELDS, INVERSION_FIELDS, LORA_FIELDS, DragConfig
from .coords import Geometry, load_image, load_mask
from .drag import drag_step
from .features import unet_with_features

FORMAT_VERSION = 1


class DragDiverged(FloatingPointError):
    """The optimisation produced NaN/inf; the session keeps the last good state."""


@dataclass
class StepRecord:
    step: int
    loss: float
    motion_loss: float
    mask_loss: float
    handles: list            # [(x, y), ...] image pixels, after point tracking
    handles_grid: list       # [(row, col), ...] on the supervision grid
    has_snapshot: bool = False
    seconds: float = 0.0


def _tqdm(total, desc, enabled):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def guided_unet_fn(m, cond, guidance: float):
    """`fn(x, t)` -> UNet output (float32) for latents x (B, C, h, w) with prompt embeddings cond (1, L, D);
    classifier-free guidance (unconditional = the empty prompt) when guidance > 1."""
    def fn(x, t):
        with torch.autocast(m.device.type, dtype=m.dtype, enabled=m.dtype != torch.float32):
            if guidance == 1.0:
                return m.unet_forward(x, t, cond).float()
            unc = m.encode_prompt("")
            b = x.shape[0]
            emb = torch.cat([unc.expand(b, *unc.shape[1:]), cond.expand(b, *cond.shape[1:])])
            u, c = m.unet_forward(torch.cat([x, x]), t, emb).float().chunk(2)
        return u + guidance * (c - u)
    return fn


class DragSession:
    """Drag points of one image with DragDiffusion, one optimisation step at a time if you like.

    Args:
        model: a `DragModel` (`load_model("demo")`, `tiny_model()`, SD-1.x).
        image: PIL.Image, HxWx3 uint8 array, or a path (RGBA/gray/16-bit are converted, with a warning).
        prompt: text prompt (ignored by models with fixed prompt embeddings, such as "demo").
        seed: seeds the LoRA fine-tune (the rest is deterministic).
        config: a `DragConfig`; default `model.default_config()` (official values + the model's overrides).
        mask: optional editable region (see `set_mask`).
    """

    def __init__(self, model, image, prompt: str = "", seed: int = 0, config: DragConfig | None = None, mask=None):
        self.model = model
        self._prompt = str(prompt)
        self._seed = int(seed)
        cfg = config if config is not None else model.default_config()
        cfg.validate()
        self._config = cfg
        self._observers: list = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.counters = dict(lora_trainings=0, inversions=0, feature_extractions=0, denoisings=0)
        self._lora_cache: dict[str, dict | None] = {}
        self._inv_cache: dict[str, dict] = {}
        self._feat_cache: dict[str, dict] = {}
        self._generated: dict | None = None
        self._drags: list[tuple[tuple[float, float], tuple[float, float]]] = []
        self._mask = None
        self._set_image(load_image(image))
        if mask is not None:
            self._mask = load_mask(mask, self.size)
        self.stop_reason: str | None = None

    # ---------------------------------------------------------------- inputs
    def _set_image(self, img: Image.Image):
        self._image = img
        self._geom = Geometry.for_model(img.size, self.model, self._config.sup_res_scale)
        self._image_sha = hashlib.sha256(np.asarray(img).tobytes() + str(img.size).encode()).hexdigest()[:16]
        self._reset_state()

    @property
    def image(self) -> Image.Image:
        return self._image

    @property
    def size(self) -> tuple[int, int]:
        return self._image.size

    @property
    def config(self) -> DragConfig:
        return self._config

    @property
    def prompt(self) -> str:
        return self._prompt

    @prompt.setter
    def prompt(self, value: str) -> None:
        """A new prompt needs a new LoRA and inversion (cached per prompt): the optimisation restarts."""
        with self._lock:
            if str(value) != self._prompt:
                self._prompt = str(value)
                self._reset_state()
        self._emit("config")

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        with self._lock:
            if int(value) != self._seed:
                self._seed = int(value)
                self._reset_state()
        self._emit("config")

    @property
    def geometry(self) -> Geometry:
        return self._geom

    @property
    def grid_size(self) -> tuple[int, int]:
        return self._geom.grid_hw

    def image_to_grid(self, xy):
        return self._geom.image_to_grid(xy)

    def grid_to_image(self, rc):
        return self._geom.grid_to_image(rc)

    def set_image(self, image) -> None:
        """Replace the image (drags and mask are cleared; caches for the old image stay until evicted)."""
        img = load_image(image)
        with self._lock:
            self._drags, self._mask, self._generated = [], None, None
            self._set_image(img)
        self._emit("image")

    def configure(self, **changes) -> DragConfig:
        """Change settings; invalidates exactly what depends on them (see the module docstring)."""
        with self._lock:
            new = self._config.replace(**changes)  # raises on unknown fields / bad values, state untouched
            changed = {k for k in changes if getattr(new, k) != getattr(self._config, k)}
            self._config = new
            if changed & set(FEATURE_FIELDS):
                self._geom = Geometry.for_model(self.size, self.model, new.sup_res_scale)
            if changed & set(LORA_FIELDS + INVERSION_FIELDS + FEATURE_FIELDS):
                self._reset_state()
            self._result_cache = None
        self._emit("config")
        return new

    @property
    def drags(self) -> list:
        return list(self._drags)

    def _check_drag(self, handle, target, others):
        h = self._geom.check_point(handle, "handle")
        t = self._geom.check_point(target, "target")
        if h == t:
            raise ValueError(f"target {t} equals its handle: drag to a different point")
        if self._geom.image_to_grid(h) == self._geom.image_to_grid(t):
            cell = self.size[0] / self.grid_size[1]
            raise ValueError(f"handle {h} and target {t} fall in the same feature cell ({cell:.1f} px wide): "
                             "drag farther")
        return h, t

    def add_drag(self, handle, target) -> int:
        """Add a handle → target pair, (x, y) image pixels; returns its index. Resets the optimisation."""
        h, t = self._check_drag(handle, target, self._drags)
        with self._lock:
            self._drags.append((h, t))
            self._reset_state()
        self._emit("drags")
        return len(self._drags) - 1

    def set_drags(self, drags) -> None:
        checked = [self._check_drag(h, t, []) for h, t in drags]
        with self._lock:
            if checked == self._drags:
                return
            self._drags = checked
            self._reset_state()
        self._emit("drags")

    def remove_drag(self, i: int) -> None:
        if not -len(self._drags) <= i < len(self._drags):
            raise ValueError(f"drag index {i} does not exist: there are {len(self._drags)} drags")
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
            self._mask_latent = None
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

    # ---------------------------------------------------------------- caches
    def _keys(self):
        c = self._config
        lora_fields = {k: getattr(c, k) for k in LORA_FIELDS}
        if self._generated is not None:
            lora_fields["generated"] = self._generated["key"]
        lk = lora.cache_key(self.model.name, self._image_sha, self.prompt, self.seed, **lora_fields)
        ik = hashlib.sha256(json.dumps([lk, [getattr(c, k) for k in INVERSION_FIELDS]]).encode()).hexdigest()[:16]
        fk = hashlib.sha256(json.dumps([ik, [getattr(c, k) for k in FEATURE_FIELDS], self._geom.grid_hw])
                            .encode()).hexdigest()[:16]
        return lk, ik, fk

    @property
    def is_prepared(self) -> bool:
        lk, ik, fk = self._keys()
        return lk in self._lora_cache and ik in self._inv_cache and fk in self._feat_cache

    def _cond(self):
        return self.model.encode_prompt(self.prompt)

    def _unet_fn(self, guidance: float):
        return guided_unet_fn(self.model, self._cond(), guidance)

    def _image_tensor(self) -> torch.Tensor:
        img = self._image.resize(self._geom.work_wh, Image.BILINEAR) if self._image.size != self._geom.work_wh else self._image
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0

    def _lora_state(self):
        lk, _, _ = self._keys()
        return self._lora_cache.get(lk)

    def _t(self) -> int:
        c = self._config
        return ddim.timesteps(self.model.scheduler, c.n_inference_steps)[c.n_inference_steps - c.drag_step_index]

    def prepare(self, progress: bool = True, callback=None) -> "DragSession":
        """LoRA fine-tune, DDIM inversion to step t and the source features, each computed once and cached.

        `callback(stage, i, n)` reports progress (stage in "lora", "inversion", "features").
        """
        with self._lock:
            c, m = self._config, self.model
            lk, ik, fk = self._keys()
            cond = self._cond()
            z0 = None
            if lk not in self._lora_cache:
                if c.lora_steps == 0 or self._generated is not None:
                    self._lora_cache[lk] = None
                else:
                    z0 = m.encode(self._image_tensor())
                    bar = _tqdm(c.lora_steps, "LoRA", progress)

                    def cb(i, n, loss):
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}")
                        if callback:
                            callback("lora", i, n)
                    try:
                        self._lora_cache[lk] = lora.train_lora(m, z0, cond, rank=c.lora_rank, steps=c.lora_steps,
                                                               lr=c.lora_lr, batch_size=c.lora_batch_size,
                                                               seed=self.seed, callback=cb)
                    finally:
                        bar.close()
                    self.counters["lora_trainings"] += 1
            lstate = self._lora_cache[lk]
            if ik not in self._inv_cache:
                k = c.drag_step_index
                gen = self._generated
                if gen is not None and gen["n"] == c.n_inference_steps:
                    self._inv_cache[ik] = dict(z0=gen["latents"][-1], zt=gen["latents"][c.n_inference_steps - k])
                else:
                    if gen is not None:
                        warnings.warn("n_inference_steps differs from the generation's: the generated image is inverted")
                    z0 = z0 if z0 is not None else m.encode(self._image_tensor())
                    bar = _tqdm(k, "inversion", progress)

                    def cbi(i, n):
                        bar.update(1)
                        if callback:
                            callback("inversion", i, n)
                    with lora.applied(m.unet, lstate):
                        lat = ddim.invert(self._unet_fn(c.guidance_scale), m.scheduler, z0, c.n_inference_steps, k, cbi)
                    bar.close()
                    self._inv_cache[ik] = dict(z0=lat[0], zt=lat[-1])
                    self.counters["inversions"] += 1
            if fk not in self._feat_cache:
                zt = self._inv_cache[ik]["zt"]
                with torch.no_grad(), lora.applied(m.unet, lstate):
                    feat0, x_prev0 = self._forward(zt)
                self._feat_cache[fk] = dict(feat0=feat0.detach(), x_prev0=x_prev0.detach())
                self.counters["feature_extractions"] += 1
                if callback:
                    callback("features", 1, 1)
        self._emit("prepare")
        return self

    def _forward(self, latent):
        """latent (1, C, h, w) -> (features (1, C', gh, gw) float32, x_{t-1} (1, C, h, w)); LoRA applied by caller."""
        c, m = self._config, self.model
        t = self._t()
        fn = self._unet_fn(1.0)
        out, feat = unet_with_features(fn, m.unet, latent, t, c.feature_block, self._geom.grid_hw)
        return feat, ddim.prev_step(m.scheduler, out, latent, t, c.n_inference_steps)

    # ---------------------------------------------------------------- optimisation state
    def _reset_state(self):
        self._latent = None
        self._opt = None
        self._handles_rc = None
        self._history: list[StepRecord] = []
        self._snapshots: dict[int, dict] = {}
        self._mask_latent = None
        self._reached = False
        self._result_cache = None

    def _ensure_state(self):
        if self._latent is not None:
            return
        if not self._drags:
            raise ValueError("no drags: add one with session.add_drag(handle=(x, y), target=(x, y)) before step()/run()")
        if not self.is_prepared:
            self.prepare(progress=False)
        _, ik, _ = self._keys()
        self._latent = self._inv_cache[ik]["zt"].detach().clone().float().requires_grad_(True)
        self._opt = torch.optim.Adam([self._latent], lr=self._config.drag_lr)
        g = self._geom
        self._handles0_rc = torch.tensor([g.image_to_grid(h) for h, _ in self._drags], dtype=torch.float32)
        self._targets_rc = torch.tensor([g.image_to_grid(t) for _, t in self._drags], dtype=torch.float32)
        self._handles_rc = self._handles0_rc.clone()
        self._snapshot(0)

    def _snapshot(self, step: int):
        self._snapshots[step] = dict(latent=self._latent.detach().clone(), opt=copy.deepcopy(self._opt.state_dict()),
                                     handles=self._handles_rc.clone(), reached=self._reached)

    def _restore(self, snap):
        with torch.no_grad():
            self._latent.copy_(snap["latent"])
        self._opt = torch.optim.Adam([self._latent], lr=self._config.drag_lr)
        self._opt.load_state_dict(copy.deepcopy(snap["opt"]))
        self._handles_rc = snap["handles"].clone()
        self._reached = snap["reached"]
        self._result_cache = None

    def _get_mask_latent(self):
        if self._mask is None:
            return None
        if self._mask_latent is None:
            grid = torch.from_numpy(self._geom.mask_to_grid(self._mask))[None, None]
            self._mask_latent = F.interpolate(grid, size=self._geom.latent_hw, mode="nearest").to(self.model.device)
        return self._mask_latent

    @property
    def n_steps(self) -> int:
        return len(self._history)

    @property
    def reached(self) -> bool:
        return self._reached

    @property
    def handles(self) -> list:
        if self._handles_rc is None:
            return [h for h, _ in self._drags]
        return [self._geom.grid_to_image(rc.tolist()) for rc in self._handles_rc]

    @property
    def targets(self) -> list:
        return [t for _, t in self._drags]

    @property
    def history(self) -> list:
        return list(self._history)

    def step(self, n: int = 1) -> list[StepRecord]:
        """Run n optimisation steps (prepares first if needed). Returns the records of the steps taken:
        fewer than n when every handle reached its target."""
        if int(n) < 1:
            raise ValueError(f"n={n}: step at least 1")
        out = []
        with self._lock:
            self._ensure_state()
            c, m = self._config, self.model
            _, _, fk = self._keys()
            fc = self._feat_cache[fk]
            for g in self._opt.param_groups:
                g["lr"] = c.drag_lr
            with lora.applied(m.unet, self._lora_state()):
                for _ in range(int(n)):
                    if self._reached:
                        break
                    t0 = time.perf_counter()
                    before = (self._latent.detach().clone(), copy.deepcopy(self._opt.state_dict()), self._handles_rc)
                    try:
                        with torch.autocast(m.device.type, dtype=m.dtype, enabled=m.dtype != torch.float32):
                            so = drag_step(self._forward, self._latent, self._opt, fc["feat0"], fc["x_prev0"],
                                           self._handles0_rc, self._handles_rc, self._targets_rc,
                                           self._get_mask_latent(), r_m=c.r_m, r_p=c.r_p, lam=c.lam,
                                           reach_distance=c.reach_distance, track_patch=c.track_patch,
                                           track=self.n_steps > 0)
                    except RuntimeError as e:  # e.g. Adam's "value cannot be converted ... without overflow"
                        if "overflow" not in str(e) and "nan" not in str(e).lower():
                            raise
                        so = None
                    if so is None or not so.finite or not torch.isfinite(self._latent).all():
                        self._latent.data.copy_(before[0])
                        self._opt.load_state_dict(before[1])
                        self._handles_rc = before[2]
                        self.stop_reason = (f"step {self.n_steps + 1} produced a non-finite loss/latent "
                                            f"(loss={so.loss if so else 'overflow'}); "
                                            f"the session keeps the state after step {self.n_steps}. Lower drag_lr "
                                            f"(now {c.drag_lr}) or use float32")
                        raise DragDiverged(self.stop_reason)
                    self._handles_rc = so.handles_rc
                    if so.reached:
                        self._reached = True
                        self.stop_reason = "every handle reached its target"
                        break
                    step_no = self.n_steps + 1
                    snap = step_no % c.snapshot_every == 0
                    rec = StepRecord(step_no, so.loss, so.motion_loss, so.mask_loss,
                                     [tuple(round(v, 3) for v in self._geom.grid_to_image(rc.tolist())) for rc in so.handles_rc],
                                     [tuple(int(v) for v in rc.tolist()) for rc in so.handles_rc], snap,
                                     time.perf_counter() - t0)
                    self._history.append(rec)
                    if snap:
                        self._snapshot(step_no)
                    out.append(rec)
            self._result_cache = None
        self._emit("step")
        return out

    def run(self, max_steps: int | None = None, callback=None, progress: bool = True) -> list[StepRecord]:
        """Optimise until every handle reaches its target, `max_steps` steps (default: up to config.drag_steps in
        all), `callback(record)` returns False, or `stop()` is called from another thread."""
        if not self._drags:
            raise ValueError("no drags: add one with session.add_drag(handle=(x, y), target=(x, y)) before run()")
        self._stop.clear()
        self.stop_reason = None
        n = max(0, self._config.drag_steps - self.n_steps) if max_steps is None else int(max_steps)
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
        if not 0 <= int(k) <= self.n_steps:
            raise ValueError(f"cannot rewind {k} steps: {self.n_steps} steps were taken")
        if k == 0:
            return
        with self._lock:
            target = self.n_steps - int(k)
            base = max(s for s in self._snapshots if s <= target)
            self._restore(self._snapshots[base])
            del self._history[base:]
            for s in [s for s in self._snapshots if s > base]:
                del self._snapshots[s]
            if target > base:
                self.step(target - base)
        self._emit("rewind")

    def _inverted_latent(self) -> torch.Tensor:
        """The cached step-t latent of the DDIM inversion (the session must be prepared)."""
        return self._inv_cache[self._keys()[1]]["zt"]

    def latent_at(self, step: int):
        """The latent after `step` (0 = the inverted latent) if a snapshot holds it, else None."""
        snap = self._snapshots.get(int(step))
        if snap is None and int(step) == 0 and self.is_prepared:
            return self._inverted_latent().clone()
        return None if snap is None else snap["latent"].clone()

    # ---------------------------------------------------------------- looking
    def _to_pil(self, x_b3hw) -> Image.Image:
        """First image of a (B, 3, h, w) batch in [-1, 1] -> PIL at the user's image size."""
        img = self._to_pil_raw(x_b3hw)
        return img.resize(self.size, Image.BILINEAR) if img.size != self.size else img

    def _current_latent(self):
        if self._latent is not None:
            return self._latent.detach()
        if not self.is_prepared:
            self.prepare(progress=False)
        return self._inverted_latent()

    @torch.no_grad()
    def _denoise(self, z_hat, mutual: bool) -> torch.Tensor:
        c, m = self._config, self.model
        zt = self._inverted_latent()
        fn = self._unet_fn(c.guidance_scale)
        k = c.drag_step_index
        with lora.applied(m.unet, self._lora_state()):
            if mutual:
                with mutual_self_attention(m.unet, c.attn_start_step, c.attn_start_layer) as ctl:
                    z = ddim.denoise(fn, m.scheduler, torch.cat([zt, z_hat]), c.n_inference_steps, k,
                                     step_hook=lambda i: setattr(ctl, "step", i))[1:]
            else:
                z = ddim.denoise(fn, m.scheduler, z_hat, c.n_inference_steps, k)
        self.counters["denoisings"] += 1
        return m.decode(z)

    def result(self) -> Image.Image:
        """The edited image: DDIM-denoise the current latent (mutual self-attention per config), at image size."""
        with self._lock:
            z_hat = self._current_latent()
            key = (self.n_steps, self._config.mutual_attention, self._config.attn_start_layer,
                   self._config.attn_start_step, float(z_hat.double().sum()))
            if self._result_cache is None or self._result_cache[0] != key:
                self._result_cache = (key, self._to_pil(self._denoise(z_hat, self._config.mutual_attention)))
            return self._result_cache[1].copy()

    def current_latent(self) -> torch.Tensor:
        """A copy of the step-t latent as the drag has left it (the inverted latent before any step), (1, C, h, w)."""
        with self._lock:
            return self._current_latent().detach().clone()

    def render_latent(self, latent, mutual: bool | None = None) -> Image.Image:
        """DDIM-denoise any step-t latent (1, C, h, w) to an image at the session's size, as `result()` does.

        For experiments on the edit: `render_latent(latent_at(0) + d)` renders an edit `d` of your own.
        `mutual`: mutual self-attention with the source path (default: the config's `mutual_attention`).
        """
        with self._lock:
            if not self.is_prepared:
                self.prepare(progress=False)
            zt = self._inverted_latent()
            z = torch.as_tensor(latent)
            if tuple(z.shape) != tuple(zt.shape):
                raise ValueError(f"latent has shape {tuple(z.shape)} but this session's step-t latents are "
                                 f"{tuple(zt.shape)}: start from latent_at(0) or current_latent()")
            z = z.to(zt.device, zt.dtype)
            return self._to_pil(self._denoise(z, self._config.mutual_attention if mutual is None else bool(mutual)))

    def reconstruction(self) -> Image.Image:
        """Denoise the unedited inverted latent (no mutual attention): how faithful the inversion is."""
        with self._lock:
            if not self.is_prepared:
                self.prepare(progress=False)
            return self._to_pil(self._denoise(self._inverted_latent(), False))

    @torch.no_grad()
    def preview(self) -> Image.Image:
        """Cheap look at the current latent: decode its one-step x0 prediction (one UNet call)."""
        with self._lock:
            z = self._current_latent()
            m = self.model
            with lora.applied(m.unet, self._lora_state()):
                out = self._unet_fn(1.0)(z, self._t())
            x0, _ = ddim.predict_x0_eps(m.scheduler, out, z.float(), self._t())
            return self._to_pil(m.decode(x0))

    @torch.no_grad()
    def features(self, which: str = "source") -> torch.Tensor:
        """Decoder features (C, gh, gw) float32 on CPU: of the inverted latent ("source") or the current one."""
        if which not in ("source", "current"):
            raise ValueError(f"which={which!r}: use 'source' or 'current'")
        with self._lock:
            if not self.is_prepared:
                self.prepare(progress=False)
            if which == "source":
                return self._feat_cache[self._keys()[2]]["feat0"][0].float().cpu().clone()
            with lora.applied(self.model.unet, self._lora_state()):
                feat, _ = self._forward(self._current_latent())
            return feat[0].float().cpu()

    # ---------------------------------------------------------------- generated images
    @classmethod
    @torch.no_grad()
    def generate(cls, model, prompt: str = "", seed: int = 0, config: DragConfig | None = None,
                 guidance_scale: float = 7.5, size: tuple[int, int] | None = None) -> "DragSession":
        """Generate an image from a prompt and a seed (DDIM with CFG) and return a session that drags it
        without inversion error: the drag starts from the generation's own latent at step t.

        No LoRA is trained (as the official code for generated images); the drag's motion supervision uses
        the conditional branch, the final denoising uses `guidance_scale` with mutual attention.
        """
        cfg = (config or model.default_config()).replace(guidance_scale=float(guidance_scale), lora_steps=0)
        W, H = size or (model.native_size, model.native_size)
        geom = Geometry.for_model((W, H), model, cfg.sup_res_scale)
        if geom.work_wh != (W, H):
            raise ValueError(f"size {W}×{H} cannot be generated: use sides that are multiples of {model.size_multiple}"
                             + (f" up to {model.max_side}" if model.max_side else ""))
        g = torch.Generator().manual_seed(int(seed))
        ch = model.unet.config.in_channels
        z_T = torch.randn((1, ch, *geom.latent_hw), generator=g).to(model.device)
        fn = guided_unet_fn(model, model.encode_prompt(str(prompt)), cfg.guidance_scale)
        lats = ddim.sample(fn, model.scheduler, z_T, cfg.n_inference_steps)
        s = cls(model, cls._to_pil_raw(model.decode(lats[-1])), prompt=prompt, seed=seed, config=cfg)
        s._generated = dict(latents=[x.detach() for x in lats], n=cfg.n_inference_steps,
                            key=f"gen-{seed}-{guidance_scale}-{hashlib.sha256(prompt.encode()).hexdigest()[:8]}")
        return s

    @staticmethod
    def _to_pil_raw(x_b3hw):
        arr = ((x_b3hw[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(arr)

    # ---------------------------------------------------------------- save / load
    def save(self, path) -> None:
        """Everything needed to continue bit-exactly: inputs, caches, optimiser state, snapshots (safetensors+JSON)."""
        from .persist import save_session
        with self._lock:
            save_session(self, path)

    @classmethod
    def load(cls, path, model) -> "DragSession":
        from .persist import load_session
        return load_session(cls, path, model)

    def __repr__(self):
        return (f"DragSession({self.size[0]}×{self.size[1]}, model={self.model.name!r}, drags={len(self._drags)}, "
                f"steps={self.n_steps}, prepared={self.is_prepared}, reached={self._reached})")
