"""Watching an edit unfold: `PreviewRecorder` keeps previews while a session runs, `animate_edit` makes the GIF."""
from __future__ import annotations

import numpy as np

from ..drawing import as_rgb_array, drag_color
from .core import VizFigure, as_numpy, clean_axes, draw_drags, is_session, records, trajectory

__all__ = ["PreviewRecorder", "animate_edit"]


class PreviewRecorder:
    """Collect ``s.preview()`` images while the session runs, for :func:`animate_edit`.

    Use as the ``run`` callback (it never stops the run) or call it after each ``s.step()``::

        rec = PreviewRecorder(s, every=2)        # records the step-0 preview now
        s.run(max_steps=20, callback=rec)
        animate_edit(s, "edit.gif", frames=rec.frames)

    frames: {step: PIL.Image}. One preview costs one UNet call and one decode.
    """

    def __init__(self, session, every: int = 1, record_now: bool = True):
        if every < 1:
            raise ValueError(f"every={every} must be >= 1")
        self.session, self.every, self.frames = session, int(every), {}
        if record_now:
            self.frames[int(session.n_steps)] = session.preview()

    def __call__(self, record=None) -> bool:
        step = int(self.session.n_steps)
        if step % self.every == 0 and step not in self.frames:
            self.frames[step] = self.session.preview()
        return True


def animate_edit(session_or_image, path=None, every: int = 1, *, frames=None, trajectories=None,
                 history=None, targets=None, fps: int = 5, figsize=None):
    """Animate the edit: image (preview at each step when available), handle paths so far, loss so far.

    Session form: ``animate_edit(s, "edit.gif", every=2, frames=rec.frames)`` with ``frames`` from a
    :class:`PreviewRecorder` ({step: image}); without frames the input image is the backdrop and only
    the handles move. Array form: ``animate_edit(image, trajectories=(n+1, k, 2), history=[...],
    targets=[...])``. One frame per ``every`` steps (plus the last). Returns the
    ``matplotlib.animation.FuncAnimation``; with ``path`` the GIF is written there (PillowWriter).
    In a notebook: ``IPython.display.HTML(anim.to_jshtml())`` or ``Image(path)``.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if every < 1:
        raise ValueError(f"every={every} must be >= 1")
    if is_session(session_or_image):
        s = session_or_image
        image = s.image
        recs = records(s)
        targets = [t for _, t in s.drags] if targets is None else targets
        trajectories = trajectory(s)
    else:
        image = session_or_image
        recs = records(history or [])
        if trajectories is None:
            raise ValueError("pass trajectories=(n_steps+1, n_handles, 2) with the array form")
        trajectories = as_numpy(trajectories).astype(np.float64)
    frames = {int(k): as_rgb_array(v) for k, v in (frames or {}).items()}
    backdrop = as_rgb_array(image)
    n = len(trajectories) - 1
    steps = list(range(0, n + 1, every))
    if steps[-1] != n:
        steps.append(n)
    losses = np.array([float(r["loss"]) if r.get("loss") is not None else np.nan for r in recs])

    fig = VizFigure(figsize=figsize or (7.6, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax, axl = fig.subplots(1, 2, width_ratios=[1.1, 1.0])

    def frame_image(step):
        known = [k for k in frames if k <= step]
        return frames[max(known)] if known else backdrop

    def draw(i):
        step = steps[i]
        ax.clear()
        axl.clear()
        img = frame_image(step)
        ax.imshow(img)
        for j in range(trajectories.shape[1]):
            p = trajectories[: step + 1, j]
            ax.plot(p[:, 0], p[:, 1], "-", color=drag_color(j), lw=1.5)
        draw_drags(ax, trajectories[0], targets, current=trajectories[step] if step else None, arrows=False)
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
        clean_axes(ax, f"step {step}/{n}")
        if len(losses):
            axl.plot(np.arange(1, len(losses) + 1), losses, color="0.8", lw=1)
            axl.plot(np.arange(1, step + 1), losses[:step], "-o", ms=2.5, color="black", lw=1.2)
        axl.set_xlim(0, max(n, 1) + 0.5)
        axl.set_title("loss", fontsize=10)
        axl.set_xlabel("step")
        axl.grid(alpha=0.3)
        return []

    anim = FuncAnimation(fig, draw, frames=len(steps), interval=1000 // max(fps, 1), blit=False, repeat=True)
    if path is not None:
        anim.save(str(path), writer=PillowWriter(fps=fps))
    return anim
