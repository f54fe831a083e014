"""The DragBench sample format, read safely, and its pickle-free twin.

A **sample** is a folder (the official DragBench layout, `Yujun-Shi/DragDiffusion/drag_bench_evaluation`):

    original_image.png   the image to edit (RGB)
    user_drag.png        the image with the drags drawn on it (for people; no tool reads it)
    meta_data.pkl        a pickled dict: 'prompt' (str), 'points' (a list alternating handle, target, each
                         [x, y] in image pixels, x right, y down) and 'mask' (HxW uint8, 1 or 255 = may change;
                         all 0 = nothing painted)

The **twin** replaces the pickle with `meta.json` (same keys; 'mask' names a file) and `mask.png` (L, 255 = may
change), so a sample can be read without unpickling anything. A **dataset** is a folder of category folders of
samples (`animals/JH_2023-09-14-1820-16/...`); a folder of samples without categories is read as one category.

Extra keys of a sample's meta (e.g. 'world_seed' of samples made from the shape world) are kept in `Sample.extra`
and written back; the official scripts ignore them.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .safe_pickle import load_meta_pickle

__all__ = ["Sample", "SampleRef", "read_sample", "write_sample", "find_samples", "convert_dataset", "save_sample",
           "IMAGE_FILE", "DRAG_FILE", "PICKLE_FILE", "JSON_FILE", "MASK_FILE", "FORMATS"]

IMAGE_FILE, DRAG_FILE, PICKLE_FILE = "original_image.png", "user_drag.png", "meta_data.pkl"
JSON_FILE, MASK_FILE = "meta.json", "mask.png"
FORMATS = ("pickle", "json")
_OFFICIAL_KEYS = ("prompt", "points", "mask")


@dataclass
class Sample:
    """One DragBench case in memory: image (H, W, 3) uint8, prompt, drags as (x, y) image pixels, mask (H, W)
    bool (True = may change) or None (nothing painted), and where it came from."""
    image: np.ndarray
    prompt: str
    handles: list
    targets: list
    mask: np.ndarray | None = None
    category: str = ""
    name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        """'category/name' (the key of a sample in records and tables)."""
        return f"{self.category}/{self.name}" if self.category else self.name

    @property
    def points(self) -> list:
        """The official 'points' list: handle, target, handle, target, ... as [x, y]; whole numbers as int."""
        out = []
        for h, t in zip(self.handles, self.targets):
            out += [[_num(v) for v in h], [_num(v) for v in t]]
        return out

    def check(self) -> "Sample":
        """ValueError naming the sample and the point when a drag lies outside the image (or the mask's shape
        differs from the image's)."""
        H, W = self.image.shape[:2]
        for i, (h, t) in enumerate(zip(self.handles, self.targets)):
            for what, (x, y) in (("handle", h), ("target", t)):
                if not (0 <= x <= W - 1 and 0 <= y <= H - 1):
                    raise ValueError(f"sample {self.id}: {what} {i + 1} ({x:g}, {y:g}) is outside the {W}×{H} image "
                                     f"(use 0 ≤ x ≤ {W - 1}, 0 ≤ y ≤ {H - 1}): fix its points")
        if self.mask is not None and self.mask.shape != (H, W):
            raise ValueError(f"sample {self.id}: mask of shape {self.mask.shape} does not match the {W}×{H} image")
        return self


@dataclass(frozen=True)
class SampleRef:
    """Where a sample lives: its category, its name and its folder."""
    category: str
    name: str
    folder: str

    @property
    def id(self) -> str:
        return f"{self.category}/{self.name}" if self.category else self.name


def _num(v):
    v = float(v)
    return int(v) if v.is_integer() else v


def _points(raw, source: str) -> tuple[list, list]:
    """The official alternating points list -> (handles, targets) as float (x, y) tuples."""
    if not isinstance(raw, (list, tuple, np.ndarray)) or len(raw) == 0 or len(raw) % 2:
        n = len(raw) if hasattr(raw, "__len__") else type(raw).__name__
        raise ValueError(f"{source}: 'points' must alternate handle, target ([x, y] each), an even count ≥ 2; got "
                         f"{n}: fix the sample's points")
    pts = []
    for p in raw:
        try:
            x, y = (float(v) for v in p)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: point {p!r} is not [x, y] (two numbers): fix the sample's points") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"{source}: point {p!r} is not finite: fix the sample's points")
        pts.append((x, y))
    return pts[0::2], pts[1::2]


def _mask(raw, source: str, hw) -> np.ndarray | None:
    if raw is None:
        return None
    m = np.asarray(raw)
    if m.ndim == 3:
        m = m[..., 0]
    if m.ndim != 2 or m.dtype == object:
        raise ValueError(f"{source}: 'mask' must be an HxW array, got shape {m.shape}: fix the sample's mask")
    if m.shape != tuple(hw):
        raise ValueError(f"{source}: mask of shape {m.shape} does not match the image's {tuple(hw)}: fix the mask")
    m = m > 0
    return m if m.any() else None   # all zero: nothing painted (the official labeling tool's empty mask)


def _read_image(path: str) -> np.ndarray:
    from ..coords import load_image
    return np.asarray(load_image(path).convert("RGB")).copy()


def read_sample(folder, category: str | None = None) -> Sample:
    """The sample in `folder`: `meta.json` (+ `mask.png`) when present, else `meta_data.pkl` (read with the
    restricted unpickler). ValueError (FileNotFoundError for a missing file) names the folder and what to fix."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"sample folder {folder!r} does not exist")
    name = os.path.basename(os.path.normpath(folder))
    category = os.path.basename(os.path.dirname(os.path.normpath(folder))) if category is None else category
    img_path = os.path.join(folder, IMAGE_FILE)
    js, pk = os.path.join(folder, JSON_FILE), os.path.join(folder, PICKLE_FILE)
    missing = [f for f, p in ((IMAGE_FILE, img_path),) if not os.path.isfile(p)]
    if not os.path.isfile(js) and not os.path.isfile(pk):
        missing.append(f"{PICKLE_FILE} (or {JSON_FILE})")
    if missing:
        raise FileNotFoundError(f"sample {folder!r} lacks {' and '.join(missing)}: a DragBench sample holds "
                                f"{IMAGE_FILE}, {DRAG_FILE} and {PICKLE_FILE}")
    image = _read_image(img_path)
    if os.path.isfile(js):
        source = js
        try:
            with open(js, encoding="utf-8") as f:
                meta = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{js}: not valid JSON ({e}): fix or delete it (the {PICKLE_FILE} is read then)") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{js}: holds a {type(meta).__name__}, not an object with prompt, points, mask")
        mask_name = meta.get("mask")
        if mask_name is not None:
            if not isinstance(mask_name, str) or os.path.basename(mask_name) != mask_name:
                raise ValueError(f"{js}: 'mask' must name a file in the sample folder (e.g. {MASK_FILE!r}), "
                                 f"got {mask_name!r}")
            mpath = os.path.join(folder, mask_name)
            if not os.path.isfile(mpath):
                raise FileNotFoundError(f"sample {folder!r} lacks {mask_name} (named by {JSON_FILE})")
            meta["mask"] = np.asarray(Image.open(mpath).convert("L"))
    else:
        source = pk
        meta = load_meta_pickle(pk)
        if not isinstance(meta, dict):
            raise ValueError(f"{pk}: holds a {type(meta).__name__}, not a dict with prompt, points, mask")
    for key in ("prompt", "points"):
        if key not in meta:
            raise ValueError(f"{source}: no {key!r} (keys: {sorted(meta)}): a DragBench meta has prompt, points, mask")
    prompt = meta["prompt"]
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise ValueError(f"{source}: 'prompt' is a {type(prompt).__name__}, not text")
    handles, targets = _points(meta["points"], source)
    mask = _mask(meta.get("mask"), source, image.shape[:2])
    extra = {k: v for k, v in meta.items() if k not in _OFFICIAL_KEYS}
    return Sample(image, prompt, handles, targets, mask, category, name, extra)


def draw_user_drag(sample: Sample) -> Image.Image:
    """The `user_drag.png` picture: the image, outside the mask darkened, the drags drawn (dragnb.drawing)."""
    from PIL import ImageDraw

    from ..drawing import draw_pairs_pil, pair_shapes
    img = sample.image.astype(np.float32)
    if sample.mask is not None:
        img[~sample.mask] *= 0.7
    k = max(1, int(math.ceil(256 / max(sample.image.shape[:2]))))   # small images are drawn larger
    pic = Image.fromarray(img.astype(np.uint8)).resize((sample.image.shape[1] * k, sample.image.shape[0] * k),
                                                        Image.NEAREST)
    scaled = lambda pts: [((x + 0.5) * k, (y + 0.5) * k) for x, y in pts]  # noqa: E731
    r = max(3.0, 0.012 * max(pic.size))
    draw_pairs_pil(ImageDraw.Draw(pic), pair_shapes(scaled(sample.handles), scaled(sample.targets), radius=r,
                                                    head=2 * r))
    return pic


def _atomic_bytes(path: str, write) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def write_sample(sample: Sample, folder, format: str = "pickle") -> str:
    """Write `sample` into `folder` (created): original_image.png, user_drag.png and either meta_data.pkl
    (format="pickle", the official layout; the mask as uint8 0/1) or meta.json + mask.png (format="json").
    Returns the folder. The other format's meta file, if present, is removed so the folder holds one truth."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: use one of {FORMATS}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.asarray(sample.image, np.uint8)).save(os.path.join(folder, IMAGE_FILE))
    draw_user_drag(sample).save(os.path.join(folder, DRAG_FILE))
    H, W = sample.image.shape[:2]
    mask01 = np.zeros((H, W), np.uint8) if sample.mask is None else np.asarray(sample.mask, bool).astype(np.uint8)
    extra = {k: v for k, v in sample.extra.items() if k not in _OFFICIAL_KEYS}
    if format == "pickle":
        meta = {"prompt": sample.prompt, "points": sample.points, "mask": mask01, **extra}
        _atomic_bytes(os.path.join(folder, PICKLE_FILE), lambda f: pickle.dump(meta, f, protocol=4))
        stale = [JSON_FILE, MASK_FILE]
    else:
        Image.fromarray(mask01 * 255).save(os.path.join(folder, MASK_FILE))
        meta = {"prompt": sample.prompt, "points": sample.points, "mask": MASK_FILE, **_jsonable(extra)}
        text = json.dumps(meta, indent=1).encode()
        _atomic_bytes(os.path.join(folder, JSON_FILE), lambda f: f.write(text))
        stale = [PICKLE_FILE]
    for f in stale:
        if os.path.isfile(os.path.join(folder, f)):
            os.remove(os.path.join(folder, f))
    return folder


def _jsonable(extra: dict) -> dict:
    out = {}
    for k, v in extra.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        try:
            json.dumps(v)
        except TypeError:
            warnings.warn(f"meta key {k!r} ({type(v).__name__}) has no JSON form: left out of {JSON_FILE}")
            continue
        out[str(k)] = v
    return out


def _is_sample(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in (IMAGE_FILE, PICKLE_FILE, JSON_FILE))


def _subdirs(folder: str) -> list[str]:
    return sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


def find_samples(root) -> list[SampleRef]:
    """Every sample folder under `root`, sorted by (category, name): root/category/sample (DragBench) or
    root/sample (one category, named ''). A folder counts as a sample when it holds any of the sample files;
    one that lacks the others is still listed, so the runner records what is missing."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"dataset {root!r} is not a folder: give the folder that holds the category folders")
    refs = []
    for d in _subdirs(root):
        path = os.path.join(root, d)
        if _is_sample(path):
            refs.append(SampleRef("", d, path))
            continue
        for s in _subdirs(path):
            refs.append(SampleRef(d, s, os.path.join(path, s)))
    return sorted(refs, key=lambda r: (r.category, r.name))


def convert_dataset(src, dst, to: str = "json") -> dict:
    """Copy every sample of dataset `src` into `dst` in format `to` ("json" or "pickle"); reading pickles with
    the restricted unpickler. Returns {"converted": n, "errors": {sample id: message}} (a bad sample is
    skipped, named, and the rest converted)."""
    if to not in FORMATS:
        raise ValueError(f"to={to!r}: use one of {FORMATS}")
    done, errors = 0, {}
    for ref in find_samples(src):
        try:
            s = read_sample(ref.folder, ref.category)
        except (ValueError, OSError) as e:
            errors[ref.id] = str(e)
            continue
        write_sample(s, os.path.join(os.fspath(dst), ref.category, ref.name), to)
        done += 1
    return {"converted": done, "errors": errors}


def save_sample(session, folder, format: str = "pickle", extra: dict | None = None) -> str:
    """Turn a `DragSession`'s inputs (image, drags, mask, prompt; public API only) into a DragBench sample in
    `folder`, so an edit set up in a notebook becomes a benchmark case. Returns the folder."""
    drags = session.drags
    if not drags:
        raise ValueError("the session has no drags: add one with session.add_drag(handle=(x, y), target=(x, y)) "
                         "before saving it as a sample")
    folder = os.fspath(folder)
    sample = Sample(np.asarray(session.image.convert("RGB")).copy(), session.prompt,
                    [tuple(h) for h, _ in drags], [tuple(t) for _, t in drags],
                    None if session.mask is None else np.asarray(session.mask, bool),
                    os.path.basename(os.path.dirname(os.path.abspath(folder))),
                    os.path.basename(os.path.abspath(folder)), dict(extra or {}))
    return write_sample(sample.check(), folder, format)
