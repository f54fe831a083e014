"""GoodDrag (arXiv 2404.07206): alternating drag and denoising (AlDD) with information-preserving motion
supervision. The drag is spread over the first T timesteps of the denoising; at each, R rounds of S updates pull
the patch a step `beta` ahead of each handle toward the *original* handle's patch of the un-dragged trajectory at
that same timestep (the reference never drifts), tracking after each round against that same reference; then one
DDIM step of the dragged latent carries it to the next timestep, pulling it back toward the image manifold.

Its defaults (GoodDrag's app on SD at 512 px, a 256-cell grid): inversion strength 0.75, T 7, R 10, S 3, patch
radius r_m 4, beta 4, tracking radius r_p 12, lr 0.02, lam 0.2, early stop after 10 rounds without a handle
moving; lengths (and that early stop) are scaled to the model's grid. The loss threshold that ends a round early
(4.0 per feature, `round_loss_threshold`) is set for SD's feature scale: a model with other features overrides it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..drag import sample_patch
from . import register
from .base import Advance, DragMethod, Position


@register
class GoodDrag(DragMethod):
    name = "gooddrag"

    @staticmethod
    def defaults(grid_cells: int) -> dict:
        s = grid_cells / 256
        # lengths scale with the grid; so does the no-change early stop: on a coarse grid one round moves a handle
        # less than a cell, so tracking sees "no change" for rounds in which the latent still moves
        return dict(inversion_strength=0.75, drag_lr=0.02, lam=0.2, r_m=max(1, round(4 * s)),
                    r_p=max(1, round(12 * s)), beta=max(1.0, 4.0 * s), drag_timesteps=7, rounds=10,
                    updates_per_round=3, drag_steps=7 * 10 * 3, max_rounds_no_change=max(10, round(10 / s)))

    @staticmethod
    def timesteps(config) -> int:
        """T, at most the denoising steps after the drag timestep."""
        return min(config.drag_timesteps, config.drag_step_index)

    def reference_steps(self, config) -> int:
        return self.timesteps(config) - 1

    def finished(self, config, position: Position) -> bool:
        return position.index >= self.timesteps(config) or position.stale >= config.max_rounds_no_change

    def track_before(self, config, position: Position, n_taken: int) -> bool:
        return position.round == 0 and position.update == 0     # the first update at each timestep

    @staticmethod
    def _weight(config) -> int:
        return (2 * config.r_m) ** 2 if config.r_m > 0 else 1

    def motion_loss(self, config, feat_bchw, ref, handles0_rc, handles_rc, targets_rc):
        """Σ_i (2r_m)² · L1(sg(F_ref,t[h0_i patch]), F[(h_i + d_i·min(beta, |t_i - h_i|)) patch]), F_ref,t the
        un-dragged trajectory's features at this timestep, h0_i the original handle."""
        loss = feat_bchw.new_zeros(())
        for h0, h, t in zip(handles0_rc, handles_rc, targets_rc):
            delta = (t - h).float()
            dist = delta.norm()
            if dist < config.reach_distance:
                continue
            step = delta / dist * torch.clamp(dist, max=config.beta)
            src = sample_patch(ref.feat, h0, config.r_m).detach()
            moved = sample_patch(feat_bchw, h, config.r_m, shift_rc=step)
            loss = loss + self._weight(config) * F.l1_loss(src, moved)
        return loss

    def advance(self, config, position: Position, motion_loss: float) -> Advance:
        i, r, u = position.index, position.round, position.update + 1
        if u < config.updates_per_round and motion_loss > config.round_loss_threshold * self._weight(config):
            return Advance(Position(i, r, u, position.stale))
        if r + 1 < config.rounds:                                   # the round ends: track
            return Advance(Position(i, r + 1, 0, position.stale), track=True)
        return Advance(Position(i + 1, 0, 0, position.stale), track=True, denoise=True)   # next timestep

    def tracked(self, config, position: Position, moved: bool) -> Position:
        return Position(position.index, position.round, position.update, 0 if moved else position.stale + 1)

    def render_attn_start(self, config, position: Position) -> int:
        # where the drag stopped inside its timesteps, the step at that timestep is still a plain one
        return config.attn_start_step + (1 if position.index < self.timesteps(config) else 0)
