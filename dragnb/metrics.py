"""Image measures shared by the viz, the demo world's scoring and the demo training."""
from __future__ import annotations

import math

import numpy as np


def psnr(a, b) -> float:
    """PSNR in dB between two uint8 images (or pixel arrays) of the same shape; inf when identical."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)
