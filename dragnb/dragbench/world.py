"""DragBench-format datasets made from the shape world, where the truth of every edit is known.

    python -m dragnb.dragbench world OUT --n 20 [--format pickle|json] [--seed0 1000000000]

Each sample is `dragnb.demo.world.sample_drag(seed)` (seeds >= 10**9 are never trained on): category = the dragged
shape's kind (circle, square, triangle, ellipse), one drag from the shape's centroid, the case's mask, prompt
"a <kind>", and 'world_seed' / 'world_size' in its meta so the runner also scores it against the ground truth
(`dragnb.demo.world.score_edit`).
"""
from __future__ import annotations

import os

from .format import FORMATS, Sample, write_sample

__all__ = ["world_sample", "make_world_dataset", "WORLD_SEED0"]

WORLD_SEED0 = 10**9


def world_sample(seed: int, size: int = 64) -> Sample:
    """The shape-world case `seed` as a DragBench `Sample`."""
    from ..demo.world import sample_drag
    c = sample_drag(int(seed), size)
    kind = c.scene.shapes[c.index].kind
    return Sample(c.image.copy(), f"a {kind}", [c.handle], [c.target], c.mask.copy(), kind, f"world_{c.seed}",
                  dict(world_seed=int(c.seed), world_size=int(size)))


def make_world_dataset(root, n: int, format: str = "pickle", seed0: int = WORLD_SEED0, size: int = 64) -> list[str]:
    """Write `n` shape-world samples (seeds seed0 .. seed0 + n - 1) under root/<kind>/world_<seed>/; returns the
    sample folders."""
    if int(n) < 1:
        raise ValueError(f"n={n}: make at least 1 sample")
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: use one of {FORMATS}")
    folders = []
    for i in range(int(n)):
        s = world_sample(seed0 + i, size)
        folders.append(write_sample(s, os.path.join(os.fspath(root), s.category, s.name), format))
    return folders
