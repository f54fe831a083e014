"""Is the demo model's training reproducible from a seed on this machine? Train twice, compare the weights.

    python benchmarks/train_repeat.py OUT_DIR                         # 300 steps twice, the GPU call's settings
    python benchmarks/train_repeat.py OUT_DIR --steps 50 -- --deterministic --batch 64
    python benchmarks/train_repeat.py OUT_DIR --steps 4 --init none -- --arch tiny --batch 4 --device cpu  # smoke

Each run is its own process (`python -m dragnb.demo.train --out OUT_DIR/runK --figures none --steps N ...`), so
nothing one run's process learnt (cuDNN's autotuner picks, caches) carries into the other. Arguments after `--` go
to both runs, after the defaults below (a later option wins). The EMA weights that ship are compared tensor by
tensor; the last line is

    repeat: N steps twice from seed S on DEVICE: max |dw| = X over K tensors (J differ), identical: yes|no

and OUT_DIR/repeat.json holds the figures and both runs' training records.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# the GPU training call's settings (benchmarks/gpu_train.sh); --steps, --seed and --init are this script's own options
DEFAULTS = ["--arch", "f4l3", "--batch", "256", "--lr", "1.5e-4", "--warmup", "100", "--data", "torch",
            "--precision", "bf16", "--log-every", "100"]


def load_unet_weights(folder: Path) -> dict:
    from safetensors.torch import load_file
    files = sorted((folder / "unet").glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no unet/*.safetensors; did the run finish? (see its log beside it)")
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def compare(a: dict, b: dict) -> dict:
    """Max |a - b| over the tensors both hold, how many differ, and which names only one holds."""
    if set(a) != set(b):
        raise ValueError(f"the two runs saved different tensors: {sorted(set(a) ^ set(b))[:5]}")
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() if a[k].numel() else 0.0 for k in a}
    return dict(max_abs=max(diffs.values(), default=0.0), tensors=len(diffs),
                differ=sum(v > 0 for v in diffs.values()), identical=all(v == 0 for v in diffs.values()),
                largest=sorted(diffs.items(), key=lambda kv: -kv[1])[:5])


def repeat_line(r: dict) -> str:
    c = r["compare"]
    return (f"repeat: {r['steps']} steps twice from seed {r['seed']} on {r['device']}: max |dw| = {c['max_abs']:.3g} "
            f"over {c['tensors']} tensors ({c['differ']} differ), identical: {'yes' if c['identical'] else 'no'}")


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder for the two runs and repeat.json")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=str(ROOT / "dragnb" / "demo" / "weights"),
                   help="weights folder both runs start from (default: the shipped model, as the GPU call); "
                        "'none': fresh weights of --arch")
    p.add_argument("--timeout", type=float, default=None, help="seconds each run may take")
    a = p.parse_args(own)
    if a.steps < 1:
        raise SystemExit(f"--steps {a.steps}: use at least 1 step")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    records, secs = [], []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for k in (1, 2):
        run = out / f"run{k}"
        cmd = [sys.executable, "-m", "dragnb.demo.train", "--out", str(run), "--figures", "none", *DEFAULTS,
               *extra, "--steps", str(a.steps), "--seed", str(a.seed)] + ([] if a.init == "none" else ["--init", a.init])
        t0 = time.time()
        with open(out / f"run{k}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=a.timeout).returncode
        secs.append(round(time.time() - t0, 1))
        if rc != 0:
            tail = (out / f"run{k}.log").read_text()[-2000:]
            raise SystemExit(f"run {k} exited {rc}: {' '.join(cmd)}\n{tail}")
        records.append(json.loads((run / "dragnb_demo.json").read_text())["training"])
        print(f"run {k}: {a.steps} steps in {secs[-1]} s, final loss {records[-1]['final_loss']}", flush=True)
    res = dict(steps=a.steps, seed=a.seed, init=a.init, device=records[0]["device"], extra_args=extra, seconds=secs,
               compare=compare(load_unet_weights(out / "run1"), load_unet_weights(out / "run2")),
               final_losses=[r["final_loss"] for r in records], training=records,
               torch=torch.__version__)
    (out / "repeat.json").write_text(json.dumps(res, indent=1, default=str))
    print(repeat_line(res))
    return res


if __name__ == "__main__":
    main()
