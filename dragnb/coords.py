"""Inputs and coordinates: image/mask loading and validation, and the ONE place where image `(x, y)`
points are converted to the supervision grid `(row, col)` and back.

Resize policy: the model works on a size whose sides are multiples of `model.size_multiple` (8 × UNet
downsampling; 64 for SD) and, for models with `max_side`, no larger than it. The user's image is resized
(bilinear) to that working size, points are mapped with the per-axis scale, and results are resized back
to the user's size; so points and results are always in the user's image pixels.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image


def load_image(image) -> Image.Image:
    """PIL.Image | HxWx3 (or HxWx4, HxW) uint8/uint16/float array | path -> RGB PIL.Image (converted with a warning)."""
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ValueError(f"image file {os.fspath(image)!r} does not exist: pass an existing path, a PIL.Image or "
                             "an HxWx3 uint8 array")
        image = Image.open(image)
        image.load()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image array of shape {arr.shape} is not an image: use HxWx3 (RGB) uint8")
        if arr.dtype == np.uint16:
            warnings.warn("16-bit image converted to 8-bit (values / 257)", stacklevel=3)
            arr = (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
        elif arr.dtype in (np.float32, np.float64):
            if arr.min() < 0 or arr.max() > 1:
                raise ValueError(f"float image values span [{arr.min():.3g}, {arr.max():.3g}]: use floats in [0, 1] "
                                 "or uint8 in [0, 255]")
            arr = (arr * 255).round().astype(np.uint8)
        elif arr.dtype == bool or arr.dtype != np.uint8:
            raise ValueError(f"image array dtype {arr.dtype} is not supported: use uint8 (0-255), uint16, or float in [0, 1]")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        image = Image.fromarray(arr)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image of type {type(image).__name__} is not supported: pass a PIL.Image, an HxWx3 uint8 "
                        "array or a path")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        warnings.warn(f"{image.mode} image converted to 8-bit grayscale, then RGB", stacklevel=3)
        arr = np.asarray(image).astype(np.float64)
        scale = 257.0 if arr.max() > 255 else 1.0
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


def load_mask(mask, size_wh: tuple[int, int]) -> np.ndarray | None:
    """HxW bool/uint8 array, PIL 'L'/'1' image, path, or None -> HxW bool array (True = may change) or None."""
    if mask is None:
        return None
    if isinstance(mask, (str, os.PathLike)):
        mask = Image.open(mask)
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        mask = mask[..., 0]
    W, H = size_wh
    if mask.shape != (H, W):
        raise ValueError(f"mask of shape {mask.shape} does not match the {W}×{H} image: give an HxW = ({H}, {W}) array")
    m = mask > (127 if mask.dtype == np.uint8 and mask.max() > 1 else 0)
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
        """The working geometry of an image of `image_wh` on `model` (its size_multiple, latent_scale, max_side)."""
        multiple, latent_scale, max_side = model.size_multiple, model.latent_scale, model.max_side
        W, H = image_wh
        s = 1.0 if max_side is None else min(1.0, max_side / max(W, H))
        w = max(multiple, int(round(W * s / multiple)) * multiple)
        h = max(multiple, int(round(H * s / multiple)) * multiple)
        if (w, h) != (W, H):
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

    def mask_to_grid(self, mask: np.ndarray | None) -> np.ndarray | None:
        """HxW bool image mask -> (gh, gw) float mask (nearest), as the official code."""
        if mask is None:
            return None
        gh, gw = self.grid_hw
        img = Image.fromarray(mask.astype(np.uint8) * 255).resize((gw, gh), Image.NEAREST)
        return (np.asarray(img) > 127).astype(np.float32)
