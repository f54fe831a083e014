"""The interface of a drag method: what `DragState.step` asks at each of its numbered stages.

One `step()` is one motion-supervision update. The state owns the latent, the optimiser, the handles and the
history; a method only answers questions:

    reference_steps(config)          how many DDIM steps past t its reference trajectory needs (cached by
                                     `SourceCache.extract_features`)
    track_before(config, pos, n)     # 2. track the handles before this update?
    track(config, ref, ...)          how: nearest neighbour of the original handle's reference feature
    motion_loss(config, feat, ...)   # 4. the supervision, against which reference
    advance(config, pos, ...)        # 6. what follows the update: track again, move to the next timestep (one
                                     DDIM step of the dragged latent), or stay
    tracked(config, pos, moved)      after a tracking in stage 6: did any handle move (early stops)
    finished(config, pos)            no timestep left to drag at
    render_attn_start(config, pos)   the first final-denoising step that uses mutual self-attention
    defaults(grid_cells)             the method's own settings, scaled to a supervision grid of this many cells

Positions count reference steps: index 0 is the drag timestep t (the inverted latent); a method that denoises
between rounds moves the latent to index 1, 2, ... and the final render continues from there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..drag import track_points


@dataclass(frozen=True)
class Position:
    """Where the optimisation is in the method's schedule."""
    index: int = 0    # reference step the latent sits at (0 = the drag timestep t)
    round: int = 0    # round at this timestep (methods that alternate drag and denoise)
    update: int = 0   # update within the round
    stale: int = 0    # rounds in a row whose tracking moved no handle


@dataclass(frozen=True)
class Advance:
    """What follows an update: the next position, whether to track now (with this step's features), and whether
    the latent takes one DDIM step to the next timestep (a fresh optimiser then starts there)."""
    position: Position
    track: bool = False
    denoise: bool = False


class DragMethod:
    """Base class: the official DragDiffusion choices; subclasses override what differs."""

    name = ""

    @staticmethod
    def defaults(grid_cells: int) -> dict:
        """`DragConfig` values this method starts from on a supervision grid of `grid_cells` cells a side."""
        return {}

    def reference_steps(self, config) -> int:
        """DDIM steps of the un-dragged reference trajectory the method reads past t (0: only t itself)."""
        return 0

    def finished(self, config, position: Position) -> bool:
        """True when no timestep is left to drag at."""
        return position.index > self.reference_steps(config)

    def track_before(self, config, position: Position, n_taken: int) -> bool:
        """Track before this update? (official: every step but the very first)"""
        return n_taken > 0

    def track(self, config, ref, handles0_rc: torch.Tensor, feat_bchw: torch.Tensor, handles_rc: torch.Tensor,
              targets_rc: torch.Tensor) -> torch.Tensor:
        """New handles (N, 2): the original handles' reference features matched in a window around the current
        handles (`drag.track_points`)."""
        return track_points(ref.feat, feat_bchw.detach(), handles0_rc, handles_rc, self.track_radius(config),
                            config.track_patch, targets_rc if config.restrict_tracking else None)

    def track_radius(self, config) -> int:
        return config.r_p

    def motion_loss(self, config, feat_bchw: torch.Tensor, ref, handles0_rc: torch.Tensor, handles_rc: torch.Tensor,
                    targets_rc: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def advance(self, config, position: Position, motion_loss: float) -> Advance:
        """After an update (official: stay where you are)."""
        return Advance(position)

    def tracked(self, config, position: Position, moved: bool) -> Position:
        """After a tracking in stage 6 (`advance(...).track`): the position to continue from."""
        return position

    def render_attn_start(self, config, position: Position) -> int:
        """First step of the final denoising (from the state's position) with mutual self-attention."""
        return config.attn_start_step
