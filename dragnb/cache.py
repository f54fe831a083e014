"""`SourceCache`: the source side of a drag edit — LoRA weights, the inverted latent and the reference features —
each computed once per `SourceKey` and kept in a bounded store.

The three stages are public methods, upstream first; each computes what is missing and returns a small
dataclass::

    train_lora(spec)        -> LoraWeights   adapter state dict (None: the base UNet)
    invert(spec)            -> Inversion     z0 (1, C, h, w) clean latent, zt (1, C, h, w) at the drag timestep t
    extract_features(spec)  -> Reference     the un-dragged trajectory from t on: per DDIM step i = 0..n, the
                                             latent (1, C, h, w), decoder features (1, C', gh, gw) on the
                                             supervision grid and x_{t_i - 1} (1, C, h, w)

A generated image is one more way to fill the inversion store (`add_generation`): its own latents replace the
inversion. What each setting invalidates is in `dragnb/invalidation.py`.

Bounded: each store keeps at most `max_entries` entries and all stores together at most `max_bytes` bytes of
tensors; the least recently used entry goes first, never the one just computed or read.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import ddim, graphs, lora
from .config import DragConfig
from .invalidation import fields_of
from .store import BoundedStore
from .unet import forward_features, replayed_unet_fn, unet_lock, using

STORES = ("lora", "inversion", "features")
COUNTER_OF = {"lora": "lora_trainings", "inversion": "inversions", "features": "feature_extractions"}


def image_digest(image: Image.Image) -> str:
    """A short content hash of an RGB image (pixels and size)."""
    return hashlib.sha256(np.asarray(image).tobytes() + str(image.size).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SourceSpec:
    """What the source side of one edit is made from (the session builds it from its inputs)."""
    image: Image.Image                 # the user's RGB image
    work_wh: tuple[int, int]           # the model's working size (w, h)
    grid_hw: tuple[int, int]           # the supervision grid (gh, gw)
    prompt: str
    seed: int
    config: DragConfig
    reference_steps: int = 0           # DDIM steps of the reference trajectory past t (the method's need)
    image_sha: str = ""

    def __post_init__(self):
        if not self.image_sha:
            object.__setattr__(self, "image_sha", image_digest(self.image))

    def image_tensor(self) -> torch.Tensor:
        """(1, 3, h, w) float32 in [-1, 1] at the working size."""
        img = self.image.resize(self.work_wh, Image.BILINEAR) if self.image.size != self.work_wh else self.image
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


@dataclass(frozen=True)
class SourceKey:
    """The one key type: what each stage depends on. `stage(name)` is the store key of that stage."""
    model: str
    image: str
    prompt: str
    seed: int
    lora: tuple
    inversion: tuple
    features: tuple

    @classmethod
    def of(cls, model_name: str, spec: SourceSpec) -> "SourceKey":
        c = spec.config
        vals = lambda stage: tuple((k, getattr(c, k)) for k in fields_of(stage))  # noqa: E731
        return cls(model_name, spec.image_sha, spec.prompt, spec.seed, vals("lora"), vals("inversion"),
                   vals("features") + (("grid_hw", tuple(spec.grid_hw)), ("reference_steps", spec.reference_steps)))

    def stage(self, name: str) -> tuple:
        base = (self.model, self.image, self.prompt, self.seed, self.lora)
        return {"lora": base, "inversion": base + (self.inversion,),
                "features": base + (self.inversion, self.features)}[name]


@dataclass(frozen=True)
class LoraWeights:
    state: dict | None                 # peft adapter weights (CPU float32), None = the base UNet


@dataclass(frozen=True)
class Inversion:
    z0: torch.Tensor                   # (1, C, h, w) clean latent of the image
    zt: torch.Tensor                   # (1, C, h, w) latent at the drag timestep t
    t: int                             # the drag timestep
    generated: bool = False            # True: taken from a generation's own latents, not inverted


@dataclass(frozen=True)
class ReferenceStep:
    t: int                             # timestep of this DDIM step
    latent: torch.Tensor               # (1, C, h, w) un-dragged latent at t
    feat: torch.Tensor                 # (1, C', gh, gw) its decoder features on the supervision grid
    x_prev: torch.Tensor               # (1, C, h, w) its DDIM step to the next timestep


@dataclass(frozen=True)
class Reference:
    """The un-dragged trajectory from the drag timestep on: `len(ts)` = reference_steps + 1 UNet calls, and one
    latent more (`latents[i]` sits at `ts[i]`; the last is where a method that finished its timesteps renders from)."""
    ts: tuple
    latents: tuple
    feats: tuple
    x_prevs: tuple

    def at(self, i: int) -> ReferenceStep:
        if not 0 <= i < len(self.ts):
            raise IndexError(f"reference step {i} does not exist: the reference holds {len(self.ts)} steps")
        return ReferenceStep(self.ts[i], self.latents[i], self.feats[i], self.x_prevs[i])


def _tqdm(total, desc, enabled):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


class SourceCache:
    """LoRA, inversion and reference-feature stores of one model, with counters and bounded eviction.

    Args:
        model: the `DragModel` every stage runs on.
        max_entries: most entries each store keeps (default 4: a few prompts/settings to go back to); an int >= 1.
        max_bytes: most bytes of tensors all stores keep together (default 2 GiB; None: no byte bound); an int >= 0.

    Both bounds may be changed later (`cache.max_bytes = 2**28`); a lowered bound evicts at once, least recently
    used first. `clear()` drops everything. Entries live on the model's device: for SD-1.5 at 512×512 one
    features entry is about 160 MiB, an inversion 64 KiB, a rank-16 LoRA 3 MiB.

    Thread-safe: sessions on one model may share one cache (`DragSession(..., cache=cache)`) from several
    threads; each stage runs under the model's UNet lock, so an entry is computed once.
    """

    def __init__(self, model, max_entries: int = 4, max_bytes: int | None = 2 * 2**30):
        if not all(hasattr(model, a) for a in ("unet", "scheduler", "name")):
            raise TypeError(f"SourceCache(model={model!r}): not a DragModel; get one with dragnb.load_model('demo')")
        self._store = BoundedStore(STORES, max_entries, max_bytes, what="SourceCache")
        self.model = model
        self.counters = dict(lora_trainings=0, inversions=0, feature_extractions=0, denoisings=0)
        self._generations: dict[str, tuple[int, tuple]] = {}

    max_entries = property(lambda self: self._store.max_entries,
                           lambda self, v: setattr(self._store, "max_entries", v),
                           doc="Most entries each store keeps (>= 1); lowering it evicts at once.")
    max_bytes = property(lambda self: self._store.max_bytes, lambda self, v: setattr(self._store, "max_bytes", v),
                         doc="Most bytes of tensors all stores keep together (None: no byte bound).")
    evictions = property(lambda self: self._store.evictions, doc="Entries evicted so far.")

    # ------------------------------------------------------------------ keys and bookkeeping
    def key(self, spec: SourceSpec) -> SourceKey:
        return SourceKey.of(self.model.name, spec)

    def has(self, spec: SourceSpec, stage: str) -> bool:
        return self._store.contains(stage, self.key(spec).stage(stage))

    def is_prepared(self, spec: SourceSpec) -> bool:
        return all(self.has(spec, s) for s in STORES)

    @property
    def nbytes(self) -> int:
        """Bytes of tensors held by all stores."""
        return self._store.nbytes

    def __len__(self) -> int:
        return len(self._store)

    def discard(self, spec: SourceSpec, stage: str) -> None:
        """Drop this spec's entry of one stage ("lora", "inversion" or "features") if present."""
        if stage not in STORES:
            raise ValueError(f"stage={stage!r}: use one of {STORES}")
        self._store.discard(stage, self.key(spec).stage(stage))

    def clear(self) -> None:
        """Drop every entry (counters are kept; a generation's own latents too: they cannot be recomputed)."""
        self._store.clear()

    def _get(self, stage: str, k: tuple):
        return self._store.get(stage, k)

    def _put(self, stage: str, k: tuple, value):
        return self._store.put(stage, k, value)

    # ------------------------------------------------------------------ the three stages
    def train_lora(self, spec: SourceSpec, progress: bool = False, callback=None) -> LoraWeights:
        """Stage 1: fine-tune a LoRA on the image (official recipe, `lora.train_lora`); cached.

        `callback("lora", i, n)` after each optimiser step. `lora_steps=0` means the base UNet (nothing trained).
        """
        with unet_lock(self.model.unet):   # one computation per entry, even for sessions sharing this cache
            return self._train_lora(spec, progress, callback)

    def _train_lora(self, spec, progress, callback) -> LoraWeights:
        k = self.key(spec).stage("lora")
        hit = self._get("lora", k)
        if hit is not None:
            return hit
        c, m = spec.config, self.model
        if c.lora_steps == 0:
            return self._put("lora", k, LoraWeights(None))
        z0 = m.encode(spec.image_tensor())
        bar = _tqdm(c.lora_steps, "LoRA", progress)

        def cb(i, n, loss):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if callback:
                callback("lora", i, n)
        try:
            state = lora.train_lora(m, z0, m.encode_prompt(spec.prompt), rank=c.lora_rank, steps=c.lora_steps,
                                    lr=c.lora_lr, batch_size=c.lora_batch_size, seed=spec.seed, callback=cb,
                                    targets=c.lora_targets, unet_call=graphs.training_call(m))
        finally:
            bar.close()
        self.counters["lora_trainings"] += 1
        return self._put("lora", k, LoraWeights(state))

    def invert(self, spec: SourceSpec, progress: bool = False, callback=None) -> Inversion:
        """Stage 2: DDIM-invert the clean latent z0 (1, C, h, w) through `drag_step_index` steps to zt; cached.

        A generated image (`add_generation`) takes its own latents instead, with no inversion error.
        """
        with unet_lock(self.model.unet):   # the UNet is the model's, shared
            return self._invert(spec, progress, callback)

    def _invert(self, spec, progress, callback) -> Inversion:
        k = self.key(spec).stage("inversion")
        hit = self._get("inversion", k)
        if hit is not None:
            return hit
        c, m = spec.config, self.model
        n, steps = c.n_inference_steps, c.drag_step_index
        t = ddim.timesteps(m.scheduler, n)[n - steps]
        gen = self._generations.get(spec.image_sha)
        if gen is not None and gen[0] == n:
            return self._put("inversion", k, Inversion(gen[1][-1], gen[1][n - steps], t, generated=True))
        if gen is not None:
            warnings.warn(f"n_inference_steps={n} differs from the generation's ({gen[0]}): the generated image "
                          "is inverted like any image")
        weights = self.train_lora(spec, progress, callback)
        z0 = m.encode(spec.image_tensor())
        bar = _tqdm(steps, "inversion", progress)

        def cb(i, total):
            bar.update(1)
            if callback:
                callback("inversion", i, total)
        try:
            with using(m, weights.state):
                lat = ddim.invert(replayed_unet_fn(m, m.encode_prompt(spec.prompt), c.guidance_scale), m.scheduler,
                                  z0, n, steps, cb)
        finally:
            bar.close()
        self.counters["inversions"] += 1
        return self._put("inversion", k, Inversion(lat[0], lat[-1], t))

    def extract_features(self, spec: SourceSpec, progress: bool = False, callback=None) -> Reference:
        """Stage 3: the un-dragged reference trajectory from zt: `reference_steps` + 1 UNet calls, each giving
        the decoder features (1, C', gh, gw) and x_{t-1}; the next step starts from that x_{t-1}. Cached."""
        with unet_lock(self.model.unet):
            return self._extract_features(spec, progress, callback)

    def _extract_features(self, spec, progress, callback) -> Reference:
        k = self.key(spec).stage("features")
        hit = self._get("features", k)
        if hit is not None:
            return hit
        c, m = spec.config, self.model
        weights = self.train_lora(spec, progress, callback)
        inv = self.invert(spec, progress, callback)
        n = c.n_inference_steps
        ts = ddim.timesteps(m.scheduler, n)[n - c.drag_step_index:]
        steps = min(spec.reference_steps, len(ts) - 1) + 1
        cond = m.encode_prompt(spec.prompt)
        lats, feats, prevs = [inv.zt], [], []
        with using(m, weights.state), torch.no_grad():
            for i in range(steps):
                feat, x_prev = forward_features(m, cond, lats[i], ts[i], n, c.feature_block, spec.grid_hw)
                feats.append(feat.detach())
                prevs.append(x_prev.detach())
                lats.append(x_prev.detach())
        self.counters["feature_extractions"] += 1
        if callback:
            callback("features", 1, 1)
        return self._put("features", k, Reference(tuple(ts[:steps]), tuple(lats), tuple(feats), tuple(prevs)))

    def prepare(self, spec: SourceSpec, progress: bool = False, callback=None) -> tuple[LoraWeights, Inversion, Reference]:
        """All three stages in order (each a cache hit when already computed)."""
        return (self.train_lora(spec, progress, callback), self.invert(spec, progress, callback),
                self.extract_features(spec, progress, callback))

    # ------------------------------------------------------------------ other ways in
    def add_generation(self, image_sha: str, latents, n_steps: int) -> None:
        """Register a generation's latents [z_T, ..., z_0] (n + 1 of them): an image with this digest is then
        'inverted' by reading its own latent at the drag step."""
        latents = tuple(x.detach() for x in latents)
        if len(latents) != n_steps + 1:
            raise ValueError(f"a generation of {n_steps} steps has {n_steps + 1} latents, got {len(latents)}")
        with self._store.lock:
            self._generations[image_sha] = (int(n_steps), latents)

    def generation(self, image_sha: str):
        """(n_steps, latents) of a registered generation, or None."""
        return self._generations.get(image_sha)

    # ------------------------------------------------------------------ persistence
    def state_dict(self, spec: SourceSpec) -> dict:
        """The entries this spec uses (those computed), as plain tensors and values."""
        with self._store.lock:
            return self._state_dict(spec)

    def _state_dict(self, spec: SourceSpec) -> dict:
        key = self.key(spec)
        out: dict = {}
        w = self._store.peek("lora", key.stage("lora"))
        if w is not None:
            out["lora"] = {"trained": w.state is not None, "weights": dict(w.state or {})}
        inv = self._store.peek("inversion", key.stage("inversion"))
        if inv is not None:
            out["inversion"] = {"z0": inv.z0, "zt": inv.zt, "t": inv.t, "generated": inv.generated}
        ref = self._store.peek("features", key.stage("features"))
        if ref is not None:
            out["features"] = {"ts": list(ref.ts), "latents": torch.cat(ref.latents), "feats": torch.cat(ref.feats),
                               "x_prevs": torch.cat(ref.x_prevs)}
        gen = self._generations.get(spec.image_sha)
        if gen is not None:
            out["generation"] = {"n": gen[0], "latents": torch.cat(gen[1])}
        return out

    def load_state_dict(self, spec: SourceSpec, sd: dict) -> None:
        """Put back what `state_dict(spec)` gave (counters untouched)."""
        key = self.key(spec)
        dev = self.model.device
        if "generation" in sd:
            g = sd["generation"]
            self.add_generation(spec.image_sha, [x.to(dev) for x in g["latents"].split(1)], int(g["n"]))
        if "lora" in sd:
            w = sd["lora"]
            self._put("lora", key.stage("lora"), LoraWeights({k: v.cpu() for k, v in w["weights"].items()}
                                                             if w["trained"] else None))
        if "inversion" in sd:
            i = sd["inversion"]
            self._put("inversion", key.stage("inversion"),
                      Inversion(i["z0"].to(dev), i["zt"].to(dev), int(i["t"]), bool(i["generated"])))
        if "features" in sd:
            f = sd["features"]
            split = lambda x: tuple(x.to(dev).split(1))  # noqa: E731
            self._put("features", key.stage("features"),
                      Reference(tuple(int(t) for t in f["ts"]), split(f["latents"]), split(f["feats"]),
                                split(f["x_prevs"])))

    def __repr__(self):
        sizes = ", ".join(f"{s}={self._store.size(s)}" for s in STORES)
        return f"SourceCache({sizes}, {self.nbytes / 2**20:.1f} MiB, max_entries={self.max_entries}, " \
               f"max_bytes={self.max_bytes})"
