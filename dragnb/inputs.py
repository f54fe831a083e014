"""`EditInputs`: what one drag edit is made of — model, image, prompt, seed, config, drags, mask — each checked
at the door (`dragnb/validate.py`), with observers. `DragSession` builds on it; a change tells the subclass, through
`_inputs_changed(restart)`, whether the optimisation must restart (`dragnb/invalidation.py` decides).
"""
from __future__ import annotations

import threading
import warnings

from PIL import Image

from . import validate
from .cache import image_digest
from .config import DragConfig
from .coords import Geometry, load_image, load_mask
from .invalidation import restarts_state
from .methods import get_method


class EditInputs:
    """The inputs of one edit and their observers (see `DragSession` for the arguments)."""

    def __init__(self, model, image, prompt: str = "", seed: int = 0, config: DragConfig | None = None, mask=None):
        validate.model(model)
        if config is not None and not isinstance(config, DragConfig):
            raise TypeError(f"config={config!r} is not a DragConfig: use model.default_config(**changes)")
        self.model = model
        self._prompt, self._seed = validate.text(prompt, "prompt"), validate.whole(seed, "seed")
        self._config = config if config is not None else model.default_config()
        self._config.validate()
        self._method = get_method(self._config.method)
        self._observers: list = []
        self._lock = threading.RLock()   # held by every change and, in subclasses, every verb
        self._drags: list[tuple[tuple[float, float], tuple[float, float]]] = []
        self._mask = None
        self._set_image(load_image(image))
        if mask is not None:
            self._mask = load_mask(validate.mask_like(mask), self.size)

    # ---------------------------------------------------------------- inputs
    def _set_image(self, img: Image.Image):
        self._image = img
        self._image_sha = image_digest(img)
        self._geom = Geometry.for_model(img.size, self.model, self._config.sup_res_scale)
        self._inputs_changed(restart=True)

    image = property(lambda self: self._image, doc="The user's RGB image (original size).")
    image_sha = property(lambda self: self._image_sha, doc="A short content hash of the image.")
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
        value = validate.text(value, "prompt")
        with self._lock:
            if value != self._prompt:
                self._prompt = value
                self._inputs_changed(restart=True)
        self._emit("config")

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        value = validate.whole(value, "seed")
        with self._lock:
            if value != self._seed:
                self._seed = value
                self._inputs_changed(restart=True)
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
            geom = self._geom
            if new.sup_res_scale != self._config.sup_res_scale:
                geom = Geometry.for_model(self.size, self.model, new.sup_res_scale)
            if geom is not self._geom or new.reach_distance != self._config.reach_distance:
                for h, t in self._drags:   # the drags must still make sense on the new grid / reach
                    validate.drag(geom, h, t, self.size, new.reach_distance)
            self._geom = geom
            self._config, self._method = new, method
            self._inputs_changed(restart=restarts_state(changed))
        self._emit("config")
        return new

    @property
    def drags(self) -> list:
        return list(self._drags)

    def _check_pair(self, handle, target, geom=None):
        return validate.drag(geom or self._geom, handle, target, self.size, self._config.reach_distance)

    def add_drag(self, handle, target) -> int:
        """Add a handle → target pair, (x, y) image pixels; returns its index. Resets the optimisation."""
        pair = self._check_pair(handle, target)
        with self._lock:
            self._drags.append(pair)
            self._inputs_changed(restart=True)
        self._emit("drags")
        return len(self._drags) - 1

    def set_drags(self, drags) -> None:
        checked = [self._check_pair(*validate.pair(d)) for d in validate.drag_list(drags)]
        with self._lock:
            if checked == self._drags:
                return
            self._drags = checked
            self._inputs_changed(restart=True)
        self._emit("drags")

    def remove_drag(self, i: int) -> None:
        i = validate.whole(i, "i")
        if not -len(self._drags) <= i < len(self._drags):
            raise ValueError(f"drag index {i!r} does not exist: there are {len(self._drags)} drags")
        with self._lock:
            del self._drags[i]
            self._inputs_changed(restart=True)
        self._emit("drags")

    def clear_drags(self) -> None:
        self.set_drags([])

    def spread_drag(self, i: int = -1, n: int = 5, tolerance: float = 40.0) -> list[int]:
        """Carry drag `i`'s region whole: add up to n - 1 more pairs on the region of similar colour connected to its
        handle (inside the mask, when one is set), each moved by the drag's offset (`dragnb.points.spread`). Returns
        the new drags' indices ([] when the region is too small for more). Resets the optimisation."""
        from .points import spread
        i = validate.whole(i, "i")
        if not -len(self._drags) <= i < len(self._drags):
            raise ValueError(f"drag index {i!r} does not exist: there are {len(self._drags)} drags (add one first)")
        handle, target = self._drags[i]
        extra = spread(self._image, handle, target, n, tolerance, within=self._mask)[1:]
        checked = [self._check_pair(h, t) for h, t in extra]
        if not checked:
            return []
        with self._lock:
            start = len(self._drags)
            self._drags.extend(checked)
            self._inputs_changed(restart=True)
        self._emit("drags")
        return list(range(start, start + len(checked)))

    @property
    def mask(self):
        return None if self._mask is None else self._mask.copy()

    def set_mask(self, mask) -> None:
        """Editable region: HxW bool/uint8 array or PIL 'L' (True/255 = may change), or None (all may change)."""
        m = load_mask(validate.mask_like(mask), self.size)
        with self._lock:
            self._mask = m
            self._inputs_changed(restart=False)
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

    def _adopt_inputs(self, other: "EditInputs") -> None:
        """Take every input of another edit of the same model (already checked there); the caller holds the lock."""
        for name in ("_image", "_image_sha", "_geom", "_prompt", "_seed", "_config", "_method", "_drags", "_mask"):
            setattr(self, name, getattr(other, name))

    def _inputs_changed(self, restart: bool) -> None:
        """Called under the lock after an input changed; `restart`: the optimisation must go back to the start."""
