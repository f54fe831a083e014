"""How well a model's drag features follow a moved shape: point tracking against the shape world's exact truth.

    python benchmarks/bench_tracking.py                       # the shipped model's drag features, 30 held-out cases
    python benchmarks/bench_tracking.py --weights DIR --n 50 --json out.json
    python benchmarks/bench_tracking.py --feature-block 2     # another decoder block's (DragDiffusion's; the demo
                                                              # model drags on up_blocks[1] since the fifteenth session)

For each held-out case (`sample_drag(seed)`, seeds >= 10**9) both the scene and its ground truth (the same scene
with the shape moved by the drag) are inverted as a session does, without LoRA; the handle's feature of the first
is searched (L1, as DragDiffusion's point tracking) in the second within the drag length + 4 cells
(`dragnb.demo.correspond.tracking_error`). The error is the distance (grid cells of the 32×32 supervision grid,
2 px each) from the cell found to the true target. If tracking cannot find the handle on the true result, the drag
cannot tell when it has arrived: the error bounds how well a drag can end. The last line:
`tracking: mean error X cells (Y of the drag), within 1 cell Z %, n = N`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def summarise(rows: list[dict]) -> dict:
    err = np.array([r["error"] for r in rows])
    drag = np.array([r["drag"] for r in rows])
    return dict(n=len(rows), error=float(err.mean()), error_frac=float((err / drag).mean()),
                within_1=float((err <= 1.0).mean()), error_median=float(np.median(err)), drag=float(drag.mean()))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="demo", help="'demo' (the shipped model) or a weights folder")
    p.add_argument("--n", type=int, default=30, help="held-out cases (default 30)")
    p.add_argument("--feature-block", type=int, default=None,
                   help="search the features of this decoder block (DragConfig.feature_block; default: the model's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows and the summary here")
    args = p.parse_args(argv)
    if args.n < 1:
        raise ValueError(f"--n {args.n} is invalid: use at least one case")
    import torch

    from dragnb import load_model
    from dragnb.demo.correspond import tracking_error
    from dragnb.demo.world import sample_drag
    torch.set_num_threads(args.threads)
    model = load_model(args.weights, device="cpu")
    extra = {} if args.feature_block is None else {"feature_block": args.feature_block}
    rows = tracking_error(model, [sample_drag(10**9 + k) for k in range(args.n)], **extra)
    s = summarise(rows)
    for r in rows:
        print(f"seed {r['seed']}: drag {r['drag']:.1f} cells, error {r['error']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"weights": args.weights, **extra, "summary": s, "rows": rows}, f, indent=1)
    print(f"tracking: mean error {s['error']:.2f} cells ({s['error_frac']:.2f} of the drag), within 1 cell "
          f"{100 * s['within_1']:.0f} %, n = {s['n']}")
    return s


if __name__ == "__main__":
    main()
