"""The shipped small model and its world.

* `dragnb.demo.world` — the 64×64 shape world (seeded scenes, rendering, drag cases with ground truth, scoring)
* `dragnb.demo.world_torch` — the same world drawn and rasterised in torch, batched, on any device (training)
* `dragnb.demo.model` — the demo UNet's architectures, scheduler and pixel codec
* `dragnb.demo.fidelity` — shape fidelity: how many shapes in an image are clean primitives (the prior's measure)
* `dragnb.demo.evaluate` — x0 PSNR per noise level, samples from noise and their fidelity
* `dragnb.demo.train` — `python -m dragnb.demo.train` reproduces `dragnb/demo/weights/`
* `dragnb.demo.run`   — `run_demo(out_dir)`: the packaged before/after/GIF demo
* `dragnb.demo.examples` — `example()`: a shipped scene with its preset drags and mask (README's snippets use it)
"""
from .examples import Example, example

__all__ = ["Example", "example"]
