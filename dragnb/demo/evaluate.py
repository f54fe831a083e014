"""Measures of a demo-layout model's prior, shared by `dragnb.demo.train` and `benchmarks/bench_denoiser.py`.

* `x0_psnr_by_level`: one UNet call on held-out scenes (world seeds 10**9 ...) noised to each of TIMESTEPS;
  the PSNR of the predicted x0 (a model that drags well must denoise well around the drag timestep,
  t = 681 at the default strength 0.7).
* `samples_from_noise`: DDIM samples from pure noise (the whole schedule), as uint8 images.
* `prior_report`: both, plus the shape fidelity of the samples (`dragnb.demo.fidelity`).
* `x0_psnr_bound`: how high the one-call x0 PSNR can go at a timestep, by the posterior variance of the model's
  own draws from p(x0 | x_t), with a calibration check (`posterior_draws`, `draws_spread`).

Everything takes the bare pieces (unet, scheduler, prompt embedding, codec factor) so it runs on any
device, inside a training run as well as on a loaded `DragModel`.
"""
from __future__ import annotations

import numpy as np
import torch

from dragnb import ddim
from dragnb.demo import model as M
from dragnb.demo.world import random_scene, render
from dragnb.metrics import psnr

TIMESTEPS = (10, 50, 100, 200, 400, 600, 681, 800, 950)
HELD_OUT_SEED0 = 10**9


def _unet_fn(unet, emb):
    def fn(x, t):
        return unet(x, torch.full((x.shape[0],), int(t), device=x.device), emb.expand(x.shape[0], -1, -1)).sample.float()
    return fn


def held_out_scenes(n: int) -> np.ndarray:
    """(n, H, W, 3) uint8: the first n held-out scenes (world seeds HELD_OUT_SEED0, +1, ...), which training never
    draws; every prior measure here reads the same ones."""
    return np.stack([render(random_scene(HELD_OUT_SEED0 + i)) for i in range(n)])


@torch.no_grad()
def x0_psnr_by_level(unet, sched, emb, factor: int, n: int = 16, timesteps=TIMESTEPS, seed: int = 0,
                     per_scene: bool = False) -> list[dict]:
    """[{t, abar, v_mse, x0_psnr}] for each timestep: n held-out scenes noised to t with a fixed generator,
    x0 predicted in one UNet call (any prediction type) against the clean scene (PSNR in dB, uint8 images; the mean
    over scenes, and with `per_scene` each scene's as `x0_psnr_scenes`: the same scenes and noise for any model, so
    two models' figures pair scene by scene)."""
    dev = next(unet.parameters()).device
    src = held_out_scenes(n)
    x0 = M.encode(M.uint8_to_tensor(src), factor)
    g = torch.Generator().manual_seed(seed)
    fn = _unet_fn(unet, emb.to(dev))
    rows = []
    for t in timesteps:
        a = ddim.alpha_bar(sched, t)
        noise = torch.randn(x0.shape, generator=g)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        out = fn(xt.to(dev), t).cpu()
        x0p, _ = ddim.predict_x0_eps(sched, out, xt, t)
        row = dict(t=int(t), abar=float(a))
        if sched.config.prediction_type == "v_prediction":
            row["v_mse"] = float(((out - (a.sqrt() * noise - (1 - a).sqrt() * x0)) ** 2).mean())
        rec = M.tensor_to_uint8(M.decode(x0p, factor))
        scenes = [float(psnr(r, s)) for r, s in zip(rec, src)]
        row["x0_psnr"] = float(np.mean(scenes))
        if per_scene:
            row["x0_psnr_scenes"] = scenes
        rows.append(row)
    return rows


@torch.no_grad()
def roundtrip_psnr(unet, sched, emb, factor: int, n: int = 16, n_steps: int = 50, k: int = 35) -> list[float]:
    """Per held-out scene (the x0 PSNR's scenes): DDIM-invert k of n_steps steps, denoise back, PSNR (dB, uint8)
    against the scene. Without a LoRA: how faithfully the prior alone inverts, where the drag starts."""
    dev = next(unet.parameters()).device
    src = held_out_scenes(n)
    x0 = M.encode(M.uint8_to_tensor(src), factor).to(dev)
    fn = _unet_fn(unet, emb.to(dev))
    zt = ddim.invert(fn, sched, x0, n_steps, k)[-1]
    rec = M.tensor_to_uint8(M.decode(ddim.denoise(fn, sched, zt, n_steps, k).float().cpu(), factor))
    return [float(psnr(a, b)) for a, b in zip(src, rec)]


@torch.no_grad()
def samples_from_noise(unet, sched, emb, factor: int, n: int = 64, seed: int = 0, n_steps: int = 50,
                       batch: int = 64, size: int = M.IMAGE_SIZE) -> np.ndarray:
    """(n, size, size, 3) uint8: DDIM (eta 0, n_steps) from N(0, 1) latents drawn with `seed`."""
    dev = next(unet.parameters()).device
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3 * factor * factor, size // factor, size // factor, generator=g)
    fn = _unet_fn(unet, emb.to(dev))
    out = []
    for i in range(0, n, batch):
        x = ddim.sample(fn, sched, z[i:i + batch].to(dev), n_steps)[-1]
        out.append(M.tensor_to_uint8(M.decode(x.float().cpu(), factor)))
    return np.concatenate(out)


@torch.no_grad()
def posterior_draws(fn, sched, xt: torch.Tensor, t: int, k: int, stride: int = 20,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, k, ...) draws of x0 from the model's posterior p(x0 | x_t), k for each of xt's n items: stochastic DDIM
    (eta 1, i.e. DDPM's ancestral step on a coarser grid) from t down to 0 every `stride` timesteps, the last x0
    prediction kept. `fn(x, t)` returns the model output in the scheduler's prediction type."""
    if k < 2 or stride < 1 or not 0 < int(t) < len(sched.alphas_cumprod):
        raise ValueError(f"posterior_draws: k={k}, stride={stride}, t={t}: use k >= 2 draws, a stride >= 1 and "
                         f"0 < t < {len(sched.alphas_cumprod)}")
    ts = list(range(int(t), -1, -stride))
    n = xt.shape[0]
    x = xt.repeat_interleave(k, dim=0)
    x0p = x
    for j, tj in enumerate(ts):
        tp = ts[j + 1] if j + 1 < len(ts) else -1
        x0p, eps = ddim.predict_x0_eps(sched, fn(x, tj), x, tj)
        ab, abp = ddim.alpha_bar(sched, tj), ddim.alpha_bar(sched, tp)
        sig = ((1 - abp) / (1 - ab) * (1 - ab / abp)).clamp(min=0).sqrt()
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        x = abp.sqrt() * x0p + (1 - abp - sig ** 2).clamp(min=0).sqrt() * eps + sig * noise
    return x0p.reshape(n, k, *xt.shape[1:])


def draws_spread(draws: torch.Tensor, truth: torch.Tensor) -> dict:
    """Per item of (n, k, ...) posterior draws against (n, ...) truths: `var` (the draws' unbiased variance per
    element, averaged), `to_truth` (the draws' mean squared distance to the truth per element) and their ratio
    `calibration` = to_truth / (2 var). The truth is itself a draw from the true posterior, so a model whose
    posterior is right has calibration 1, and `var` is the mean squared error of the best possible estimate."""
    k = draws.shape[1]
    mean = draws.mean(1, keepdim=True)
    elems = tuple(range(1, draws.dim() - 1))          # an item's element dims once the draws are summed over
    var = ((draws - mean) ** 2).sum(1).mean(dim=elems) / (k - 1)
    to_truth = ((draws - truth[:, None]) ** 2).mean(dim=tuple(range(1, draws.dim())))
    return {"var": var, "to_truth": to_truth, "calibration": to_truth / (2 * var)}


@torch.no_grad()
def x0_psnr_bound(unet, sched, emb, factor: int, t: int, n: int = 16, k: int = 8, stride: int = 10,
                  seed: int = 0) -> dict:
    """How high one-call x0 PSNR can go at timestep t on the held-out scenes, by the model's own posterior.

    Each scene, noised to t once, gets k posterior draws (`posterior_draws`). The best possible estimate of x0 from
    x_t is the posterior mean, whose mean squared error is the posterior variance: `bound_db` is the PSNR that
    variance allows (per scene, then averaged, as the x0 PSNR is). `one_call_db` is the model's one UNet call on the
    same x_t, `calibration` checks the draws (about 1 when the model's posterior is right; above 1, the draws are too
    narrow or off-centre, and the true bound is lower still). Images in [0, 255] floats, not rounded."""
    dev = next(unet.parameters()).device
    src = held_out_scenes(n)
    x0 = M.encode(M.uint8_to_tensor(src), factor)
    g = torch.Generator().manual_seed(seed)
    a = ddim.alpha_bar(sched, t)
    xt = (a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)).to(dev)
    fn = _unet_fn(unet, emb.to(dev))
    one, _ = ddim.predict_x0_eps(sched, fn(xt, t), xt, t)
    pix = lambda z: M.decode(z.float().cpu(), factor).clamp(-1, 1) * 127.5 + 127.5  # noqa: E731
    truth = pix(x0)
    draws = torch.stack([pix(posterior_draws(fn, sched, xt[i:i + 1], t, k, stride, g)[0]) for i in range(n)])
    sp = draws_spread(draws, truth)
    db = lambda mse: [float(10 * np.log10(255 ** 2 / max(float(m), 1e-12))) for m in mse]  # noqa: E731
    bound = db(sp["var"])
    one_call = db(((pix(one) - truth) ** 2).mean(dim=(1, 2, 3)))
    return dict(t=int(t), abar=float(a), n=n, k=k, stride=stride, bound_db=float(np.mean(bound)),
                one_call_db=float(np.mean(one_call)), calibration=float(sp["calibration"].mean()),
                bound_db_scenes=bound, one_call_db_scenes=one_call)


def sample_grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    """Tile (n, H, W, 3) images into one (rows·H, cols·W, 3) array (missing tiles black)."""
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return grid


def prior_report(unet, sched, emb, factor: int, n_levels: int = 16, n_samples: int = 64, seed: int = 0) -> dict:
    """x0 PSNR by noise level, samples from noise and their shape fidelity:
    {"x0_psnr": [rows], "fidelity": {...}, "samples": uint8 array}."""
    from dragnb.demo.fidelity import shape_fidelity
    was_training = unet.training
    unet.eval()
    try:
        rows = x0_psnr_by_level(unet, sched, emb, factor, n=n_levels, seed=seed)
        imgs = samples_from_noise(unet, sched, emb, factor, n=n_samples, seed=seed) if n_samples else None
    finally:
        unet.train(was_training)
    fid = shape_fidelity(imgs) if imgs is not None else None
    return {"x0_psnr": rows, "fidelity": fid, "samples": imgs}


def format_levels(rows: list[dict]) -> str:
    """A markdown table of x0_psnr_by_level's rows."""
    has_v = all("v_mse" in r for r in rows)
    lines = ["| t | abar | " + ("v MSE | " if has_v else "") + "x0 PSNR dB (one call) |",
             "|---|---|" + ("---|" if has_v else "") + "---|"]
    for r in rows:
        lines.append(f"| {r['t']} | {r['abar']:.3f} | " + (f"{r['v_mse']:.4f} | " if has_v else "") + f"{r['x0_psnr']:.1f} |")
    return "\n".join(lines)
