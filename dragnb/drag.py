"""Motion supervision, point tracking, the masked term and the warp start (pure; testable on synthetic feature maps).

One optimisation step puts these together in `dragnb.state.DragState.step`, with a method's choices.

All points here are on the supervision grid, `(row, col)`, as float tensors `points_rc (N, 2)`.
Feature maps are `feat_bchw (1, C, h, w)`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


def _window(feat: torch.Tensor, row0: int, col0: int, n: int) -> torch.Tensor:
    """feat[:, :, row0:row0+n, col0:col0+n]; where the window leaves the grid, the border repeats."""
    _, _, h, w = feat.shape
    if 0 <= row0 and row0 + n <= h and 0 <= col0 and col0 + n <= w:
        return feat[:, :, row0:row0 + n, col0:col0 + n]          # a plain slice, as the official code indexes
    rows = torch.arange(row0, row0 + n, device=feat.device).clamp(0, h - 1)
    cols = torch.arange(col0, col0 + n, device=feat.device).clamp(0, w - 1)
    return feat[:, :, rows[:, None], cols[None, :]]


def sample_patch(feat_bchw: torch.Tensor, center_rc: torch.Tensor, r: int,
                 shift_rc: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinearly sampled (1, C, 2r+1, 2r+1) patch centred on the grid point `center_rc` (+ `shift_rc`).

    The arithmetic is the official `interpolate_feature_patch`'s, operation for operation: the window's corner
    (center - r) + shift, its floor, four weights from that one fractional position, and the four shifted
    slices summed in the same order; so the values and their gradients are bit-identical to the official
    code's. Differentiable in `feat_bchw`. Where the window leaves the grid, the border repeats (the official
    code clips the window instead, which can give a shape mismatch at the lower border).
    """
    feat = feat_bchw.float()
    n = 2 * r + 1
    corner = center_rc.float() - r                      # exact for the integer handles tracking gives
    if shift_rc is not None:
        corner = corner + shift_rc.float()
    y1, x1 = corner[0], corner[1]
    cy, cx = corner.tolist()                            # one host read per patch (the official slicing does more)
    fy, fx = math.floor(cy), math.floor(cx)
    if shift_rc is None and (cy, cx) == (fy, fx):
        return _window(feat, fy, fx, n)                 # on a cell: the slice itself (the official source patch)
    # the weights as tensors from integer-valued floats, exactly the official (x1_cell.float() - x1) etc.
    wa = (float(fx + 1) - x1) * (float(fy + 1) - y1)
    wb = (float(fx + 1) - x1) * (y1 - float(fy))
    wc = (x1 - float(fx)) * (float(fy + 1) - y1)
    wd = (x1 - float(fx)) * (y1 - float(fy))
    Ia = _window(feat, fy, fx, n)
    Ib = _window(feat, fy + 1, fx, n)
    Ic = _window(feat, fy, fx + 1, n)
    Id = _window(feat, fy + 1, fx + 1, n)
    return Ia * wa + Ib * wb + Ic * wc + Id * wd


def motion_supervision_loss(feat_bchw: torch.Tensor, handles_rc: torch.Tensor, targets_rc: torch.Tensor,
                            r_m: int = 1, reach_distance: float = 2.0) -> torch.Tensor:
    """Σ_i (2r_m+1)² · L1(sg(F[h_i patch]), F[(h_i + d_i) patch]), d_i the unit vector from handle to target.

    Handles closer than `reach_distance` to their target add nothing (official: 2.0). Returns a scalar.
    """
    loss = feat_bchw.new_zeros(())
    for h, t in zip(handles_rc, targets_rc):
        delta = (t - h).float()
        dist = delta.norm()
        if dist < reach_distance:
            continue
        d = delta / dist
        src = sample_patch(feat_bchw, h, r_m).detach()
        moved = sample_patch(feat_bchw, h, r_m, shift_rc=d)
        loss = loss + (2 * r_m + 1) ** 2 * F.l1_loss(src, moved)
    return loss


def mask_loss(x_prev: torch.Tensor, x_prev_0: torch.Tensor, mask_latent: torch.Tensor | None, lam: float) -> torch.Tensor:
    """lam · |(x_{t-1}(ẑ) − x_{t-1}(z)) · (1 − mask)|.sum(); mask_latent (1, 1, h, w), 1 = may change."""
    if mask_latent is None or lam == 0:
        return x_prev.new_zeros(())
    return lam * ((x_prev - x_prev_0) * (1.0 - mask_latent)).abs().sum()


class TrackingDistance(NamedTuple):
    """What point tracking sees for one handle: the search window and the distance it minimises there."""
    box: tuple[int, int, int, int]    # (row0, row1, col0, col1) on the grid, end-exclusive, clipped to it
    dist: torch.Tensor                 # (row1 - row0, col1 - col0) L1 distance to the original handle's feature

    def best_rc(self) -> tuple[int, int]:
        """The window cell with the smallest distance (the first one on ties): where tracking moves the handle."""
        row, col = divmod(int(self.dist.argmin()), self.dist.shape[1])
        return self.box[0] + row, self.box[2] + col


def tracking_box(center_rc, r_p: int, grid_hw) -> tuple[int, int, int, int]:
    """The search window of radius r_p around a grid point: (row0, row1, col0, col1), end-exclusive.

    The centre's integer part is used (as the official code); the window is clipped at the grid border.
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    r, c = int(center_rc[0]), int(center_rc[1])
    return max(0, r - r_p), min(h, r + r_p + 1), max(0, c - r_p), min(w, c + r_p + 1)


@torch.no_grad()
def tracking_distance(feat0_bchw: torch.Tensor, feat_bchw: torch.Tensor, handle0_rc, handle_rc, r_p: int = 3,
                      patch: int = 0, target_rc=None) -> TrackingDistance:
    """The L1 distance map `track_points` minimises for one handle.

    For every cell of the window of radius `r_p` around `handle_rc` (current handle), the L1 distance
    between `feat_bchw` there and `feat0_bchw` at `handle0_rc` (original handle); with `patch` = k > 0,
    summed over the (2k+1)² cells around both points (borders repeat). Points are (row, col); their
    integer parts are used. Returns the window `box` and `dist` (rows, cols) in the features' dtype
    (float32 when k > 0). With `target_rc` (restricted tracking, as CLIPDrag and DragLoRA), cells farther from
    the target than the current handle are ruled out (distance +inf), so tracking never moves a handle back.
    """
    _, _, h, w = feat_bchw.shape                 # the window is on the current map
    k = int(patch)
    f0p = F.pad(feat0_bchw.float(), (k, k, k, k), mode="replicate") if k else feat0_bchw
    fp = F.pad(feat_bchw.float(), (k, k, k, k), mode="replicate") if k else feat_bchw
    r0, c0 = int(handle0_rc[0]), int(handle0_rc[1])
    r1, r2, c1, c2 = tracking_box(handle_rc, r_p, (h, w))
    dist = 0
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            f0 = f0p[0, :, r0 + k + dy, c0 + k + dx]
            win = fp[0, :, r1 + k + dy:r2 + k + dy, c1 + k + dx:c2 + k + dx]
            dist = dist + (win - f0[:, None, None]).abs().sum(0)
    if target_rc is not None:
        rows = torch.arange(r1, r2, dtype=torch.float32, device=dist.device)[:, None]
        cols = torch.arange(c1, c2, dtype=torch.float32, device=dist.device)[None, :]
        tr, tc = float(target_rc[0]), float(target_rc[1])
        now = ((float(handle_rc[0]) - tr) ** 2 + (float(handle_rc[1]) - tc) ** 2) ** 0.5
        farther = ((rows - tr) ** 2 + (cols - tc) ** 2).sqrt() > now + 1e-6
        dist = dist.masked_fill(farther, float("inf"))
    return TrackingDistance((r1, r2, c1, c2), dist)


@torch.no_grad()
def track_points(feat0_bchw: torch.Tensor, feat_bchw: torch.Tensor, handles0_rc: torch.Tensor,
                 handles_rc: torch.Tensor, r_p: int = 3, patch: int = 0, targets_rc=None) -> torch.Tensor:
    """Nearest neighbour (L1) of each original handle feature F0[h0_i] in the window of radius r_p around h_i.

    `patch` = k > 0 compares (2k+1)² patches of features around the two points instead of single vectors
    (borders repeat), so a handle inside a flat region is located by the region's edges too; 0 is the
    official tracker. Returns new integer handles (N, 2) as floats. Windows are clipped at the grid border.
    The distance map of one handle is `tracking_distance` (what `viz.plot_similarity` draws). `targets_rc`
    (N, 2) restricts each handle to candidates no farther from its target than it is now.
    """
    new = handles_rc.clone().float()
    for i, (p0, p) in enumerate(zip(handles0_rc, handles_rc)):
        tgt = None if targets_rc is None else targets_rc[i]
        new[i, 0], new[i, 1] = tracking_distance(feat0_bchw, feat_bchw, p0, p, r_p, patch, tgt).best_rc()
    return new


def all_reached(handles_rc: torch.Tensor, targets_rc: torch.Tensor, reach_distance: float = 2.0) -> bool:
    """True when every handle is closer than `reach_distance` grid cells to its target."""
    return bool(((handles_rc.float() - targets_rc.float()).norm(dim=1) < reach_distance).all())


@torch.no_grad()
def warp_latent(latent: torch.Tensor, handles_rc, targets_rc, fraction: float,
                mask_latent: torch.Tensor | None = None, min_radius: float = 1.5) -> torch.Tensor:
    """Copy the content around each handle `fraction` of the way toward its target (FastDrag/DirectDrag-style
    initialisation). Points are (row, col) in latent cells; `latent` (1, C, h, w).

    For drag i with handle h, target t: every latent cell p within radius max(min_radius, |t - h| / 2) of
    h + fraction·(t - h), and inside `mask_latent` (1, 1, h, w; 1 = may change; None: everywhere), takes the
    (bilinear) value at p - fraction·(t - h). Everything else is left exactly as it was. Returns a new tensor.
    """
    out = latent.clone()
    if fraction <= 0:
        return out
    _, _, h, w = latent.shape
    rows = torch.arange(h, dtype=torch.float32, device=latent.device)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32, device=latent.device)[None, :].expand(h, w)
    for (hr, hc), (tr, tc) in zip(handles_rc, targets_rc):
        hr, hc, tr, tc = float(hr), float(hc), float(tr), float(tc)
        vr, vc = fraction * (tr - hr), fraction * (tc - hc)
        radius = max(min_radius, 0.5 * ((tr - hr) ** 2 + (tc - hc) ** 2) ** 0.5)
        dest = ((rows - hr - vr) ** 2 + (cols - hc - vc) ** 2) <= radius ** 2
        if mask_latent is not None:
            dest = dest & (mask_latent[0, 0] > 0.5)
        grid = torch.stack([(cols - vc) / max(w - 1, 1) * 2 - 1, (rows - vr) / max(h - 1, 1) * 2 - 1], -1)[None]
        moved = F.grid_sample(latent.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
        out = torch.where(dest[None, None], moved.to(out.dtype), out)
    return out
