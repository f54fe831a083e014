"""`DragState`: the optimisation of one drag — latent, optimiser, handles, position in the method's schedule,
snapshots and history — and `step()`, one motion-supervision update in numbered stages.

Points are on the supervision grid, `(row, col)` float tensors `(N, 2)`; the latent is `(1, C, h, w)`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .amp import load_scaler_state, loss_scaler, portable_scaler_state, scaled_step, scaler_state
from .drag import all_reached, mask_loss
from .methods.base import DragMethod, Position


class DragDiverged(FloatingPointError):
    """The optimisation produced NaN/inf; the session keeps the last good state."""


@dataclass
class StepRecord:
    step: int
    loss: float
    motion_loss: float
    mask_loss: float
    handles: list            # [(x, y), ...] image pixels, after point tracking
    handles_grid: list       # [(row, col), ...] on the supervision grid
    has_snapshot: bool = False
    seconds: float = 0.0
    t_index: int = 0         # reference step the update ran at (0 = the drag timestep)
    timestep: int = -1       # the diffusion timestep the update ran at
    skipped: bool = False    # float16 only: the loss scaler found an inf/NaN gradient, so the latent did not move


@dataclass
class StepContext:
    """What a step needs from outside the state (the session builds it; the UNet is held around the step)."""
    config: object                                          # DragConfig
    reference: object                                       # cache.Reference
    forward: Callable                                       # (latent, t) -> (feat (1,C',gh,gw), x_prev (1,C,h,w))
    denoise: Callable                                       # (latent, t) -> latent at the next timestep (no grad)
    mask_latent: torch.Tensor | None                        # (1, 1, h, w), 1 = may change
    to_image: Callable                                      # grid (row, col) -> image (x, y)


def _adam(latent, lr):
    return torch.optim.Adam([latent], lr=lr)


class DragState:
    """The optimisation state of one drag, from the inverted latent on.

    Args:
        method: the `DragMethod` that answers the step's questions.
        latent0: (1, C, h, w) the latent to start from (the inverted latent zt).
        handles_rc, targets_rc: (N, 2) handle and target points on the supervision grid.
        lr: Adam learning rate (the config's `drag_lr`; re-read each step).
        dtype: the model's dtype; float16 scales the loss (`dragnb.amp`, as the official code's GradScaler).
    """

    def __init__(self, method: DragMethod, latent0: torch.Tensor, handles_rc: torch.Tensor, targets_rc: torch.Tensor,
                 lr: float, dtype: torch.dtype = torch.float32):
        self.method = method
        self.dtype = dtype
        self.latent = latent0.detach().clone().float().requires_grad_(True)   # (1, C, h, w) leaf the optimiser owns
        self.optimizer = _adam(self.latent, lr)
        self.scaler = loss_scaler(dtype, self.latent.device)                   # float16: dynamic loss scaling
        self.handles0_rc = handles_rc.detach().clone().float()                # (N, 2) where the drags started
        self.targets_rc = targets_rc.detach().clone().float()                 # (N, 2)
        self.handles_rc = self.handles0_rc.clone()                            # (N, 2) after the latest tracking
        self.position = Position()
        self.reached = False
        self.history: list[StepRecord] = []
        self.snapshots: dict[int, dict] = {}
        self.recent: dict[int, dict] = {}     # every step since the last snapshot (at most snapshot_every - 1)
        self.snapshot(0)

    @property
    def n_steps(self) -> int:
        return len(self.history)

    @property
    def finished(self) -> bool:
        """Every handle reached its target, or the method has no timestep left."""
        return self.reached

    # ------------------------------------------------------------------ one step
    def step(self, ctx: StepContext) -> StepRecord | None:
        """One motion-supervision update; None (and nothing changes but `reached`) when the drag is done.

        Transactional: on any error the latent, optimiser, handles and position are as before the call.
        """
        c, m = ctx.config, self.method
        if self.reached or m.finished(c, self.position):
            self.reached = True
            return None
        t0 = time.perf_counter()
        before = self._capture()
        try:
            for g in self.optimizer.param_groups:
                g["lr"] = c.drag_lr
            pos = self.position
            ref = ctx.reference.at(pos.index)
            # 1. forward: features and x_{t-1} of the current latent at this position's timestep
            feat, x_prev = ctx.forward(self.latent, ref.t)
            # 2. track the handles (the method says when)
            handles = self.handles_rc
            if m.track_before(c, pos, self.n_steps):
                handles = m.track(c, ref, self.handles0_rc, feat.detach(), handles, self.targets_rc)
            # 3. reached? then no update
            if all_reached(handles, self.targets_rc, c.reach_distance):
                self.optimizer.zero_grad(set_to_none=True)
                self.handles_rc, self.reached = handles, True
                return None
            # 4. loss: motion supervision + the masked term against the reference's x_{t-1}
            l_motion = m.motion_loss(c, feat, ref, self.handles0_rc, handles, self.targets_rc)
            l_mask = mask_loss(x_prev.float(), ref.x_prev.float(), ctx.mask_latent, c.lam)
            loss = l_motion + l_mask
            # 5. update (float16: the scaled loss; a step with an inf/NaN gradient is skipped, as the official's)
            self.optimizer.zero_grad(set_to_none=True)
            stepped = scaled_step(self.scaler, loss, self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
            # what the host needs from this step, read in one synchronisation (on a GPU each read waits for it and
            # leaves it idle until the next launch); a non-finite loss or latent undoes the step (the except below)
            loss_v, motion_v, mask_v, latent_ok, stepped = torch.stack([
                loss.detach().float().reshape(()), l_motion.detach().float().reshape(()),
                l_mask.detach().float().reshape(()), torch.isfinite(self.latent.detach()).all().float(),
                stepped.float() if isinstance(stepped, torch.Tensor) else loss.new_full((), float(stepped))]).tolist()
            if not math.isfinite(loss_v):
                raise DragDiverged(f"loss={loss_v}")
            if not latent_ok:
                raise DragDiverged("latent")
            stepped = bool(stepped)
            # 6. advance: the method may track again (with this step's features) and move to the next timestep
            adv = m.advance(c, pos, motion_v)
            new_pos = adv.position
            if adv.track:
                tracked = m.track(c, ref, self.handles0_rc, feat.detach(), handles, self.targets_rc)
                new_pos = m.tracked(c, new_pos, not torch.equal(tracked, handles))
                handles = tracked
            if adv.denoise:
                with torch.no_grad():
                    nxt = ctx.denoise(self.latent.detach(), ref.t).float()
                self.latent = nxt.clone().requires_grad_(True)
                self.optimizer = _adam(self.latent, c.drag_lr)
            self.handles_rc, self.position = handles, new_pos
        except BaseException as e:
            self._put(before)
            if isinstance(e, RuntimeError) and ("overflow" in str(e) or "nan" in str(e).lower()):
                raise DragDiverged(str(e)) from e   # e.g. Adam's "value cannot be converted ... without overflow"
            raise
        step_no = self.n_steps + 1
        snap = step_no % c.snapshot_every == 0
        self.history.append(StepRecord(
            step_no, loss_v, motion_v, mask_v,
            [tuple(round(v, 3) for v in ctx.to_image(rc.tolist())) for rc in self.handles_rc],
            [tuple(int(v) for v in rc.tolist()) for rc in self.handles_rc], snap, time.perf_counter() - t0,
            pos.index, int(ref.t), not stepped))
        if snap:
            self.snapshot(step_no)
            self.recent.clear()
        else:
            self.recent[step_no] = self._capture()
        return self.history[-1]

    # ------------------------------------------------------------------ snapshots, rewind
    def _capture(self) -> dict:
        return dict(latent=self.latent.detach().clone(), opt=copy.deepcopy(self.optimizer.state_dict()),
                    handles=self.handles_rc.clone(), reached=self.reached, position=self.position,
                    scaler=scaler_state(self.scaler))

    def _put(self, snap: dict) -> None:
        self.latent = snap["latent"].clone().requires_grad_(True)
        self.optimizer = _adam(self.latent, snap["opt"]["param_groups"][0]["lr"])
        self.optimizer.load_state_dict(copy.deepcopy(snap["opt"]))
        self.handles_rc = snap["handles"].clone()
        self.reached = snap["reached"]
        self.position = snap["position"]
        self.scaler = loss_scaler(self.dtype, self.latent.device)   # fresh: nothing of an interrupted step is kept
        load_scaler_state(self.scaler, snap.get("scaler"))

    def snapshot(self, step: int) -> None:
        self.snapshots[step] = self._capture()

    def keep_recent(self) -> None:
        """The settings a step depends on are about to change (mask, a drag setting) while the state is kept: the
        steps since the last snapshot become snapshots, so a later rewind never replays them with the new settings
        (replay uses the settings of its call). Costs nothing but their memory (< snapshot_every snapshots)."""
        self.snapshots.update(self.recent)
        self.recent.clear()

    def latent_at(self, step: int) -> torch.Tensor | None:
        snap = self.snapshots.get(int(step)) or self.recent.get(int(step))
        return None if snap is None else snap["latent"].clone()

    def rewind(self, k: int, ctx: StepContext) -> None:
        """Undo the last k steps exactly: restore the nearest snapshot, replay the steps in between (all taken with
        the settings of `ctx`: see `keep_recent`)."""
        target = self.n_steps - int(k)
        held = {**self.snapshots, **self.recent}
        base = max(s for s in held if s <= target)
        self._put(held[base])
        del self.history[base:]
        self.snapshots = {s: v for s, v in self.snapshots.items() if s <= base}
        self.recent = {s: v for s, v in self.recent.items() if s <= base}
        while self.n_steps < target:
            if self.step(ctx) is None:
                break

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        def opt(sd):
            st = sd["state"].get(0) or {}
            return {"lr": sd["param_groups"][0]["lr"], **{k: v.detach().clone() for k, v in st.items()}}

        def snap(s):
            return {"latent": s["latent"], "opt": opt(s["opt"]), "handles": s["handles"], "reached": s["reached"],
                    "position": list(asdict(s["position"]).values()), "scaler": portable_scaler_state(s.get("scaler"))}
        return {"method": self.method.name, "handles0_rc": self.handles0_rc, "targets_rc": self.targets_rc,
                "current": snap(self._capture()), "history": [asdict(r) for r in self.history],
                "snapshots": {str(k): snap(v) for k, v in {**self.snapshots, **self.recent}.items()}}

    def load_state_dict(self, sd: dict) -> None:
        """Put back a `state_dict()`: continues bit-exactly."""
        if sd["method"] != self.method.name:
            raise ValueError(f"this state was saved by method {sd['method']!r}, not {self.method.name!r}")
        dev = self.latent.device

        def unsnap(s):
            latent = s["latent"].to(dev)
            opt = _adam(latent.clone().requires_grad_(True), s["opt"]["lr"]).state_dict()
            if "step" in s["opt"]:
                opt["state"] = {0: {k: s["opt"][k].to(dev) if k != "step" else s["opt"][k]
                                    for k in ("step", "exp_avg", "exp_avg_sq")}}
            return dict(latent=latent, opt=opt, handles=s["handles"].cpu().float(), reached=bool(s["reached"]),
                        position=Position(*[int(v) for v in s["position"]]), scaler=dict(s.get("scaler") or {}))
        self.handles0_rc = sd["handles0_rc"].cpu().float()
        self.targets_rc = sd["targets_rc"].cpu().float()
        self.history = [StepRecord(**{**r, "handles": [tuple(p) for p in r["handles"]],
                                      "handles_grid": [tuple(p) for p in r["handles_grid"]]}) for r in sd["history"]]
        self.snapshots = {int(k): unsnap(v) for k, v in sd["snapshots"].items()}
        self.recent = {}
        self._put(unsnap(sd["current"]))
