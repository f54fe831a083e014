"""The `dragnb.viz` figures: features, what tracking sees, trajectories, loss, before/after, inversion check.

Each ``plot_*`` takes a :class:`~dragnb.session.DragSession` (its public API only) or plain arrays and
returns a :class:`VizFigure`.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ..drawing import as_rgb_array, drag_color, drag_label
from .core import (VizFigure, as_numpy, clean_axes, draw_drags, feat_chw, is_session, pca_rgb, psnr, records,
                   tracking_map, trajectory)

__all__ = ["plot_features", "plot_similarity", "plot_trajectories", "plot_loss", "plot_before_after",
           "plot_inversion_check"]


def plot_features(session_or_feats, current=None, *, image=None, n_components: int = 3,
                  figsize=None) -> Figure:
    """UNet decoder features as PCA -> RGB: source and current side by side (same projection).

    session_or_feats: a DragSession (uses ``features("source")``, ``features("current")`` and its image)
    or (C, h, w) source features; current: (C, h, w) current features for the array form (omitted: only
    the source is drawn); image: optional image drawn as a first panel.
    Similar colours = similar features; where the edit moved content, the current map moves with it.
    """
    if is_session(session_or_feats):
        s = session_or_feats
        src = s.features("source")
        current = s.features("current") if current is None else current
        image = s.image if image is None else image
        title_cur = f"current features (step {getattr(s, 'n_steps', '?')})"
    else:
        src = session_or_feats
        title_cur = "current features"
    maps = pca_rgb(src, *([current] if current is not None else []), n_components=n_components)
    panels = ([("image", as_rgb_array(image))] if image is not None else []) + [("source features (PCA)", maps[0])]
    if current is not None:
        panels.append((title_cur, maps[1]))
    fig = VizFigure(figsize=figsize or (3.2 * len(panels), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, arr) in zip(axes, panels):
        ax.imshow(arr, interpolation="nearest")
        clean_axes(ax, title)
    C, h, w = feat_chw(src).shape
    fig.suptitle(f"decoder features: {C} channels on a {h}×{w} grid, top-{min(n_components, C)} PCA of the source",
                 fontsize=10)
    return fig


def plot_similarity(session_or_feats, handle_index: int = 0, point_xy=None, *, current=None, point_rc=None,
                    center_rc=None, target_rc=None, r_p: int | None = None, patch: int | None = None,
                    figsize=None) -> Figure:
    """What point tracking sees: the distance map the tracker minimises, for one source point.

    The map is :func:`dragnb.drag.tracking_distance` itself (through :func:`tracking_map`), drawn as
    −L1 distance: over the whole grid on the left, in the window of radius ``r_p`` on the right, with
    the window's best cell (where tracking moves the handle), honouring ``track_patch``.

    Session form: ``plot_similarity(s, handle_index=0)`` takes the source features at drag
    ``handle_index``'s original handle (0-based; the drag labelled ``handle_index + 1``), compares the
    current features with them, and draws the window around the current handle with ``config.r_p`` and
    ``config.track_patch``, the original handle, the current handle and the target.
    ``plot_similarity(s, point_xy=(x, y))`` does the same for any image point (window around it).

    Array form: ``plot_similarity(source_chw, current=current_chw, point_rc=(r, c), center_rc=...,
    target_rc=..., r_p=3, patch=0)`` with grid points; ``current`` defaults to the source,
    ``center_rc`` (window centre) to ``point_rc``; ``handle_index`` only picks the colour and label.
    """
    if is_session(session_or_feats):
        s = session_or_feats
        src = s.features("source")
        cur = s.features("current") if current is None else current
        r_p = s.config.r_p if r_p is None else r_p
        patch = getattr(s.config, "track_patch", 0) if patch is None else patch
        if point_xy is not None:
            point_rc = center_rc = s.image_to_grid(point_xy)
            label = f"point ({point_xy[0]:.0f}, {point_xy[1]:.0f})"
        else:
            drags = s.drags
            if not drags:
                raise ValueError("the session has no drags; add one with s.add_drag(...) or pass point_xy=(x, y)")
            if not 0 <= handle_index < len(drags):
                raise ValueError(f"handle_index {handle_index} is out of range: the session has {len(drags)} drag(s)")
            handle_xy, target_xy = drags[handle_index]
            point_rc = s.image_to_grid(handle_xy)
            center_rc = s.image_to_grid(s.handles[handle_index])
            target_rc = s.image_to_grid(target_xy)
            label = f"drag {drag_label(handle_index)}, step {getattr(s, 'n_steps', '?')}"
    else:
        src = session_or_feats
        cur = src if current is None else current
        if point_rc is None:
            raise ValueError("pass point_rc=(row, col) (grid cell of the source feature) with plain arrays")
        center_rc = point_rc if center_rc is None else center_rc
        r_p = 3 if r_p is None else r_p
        patch = 0 if patch is None else patch
        label = f"cell ({float(point_rc[0]):.0f}, {float(point_rc[1]):.0f})"

    _, dist_grid = tracking_map(src, cur, point_rc, center_rc, r_p=r_p, patch=patch, whole_grid=True)
    (r0, r1, c0, c1), dist_win = tracking_map(src, cur, point_rc, center_rc, r_p=r_p, patch=patch)
    sim, win = -dist_grid, -dist_win                       # drawn as −L1 distance: bright = close
    br, bc = np.unravel_index(np.argmin(dist_win), dist_win.shape)   # the first minimum, as track_points
    best_rc = (r0 + int(br), c0 + int(bc))
    what = "−L1 distance" + (f" of {2 * patch + 1}×{2 * patch + 1} patches" if patch else "")

    fig = VizFigure(figsize=figsize or (8.4, 4.0), layout="constrained")
    ax, axz = fig.subplots(1, 2)
    im = ax.imshow(sim, cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label=what)
    ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec="cyan", lw=1.5,
                           label=f"tracking window (r_p={r_p})"))
    xy = lambda rc: (float(rc[1]), float(rc[0]))            # grid (row, col) -> axes (x, y)
    draw_drags(ax, [xy(point_rc)], [xy(target_rc)] if target_rc is not None else None,
               current=[xy(center_rc)] if tuple(center_rc) != tuple(point_rc) else None,
               indices=[handle_index], numbered=target_rc is not None)
    ax.scatter([best_rc[1]], [best_rc[0]], marker="+", s=120, c="cyan", zorder=8, label="best in window")
    ax.set_title(f"similarity to the source feature at {label}", fontsize=10)
    ax.legend(loc="lower left", fontsize=7, framealpha=0.7)
    ax.set_xlabel("grid col")
    ax.set_ylabel("grid row")

    axz.imshow(win, cmap="magma", interpolation="nearest", extent=(c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5),
               vmin=sim.min(), vmax=sim.max())
    if win.size <= 400:
        for i in range(win.shape[0]):
            for j in range(win.shape[1]):
                axz.text(c0 + j, r0 + i, f"{win[i, j] + 0.0:.2g}", ha="center", va="center", fontsize=6,
                         color="white" if win[i, j] < (sim.min() + sim.max()) / 2 else "black")
    axz.add_patch(Rectangle((best_rc[1] - 0.5, best_rc[0] - 0.5), 1, 1, fill=False, ec="cyan", lw=2))
    cr, cc = int(center_rc[0]), int(center_rc[1])
    axz.add_patch(Rectangle((cc - 0.5, cr - 0.5), 1, 1, fill=False, ec="white", lw=1, ls="--"))
    axz.set_title(f"window: best cell ({best_rc[0]}, {best_rc[1]})  dashed = current", fontsize=10)
    axz.set_xlabel("grid col")
    return fig


def plot_trajectories(session_or_image, trajectories=None, targets=None, *, figsize=None) -> Figure:
    """Handle trajectories over the image.

    Session form: the path of each handle from its drag start through ``history[*].handles``, with the
    targets and the drags' arrows. Array form: ``plot_trajectories(image, trajectories, targets)`` where
    ``trajectories`` is (n_steps+1, n_handles, 2) image (x, y) points, first row = start.
    """
    if is_session(session_or_image):
        s = session_or_image
        image = s.image
        targets = [t for _, t in s.drags] if targets is None else targets
        trajectories = trajectory(s)
    else:
        image = session_or_image
        trajectories = as_numpy(trajectories).astype(np.float64)
        if trajectories.ndim != 3 or trajectories.shape[-1] != 2:
            raise ValueError(f"trajectories must be (n_steps+1, n_handles, 2), got shape {trajectories.shape}")
    img = as_rgb_array(image)
    fig = VizFigure(figsize=figsize or (4.6, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.imshow(img)
    n_h = trajectories.shape[1]
    for i in range(n_h):
        path = trajectories[:, i, :]
        ax.plot(path[:, 0], path[:, 1], "-", color=drag_color(i), lw=1.5, alpha=0.9)
        ax.plot(path[:, 0], path[:, 1], ".", color=drag_color(i), ms=3)
    draw_drags(ax, trajectories[0], targets, current=trajectories[-1] if len(trajectories) > 1 else None,
               arrows=False)
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)
    clean_axes(ax, f"handle trajectories ({len(trajectories) - 1} steps)")
    return fig


def plot_loss(session_or_history, *, figsize=None) -> Figure:
    """Loss per step: total, motion-supervision term and mask term on separate axes (their scales differ).

    session_or_history: a DragSession, or a list of StepRecords / dicts with ``step``, ``loss``,
    ``motion_loss``, ``mask_loss`` (and ``t_index``/``timestep``: where a method moves to the next timestep,
    as GoodDrag does, a dotted line marks the change and the timestep is written above it).
    """
    recs = records(session_or_history)
    steps = np.array([r["step"] for r in recs], dtype=float)
    get = lambda k: np.array([np.nan if r.get(k) is None else float(r[k]) for r in recs], dtype=float)
    fig = VizFigure(figsize=figsize or (9.0, 3.0), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, key, title, col in zip(axes, ("loss", "motion_loss", "mask_loss"),
                                   ("total loss", "motion supervision", "mask term"),
                                   ("black", "#e6194b", "#4363d8")):
        ax.plot(steps, get(key), "-o", ms=2.5, color=col, lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for prev, r in zip(recs, recs[1:]):   # the method moved to the next timestep between these two steps
        if r.get("t_index") is not None and r.get("t_index") != prev.get("t_index"):
            for ax in axes:
                ax.axvline(r["step"] - 0.5, color="gray", ls=":", lw=1)
            axes[0].annotate(f"t={r.get('timestep')}", (r["step"] - 0.5, 1.0), xycoords=("data", "axes fraction"),
                             fontsize=7, color="gray", ha="left", va="top")
    if not recs:
        for ax in axes:
            ax.text(0.5, 0.5, "no steps yet", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_before_after(session_or_image, result=None, *, drags=None, handles=None, figsize=None) -> Figure:
    """Input with the drags drawn, and the result with the final handles.

    Session form: ``plot_before_after(s)`` (calls ``s.result()`` unless ``result`` is given).
    Array form: ``plot_before_after(image, result, drags=[(h, t), ...], handles=[...])``.
    """
    if is_session(session_or_image):
        s = session_or_image
        image, drags = s.image, s.drags if drags is None else drags
        handles = s.handles if handles is None else handles
        result = s.result() if result is None else result
        after = f"result after {getattr(s, 'n_steps', '?')} steps"
    else:
        image, after = session_or_image, "result"
        if result is None:
            raise ValueError("pass result=<image> with the array form")
    drags = list(drags or [])
    fig = VizFigure(figsize=figsize or (8.0, 4.2), layout="constrained")
    a, b = fig.subplots(1, 2)
    a.imshow(as_rgb_array(image))
    if drags:
        draw_drags(a, [h for h, _ in drags], [t for _, t in drags])
    clean_axes(a, "input + drags")
    b.imshow(as_rgb_array(result))
    if drags:
        draw_drags(b, handles if handles else [h for h, _ in drags], [t for _, t in drags], arrows=False)
    clean_axes(b, after)
    return fig


def plot_inversion_check(session_or_image, reconstruction=None, *, figsize=None) -> Figure:
    """Input vs the denoised, unedited inverted latent, with the PSNR in the title.

    A low PSNR means the edit starts from a poor reconstruction (more LoRA steps, lower
    ``inversion_strength``). Session form calls ``s.reconstruction()``.
    """
    if is_session(session_or_image):
        image = session_or_image.image
        reconstruction = session_or_image.reconstruction() if reconstruction is None else reconstruction
    else:
        image = session_or_image
        if reconstruction is None:
            raise ValueError("pass reconstruction=<image> with the array form")
    a, b = as_rgb_array(image), as_rgb_array(reconstruction)
    value = psnr(a, b)
    fig = VizFigure(figsize=figsize or (7.0, 3.9), layout="constrained")
    x, y = fig.subplots(1, 2)
    x.imshow(a)
    clean_axes(x, "input")
    y.imshow(b)
    clean_axes(y, "reconstruction (invert → denoise)")
    fig.suptitle(f"inversion check: PSNR {value:.2f} dB", fontsize=11)
    return fig
