"""Small synthetic scenes the session tests share (no model-specific content)."""
import numpy as np


def disc_scene(size: int = 32, shift: int = 0) -> np.ndarray:
    """A size×size RGB gradient with a yellow disc of radius 5 centred at (10 + shift, 16)."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = 40 + 4 * xx
    img[..., 2] = 200 - 3 * yy
    img[((xx - 10 - shift) ** 2 + (yy - 16) ** 2) < 25] = (250, 220, 10)
    return img


#: Settings that keep a tiny-model session fast.
FAST = dict(lora_steps=2, lora_batch_size=1, n_inference_steps=10, drag_steps=6, snapshot_every=2)


def disc_session(model, **cfg):
    """A session on `disc_scene()` with one drag (10, 16) -> (22, 16), FAST settings plus `cfg`."""
    from dragnb import DragSession
    s = DragSession(model, disc_scene(), prompt="a disc", seed=0, config=model.default_config(**{**FAST, **cfg}))
    s.add_drag((10, 16), (22, 16))
    return s
