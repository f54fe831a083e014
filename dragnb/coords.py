"""Inputs and coordinates: image/mask loading and validation, and the ONE place where image `(x, y)`
points are converted to the supervision grid `(row, col)` and back.

Resize policy: the model works on a size whose sides are multiples of `model.size_multiple` (8 × UNet
downsampling; 64 for SD) and whose longer side is at most `model.max_side` (default
`dragnb.models.DEFAULT_MAX_SIDE` = 1024 for SD-size models, 64 for the shipped demo model; set it to None for no
limit). The user's image is resized (bilinear) to that working size, with a warning, points are mapped with the
per-axis scale, and results are resized back to the user's size; so points and results are always in the user's
image pixels.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps


def _open(path, what: str) -> Image.Image:
    """Open and read an image file, or a ValueError naming the file and the fix."""
    if os.path.isdir(path):
        raise ValueError(f"{what} {os.fspath(path)!r} is a folder, not an image file: pass a PNG or JPEG file")
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {os.fspath(path)!r} does not exist: pass an existing path, a PIL.Image or "
                         "an array")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's errors for unreadable files
        raise ValueError(f"{what} file {os.fspath(path)!r} is not a readable image ({type(e).__name__}: "
                         f"{str(e)[:160]}): pass a PNG or JPEG file") from e
    return img


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phone photos are stored sideways with a tag saying so)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: keep the pixels as stored
        return img
    return ImageOps.exif_transpose(img) if orientation not in (None, 1) else img


def _check_finite(arr: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{what} holds {int(bad.sum())} NaN/inf value(s) (of {arr.size}): replace them (e.g. "
                         "np.nan_to_num) before passing it")


def load_image(image) -> Image.Image:
    """PIL.Image | HxWx3 (or HxWx4, HxW) uint8/uint16/float array | path -> upright RGB PIL.Image.

    Paths and PIL images are turned upright by their EXIF orientation tag (as photo viewers show them). Float
    arrays must be finite and in [0, 1]; 16-bit, grayscale and transparent images are converted with a warning.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open(image, "image")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image array of shape {arr.shape} is not an image: use HxWx3 (RGB) uint8")
        if arr.dtype == np.uint16:
            warnings.warn("16-bit image converted to 8-bit (values / 257)", stacklevel=3)
            arr = (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
        elif np.issubdtype(arr.dtype, np.floating):
            _check_finite(arr, "float image")
            if arr.size and (arr.min() < 0 or arr.max() > 1):
                raise ValueError(f"float image values span [{arr.min():.3g}, {arr.max():.3g}]: use floats in [0, 1] "
                                 "or uint8 in [0, 255]")
            arr = (arr.astype(np.float64) * 255).round().astype(np.uint8)
        elif arr.dtype == bool or arr.dtype != np.uint8:
            raise ValueError(f"image array dtype {arr.dtype} is not supported: use uint8 (0-255), uint16, or float in [0, 1]")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        image = Image.fromarray(arr)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image of type {type(image).__name__} is not supported: pass a PIL.Image, an HxWx3 uint8 "
                        "array or a path")
    image = _upright(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image).astype(np.float64)
        _check_finite(arr, f"{image.mode} image")
        warnings.warn(f"{image.mode} image converted to 8-bit grayscale, then RGB", stacklevel=3)
        scale = 257.0 if arr.size and arr.max() > 255 else 1.0
        image = Image.fromarray((arr / scale).clip(0, 255).round().astype(np.uint8))
    if image.mode == "RGBA" or image.mode == "LA" or (image.mode == "P" and "transparency" in image.info):
        warnings.warn(f"{image.mode} image converted to RGB: transparent pixels composited on white", stacklevel=3)
        rgba = image.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(bg, rgba).convert("RGB")
    elif image.mode != "RGB":
        warnings.warn(f"{image.mode} image converted to RGB", stacklevel=3)
        image = image.convert("RGB")
    if min(image.size) < 8:
        raise ValueError(f"image of size {image.size[0]}×{image.size[1]} is too small: use at least 8×8 pixels")
    return image


def _painted(channel: np.ndarray) -> np.ndarray:
    """One mask channel -> bool "painted": bool as is; uint8 > 127 (or > 0 for a 0/1 mask); other integers
    > 0; floats > 0.5 (must be finite, in [0, 1])."""
    if channel.dtype == bool:
        return channel
    if np.issubdtype(channel.dtype, np.floating):
        _check_finite(channel, "float mask")
        if channel.size and (channel.min() < 0 or channel.max() > 1):
            raise ValueError(f"float mask values span [{channel.min():.3g}, {channel.max():.3g}]: use floats in "
                             "[0, 1] (thresholded at 0.5), a bool array, or uint8 0/255")
        return channel > 0.5
    if np.issubdtype(channel.dtype, np.integer):
        return channel > (127 if channel.dtype == np.uint8 and channel.max(initial=0) > 1 else 0)
    raise TypeError(f"mask dtype {channel.dtype} is not supported: use bool, uint8 (0/255), or float in [0, 1]")


def load_mask(mask, size_wh: tuple[int, int]) -> np.ndarray | None:
    """Editable region -> HxW bool array (True = may change), or None (the whole image may change).

    Accepted: an HxW array, an HxWx3 (RGB) or HxWx4 (RGBA) array, a PIL image of any mode, a path, or None.
    Each value is read as "painted" by its type:

    * bool: True; uint8: above 127 (a 0/1 uint8 mask: 1), other integers: non-zero — today's meaning;
    * float (a soft mask, e.g. a feathered brush): above 0.5; floats must be finite and in [0, 1];
    * colour masks (RGB/RGBA arrays and images): a pixel is editable when ANY of its colour channels is painted,
      so a red, green, blue or white brush all mark the region (black = keep). Where an alpha channel is
      present, pixels with alpha ≤ half (transparent) are not editable, whatever their colour.

    Paths and PIL images are turned upright by their EXIF orientation tag, as `load_image` does for images.
    """
    if mask is None:
        return None
    if isinstance(mask, (str, os.PathLike)):
        mask = _open(mask, "mask")
    if isinstance(mask, Image.Image):
        mask = _upright(mask)
        if mask.mode == "P":
            mask = mask.convert("RGBA")
        elif mask.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "F"):
            mask = mask.convert("RGBA" if "A" in mask.getbands() else "RGB")
        mask = np.asarray(mask)
    if not isinstance(mask, np.ndarray):
        try:
            mask = np.asarray(mask)
        except Exception:
            mask = None
        if mask is None or mask.dtype == object:
            raise TypeError("mask is not an array: pass an HxW bool/uint8 array, a PIL image, a path, or None")
    W, H = size_wh
    if mask.ndim == 3 and mask.shape[2] in (1, 2, 3, 4):
        colour, alpha = (mask[..., :-1], mask[..., -1]) if mask.shape[2] in (2, 4) else (mask, None)
        m = _painted(colour).any(axis=2)
        if alpha is not None:
            m &= _painted(alpha) if alpha.dtype != np.uint8 else alpha > 127
    elif mask.ndim == 2:
        m = _painted(mask)
    else:
        raise ValueError(f"mask of shape {mask.shape} is not a mask: give an HxW = ({H}, {W}) array, or HxWx3/HxWx4 "
                         "for a colour mask")
    if m.shape != (H, W):
        raise ValueError(f"mask of shape {mask.shape} does not match the {W}×{H} image: give an HxW = ({H}, {W}) array")
    if not m.any():
        raise ValueError("mask has no editable pixel (all False/0): paint the region that may change (True/255), "
                         "or pass None to let the whole image change")
    return m


@dataclass(frozen=True)
class Geometry:
    """Sizes of one edit: the user's image (W, H), the model's working size (w, h) and the grid (gh, gw)."""
    image_wh: tuple[int, int]
    work_wh: tuple[int, int]
    grid_hw: tuple[int, int]
    latent_hw: tuple[int, int]

    @classmethod
    def for_model(cls, image_wh, model, sup_res_scale: float):
        """The working geometry of an image of `image_wh` on `model` (its size_multiple, latent_scale, max_side).

        The working size keeps the aspect ratio, has sides that are multiples of `model.size_multiple`, and a
        longer side of at most `model.max_side` (None: no limit). Both resizes warn; the one for the size limit
        names the setting (`model.max_side`) that changes it.
        """
        multiple, latent_scale, max_side = model.size_multiple, model.latent_scale, model.max_side
        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer))
                                     or max_side < multiple):
            raise ValueError(f"model.max_side={max_side!r} is invalid: use a whole number of pixels ≥ {multiple} "
                             "(this model's size multiple), or None for no limit")
        W, H = image_wh
        capped = max_side is not None and max(W, H) > max_side
        s = max_side / max(W, H) if capped else 1.0
        w = max(multiple, int(round(W * s / multiple)) * multiple)
        h = max(multiple, int(round(H * s / multiple)) * multiple)
        if max_side is not None:  # rounding up to a multiple must not undo the limit
            top = max(multiple, (int(max_side) // multiple) * multiple)
            w, h = min(w, top), min(h, top)
        if capped:
            warnings.warn(f"image {W}×{H} is larger than this model's max_side={max_side}: it is worked on at "
                          f"{w}×{h} (sides multiples of {multiple}); points are mapped and the result is resized back to "
                          f"{W}×{H}. To work at a larger size set model.max_side (e.g. model.max_side = "
                          f"{2 * max_side}, or None for no limit; time and memory grow with the area)", stacklevel=3)
        elif (w, h) != (W, H):
            warnings.warn(f"image {W}×{H} is worked on at {w}×{h} (sides must be multiples of {multiple}"
                          + (f", at most {max_side}" if max_side else "") + "); points are mapped and the result is "
                          f"resized back to {W}×{H}", stacklevel=3)
        grid = (int(sup_res_scale * h), int(sup_res_scale * w))
        return cls((W, H), (w, h), grid, (h // latent_scale, w // latent_scale))

    def check_point(self, xy, what: str = "point") -> tuple[float, float]:
        try:
            x, y = float(xy[0]), float(xy[1])
        except (TypeError, ValueError, IndexError):
            raise TypeError(f"{what} {xy!r} is not a point: give (x, y) in image pixels") from None
        W, H = self.image_wh
        if not (0 <= x <= W - 1 and 0 <= y <= H - 1) or not np.isfinite([x, y]).all():
            raise ValueError(f"{what} ({x:g}, {y:g}) is outside the {W}×{H} image: use 0 ≤ x ≤ {W - 1}, 0 ≤ y ≤ {H - 1}")
        return x, y

    def image_to_grid(self, xy) -> tuple[int, int]:
        """(x, y) image pixels -> (row, col) on the supervision grid, rounded as the official code."""
        W, H = self.image_wh
        gh, gw = self.grid_hw
        r = min(gh - 1, max(0, int(round(xy[1] / H * gh))))
        c = min(gw - 1, max(0, int(round(xy[0] / W * gw))))
        return r, c

    def grid_to_image(self, rc) -> tuple[float, float]:
        """(row, col) on the grid -> (x, y) in image pixels."""
        W, H = self.image_wh
        gh, gw = self.grid_hw
        return float(rc[1]) * W / gw, float(rc[0]) * H / gh

    def image_to_latent(self, xy) -> tuple[float, float]:
        """(x, y) image pixels -> (row, col) in latent cells, unrounded (for `drag.warp_latent`)."""
        W, H = self.image_wh
        lh, lw = self.latent_hw
        return float(xy[1]) * lh / H, float(xy[0]) * lw / W

    def mask_to_grid(self, mask: np.ndarray | None) -> np.ndarray | None:
        """HxW bool image mask -> (gh, gw) float mask by the official rule: torch's `nearest` (grid cell i takes
        image row floor(i * H / gh)), the same cells as the official `F.interpolate(mask, (sup_h, sup_w))`."""
        if mask is None:
            return None
        import torch
        import torch.nn.functional as F
        t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        return F.interpolate(t, size=tuple(self.grid_hw), mode="nearest")[0, 0].numpy()


def drag_path_mask(image_wh: tuple[int, int], drags, min_half_width: float = 2.0) -> np.ndarray:
    """An editable region made from the drags themselves (`DragConfig.auto_mask`): an HxW bool mask, True within
    half-width max(min_half_width, |t - h| / 2) pixels of each handle → target segment (a capsule)."""
    W, H = image_wh
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    mask = np.zeros((H, W), bool)
    for (hx, hy), (tx, ty) in drags:
        dx, dy = tx - hx, ty - hy
        length2 = dx * dx + dy * dy
        u = np.clip(((xx - hx) * dx + (yy - hy) * dy) / max(length2, 1e-9), 0.0, 1.0)
        d2 = (xx - hx - u * dx) ** 2 + (yy - hy - u * dy) ** 2
        mask |= d2 <= max(min_half_width, 0.5 * length2 ** 0.5) ** 2
    return mask
