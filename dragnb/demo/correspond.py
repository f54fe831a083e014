"""Feature correspondence on the shape world: how well a model's drag features follow a moved shape, and a training
loss that teaches them to.

DragDiffusion's point tracking finds the handle again by a nearest-neighbour search (L1 over channels) of the
handle's original decoder feature in the current one; its motion supervision pulls the feature patch at the target
toward the one at the handle. Both assume that the feature at a point of a shape is found again at the same point of
the shape after the shape moves. On the shape world that can be checked exactly: `sample_drag` renders a scene and
the same scene with its top shape moved (`gt_image`), so the true correspondence of every pixel is known.

- `tracking_error(model, cases)`: invert both images as a session does (no LoRA) and search the handle's feature of
  the first in the second within the drag's reach; the error (grid cells) of the found point against the true
  target. What point tracking can do at best on that model (`benchmarks/bench_tracking.py`).
- `pair_batch(rng, n)` + `correspondence_loss(...)`: pairs of training scenes (a scene and its top shape moved) with
  points on the shape and on the background that stays, and an InfoNCE loss on negative L1 feature distances: the
  true point of the moved scene must be the nearest among all grid cells. `python -m dragnb.demo.train
  --corr-weight W` adds it to the v-prediction loss.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dragnb.demo.world import sample_drag, shape_mask

TRAIN_SEED_END = 10**9      # training scenes: seeds below this (benchmark seeds are >= 10**9)


def pair_batch(rng: np.random.Generator, n: int, k_shape: int = 12, k_bg: int = 4, size: int = 64):
    """n scene pairs from training seeds: (imgs_a (n, size, size, 3) uint8, imgs_b (same), pts_a (n, K, 2) float32,
    pts_b (n, K, 2) float32), K = k_shape + k_bg, points (x, y) in pixel units at pixel centres (x + 0.5).

    Pair = `sample_drag(seed)`: the scene and the same scene with its top shape moved by a whole-pixel offset of
    6-25 % of the width. Shape points: pixels of the top shape (visible in the first image) and their moved
    position. Background points: pixels covered by the top shape in neither image, which stay where they are."""
    if n < 1 or k_shape < 1 or k_bg < 0:
        raise ValueError(f"pair_batch(n={n}, k_shape={k_shape}, k_bg={k_bg}): use n >= 1, k_shape >= 1, k_bg >= 0")
    a, b, pa, pb = [], [], [], []
    for seed in rng.integers(0, TRAIN_SEED_END, size=n):
        case = sample_drag(int(seed), size)
        m_a = shape_mask(case.scene, case.index)
        m_b = shape_mask(case.gt_scene, case.index)
        ys, xs = np.nonzero(m_a)
        pick = rng.integers(0, len(xs), size=k_shape)
        p = np.stack([xs[pick], ys[pick]], 1).astype(np.float32) + 0.5
        q = p + np.asarray(case.offset, np.float32)
        if k_bg:
            bys, bxs = np.nonzero(~(m_a | m_b))
            pick = rng.integers(0, len(bxs), size=k_bg)
            bg = np.stack([bxs[pick], bys[pick]], 1).astype(np.float32) + 0.5
            p, q = np.concatenate([p, bg]), np.concatenate([q, bg])
        a.append(case.image); b.append(case.gt_image); pa.append(p); pb.append(q)
    return np.stack(a), np.stack(b), np.stack(pa), np.stack(pb)


def _sample(feat: torch.Tensor, pts_px: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear samples of feat (n, C, h, w) at points (n, K, 2) in pixel units of a size×size image: (n, K, C)."""
    grid = pts_px / size * 2 - 1                                   # align_corners=False: pixel centre x+0.5 ↔ -1..1
    out = F.grid_sample(feat.float(), grid.unsqueeze(1), mode="bilinear", align_corners=False)   # (n, C, 1, K)
    return out[:, :, 0].transpose(1, 2)


def correspondence_loss(feat_a: torch.Tensor, feat_b: torch.Tensor, pts_a: torch.Tensor, pts_b: torch.Tensor,
                        size: int = 64, tau: float = 0.1, exclude: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE over the grid: for each point, the feature of the first scene at pts_a against every grid cell of the
    second scene's features and the true point pts_b. Logits are negative mean-|Δ| distances (the L1 that point
    tracking uses) divided by their batch mean (detached: scale-free) and by `tau`. Cells within `exclude` cells of
    the true point are left out of the negatives (they are the right answer, up to the grid's resolution).

    feat_a, feat_b: (n, C, h, w), features on the drag's grid; pts: (n, K, 2) pixels. Returns (loss, accuracy: the
    fraction of points whose nearest grid cell lies within `exclude` cells of the truth)."""
    n, c, h, w = feat_b.shape
    fa = _sample(feat_a, pts_a, size)                               # (n, K, C)
    pos = (fa - _sample(feat_b, pts_b, size)).abs().mean(-1)       # (n, K)
    fb = feat_b.float().flatten(2).transpose(1, 2)                  # (n, h*w, C)
    neg = (fa.unsqueeze(2) - fb.unsqueeze(1)).abs().mean(-1)       # (n, K, h*w)
    cell = size / w
    gy, gx = torch.meshgrid(torch.arange(h, device=fb.device), torch.arange(w, device=fb.device), indexing="ij")
    centres = (torch.stack([gx, gy], -1).reshape(-1, 2).float() + 0.5) * cell      # (h*w, 2) pixels
    near = (torch.cdist(pts_b.reshape(n * pts_b.shape[1], 2), centres).reshape(n, -1, h * w) <= exclude * cell)
    scale = torch.cat([pos.flatten(), neg.flatten()]).mean().detach().clamp_min(1e-8)
    logits = torch.cat([-pos.unsqueeze(-1), (-neg).masked_fill(near, float("-inf"))], -1) / (scale * tau)
    loss = -torch.log_softmax(logits, -1)[..., 0].mean()
    nearest = neg.argmin(-1)                                                        # (n, K)
    acc = near.gather(-1, nearest.unsqueeze(-1)).float().mean()
    return loss, acc.detach()


@torch.no_grad()
def tracking_error(model, cases, search: int = 4, **overrides) -> list[dict]:
    """For each case: invert its image and its ground truth (the shape moved) as a session does with no LoRA (and with
    the DragConfig `overrides`, e.g. `feature_block=1`: the features of another decoder block), take
    the handle's decoder feature in the first and search it (L1, as point tracking) in the second within the drag
    length + `search` cells of the handle. Rows: drag (cells), point error (cells from the true target), and the
    error of the unmoved handle (= the drag) for scale."""
    from dragnb import DragSession
    from dragnb.drag import tracking_distance
    cfg = model.default_config(**{**overrides, "lora_steps": 0})
    rows = []
    for case in cases:
        feats = []
        for img in (case.image, case.gt_image):
            s = DragSession(model, img, seed=0, config=cfg)
            s.set_drags([(case.handle, case.target)])
            s.prepare(progress=False)
            feats.append(s.features("source"))
        fa, fb = feats
        _, h, w = fa.shape
        sc = w / case.image.shape[1]
        hnd = np.asarray(case.handle, float) * sc
        tgt = np.asarray(case.target, float) * sc
        hi = np.clip(np.round(hnd).astype(int), 0, [w - 1, h - 1])
        reach = int(np.ceil(np.linalg.norm(tgt - hnd))) + search
        hrc = (int(hi[1]), int(hi[0]))                       # point tracking's own search, window radius `reach`
        row, col = tracking_distance(fa[None], fb[None], hrc, hrc, r_p=reach).best_rc()
        found = np.array([col, row], float)
        rows.append(dict(seed=case.seed, drag=float(np.linalg.norm(tgt - hnd)),
                         error=float(np.linalg.norm(found - tgt)), handle_error=float(np.linalg.norm(hi - tgt))))
    return rows
