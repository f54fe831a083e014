"""Scenes the package ships, with their preset drags and mask: what README's and the docs' snippets run on.

    from dragnb.demo import example
    scene = example()                   # the demo scene: scene.image, scene.drags, scene.mask
    s = DragSession(load_model("demo"), scene.image, mask=scene.mask)
    s.set_drags(scene.drags)

Scenes are drawn from `dragnb.demo.world` on the fly (nothing to download): ``example()`` is the demo
command's scene (`dragnb.demo.run.demo_case`); ``example(k)`` is held-out world case k (seeds the shipped
model was never trained on).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["Example", "example"]

HELD_OUT = 1_000_000_000
"""World seeds from here on are never drawn in training."""


@dataclass(frozen=True)
class Example:
    """A scene, its drags and its mask, ready for `DragSession` (image pixels: x right, y down)."""
    name: str
    image: Image.Image                  # 64×64 RGB
    drags: list                         # [((hx, hy), (tx, ty))]
    mask: np.ndarray                    # (64, 64) bool, True = may change
    target_image: Image.Image           # what the edit should look like: the shape moved by the drag

    @property
    def handle(self) -> tuple:
        return self.drags[0][0]

    @property
    def target(self) -> tuple:
        return self.drags[0][1]


def example(which: int | str = "demo") -> Example:
    """A shipped scene with its preset drag and mask: ``"demo"`` (the demo command's scene) or held-out case
    ``k`` (a whole number >= 0)."""
    from .run import DEMO_SEED
    from .world import sample_drag
    if isinstance(which, str):
        if which != "demo":
            raise ValueError(f"example({which!r}): use 'demo' or a whole number >= 0 (a held-out world case)")
        seed, name = DEMO_SEED, "demo"
    elif isinstance(which, (int, np.integer)) and not isinstance(which, bool) and which >= 0:
        seed, name = HELD_OUT + int(which), f"held-out {int(which)}"
    else:
        raise ValueError(f"example({which!r}): use 'demo' or a whole number >= 0 (a held-out world case)")
    case = sample_drag(seed)
    return Example(name, Image.fromarray(case.image), [(tuple(case.handle), tuple(case.target))],
                   case.mask.copy(), Image.fromarray(case.gt_image))
