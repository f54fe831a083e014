"""dragnb against the official DragDiffusion code, stage by stage, on the same model, image, points, mask and seed.

    python benchmarks/parity_official.py --official /path/to/DragDiffusion                 # tiny SD-shaped model, CPU
    python benchmarks/parity_official.py --official DIR --model demo                        # drag loop only (v-pred)
    python benchmarks/parity_official.py --official DIR --model random-sd15 --device cuda --size 512   # GPU

DIR is a checkout of github.com/Yujun-Shi/DragDiffusion (not part of this repository; see benchmarks/PARITY.md for
how to get it). Its modules are imported from DIR at run time (`drag_pipeline.py`, `utils/drag_utils.py`,
`utils/attn_utils.py`; einops is their one extra need) and driven through thin adapters written here:

  * `OfficialAdapter` builds its `DragPipeline` on the SAME unet / vae / text encoder / tokenizer objects as the
    dragnb model (and its own DDIM scheduler from the same config), installs its UNet forward override and its
    attention editor only while official code runs, and removes them afterwards (the UNet is shared);
  * the LoRA is trained once, by the dragnb session (`dragnb.lora.train_lora`; the official trainer imports diffusers
    APIs that no longer exist: see PARITY.md), and those weights are applied to the shared UNet for the official
    code with `dragnb.lora.applied`;
  * the glue of the official `utils/ui_utils.py:run_drag` (which imports gradio and needs CUDA) is repeated in
    `official_edit`: point and mask conversion, its `args`, inversion, `drag_diffusion_update`, the editor, the
    pipeline call, and its uint8 conversion;
  * per-step figures of `drag_diffusion_update` come from taps: the adapter model records every latent the loop
    feeds the UNet and every x_{t-1}, a wrapper around its `point_tracking` records the handles, and its printed
    `loss total=` lines give the total loss (6 decimals); its mask term is recomputed from the recorded x_{t-1}.

Stages: (1) DDIM inversion from the image, (2) source features at the same z_t, (3) the drag loop from the same
z_t, step by step, (4) denoising with mutual self-attention of the same (z_t, ẑ_t), (5) the whole edit (each code
chaining its own stages). The last line:
    parity: max |dlatent| = X over N steps, handles identical: yes|no, final PSNR = Y dB
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: the official pipeline's progress bars

import argparse
import contextlib
import importlib.util
import io
import json
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

try:
    import dragnb  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dragnb import DragSession, ddim, graphs, lora  # noqa: E402
from dragnb.attention import mutual_self_attention  # noqa: E402
from dragnb.unet import guided_unet_fn, using  # noqa: E402  (the UNet call with dragnb's autocast and guidance)

# the official run_drag's fixed values and its UI defaults (drag_ui.py), for the table that shows both
OFFICIAL_DEFAULTS = dict(n_inference_steps=50, inversion_strength=0.7, guidance_scale=1.0, feature_block=2,
                         sup_res_scale=0.5, r_m=1, r_p=3, lam=0.1, drag_lr=0.01, drag_steps=80, reach_distance=2.0,
                         attn_start_layer=10, attn_start_step=0, lora_rank=16, lora_steps=80, lora_lr=5e-4,
                         lora_batch_size=4)


# ------------------------------------------------------------------------------------------- the official modules
def _load_file(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def official_commit(official_dir: str) -> str:
    """The official commit: DIR/COMMIT (the checkout recipe in PARITY.md writes it), else DIR's own git HEAD.
    A DIR inside another repository (e.g. the ignored .official/ of this one) is not asked: git would answer with
    the enclosing repository's commit."""
    p = os.path.join(official_dir, "COMMIT")
    if os.path.isfile(p):
        return open(p).read().strip()
    try:
        top = subprocess.run(["git", "-C", official_dir, "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        lines = top.stdout.split()
        if (top.returncode == 0 and len(lines) == 2 and os.path.realpath(lines[0]) == os.path.realpath(official_dir)
                and re.fullmatch(r"[0-9a-f]{40}", lines[1])):
            return lines[1]
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def load_official(official_dir: str) -> SimpleNamespace:
    """Import the official modules from DIR by path, under private names (its `utils` would shadow others)."""
    need = ["drag_pipeline.py", "utils/drag_utils.py", "utils/attn_utils.py"]
    missing = [f for f in need if not os.path.isfile(os.path.join(official_dir, f))]
    if missing:
        raise SystemExit(f"--official {official_dir!r} is not a DragDiffusion checkout: missing {missing}. "
                         "Get it as benchmarks/PARITY.md says.")
    try:
        import einops  # noqa: F401
    except ImportError:
        raise SystemExit("the official utils/attn_utils.py needs einops: `pip install einops` (or put it on "
                         "PYTHONPATH); dragnb itself does not need it") from None
    ns = SimpleNamespace(dir=os.path.abspath(official_dir), commit=official_commit(official_dir))
    ns.pipeline = _load_file("official_drag_pipeline", os.path.join(official_dir, "drag_pipeline.py"))
    ns.drag = _load_file("official_drag_utils", os.path.join(official_dir, "utils", "drag_utils.py"))
    ns.attn = _load_file("official_attn_utils", os.path.join(official_dir, "utils", "attn_utils.py"))
    try:  # recorded only: the stage is compared by recipe (PARITY.md), not run
        _load_file("official_lora_utils", os.path.join(official_dir, "utils", "lora_utils.py"))
        ns.lora_import = "ok"
    except Exception as e:  # noqa: BLE001
        ns.lora_import = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    ns.lora_missing_in_diffusers = missing_diffusers_names()
    return ns


def missing_diffusers_names() -> list:
    """What of the diffusers API utils/lora_utils.py uses this diffusers lacks (whatever else fails first): the
    names it imports, and `set_lora_layer` on an Attention's projections (plain nn.Linear in recent diffusers)."""
    import warnings

    import diffusers
    from diffusers.models.attention_processor import Attention
    wanted = {"diffusers.loaders": ["AttnProcsLayers", "LoraLoaderMixin"], "diffusers.models.lora": ["LoRALinearLayer"],
              "diffusers.training_utils": ["unet_lora_state_dict"], "diffusers.optimization": ["get_scheduler"]}
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod, names in wanted.items():
            try:
                m = importlib.import_module(mod)
            except Exception:  # noqa: BLE001
                out += [f"{mod}.{n}" for n in names]
                continue
            out += [f"{mod}.{n}" for n in names if not hasattr(m, n)]
        to_q = Attention(query_dim=8, heads=1, dim_head=8).to_q
        if not hasattr(to_q, "set_lora_layer"):
            out.append(f"Attention.to_q.set_lora_layer (to_q is a plain {type(to_q).__name__})")
    return [f"diffusers {diffusers.__version__} lacks " + ", ".join(out)] if out else []


# ------------------------------------------------------------------------------------------- timing and memory
class Clock:
    """Wall time and peak CUDA memory (torch.cuda.max_memory_allocated) of named stages."""

    def __init__(self, device):
        self.device, self.rows = torch.device(device), {}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def mark(self):
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        return time.perf_counter()

    def record(self, name, t0):
        self.sync()
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None
        self.rows[name] = dict(s=time.perf_counter() - t0, peak_mb=peak)
        return self.mark()

    @contextlib.contextmanager
    def __call__(self, name):
        t0 = self.mark()
        yield
        self.record(name, t0)


# ------------------------------------------------------------------------------------------- the adapter
class _Tap:
    """Stands in for the official `model` argument of `drag_diffusion_update`: forwards to the official pipeline
    (or to a supplied features/step pair) and records what the loop feeds it."""

    def __init__(self, forward_features, step, reference_dtype=None):
        self._ff, self._step = forward_features, step
        self.latents, self.x_prevs = [], []
        self.reference_dtype = reference_dtype

    def forward_unet_features(self, z, t, encoder_hidden_states, layer_idx=(0,), interp_res_h=256, interp_res_w=256):
        # the loop's first call is its reference (F0, x_prev_0), which the official code computes outside its float16
        # autocast, on the float32 UNet; `reference_dtype` runs it under the steps' autocast instead (a diagnostic)
        # Only that diagnostic may open an autocast context here: a disabled `torch.autocast` would also switch off
        # the official steps' own float16 autocast around this call (a run of 2026-11-27 did, see PARITY.md)
        first = not self.latents
        self.latents.append(z.detach().float().clone())
        ctx = (torch.autocast(z.device.type, dtype=self.reference_dtype)
               if first and self.reference_dtype is not None else contextlib.nullcontext())
        with ctx:
            return self._ff(z, t, encoder_hidden_states, layer_idx=layer_idx, interp_res_h=interp_res_h,
                            interp_res_w=interp_res_w)

    def step(self, model_output, timestep, x):
        out = self._step(model_output, timestep, x)
        self.x_prevs.append(out[0].detach().float().clone())
        return out


class OfficialAdapter:
    """The official `DragPipeline` and editor on a dragnb model's components (shared, so the weights are the same)."""

    def __init__(self, off: SimpleNamespace, model):
        from diffusers import DDIMScheduler
        self.off, self.model = off, model
        self.device = model.device
        if model.vae is None or model.text_encoder is None:
            raise ValueError(f"model {model.name!r} has no VAE/text encoder: the official pipeline needs an SD-shaped "
                             "model; use --model tiny or random-sd15 (the demo model runs the drag loop only)")
        if model.prediction_type != "epsilon":
            raise ValueError(f"model {model.name!r} predicts {model.prediction_type!r}; the official DDIM steps "
                             "(DragPipeline.step / inv_step) assume epsilon")
        self.pipe = off.pipeline.DragPipeline(
            vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
            scheduler=DDIMScheduler.from_config(model.scheduler.config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)

    @contextlib.contextmanager
    def unet_override(self):
        """Its UNet forward that also returns the decoder features, only while official code runs."""
        self.pipe.modify_unet_forward()
        try:
            yield self.pipe
        finally:
            self.model.unet.__dict__.pop("forward", None)

    @contextlib.contextmanager
    def editor(self, start_step, start_layer, total_steps, guidance_scale=1.0):
        with contextlib.redirect_stdout(io.StringIO()):
            ed = self.off.attn.MutualSelfAttentionControl(start_step=start_step, start_layer=start_layer,
                                                          total_steps=total_steps, guidance_scale=guidance_scale)
            self.off.attn.register_attention_editor_diffusers(self.pipe, ed, attn_processor="attn_proc")
        try:
            yield ed
        finally:
            for m in self.model.unet.modules():
                if type(m).__name__ == "Attention":
                    m.__dict__.pop("forward", None)

    def text_embeddings(self, prompt):
        with contextlib.redirect_stdout(io.StringIO()):
            return self.pipe.get_text_embeddings(prompt)

    def preprocess(self, image_hw3):
        """ui_utils.preprocess_image: uint8 HxWx3 -> (1, 3, H, W) in [-1, 1]."""
        x = torch.from_numpy(image_hw3).float() / 127.5 - 1
        return x.permute(2, 0, 1)[None].to(self.device, self.model.dtype)

    def invert(self, image_b3hw, emb, args):
        with self.unet_override(), contextlib.redirect_stdout(io.StringIO()):
            z, lats = self.pipe.invert(image_b3hw, args.prompt, encoder_hidden_states=emb,
                                       guidance_scale=args.guidance_scale, num_inference_steps=args.n_inference_step,
                                       num_actual_inference_steps=args.n_actual_inference_step,
                                       return_intermediates=True)
        return z, lats

    def timestep(self, args):
        self.pipe.scheduler.set_timesteps(args.n_inference_step)
        return self.pipe.scheduler.timesteps[args.n_inference_step - args.n_actual_inference_step]

    def features(self, z, emb, t, args):
        with self.unet_override(), torch.no_grad():
            _, feat = self.pipe.forward_unet_features(z, t, emb, layer_idx=args.unet_feature_idx,
                                                      interp_res_h=args.sup_res_h, interp_res_w=args.sup_res_w)
        return feat

    def drag(self, z_t, emb, t, handles, targets, mask_sup, args, reference_dtype=None):
        """Its drag loop; `reference_dtype` (a diagnostic, not the official code): its reference pass under that
        autocast, as its steps run, instead of in float32."""
        with self.unet_override():
            tap = _Tap(self.pipe.forward_unet_features, self.pipe.step, reference_dtype)
            return run_drag_loop(self.off, tap, z_t, emb, t, handles, targets, mask_sup, args)

    def denoise(self, z_src, z_edit, emb, args, start_step, start_layer):
        """Its pipeline call with the mutual self-attention editor; returns (image (1, 3, H, W) in [0, 1], latents)."""
        with self.unet_override(), self.editor(start_step, start_layer, args.n_inference_step, args.guidance_scale), \
                contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            img, lats = self.pipe(prompt=args.prompt, encoder_hidden_states=torch.cat([emb] * 2, dim=0), batch_size=2,
                                  latents=torch.cat([z_src, z_edit], dim=0), guidance_scale=args.guidance_scale,
                                  num_inference_steps=args.n_inference_step,
                                  num_actual_inference_steps=args.n_actual_inference_step, return_intermediates=True)
        return img[1:2], lats[-1]


def run_drag_loop(off, tap, z_t, emb, t, handles, targets, mask_sup, args):
    """`drag_diffusion_update` with taps; returns (final latent, per-step records)."""
    tracked = []
    orig_tracking = off.drag.point_tracking

    def tracking_tap(F0, F1, handle_points, handle_points_init, a):
        out = orig_tracking(F0, F1, handle_points, handle_points_init, a)
        tracked.append([[float(v) for v in p] for p in out])
        return out

    buf = io.StringIO()
    off.drag.point_tracking = tracking_tap
    try:
        with contextlib.redirect_stdout(buf), torch.enable_grad():
            z = off.drag.drag_diffusion_update(tap, z_t.clone(), emb, t, [h.clone() for h in handles],
                                               [p.clone() for p in targets], mask_sup, args)
    finally:
        off.drag.point_tracking = orig_tracking
    totals = [float(v) for v in re.findall(r"loss total=([-+0-9.eE]+)", buf.getvalue())]
    interp_mask = F.interpolate(mask_sup.float(), tuple(z_t.shape[2:]), mode="nearest")
    use_mask = float(interp_mask.sum()) != 0.0
    # call 0: F0 (no grad); call i+1: step i on the latent after i updates; x_prevs likewise
    x0p = tap.x_prevs[0]
    recs = []
    for i, total in enumerate(totals):
        xp = tap.x_prevs[i + 1]
        mask_term = args.lam * float(((xp - x0p) * (1.0 - interp_mask.float())).abs().sum()) if use_mask else 0.0
        hs = [[float(v) for v in h] for h in handles] if i == 0 else tracked[i - 1]
        after = tap.latents[i + 2] if i + 2 < len(tap.latents) else z.detach().float()
        recs.append(dict(step=i + 1, loss=total, mask_loss=mask_term, motion_loss=total - mask_term, handles_rc=hs,
                         latent=after.cpu()))
    return z.detach(), recs


def unet_to(model, dtype):
    """Cast the shared UNet as run_drag does (float32 for the drag loop, back after), keeping LoRA weights float32
    as dragnb keeps them."""
    model.unet.to(dtype)
    for n, p in model.unet.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()


def official_args(cfg, prompt, size_hw, n_pix_step):
    """run_drag's `args`, filled from the dragnb config (the table printed at start shows where they differ)."""
    H, W = size_hw
    n = cfg.n_inference_steps
    return SimpleNamespace(prompt=prompt, n_inference_step=n, n_actual_inference_step=round(cfg.inversion_strength * n),
                           guidance_scale=cfg.guidance_scale, unet_feature_idx=[cfg.feature_block + 1], r_m=cfg.r_m,
                           r_p=cfg.r_p, lam=cfg.lam, lr=cfg.drag_lr, n_pix_step=n_pix_step,
                           sup_res_h=int(cfg.sup_res_scale * H), sup_res_w=int(cfg.sup_res_scale * W))


def official_points(points_xy, size_hw, args):
    """run_drag: [x, y] pixels -> rounded (row, col) tensors on the supervision grid; even = handle, odd = target."""
    H, W = size_hw
    pts = [torch.round(torch.tensor([p[1] / H * args.sup_res_h, p[0] / W * args.sup_res_w])) for p in points_xy]
    return pts[0::2], pts[1::2]


def official_mask(mask_hw, args, device):
    """run_drag: uint8 mask -> {0, 1} float (1, 1, H, W) -> nearest to the supervision grid."""
    m = torch.from_numpy(mask_hw.astype(np.float32) * 255).float() / 255.0
    m[m > 0.0] = 1.0
    return F.interpolate(m[None, None].to(device), (args.sup_res_h, args.sup_res_w), mode="nearest")


def official_uint8(img_b3hw):
    """run_drag's conversion of its [0, 1] image: (x * 255).astype(uint8), i.e. truncation."""
    return (img_b3hw[0].float().cpu().permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def official_edit(adapter, image, mask_hw, points_xy, args, start_step, start_layer, clock=None, prefix="official"):
    """The official run_drag from inversion to image (LoRA applied by the caller), each stage timed."""
    clock = clock or Clock(adapter.device)
    H, W = image.shape[:2]
    with clock(f"{prefix}.inversion"):
        emb = adapter.text_embeddings(args.prompt)
        z_t, _ = adapter.invert(adapter.preprocess(image), emb, args)
    t = adapter.timestep(args)
    handles, targets = official_points(points_xy, (H, W), args)
    mask_sup = official_mask(mask_hw, args, adapter.device)
    model = adapter.model
    half = model.dtype != torch.float32
    if half:  # run_drag: the drag loop runs on a float32 UNet under autocast, the rest in float16
        unet_to(model, torch.float32)
    with clock(f"{prefix}.drag_loop"):
        z_hat, recs = adapter.drag(z_t.float(), emb.float(), t, handles, targets, mask_sup, args)
    if half:
        unet_to(model, model.dtype)
    with clock(f"{prefix}.denoise"):
        img, z0 = adapter.denoise(z_t, z_hat.to(z_t.dtype), emb, args, start_step, start_layer)
    return dict(z_t=z_t, z_hat=z_hat, records=recs, image=img, z0=z0[1:2])


# ------------------------------------------------------------------------------------------- inputs
def scene(size: int) -> np.ndarray:
    """A smooth gradient with a red disk to drag, uint8 (size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.3 + 0.4 * xx, 0.5 - 0.3 * yy, 0.6 + 0.1 * xx * yy], -1)
    img[((xx - 0.35) ** 2 + (yy - 0.5) ** 2) < 0.02] = (0.9, 0.2, 0.1)
    return (img * 255).round().astype(np.uint8)


def drag_case(size: int):
    """One drag (handle at the disk, 25 % of the width to the right) and a rectangular mask whose edges fall on
    multiples of 4 px, so dragnb's and the official mask down-sampling pick the same cells (see mask_grid_check)."""
    handle, target = (0.35 * size, 0.5 * size), (0.6 * size, 0.5 * size)
    mask = np.zeros((size, size), bool)
    q = lambda v: int(round(v / 4)) * 4  # noqa: E731
    mask[q(size / 4):q(3 * size / 4), q(size / 8):q(7 * size / 8)] = True
    return handle, target, mask


def mask_grid_check(session, size, args):
    """Cells where dragnb's and the official nearest down-sampling of a disk mask (odd edges) disagree."""
    yy, xx = np.mgrid[0:size, 0:size]
    disk = (xx - 0.45 * size) ** 2 + (yy - 0.5 * size) ** 2 < (0.23 * size) ** 2
    ours = session.geometry.mask_to_grid(disk)
    theirs = official_mask(disk, args, "cpu")[0, 0].numpy()
    return int((ours != theirs).sum()), int(ours.size)


from dragnb.metrics import psnr  # noqa: E402  (one PSNR for the whole project)


def maxabs(a, b) -> float:
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


def build_model(name, device, dtype):
    from dragnb.bench import model_by_name
    return model_by_name(name, device, dtype)


# ------------------------------------------------------------------------------------------- dragnb's side
def dragnb_edit(model, image, mask, drag, cfg, prompt, seed, clock, prefix="dragnb"):
    """A DragSession edit, stage by stage, with per-stage times from prepare()'s progress callback."""
    s = DragSession(model, image, prompt=prompt, seed=seed, config=cfg)
    s.add_drag(*drag)
    s.set_mask(mask)
    marks = {}

    def cb(stage, i, n):
        if i == n and stage not in marks:
            marks[stage] = clock.record(f"{prefix}.{stage}", marks.get("_t", t0))
            marks["_t"] = marks[stage]
    t0 = clock.mark()
    s.prepare(progress=False, callback=cb)
    clock.sync()
    t = clock.mark()
    records = drag_records(s, cfg.drag_steps, to_cpu=False)     # copies to the host after the timed loop
    t = clock.record(f"{prefix}.drag_loop", t)
    latents_to_cpu(records)
    t = clock.mark()
    img = np.asarray(s.result())
    clock.record(f"{prefix}.denoise", t)
    return s, records, img


def session_lora(session):
    """The LoRA weights `session` trained (its cache's entry; None for `lora_steps=0`), for the official stages.
    Not a second training with the same seed: that equals the session's only where training is deterministic. On a
    GPU the session trains through its CUDA graphs and a retrain runs eagerly, and in float16 the two part ways
    (the thirteenth session found the inversion gap between the codes to be their precision paths instead:
    benchmarks/PARITY.md)."""
    trained = session.cache.counters["lora_trainings"]
    state = session.cache.train_lora(session.spec).state
    assert session.cache.counters["lora_trainings"] == trained, "the session's LoRA was not cached"
    return state


def drag_records(session, n_steps: int, to_cpu: bool = True) -> list:
    """Up to `n_steps` drag steps of `session`, one at a time until it reaches its targets: per step its losses,
    handles (grid, as floats) and latent (a copy on the model's device, moved to the CPU at the end with `to_cpu`;
    a copy to the host at every step would add a synchronisation to each timed step, which the official loop's
    taps do not pay)."""
    records = []
    while len(records) < n_steps and not session.reached:
        recs = session.step(1)
        if not recs:
            break
        r = recs[0]
        records.append(dict(step=r.step, loss=r.loss, motion_loss=r.motion_loss, mask_loss=r.mask_loss,
                            handles_rc=[list(map(float, h)) for h in r.handles_grid],
                            latent=session.current_latent().detach().clone()))
    return latents_to_cpu(records) if to_cpu else records


def latents_to_cpu(records: list) -> list:
    """`drag_records`' latents moved to the CPU, in place; returns the records."""
    for r in records:
        r["latent"] = r["latent"].cpu()
    return records


def lora_reconstruction(model, session, image, cfg, prompt, seed) -> dict:
    """PSNR (dB) of the inversion round trip (invert to t, denoise back, no mutual attention) against the input, with
    the session's LoRA and with none: what the LoRA fine-tune is for."""
    no_lora = DragSession(model, image, prompt=prompt, seed=seed, config=cfg.replace(lora_steps=0))
    return dict(lora_steps=cfg.lora_steps, with_lora_db=psnr(np.asarray(session.reconstruction()), image),
                without_lora_db=psnr(np.asarray(no_lora.reconstruction()), image))


def dragnb_denoise(model, lstate, z_src, z_edit, cfg, prompt):
    """dragnb's final denoising (ddim.denoise under attention.mutual_self_attention), as the session runs it."""
    fn = guided_unet_fn(model, model.encode_prompt(prompt), cfg.guidance_scale)
    with torch.no_grad(), lora.applied(model.unet, lstate), \
            mutual_self_attention(model.unet, cfg.attn_start_step, cfg.attn_start_layer) as ctl:
        z = ddim.denoise(fn, model.scheduler, torch.cat([z_src, z_edit]), cfg.n_inference_steps, cfg.drag_step_index,
                         step_hook=lambda i: setattr(ctl, "step", i))
    return z[1:2]


# ------------------------------------------------------------------------------------------- the comparisons
OFFICIAL_REACH = 2.0   # drag_utils.py: a handle within 2 cells of its target is reached (a constant there)


def official_config(model, a):
    """The model's defaults with the official method: the comparison is of DragDiffusion's loop, whatever drag method
    the model defaults to (the demo model defaults to GoodDrag with a 1-cell reach, a drag_lr of 0.04 and r_m 3; the
    official code has none of these: its reach, step size and patch radius are used).
    Also puts dragnb's UNet work on torch's own thread count, which the official code runs on: on a 2-core CPU
    dragnb's policy would use 1 thread, and different thread counts round reductions differently (2e-6 after 3 steps)."""
    from dragnb import set_threads
    set_threads("torch")
    return model.default_config(method="dragdiffusion", reach_distance=OFFICIAL_REACH, drag_steps=a.steps,
                                lora_steps=a.lora_steps, drag_lr=OFFICIAL_DEFAULTS["drag_lr"], r_m=OFFICIAL_DEFAULTS["r_m"])


def parity_sd(off, model, a) -> dict:
    clock = Clock(model.device)
    size = a.size or 2 * model.native_size
    cfg = official_config(model, a)
    image = scene(size)
    handle, target, mask = drag_case(size)
    prompt, seed = a.prompt, a.seed
    res = dict(model=model.name, size=size, device=str(model.device), dtype=str(model.dtype).replace("torch.", ""),
               official_commit=off.commit, official_lora_utils_import=off.lora_import,
               official_lora_utils_missing=off.lora_missing_in_diffusers, steps=a.steps,
               lora_steps=a.lora_steps, config={k: getattr(cfg, k) for k in OFFICIAL_DEFAULTS},
               config_differs_from_official={k: [getattr(cfg, k), v] for k, v in OFFICIAL_DEFAULTS.items()
                                             if k not in ("drag_steps", "lora_steps") and getattr(cfg, k) != v})

    # dragnb first (the official run_drag casts the shared UNet's dtype back and forth)
    s, d_recs, d_img = dragnb_edit(model, image, mask, (handle, target), cfg, prompt, seed, clock)
    z_t_d = s.latent_at(0)
    z_hat_d = s.current_latent()
    # with CUDA graphs on, the same drag loop again without them (the session's LoRA and inversion): how far the
    # graphed loop is from the eager one, and the eager one from the official loop, in the same process
    e_recs = eager_drag_rerun(s, len(d_recs)) if graphs.active(model) else None
    adapter = OfficialAdapter(off, model)
    args = official_args(cfg, prompt, (size, size), a.steps)
    res["official_args"] = {k: v for k, v in vars(args).items() if k != "prompt"}
    res["mask_grid_disagreement"] = dict(zip(("cells", "of"), mask_grid_check(s, size, args)))

    # the LoRA: the weights the session trained, applied to the shared UNet for the official code
    lstate = session_lora(s)
    stages = {}
    with lora.applied(model.unet, lstate):
        emb = adapter.text_embeddings(prompt)
        stages["text_embeddings"] = maxabs(emb, model.encode_prompt(prompt))
        # 1. inversion from the same image
        z_t_o, lats_o = adapter.invert(adapter.preprocess(image), emb, args)
        stages["encode_z0"] = maxabs(lats_o[0], model.encode(adapter.preprocess(image).float()))
        stages["inversion_z_t"] = maxabs(z_t_o, z_t_d)
        # dragnb's inversion again, eagerly (CUDA graphs off), step by step against the official one, so that a gap
        # at z_t can be placed: graphed against eager dragnb, or the two codes' kernels, and from which step it grows
        lats_e = eager_inversion(s, lstate)
        stages["inversion_z_t_eager"] = maxabs(z_t_o, lats_e[-1])
        res["inversion_per_step_eager_vs_official"] = [maxabs(o, e) for o, e in zip(lats_o, lats_e)]
        if graphs.active(model):
            stages["inversion_graphed_vs_eager"] = maxabs(z_t_d, lats_e[-1])
        lats_n = eager_inversion(s, lstate, perturb=True)
        res["inversion_noise_floor_per_step"] = [maxabs(e, n) for e, n in zip(lats_e, lats_n)]
        if model.dtype != torch.float32:
            # which precision path the gap follows: dragnb's inversion on the official path (float16 latents, no
            # autocast) against the official one, and both float16 paths against the same inversion in float32
            lats_p = eager_inversion(s, lstate, precision="plain")
            lats_32 = eager_inversion(s, lstate, precision="float32")
            stages["inversion_plain_vs_official"] = maxabs(lats_p[-1], z_t_o)
            stages["inversion_float32_vs_dragnb"] = maxabs(lats_32[-1], lats_e[-1])
            stages["inversion_float32_vs_official"] = maxabs(lats_32[-1], z_t_o)
        t = adapter.timestep(args)
        res["t"] = int(t)
        # 2. source features at the same z_t
        f0_o = adapter.features(z_t_d.to(model.dtype), emb, t, args)[0]
        stages["source_features"] = maxabs(f0_o, s.features("source"))
        # 3. the drag loop from the same z_t
        handles, targets = official_points([handle, target], (size, size), args)
        res["handles0_rc"] = [list(map(float, h)) for h in handles]
        res["targets_rc"] = [list(map(float, p)) for p in targets]
        mask_sup = official_mask(mask, args, model.device)
        if model.dtype != torch.float32:
            unet_to(model, torch.float32)
        _, o_recs = adapter.drag(z_t_d.float(), emb.float(), t, handles, targets, mask_sup, args)
        # the noise floor: the official loop again, from the same z_t rounded to float16 (a change the size of
        # float16 rounding, like the inversion gap between the codes): how far the loop itself carries such noise
        _, n_recs = adapter.drag(z_t_d.half().float(), emb.float(), t, handles, targets, mask_sup, args)
        # the official loop once more with its reference pass (F0, x_prev_0) under the steps' float16 autocast, as
        # dragnb computes its reference: the one structural difference between the loops in float16 (the official
        # reference is float32, so its mask term starts above 0 at step 1); how much of the gap it accounts for
        r_recs = adapter.drag(z_t_d.float(), emb.float(), t, handles, targets, mask_sup, args,
                              reference_dtype=model.dtype)[1] if model.dtype != torch.float32 else None
        if model.dtype != torch.float32:
            unet_to(model, model.dtype)
    per_step = []
    for i in range(max(len(d_recs), len(o_recs))):
        d = d_recs[i] if i < len(d_recs) else None
        o = o_recs[i] if i < len(o_recs) else None
        row = dict(step=i + 1, dragnb_steps=d is not None, official_steps=o is not None)
        if d and o:
            row.update(dlatent=maxabs(d["latent"], o["latent"]), handles_equal=d["handles_rc"] == o["handles_rc"],
                       handles_dragnb=d["handles_rc"], handles_official=o["handles_rc"],
                       loss=[d["loss"], o["loss"]], motion_loss=[d["motion_loss"], o["motion_loss"]],
                       mask_loss=[d["mask_loss"], o["mask_loss"]])
        per_step.append(row)
    res["drag_steps_taken"] = dict(dragnb=len(d_recs), official=len(o_recs))
    for row, o, n in zip(per_step, o_recs, n_recs):
        row["noise_floor_dlatent"] = maxabs(o["latent"], n["latent"])
        row["noise_floor_handles_equal"] = o["handles_rc"] == n["handles_rc"]
    if r_recs is not None:
        for row, d, r in zip(per_step, d_recs, r_recs):
            row.update(f16_reference_dlatent=maxabs(d["latent"], r["latent"]),
                       f16_reference_handles_equal=d["handles_rc"] == r["handles_rc"],
                       f16_reference_mask_loss=r["mask_loss"])
    if e_recs is not None:
        for row, d, e, o in zip(per_step, d_recs, e_recs, o_recs):
            row.update(eager_dlatent=maxabs(e["latent"], o["latent"]), eager_handles_equal=e["handles_rc"] == o["handles_rc"],
                       graphed_vs_eager_dlatent=maxabs(d["latent"], e["latent"]))
    both = [r for r in per_step if "dlatent" in r]
    stages["drag_latent_max"] = max((r["dlatent"] for r in both), default=0.0)
    stages["drag_loss_max"] = max((abs(r["loss"][0] - r["loss"][1]) for r in both), default=0.0)
    res["per_step"] = per_step
    # 4. denoising with mutual self-attention of the same (z_t, ẑ_t)
    with lora.applied(model.unet, lstate):
        img_o, z0_o = adapter.denoise(z_t_d.to(model.dtype), z_hat_d.to(model.dtype), emb, args, cfg.attn_start_step,
                                      cfg.attn_start_layer)
    z0_d = dragnb_denoise(model, lstate, z_t_d, z_hat_d, cfg, prompt)
    stages["denoise_latent"] = maxabs(z0_o[1:2], z0_d)
    stages["denoise_image_psnr_db"] = psnr(official_uint8(img_o), d_img)
    # 5. the whole edit: each code chains its own stages
    with lora.applied(model.unet, lstate):
        ed = official_edit(adapter, image, mask, [handle, target], args, cfg.attn_start_step, cfg.attn_start_layer,
                           clock)
    o_img = official_uint8(ed["image"])
    stages["whole_edit_z_hat"] = maxabs(ed["z_hat"], z_hat_d)
    stages["whole_edit_image_max_levels"] = int(np.abs(o_img.astype(int) - d_img.astype(int)).max())
    # dragnb rounds to uint8, run_drag truncates: the same float image rounded dragnb's way isolates that
    o_round = (ed["image"][0].float().cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    stages["whole_edit_image_max_levels_same_rounding"] = int(np.abs(o_round.astype(int) - d_img.astype(int)).max())
    res["stages"] = stages
    res["lora_reconstruction"] = lora_reconstruction(model, s, image, cfg, prompt, seed)
    res["final_psnr_db"] = psnr(o_img, d_img)
    res["final_psnr_same_rounding_db"] = psnr(o_round, d_img)
    res["times"] = clock.rows
    res["summary"] = dict(max_dlatent=stages["drag_latent_max"], n_steps=len(both),
                          handles_identical=all(r["handles_equal"] for r in both) and len(d_recs) == len(o_recs),
                          final_psnr_db=res["final_psnr_db"],
                          noise_floor_max_dlatent=max((r.get("noise_floor_dlatent", 0.0) for r in per_step),
                                                      default=0.0),
                          z_t_float16_rounding=maxabs(z_t_d.half().float(), z_t_d),
                          inversion_gap=stages["inversion_z_t_eager"],
                          **{k: stages[k] for k in ("inversion_plain_vs_official", "inversion_float32_vs_dragnb",
                                                    "inversion_float32_vs_official") if k in stages},
                          inversion_noise_floor=res["inversion_noise_floor_per_step"][-1],
                          inversion_first_step=[res["inversion_per_step_eager_vs_official"][1],
                                                res["inversion_noise_floor_per_step"][0]])
    if r_recs is not None:
        rows = [r for r in per_step if "f16_reference_dlatent" in r]
        res["summary"].update(
            f16_reference_max_dlatent=max((r["f16_reference_dlatent"] for r in rows), default=0.0),
            f16_reference_n_steps=len(rows),
            f16_reference_handles_identical=all(r["f16_reference_handles_equal"] for r in rows)
            and len(r_recs) == len(d_recs),
            step1_mask_loss=[both[0]["mask_loss"][0], both[0]["mask_loss"][1], rows[0]["f16_reference_mask_loss"]]
            if both and rows else None)
    if e_recs is not None:
        eager = [r for r in per_step if "eager_dlatent" in r]
        res["summary"].update(
            eager_max_dlatent=max((r["eager_dlatent"] for r in eager), default=0.0), eager_n_steps=len(eager),
            eager_handles_identical=all(r["eager_handles_equal"] for r in eager) and len(e_recs) == len(o_recs),
            graphed_vs_eager_max_dlatent=max((r["graphed_vs_eager_dlatent"] for r in eager), default=0.0))
    return res


@contextlib.contextmanager
def graphs_off(model):
    """The model's CUDA graphs off for the block (`graphs.active()` reads the option; the captured graphs stay), the
    option back as it was afterwards."""
    was = model.speed.get("cuda_graph", False)
    model.speed["cuda_graph"] = False
    try:
        yield
    finally:
        model.speed["cuda_graph"] = was


def one_float16_step(z: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """`z` with a random half of its entries moved to the next float16 value away from zero (kept in z's dtype):
    a change the size of float16 rounding, to measure how far a stage carries such noise."""
    g = torch.Generator().manual_seed(seed)
    pick = (torch.rand(z.shape, generator=g) < 0.5).to(z.device)
    h = z.detach().half()
    up = torch.nextafter(h, torch.where(h < 0, torch.tensor(-float("inf"), dtype=h.dtype, device=h.device),
                                        torch.tensor(float("inf"), dtype=h.dtype, device=h.device)))
    return torch.where(pick, up, h).to(z.dtype) if z.dtype == torch.float16 else \
        torch.where(pick, z + (up.float() - h.float()).to(z.dtype), z)


INVERSION_PRECISIONS = ("autocast", "plain", "float32")


def eager_inversion(session, lstate, perturb: bool = False, precision: str = "autocast") -> list:
    """The session's DDIM inversion once more with the model's CUDA graphs off, on the LoRA weights `lstate`:
    [z0, z_1, ..., z_t] as `ddim.invert` returns them (the cache and the graphs are left as they were). With
    `perturb`, from z0 moved by one float16 step in half its entries (`one_float16_step`): the inversion's own
    noise floor, how far it carries a rounding-size change (the gap between the two codes starts at that size).

    `precision` (guidance 1 only, as the benchmark's): "autocast" is dragnb's own path (the UNet under autocast on
    float32 latents); "plain" the official pipeline's (latents and arithmetic in the model's dtype, the UNet called
    without autocast); "float32" the same inversion with the UNet cast to float32 for the call and back after, the
    reference both float16 paths are judged against. On a float32 model the three are one computation."""
    if precision not in INVERSION_PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {INVERSION_PRECISIONS}")
    m, spec = session.model, session.spec
    c = spec.config
    if precision != "autocast" and c.guidance_scale != 1.0:
        raise ValueError(f"precision={precision!r} runs guidance 1 only, not {c.guidance_scale}")
    cast = precision == "float32" and m.dtype != torch.float32
    if cast:
        unet_to(m, torch.float32)
    try:
        with graphs_off(m), using(m, lstate), torch.no_grad():
            z0 = m.encode(spec.image_tensor())
            if perturb:
                z0 = one_float16_step(z0)
            cond = m.encode_prompt(spec.prompt)
            if precision == "autocast":
                fn = guided_unet_fn(m, cond, c.guidance_scale)
            else:
                dt = m.dtype if precision == "plain" else torch.float32
                z0 = z0.to(dt)

                def fn(x, t):
                    return m.unet(x.to(dt), t, encoder_hidden_states=cond.to(dt)).sample
            lats = ddim.invert(fn, m.scheduler, z0, c.n_inference_steps, c.drag_step_index)
            return [z.float() for z in lats]
    finally:
        if cast:
            unet_to(m, m.dtype)


def eager_drag_rerun(session, n_steps: int) -> list:
    """The session's drag loop once more from step 0 with the model's CUDA graphs off (the LoRA, inversion and source
    features cached: the same z_t as the graphed loop), as `drag_records`. The session is left at the end of this
    eager loop; the graphs are kept."""
    with graphs_off(session.model):
        session.rewind(session.n_steps)
        return drag_records(session, n_steps)


def parity_drag_only(off, model, a) -> dict:
    """Models the official pipeline cannot take (no VAE/text encoder, v-prediction): its drag loop only, fed by an
    adapter whose UNet features come from a forward hook and whose x_{t-1} step is dragnb's (prediction-type aware)."""
    from dragnb.features import unet_with_features
    size = a.size or model.native_size
    cfg = official_config(model, a)
    image = scene(size)
    handle, target, mask = drag_case(size)
    clock = Clock(model.device)
    s, d_recs, _ = dragnb_edit(model, image, mask, (handle, target), cfg, a.prompt, a.seed, clock)
    z_t = s.latent_at(0)
    lstate = session_lora(s)
    args = official_args(cfg, a.prompt, (size, size), a.steps)
    fn = guided_unet_fn(model, model.encode_prompt(a.prompt), 1.0)

    def forward_features(z, t, emb, layer_idx, interp_res_h, interp_res_w):
        return unet_with_features(fn, model.unet, z, int(t), layer_idx[0] - 1, (interp_res_h, interp_res_w))

    def step(out, t, x):
        return ddim.prev_step(model.scheduler, out, x, int(t), args.n_inference_step), None

    t = ddim.timesteps(model.scheduler, cfg.n_inference_steps)[cfg.n_inference_steps - cfg.drag_step_index]
    handles, targets = official_points([handle, target], (size, size), args)
    with lora.applied(model.unet, lstate):
        tap = _Tap(forward_features, step)
        _, o_recs = run_drag_loop(off, tap, z_t.float(), model.encode_prompt(a.prompt), t, handles, targets,
                                  official_mask(mask, args, model.device), args)
    with torch.no_grad(), lora.applied(model.unet, lstate):
        _, tap_f0 = forward_features(z_t, t, None, args.unet_feature_idx, args.sup_res_h, args.sup_res_w)
    f0 = maxabs(tap_f0[0], s.features("source"))
    both = [(d, o) for d, o in zip(d_recs, o_recs)]
    per_step = [dict(step=i + 1, dlatent=maxabs(d["latent"], o["latent"]),
                     handles_equal=d["handles_rc"] == o["handles_rc"], loss=[d["loss"], o["loss"]])
                for i, (d, o) in enumerate(both)]
    mx = max((r["dlatent"] for r in per_step), default=0.0)
    return dict(model=model.name, size=size, prediction_type=model.prediction_type, official_commit=off.commit,
                lora_reconstruction=lora_reconstruction(model, s, image, cfg, a.prompt, a.seed),
                note="official inversion/denoising not run: its DDIM steps assume epsilon prediction; the drag loop's "
                     "x_{t-1} comes from dragnb.ddim.prev_step (v-aware), covered by tests/test_ddim.py's oracle test",
                stages=dict(source_features=f0, drag_latent_max=mx), per_step=per_step,
                drag_steps_taken=dict(dragnb=len(d_recs), official=len(o_recs)),
                summary=dict(max_dlatent=mx, n_steps=len(per_step),
                             handles_identical=all(r["handles_equal"] for r in per_step) and len(d_recs) == len(o_recs),
                             final_psnr_db=None))


def parity_line(sm: dict) -> str:
    """The benchmark's last line, from a result's `summary`."""
    v = sm["final_psnr_db"]
    fp = "n/a" if v is None else "inf" if v == float("inf") else f"{v:.2f}"
    return (f"parity: max |dlatent| = {sm['max_dlatent']:.3g} over {sm['n_steps']} steps, handles identical: "
            f"{'yes' if sm['handles_identical'] else 'no'}, final PSNR = {fp} dB")


def eager_line(sm: dict) -> str | None:
    """With CUDA graphs: dragnb's drag loop without them against the official loop, and against the graphed loop."""
    if "eager_max_dlatent" not in sm:
        return None
    return (f"dragnb eager (graphs off, same session): max |dlatent| = {sm['eager_max_dlatent']:.3g} over "
            f"{sm['eager_n_steps']} steps against the official loop, handles identical: "
            f"{'yes' if sm['eager_handles_identical'] else 'no'}; graphed against eager: max |dlatent| = "
            f"{sm['graphed_vs_eager_max_dlatent']:.3g}")


def f16_reference_line(sm: dict) -> str | None:
    """The line of the official loop run with its reference pass in float16, from a result's `summary` (None
    without that run: float32 models, where the reference and the steps share one precision anyway)."""
    if "f16_reference_max_dlatent" not in sm:
        return None
    m1 = sm.get("step1_mask_loss")
    step1 = ("" if not m1 else f"; mask term at step 1: dragnb {m1[0]:.3g}, official {m1[1]:.3g}, official with "
             f"a float16 reference {m1[2]:.3g}")
    return (f"official loop with its reference pass in float16 (as dragnb's): max |dlatent| = "
            f"{sm['f16_reference_max_dlatent']:.3g} over {sm['f16_reference_n_steps']} steps against dragnb, handles "
            f"identical: {'yes' if sm['f16_reference_handles_identical'] else 'no'}{step1}")


def inversion_line(sm: dict) -> str | None:
    """The inversion gap between the codes beside the inversion's own noise floor (None without them)."""
    if "inversion_noise_floor" not in sm:
        return None
    first, z0 = sm["inversion_first_step"]
    return (f"inversion: dragnb eager against the official code max |dz_t| = {sm['inversion_gap']:.3g} (after its "
            f"first step {first:.3g}); noise floor: dragnb's inversion against itself from z0 moved by one float16 "
            f"step in half its entries (max change {z0:.3g}): max |dz_t| = {sm['inversion_noise_floor']:.3g}"
            + (f"; dragnb on the official precision path (float16 latents, no autocast) against the official code: "
               f"{sm['inversion_plain_vs_official']:.3g}; against the same inversion in float32: dragnb "
               f"{sm['inversion_float32_vs_dragnb']:.3g}, official {sm['inversion_float32_vs_official']:.3g}"
               if "inversion_plain_vs_official" in sm else ""))


def summary_lines(sm: dict) -> dict:
    """Every summary line of a result's `summary`, by name, in the order they print (None: that run is absent);
    `parity_line` last. One list for this script's output and gpu_sd_timings' table and JSON."""
    return dict(inversion_line=inversion_line(sm), noise_floor_line=noise_floor_line(sm),
                f16_reference_line=f16_reference_line(sm), eager_line=eager_line(sm), parity_line=parity_line(sm))


def noise_floor_line(sm: dict) -> str | None:
    """The noise floor's line, from a result's `summary` (None for a result without one: the drag-only models)."""
    if "noise_floor_max_dlatent" not in sm:
        return None
    return (f"noise floor: the official loop against itself from z_t rounded to float16 (max change "
            f"{sm['z_t_float16_rounding']:.3g}): max |dlatent| = {sm['noise_floor_max_dlatent']:.3g}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="a checkout of Yujun-Shi/DragDiffusion (see PARITY.md)")
    p.add_argument("--model", default="tiny", help="tiny (default), random-sd15, demo, or anything load_model takes")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (CUDA default)")
    p.add_argument("--size", type=int, default=None, help="image side (default: 2x native for tiny, native else)")
    p.add_argument("--steps", type=int, default=80, help="drag steps (official 80)")
    p.add_argument("--lora-steps", type=int, default=None, help="LoRA steps (default: the model's config)")
    p.add_argument("--prompt", default="a photo of a red ball")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument("--quiet", action="store_true", help="only the summary lines")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import warnings
    warnings.filterwarnings("ignore")
    off = load_official(a.official)
    print(f"official DragDiffusion: {off.dir} at commit {off.commit}")
    print(f"official utils/lora_utils.py import: {off.lora_import}; {'; '.join(off.lora_missing_in_diffusers)}")
    dtype = {None: None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[a.dtype]
    torch.manual_seed(a.seed)
    model = build_model(a.model, a.device, dtype)
    if a.lora_steps is None:
        a.lora_steps = model.default_config().lora_steps
    sd_like = model.vae is not None and model.text_encoder is not None and model.prediction_type == "epsilon"
    res = parity_sd(off, model, a) if sd_like else parity_drag_only(off, model, a)
    if not a.quiet:
        if "config_differs_from_official" in res:
            print(f"config values that differ from the official defaults (dragnb, official): "
                  f"{res['config_differs_from_official'] or 'none'}")
        print("step  max|dlatent|  handles(dragnb)      handles(official)    loss dragnb / official")
        for r in res["per_step"]:
            if "dlatent" in r:
                hd = r.get("handles_dragnb", "")
                ho = r.get("handles_official", "")
                print(f"{r['step']:4d}  {r['dlatent']:.3e}    {str(hd):20s} {str(ho):20s} "
                      f"{r['loss'][0]:.6f} / {r['loss'][1]:.6f}")
        print("stages (max |Δ| unless named):")
        for k, v in res["stages"].items():
            print(f"  {k:28s} {v:.4g}" if isinstance(v, float) else f"  {k:28s} {v}")
        for k, v in res.get("times", {}).items():
            mem = f", peak {v['peak_mb']:.0f} MiB" if v["peak_mb"] is not None else ""
            print(f"  time {k:26s} {v['s']:.3f} s{mem}")
        print(f"drag steps taken: {res['drag_steps_taken']}")
        lr = res["lora_reconstruction"]
        print(f"inversion round trip vs the input: {lr['with_lora_db']:.2f} dB with dragnb's LoRA ({lr['lora_steps']} "
              f"steps), {lr['without_lora_db']:.2f} dB without")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    sm = res["summary"]
    if res.get("final_psnr_same_rounding_db") is not None:
        v = res["final_psnr_same_rounding_db"]
        print(f"final image PSNR with dragnb's rounding applied to the official float image: "
              f"{'inf' if v == float('inf') else f'{v:.2f}'} dB (run_drag truncates to uint8, dragnb rounds)")
    for line in summary_lines(sm).values():
        if line:
            print(line)
    return res


if __name__ == "__main__":
    main()
