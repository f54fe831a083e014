"""Quick probes of levers the library does not offer as settings, on the demo model's default method, scored like
bench_quality (dist / drag, IoU, background PSNR) on the tuning seeds 2·10⁹ + START … (never the benchmark's 10⁹ …).

    python benchmarks/probe_demo_levers.py --lever adam --n 12               # the default, for the same cases
    python benchmarks/probe_demo_levers.py --lever ngd:5 --n 12              # drag optimiser: normalised gradient
    python benchmarks/probe_demo_levers.py --lever lora-band:600,800 --n 12  # LoRA timesteps from a band
    python benchmarks/probe_demo_levers.py --set inversion_strength=0.6      # any DragConfig change, with or without a lever
    python benchmarks/probe_demo_levers.py --weights W --set drag_lr=0.01    # another demo-layout model (default: shipped)

* ``ngd:MUL``: the drag latent moves by MUL·drag_lr·g/rms(g) (the gradient's direction at Adam's step size)
  instead of Adam's per-element normalised step.
* ``lora-band:LO,HI``: the LoRA fine-tune draws its timesteps from [LO, HI) (the drag's own band) instead of the
  whole schedule.
Each lever is patched in for this process only (`dragnb.state`'s optimiser factory, `dragnb.lora.train_lora`).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402


class NormalisedGD(torch.optim.Optimizer):
    """p -= mul · lr · g / rms(g). The session re-reads the lr each step, so the multiplier lives apart."""

    def __init__(self, params, lr: float, mul: float):
        super().__init__(params, dict(lr=lr))
        self.mul = mul

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    g = p.grad
                    p.add_(g / (g.pow(2).mean().sqrt() + 1e-12), alpha=-group["lr"] * self.mul)


def apply_lever(lever: str) -> None:
    import dragnb.lora as lora
    import dragnb.state as state
    name, _, arg = lever.partition(":")
    if name == "adam":
        return
    if name == "ngd":
        mul = float(arg or 1.0)
        state._adam = lambda latent, lr: NormalisedGD([latent], lr, mul)
        return
    if name == "lora-band":
        lo, hi = (int(v) for v in arg.split(","))
        lora.train_lora = _band(lora.train_lora, lo, hi)
        return
    raise ValueError(f"--lever {lever!r}: use adam, ngd:MUL or lora-band:LO,HI")


def _band(train_lora, lo: int, hi: int):
    """train_lora with its timestep draw limited to [lo, hi): torch.randint(0, T, ...) inside becomes randint(lo, hi)."""
    import dragnb.lora as lora

    class _Torch:
        def __getattr__(self, k):
            return getattr(torch, k)

        @staticmethod
        def randint(low, high, *a, **kw):
            return torch.randint(lo, hi, *a, **kw) if (low, high) == (0, 1000) else torch.randint(low, high, *a, **kw)

    @functools.wraps(train_lora)
    def wrapped(*a, **kw):
        lora.torch = _Torch()
        try:
            return train_lora(*a, **kw)
        finally:
            lora.torch = torch
    return wrapped


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lever", default="adam")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", default="demo", help="a demo-layout weights folder (default: the shipped model)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a DragConfig change (repeatable), e.g. --set inversion_strength=0.6")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    apply_lever(a.lever)
    from dragnb import DragSession, load_model
    from dragnb.demo.world import sample_drag, score_edit
    model = load_model(a.weights)
    changes = {}
    for item in a.set:
        k, _, v = item.partition("=")
        kind = type(getattr(model.default_config(), k))
        changes[k] = (v.lower() in ("1", "true", "yes")) if kind is bool else kind(v)
    model.default_config(**changes)      # a bad field or value fails here, before any case
    rows = []
    for i in range(a.n):
        case = sample_drag(2 * 10**9 + a.start + i)
        s = DragSession(model, case.image, seed=0, config=model.default_config(**changes))
        s.add_drag(handle=case.handle, target=case.target)
        s.set_mask(case.mask)
        t = time.perf_counter()
        s.prepare(progress=False)
        s.run(progress=False)
        sc = score_edit(np.asarray(s.result().convert("RGB")), case)
        rows.append(dict(dist=float(sc["dist_frac"]), iou=float(sc["iou"]), bg=float(sc["bg_psnr"]),
                         lost=bool(sc["lost"]), s=time.perf_counter() - t))
    out = dict(weights=a.weights, lever=a.lever, set=changes, n=a.n, dist=float(np.mean([r["dist"] for r in rows])),
               iou=float(np.mean([r["iou"] for r in rows])), bg=float(np.median([r["bg"] for r in rows])),
               lost=sum(r["lost"] for r in rows), s=float(np.mean([r["s"] for r in rows])))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
