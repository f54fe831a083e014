"""DragDiffusion (arXiv 2306.14435), the official loop: optimise the latent at one timestep t; each step tracks
the handles against the source features at t and pulls the patch one unit step ahead of each handle toward the
features at the handle itself (stop-gradient)."""
from __future__ import annotations

from ..drag import motion_supervision_loss
from . import register
from .base import DragMethod


@register
class DragDiffusion(DragMethod):
    name = "dragdiffusion"

    def motion_loss(self, config, feat_bchw, ref, handles0_rc, handles_rc, targets_rc):
        return motion_supervision_loss(feat_bchw, handles_rc, targets_rc, config.r_m, config.reach_distance)
