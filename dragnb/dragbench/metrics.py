"""DragBench measures: mean distance (MD) by the official protocol, image fidelity, and exact shape-world scores.

**MD** (official `run_eval_point_matching.py`, written from its description): features of a diffusion model
(DIFT: the image encoded, noised to timestep t, one UNet call, the output of `up_blocks[1]`, averaged over an
ensemble of 8 noise draws, resized bilinearly to the image size); each handle's feature in the source image is
matched by cosine similarity over the *whole* edited image; MD is the distance in pixels from that match to the
target. The official run uses SD-2.1 at t = 261; `DiftFeatures` takes any model dragnb loads and by default the
timestep whose ᾱ is nearest SD's ᾱ(261) = 0.656 (t = 261 on SD schedules; t = 393 on the demo model's cosine
schedule). Differences from the official script: the encoder's mean instead of a sample of the latent
distribution, and the same seeded noise draws for the source and the edited image (official: consecutive draws
of one seeded stream), so an unedited image scores exactly the drag length and results do not depend on the
order samples run in.

**Fidelity**: 1 − LPIPS (AlexNet, both images at 224², as the official `run_eval_similarity.py`) when the `lpips`
package and the AlexNet weights are on this machine (nothing is downloaded); otherwise `lpips_status()` says why
and the substitute 1 − mean |source − edit| (pixels in [0, 1], whole image) is reported, with PSNR outside the
mask (the part that should not change).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DiftFeatures", "match_points", "point_distances", "lpips_status", "fidelity", "world_case",
           "world_scores", "SD_REFERENCE_T", "sd_alpha_bar"]

SD_REFERENCE_T = 261
"""The official MD timestep on SD-2.1's 1000-step scaled-linear schedule (β 0.00085 … 0.012)."""


def sd_alpha_bar(t: int) -> float:
    """ᾱ_t of Stable Diffusion's scaled-linear schedule (SD-1.x and 2.x share it)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return float(torch.cumprod(1 - betas, 0)[int(t)])


class DiftFeatures:
    """DIFT-style features of `model` for MD: `feats(image_hw3_uint8, prompt)` -> (C, H, W) float32 on the CPU.

    Args:
        model: a `DragModel` (its base UNet: no LoRA).
        t: timestep; None = the one whose ᾱ is nearest SD's ᾱ(261).
        block: which of `unet.up_blocks` gives the features (official: 1).
        ensemble: noise draws averaged (official: 8).
        seed: seeds the draws (the same draws for every image).
    """

    def __init__(self, model, t: int | None = None, block: int = 1, ensemble: int = 8, seed: int = 42):
        n = len(model.unet.up_blocks)
        if not 0 <= int(block) < n:
            raise ValueError(f"MD feature block {block}: this UNet has {n} up blocks, use 0..{n - 1} (official: 1)")
        if int(ensemble) < 1:
            raise ValueError(f"MD ensemble {ensemble}: use at least 1 noise draw (official: 8)")
        ab = model.scheduler.alphas_cumprod.double()
        if t is None:
            t = int(torch.argmin((ab - sd_alpha_bar(SD_REFERENCE_T)).abs()))
        if not 0 <= int(t) < len(ab):
            raise ValueError(f"MD timestep {t}: use 0..{len(ab) - 1} (default: ᾱ nearest SD's at t = 261)")
        self.model, self.t, self.block, self.ensemble, self.seed = model, int(t), int(block), int(ensemble), int(seed)
        self.alpha_bar = float(ab[self.t])

    @property
    def name(self) -> str:
        return (f"{self.model.name}, up_blocks[{self.block}], t={self.t} (ᾱ={self.alpha_bar:.3f}), "
                f"{self.ensemble} draws")

    def describe(self) -> dict:
        return dict(model=self.model.name, block=self.block, t=self.t, alpha_bar=round(self.alpha_bar, 4),
                    ensemble=self.ensemble, seed=self.seed)

    @torch.no_grad()
    def __call__(self, image, prompt: str = "") -> torch.Tensor:
        from ..features import capture_block_output
        from ..unet import using
        m = self.model
        img = np.asarray(image)
        H, W = img.shape[:2]
        x = torch.from_numpy(np.array(img[..., :3], np.uint8)).permute(2, 0, 1)[None].float() / 127.5 - 1
        k = m.size_multiple      # the model needs sides in multiples of k: resize, features come back at H×W
        h, w = max(k, round(H / k) * k), max(k, round(W / k) * k)
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        z = m.encode(x)
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((self.ensemble, *z.shape[1:]), generator=g).to(z.device)
        a = torch.tensor(self.alpha_bar, dtype=torch.float32, device=z.device)
        z_t = a.sqrt() * z + (1 - a).sqrt() * noise
        cond = m.encode_prompt(prompt)
        with using(m, None), capture_block_output(m.unet, self.block) as store:
            with torch.autocast(m.device.type, dtype=m.dtype, enabled=m.dtype != torch.float32):
                m.unet_forward(z_t, torch.tensor(self.t, device=m.device), cond)
        feat = store["feat"].float().mean(0, keepdim=True)
        return F.interpolate(feat, size=(H, W), mode="bilinear", align_corners=False)[0].cpu()


def match_points(src_feat_chw: torch.Tensor, edit_feat_chw: torch.Tensor, handles_xy) -> list[tuple[int, int]]:
    """For each handle (x, y) (rounded to a pixel), the pixel (x, y) of the edited image whose feature is most
    cosine-similar to the handle's source feature, searched over the whole image (official protocol)."""
    C, H, W = edit_feat_chw.shape
    if src_feat_chw.shape[0] != C:
        raise ValueError(f"feature channels differ: source {src_feat_chw.shape[0]}, edit {C}")
    edit = F.normalize(edit_feat_chw.reshape(C, -1).float(), dim=0, eps=1e-8)
    out = []
    for x, y in handles_xy:
        r = min(max(int(round(y)), 0), src_feat_chw.shape[1] - 1)
        c = min(max(int(round(x)), 0), src_feat_chw.shape[2] - 1)
        v = F.normalize(src_feat_chw[:, r, c].float(), dim=0, eps=1e-8)
        i = int(torch.argmax(v @ edit))
        out.append((i % W, i // W))
    return out


def point_distances(matched_xy, targets_xy) -> list[float]:
    """Euclidean distance (px) of each matched point from its target."""
    return [math.hypot(mx - tx, my - ty) for (mx, my), (tx, ty) in zip(matched_xy, targets_xy)]


# ---- fidelity -----------------------------------------------------------------------------------------

_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"   # what torchvision's AlexNet (lpips' backbone) loads
_LPIPS = None


def lpips_status() -> tuple[bool, str]:
    """(True, 'LPIPS …') when 1 − LPIPS can be computed without a download, else (False, why not)."""
    import importlib.util
    if importlib.util.find_spec("lpips") is None:
        return False, "the lpips package is not installed (pip install lpips)"
    ckpt = os.path.join(torch.hub.get_dir(), "checkpoints", _ALEXNET_FILE)
    if not os.path.isfile(ckpt):
        return False, f"AlexNet weights are not in {os.path.dirname(ckpt)} (lpips would download {_ALEXNET_FILE})"
    return True, "1 − LPIPS (AlexNet, 224×224)"


def _lpips_distance(a: np.ndarray, b: np.ndarray) -> float:
    global _LPIPS
    import lpips
    if _LPIPS is None:
        _LPIPS = lpips.LPIPS(net="alex", verbose=False).eval()
    t = lambda im: F.interpolate(torch.from_numpy(im).permute(2, 0, 1)[None].float() / 127.5 - 1,  # noqa: E731
                                 size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        return float(_LPIPS(t(a), t(b)))


def fidelity(source, edited, mask=None) -> dict:
    """How much of the source an edit kept: `one_minus_lpips` (None where LPIPS is unavailable),
    `one_minus_mad` (1 − mean absolute difference, pixels in [0, 1], whole image) and `bg_psnr` (dB outside the
    mask; None without a mask; capped at 99 for identical pixels)."""
    from ..metrics import psnr
    a, b = np.asarray(source)[..., :3], np.asarray(edited)[..., :3]
    if a.shape != b.shape:
        raise ValueError(f"source {a.shape} and edit {b.shape} differ in size: resize the edit to the source first")
    ok, _ = lpips_status()
    out = dict(one_minus_lpips=1.0 - _lpips_distance(a, b) if ok else None,
               one_minus_mad=1.0 - float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean()) / 255.0,
               bg_psnr=None)
    if mask is not None and (~np.asarray(mask, bool)).any():
        keep = ~np.asarray(mask, bool)
        out["bg_psnr"] = min(99.0, psnr(a[keep], b[keep]))
    return out


# ---- the shape world's exact measures ---------------------------------------------------------------

def world_case(sample):
    """The shape-world `DragCase` a sample was made from (its meta carries 'world_seed'), or None. The case is
    checked against the sample (same image and drag), so an edited sample is not scored against a stale truth."""
    seed = sample.extra.get("world_seed")
    if seed is None:
        return None
    from ..demo.world import sample_drag
    case = sample_drag(int(seed), int(sample.extra.get("world_size", sample.image.shape[1])))
    same = (case.image.shape == sample.image.shape and np.array_equal(case.image, sample.image)
            and len(sample.handles) == 1 and tuple(sample.handles[0]) == tuple(case.handle)
            and tuple(sample.targets[0]) == tuple(case.target))
    return case if same else None


def world_scores(edited, case) -> dict:
    """`dragnb.demo.world.score_edit` of the edit (where the shape went, IoU, background PSNR), JSON-ready."""
    from ..demo.world import score_edit
    s = score_edit(np.asarray(edited)[..., :3], case)
    s["drag_length"] = case.drag_length
    s["bg_psnr"] = min(99.0, s["bg_psnr"])
    s["centroid"] = [None if math.isnan(v) else v for v in s["centroid"]]
    return s
