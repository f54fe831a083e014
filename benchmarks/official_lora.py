"""The official DragDiffusion LoRA fine-tune, run as it is, timed beside dragnb's.

    python benchmarks/official_lora.py OUT_DIR --official DIR --site024 SITE [--model random-sd15 --device cuda]
    python benchmarks/official_lora.py OUT_DIR --official DIR --site024 SITE --quick      # CPU smoke run, tiny model

The official `utils/lora_utils.py:train_lora` imports diffusers APIs that diffusers removed after 0.24
(`LoRALinearLayer`, `LoRACompatibleLinear` projections), and diffusers 0.24 needs an older huggingface_hub,
transformers and accelerate than the GPU machine has. So it runs in a process of its own whose `sys.path` starts
with SITE, a folder holding diffusers 0.24.0, huggingface_hub 0.19.4, transformers 4.36.2, tokenizers 0.15.0 and
accelerate 0.25.0 (installed from wheels carried in `.whl024/`: benchmarks/PARITY.md says how), and reads the model
from a diffusers folder this script writes with today's diffusers first:

1. here (dragnb's environment): build the model (`random_sd15()` or `tiny_model()`), save it as a
   `StableDiffusionPipeline` folder in a temporary folder (removed at the end), with the parity benchmark's scene;
   time dragnb's own fine-tune of the same recipe (80 steps, batch 4, rank 16, lr 5e-4) on that model, eager, and
   with the model's CUDA graphs when `--speed cuda_graph`;
2. a child process with SITE first on its path: the official `train_lora` on that folder and image, timed, with
   its peak CUDA memory (`torch.cuda.max_memory_allocated`). Its fp16 `Accelerator` needs a GPU: on a CPU (the
   smoke run) the child swaps in `mixed_precision="no"` and says so.

The official trainer loads its model from the folder itself; that loading is timed apart (its outermost
`from_pretrained` calls) and left out of X. The last line: `official LoRA: X s (peak Y MiB; and L s loading the
model, which its trainer does itself) against dragnb's Z s (peak W MiB), N steps`. Everything lands in
OUT_DIR/official_lora.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import json, os, sys, time
site, official, model_dir, image_path, out, steps, batch = sys.argv[1:8]
sys.path[:0] = [site, official]
sys.modules["peft"] = None   # today's peft needs today's accelerate; diffusers 0.24 imports it when it finds it
import numpy as np
import torch
from PIL import Image
import accelerate
from utils import lora_utils
notes = []
if not torch.cuda.is_available():          # the smoke run: accelerate refuses fp16 mixed precision without a GPU
    class _Cpu(accelerate.Accelerator):
        def __init__(self, *a, **k):
            k["mixed_precision"] = "no"
            super().__init__(*a, **k)
    lora_utils.Accelerator = _Cpu
    import types
    from torchvision import transforms as _T
    small = types.SimpleNamespace(**{k: getattr(_T, k) for k in dir(_T) if not k.startswith("_")})
    small.Resize = lambda size, **k: _T.Resize(64, **k)       # its fixed 512-px crop, float16 on 2 CPU cores: too slow
    small.RandomCrop = lambda size, **k: _T.RandomCrop(64, **k)
    lora_utils.transforms = small
    notes.append("CPU: the Accelerator's fp16 mixed precision replaced by 'no' (fp16 weights kept), and its "
                 "512-px resize and crop by 64 px")

class _Progress:
    def tqdm(self, it, desc=None):
        return it

import diffusers, transformers, huggingface_hub
# the trainer loads its model from the folder itself: time the loading apart (outermost from_pretrained calls only)
load = {"s": 0.0, "depth": 0}
def _timed(cls):
    orig = cls.from_pretrained
    def from_pretrained(*a, **k):
        load["depth"] += 1
        t0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            load["depth"] -= 1
            if load["depth"] == 0:
                load["s"] += time.perf_counter() - t0
    cls.from_pretrained = from_pretrained
for cls in (lora_utils.AutoTokenizer, lora_utils.PretrainedConfig, lora_utils.DDPMScheduler, lora_utils.AutoencoderKL,
            lora_utils.UNet2DConditionModel, lora_utils.StableDiffusionPipeline, transformers.CLIPTextModel):
    _timed(cls)
image = np.asarray(Image.open(image_path).convert("RGB"))
if torch.cuda.is_available():
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
lora_utils.train_lora(image, "a photo of a red ball", model_dir, "default", out, int(steps), 5e-4, int(batch), 16,
                      _Progress())
if torch.cuda.is_available():
    torch.cuda.synchronize()
s = time.perf_counter() - t
peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
saved = sorted(os.listdir(out)) if os.path.isdir(out) else []
print("OFFICIAL_LORA_JSON " + json.dumps(dict(s=s, load_s=load["s"], train_s=s - load["s"], peak_mb=peak, steps=int(steps), batch=int(batch), notes=notes,
      saved=saved, versions=dict(diffusers=diffusers.__version__, transformers=transformers.__version__,
      huggingface_hub=huggingface_hub.__version__, accelerate=accelerate.__version__, torch=torch.__version__))))
'''


def save_model(model, folder: Path) -> None:
    """The model as a StableDiffusionPipeline folder that diffusers 0.24 can read (no safety checker)."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=model.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    if not (folder / "tokenizer" / "vocab.json").exists():   # the slow tokenizer's files, which the trainer reads
        from dragnb.sd_configs import write_byte_tokenizer_files
        write_byte_tokenizer_files(folder / "tokenizer")


def dragnb_lora(model, image, steps: int, batch: int) -> dict:
    """dragnb's fine-tune of the official recipe on the same model and image: wall seconds and peak CUDA memory."""
    import torch

    from dragnb import graphs, lora
    dev = model.device
    z0 = model.encode(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0)
    emb = model.encode_prompt("a photo of a red ball")
    if dev.type == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    lora.train_lora(model, z0, emb, rank=16, steps=steps, lr=5e-4, batch_size=batch, seed=0,
                    unet_call=graphs.training_call(model))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return dict(s=time.perf_counter() - t,
                peak_mb=torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--official", required=True, help="a DragDiffusion checkout (its utils/lora_utils.py)")
    p.add_argument("--site024", required=True, help="the folder with diffusers 0.24 and its era's dependencies")
    p.add_argument("--model", default=None, help="random-sd15 (default) or tiny (the default with --quick)")
    p.add_argument("--device", default=None, help="default cuda (cpu with --quick)")
    p.add_argument("--steps", type=int, default=None, help="LoRA steps (default 80, 2 with --quick)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--speed", default=None, help="dragnb's speed words for its fine-tune, e.g. cuda_graph")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny model, 2 steps")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for the official child process")
    a = p.parse_args(argv)
    lora_file = Path(a.official) / "utils" / "lora_utils.py"
    if not lora_file.is_file():
        p.error(f"--official {a.official!r} has no utils/lora_utils.py: point it at a DragDiffusion checkout")
    if not (Path(a.site024) / "diffusers").is_dir():
        p.error(f"--site024 {a.site024!r} holds no diffusers: install .whl024/*.whl into it (benchmarks/PARITY.md)")
    import torch
    from PIL import Image

    from dragnb.bench import model_by_name
    from dragnb.speed import parse_words, set_speed
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from parity_official import scene
    model_name = a.model or ("tiny" if a.quick else "random-sd15")
    device = a.device or ("cpu" if a.quick else "cuda")
    steps = a.steps if a.steps is not None else (2 if a.quick else 80)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dragnb_official_lora_"))   # the model folder (GBs at SD size), image, LoRA
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = model_by_name(model_name, device, dtype)
    size = 512 if model_name == "random-sd15" else 64
    image = scene(size)
    Image.fromarray(image).save(work / "image.png")
    t = time.perf_counter()
    save_model(model, work / "model")
    res = dict(model=model_name, device=device, size=size, steps=steps, batch=a.batch, save_s=time.perf_counter() - t,
               official_commit=(Path(a.official) / "COMMIT").read_text().strip()[:12]
               if (Path(a.official) / "COMMIT").exists() else None)
    res["dragnb_eager"] = dragnb_lora(model, image, steps, a.batch)
    if a.speed:
        set_speed(model, **parse_words(a.speed))
        res["dragnb_speed"] = {"words": a.speed, **dragnb_lora(model, image, steps, a.batch)}
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # the child sees SITE, not today's diffusers
    (out / "official_lora.json").write_text(json.dumps(res, indent=1) + "\n")   # dragnb's part, if the child is cut
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(Path(a.site024).resolve()),
                               str(Path(a.official).resolve()), str(work / "model"), str(work / "image.png"),
                               str(work / "official_lora"), str(steps), str(a.batch)],
                              capture_output=True, text=True, timeout=a.timeout, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("OFFICIAL_LORA_JSON ")]
        if proc.returncode or not line:
            res["official"] = dict(error=f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
            print(proc.stderr[-3000:], file=sys.stderr)
        else:
            res["official"] = json.loads(line[-1].split(" ", 1)[1])
    except subprocess.TimeoutExpired:
        res["official"] = dict(error=f"timed out after {a.timeout:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "official_lora.json").write_text(json.dumps(res, indent=1) + "\n")
    d = res.get("dragnb_speed") or res["dragnb_eager"]
    o = res["official"]
    mib = lambda v: "n/a" if v is None else f"{v:.0f}"  # noqa: E731
    if "error" in o:
        print(f"official LoRA: failed ({o['error']}); dragnb's {d['s']:.2f} s (peak {mib(d['peak_mb'])} MiB), "
              f"{steps} steps")
    else:
        print(f"official LoRA: {o['train_s']:.2f} s (peak {mib(o['peak_mb'])} MiB; and {o['load_s']:.2f} s loading the "
              f"model, which its trainer does itself) against dragnb's {d['s']:.2f} s (peak {mib(d['peak_mb'])} MiB), "
              f"{steps} steps")
    return res


if __name__ == "__main__":
    main()
