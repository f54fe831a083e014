"""Capture UNet decoder features with a forward hook (no copied UNet forward).

The official code takes the output of `up_blocks[2]` (its `unet_feature_idx = [3]` counts the mid block
first) and resizes it bilinearly to half the image size: the *supervision grid*.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


@contextmanager
def capture_block_output(unet, block_index: int):
    """Within the block, `store["feat"]` holds the latest output (B, C, h, w) of `unet.up_blocks[block_index]`."""
    n = len(unet.up_blocks)
    if not 0 <= block_index < n:
        raise ValueError(f"feature_block={block_index} but this UNet has {n} up blocks: use 0..{n - 1} "
                         "(official: 2)")
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["feat"] = output[0] if isinstance(output, tuple) else output

    handle = unet.up_blocks[block_index].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def resize_features(feat_bchw: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of decoder features to the supervision grid (h, w), in float32."""
    return F.interpolate(feat_bchw.float(), size=tuple(grid_hw), mode="bilinear", align_corners=False)


def unet_with_features(unet_fn, unet, x, t, block_index: int, grid_hw):
    """Run `unet_fn(x, t)` once; return (model output, features (B, C, h, w) on the supervision grid)."""
    with capture_block_output(unet, block_index) as store:
        out = unet_fn(x, t)
    return out, resize_features(store["feat"], grid_hw)
