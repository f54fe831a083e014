"""The shipped small model and its world.

* `dragnb.demo.world` — the 64×64 shape world (seeded scenes, rendering, drag cases with ground truth, scoring)
* `dragnb.demo.model` — the demo UNet's architecture, scheduler and pixel codec
* `dragnb.demo.train` — `python -m dragnb.demo.train` reproduces `dragnb/demo/weights/`
* `dragnb.demo.run`   — `run_demo(out_dir)`: the packaged before/after/GIF demo
"""
