"""Methods side by side: the same image and drags edited by several sessions (e.g. "dragdiffusion" and
"gooddrag"), each result with its handle trajectories, and per-timestep previews of one run."""
from __future__ import annotations

import numpy as np

from ..drawing import as_rgb_array, drag_color
from .core import VizFigure, clean_axes, draw_drags, trajectory

__all__ = ["plot_methods", "plot_timestep_previews"]


def plot_methods(sessions: dict, results: dict | None = None, *, figsize=None):
    """One column per method: its result (``session.result()`` unless given in ``results``) with the drags, the
    path tracking followed, and a caption (method, steps, stop reason); the input on the left.

    sessions: {label: DragSession}, all on the same image and drags (e.g. one session per method, or one
    session's ``state_dict`` copies). results: optional {label: PIL image} already rendered.
    """
    if not sessions:
        raise ValueError("sessions is empty: give {label: DragSession}, e.g. {'dragdiffusion': a, 'gooddrag': b}")
    first = next(iter(sessions.values()))
    n = len(sessions) + 1
    fig = VizFigure(figsize=figsize or (3.0 * n, 3.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    axes[0].imshow(as_rgb_array(first.image))
    draw_drags(axes[0], [h for h, _ in first.drags], [t for _, t in first.drags])
    clean_axes(axes[0], "input and drags")
    for ax, (label, s) in zip(axes[1:], sessions.items()):
        img = (results or {}).get(label)
        ax.imshow(as_rgb_array(img if img is not None else s.result()))
        traj = trajectory(s)
        for i in range(traj.shape[1]):
            ax.plot(traj[:, i, 0], traj[:, i, 1], "-", color=drag_color(i), lw=1.3, alpha=0.9)
        draw_drags(ax, traj[0], [t for _, t in s.drags], current=traj[-1] if len(traj) > 1 else None, arrows=False)
        ax.set_xlim(-0.5, s.size[0] - 0.5)
        ax.set_ylim(s.size[1] - 0.5, -0.5)
        clean_axes(ax, f"{label}: {s.n_steps} steps")
        if s.stop_reason:
            ax.set_xlabel(s.stop_reason, fontsize=7)
    return fig


class TimestepPreviews:
    """A `run` callback that keeps ``session.preview()`` each time the drag moves to a new timestep (and at the
    start), for :func:`plot_timestep_previews`. frames: {(t_index, timestep): PIL image}."""

    def __init__(self, session):
        self.session, self.frames = session, {}
        self._last = None

    def __call__(self, record=None) -> bool:
        pos = self.session.position
        key = None if pos is None else pos.index
        if key != self._last:
            ts = self.session.cache.extract_features(self.session.spec).ts
            t = ts[key] if key is not None and key < len(ts) else None
            self.frames[(key or 0, t)] = self.session.preview()
            self._last = key
        return True


def plot_timestep_previews(frames: dict, *, figsize=None):
    """A row of one-step x0 previews, one per timestep a method dragged at (from `TimestepPreviews.frames`).

    These are rough estimates (one UNet call each), not the final denoising.
    """
    if not frames:
        raise ValueError("frames is empty: record them with TimestepPreviews(session) as the run callback")
    n = len(frames)
    fig = VizFigure(figsize=figsize or (2.2 * n, 2.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, ((i, t), img) in zip(axes, sorted(frames.items(), key=lambda kv: kv[0][0])):
        ax.imshow(as_rgb_array(img))
        clean_axes(ax, f"timestep {i + 1}" + (f" (t={t})" if t is not None else ""))
    fig.suptitle("one-step x0 previews (rough estimates) as the drag moves through the timesteps", fontsize=9)
    return fig
