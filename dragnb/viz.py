"""Matplotlib figures that show what happens inside a drag edit.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` built with the object-oriented
API (``Figure()`` + ``fig.subplots``), so it works headless and never touches pyplot's global state.
In a notebook, a returned figure displays itself as the cell's value. Each function takes either a
:class:`~dragnb.session.DragSession` or plain arrays, so it can be used on synthetic data too.

Coordinates follow the house rule: image points are ``(x, y)`` pixels (x right, y down); feature-grid
points are ``(row, col)``. Image -> grid conversion is the session's (``s.image_to_grid``); the
array forms of these functions take grid points directly and never convert.

This module imports matplotlib, numpy and (lazily) torch only; never a Jupyter package.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from .metrics import psnr as _psnr

__all__ = [
    "DRAG_COLORS", "draw_drags", "pca_rgb", "similarity_map", "tracking_window", "psnr",
    "plot_features", "plot_similarity", "plot_trajectories", "plot_loss", "plot_before_after",
    "plot_inversion_check", "PreviewRecorder", "animate_edit", "figure_to_png", "VizFigure",
]

# One colour per drag pair (handle, target, arrow and trajectory share it).
DRAG_COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
               "#42d4f4", "#f032e6", "#bfef45", "#9a6324", "#000075"]


# ---------------------------------------------------------------------------------------------
# small pure helpers
# ---------------------------------------------------------------------------------------------
def _np(x) -> np.ndarray:
    """torch.Tensor | PIL.Image | array-like -> numpy array (float tensors become float32 on CPU)."""
    if hasattr(x, "detach"):                      # torch.Tensor, without importing torch
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _is_session(obj) -> bool:
    return hasattr(obj, "features") and hasattr(obj, "history") and hasattr(obj, "drags")


def _image_hw3(img) -> np.ndarray:
    """PIL image / HxW / HxWx3(4) array (uint8 or float in [0, 1]) -> HxWx3 uint8."""
    a = np.asarray(img.convert("RGB")) if hasattr(img, "convert") else _np(img)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got an array of shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255.0) if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
    return a


def _feat_chw(x, name="features") -> np.ndarray:
    a = _np(x).astype(np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (C, h, w) (or (1, C, h, w)), got shape {a.shape}")
    return a


def _color(i: int, colors=None) -> str:
    colors = colors or DRAG_COLORS
    return colors[i % len(colors)]


def draw_drags(ax, handles: Sequence, targets: Sequence | None = None, *, current: Sequence | None = None,
               numbered: bool = True, colors: Sequence[str] | None = None, labels: Sequence[str] | None = None,
               size: float = 60.0, arrows: bool = True) -> None:
    """Draw drag pairs on an axes: numbered coloured handles, targets, and handle -> target arrows.

    Points are in the axes' data coordinates as ``(x, y)`` (for an ``imshow`` of an image: pixels).
    handles: the drags' start points; targets: where they should go (same length or None);
    current: where point tracking has the handles now (drawn as crosses, arrow from handle to current
    dashed). Pair ``i`` uses colour ``colors[i]`` (default :data:`DRAG_COLORS`) and label ``labels[i]``
    (default ``str(i)``).
    """
    handles = [tuple(map(float, p)) for p in handles]
    targets = [tuple(map(float, p)) for p in targets] if targets is not None else [None] * len(handles)
    current = [tuple(map(float, p)) for p in current] if current is not None else [None] * len(handles)
    if not (len(handles) == len(targets) == len(current)):
        raise ValueError(f"handles ({len(handles)}), targets ({len(targets)}) and current ({len(current)}) "
                         "must have the same length")
    for i, (h, t, c) in enumerate(zip(handles, targets, current)):
        col = _color(i, colors)
        if t is not None and arrows:
            ax.annotate("", xy=t, xytext=h, arrowprops=dict(arrowstyle="->", color=col, lw=1.8,
                                                            shrinkA=3, shrinkB=3))
        if c is not None and arrows and c != h:
            ax.annotate("", xy=c, xytext=h, arrowprops=dict(arrowstyle="-", color=col, lw=1.2, ls="--",
                                                            shrinkA=0, shrinkB=0))
        ax.scatter([h[0]], [h[1]], s=size, c=col, edgecolors="white", linewidths=1.2, zorder=5,
                   label="handle" if i == 0 else None)
        if t is not None:
            ax.scatter([t[0]], [t[1]], s=size, facecolors="none", edgecolors=col, linewidths=2.0, zorder=5,
                       label="target" if i == 0 else None)
        if c is not None:
            ax.scatter([c[0]], [c[1]], s=size * 1.2, c=col, marker="X", edgecolors="white", linewidths=0.8,
                       zorder=6, label="current" if i == 0 else None)
        if numbered:
            ax.annotate(labels[i] if labels else str(i), h, xytext=(4, 4), textcoords="offset points", color="white", fontsize=8,
                        fontweight="bold", zorder=7,
                        bbox=dict(boxstyle="round,pad=0.15", fc=col, ec="none", alpha=0.85))


def pca_rgb(source, *others, n_components: int = 3, clip_percentile: float = 1.0):
    """Project feature maps to RGB with a PCA fitted on ``source`` only.

    source: (C, h, w) features (torch or numpy); others: more (C, h', w') maps projected with the same
    components, centring and colour scaling, so colours are comparable between them.
    Returns a list of (h, w, 3) float arrays in [0, 1], the source first. Component signs are fixed
    (largest loading positive) so colours do not flip between calls.
    """
    src = _feat_chw(source, "source features")
    C = src.shape[0]
    X = src.reshape(C, -1).T                                   # (N, C)
    mean = X.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)   # rows of vt: principal directions
    k = min(n_components, vt.shape[0])
    comps = vt[:k]                                             # (k, C)
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    proj_src = (X - mean) @ comps.T                            # (N, k)
    lo = np.percentile(proj_src, clip_percentile, axis=0)
    hi = np.percentile(proj_src, 100.0 - clip_percentile, axis=0)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)

    out = []
    for f in (src,) + tuple(_feat_chw(o, "features") for o in others):
        if f.shape[0] != C:
            raise ValueError(f"features have {f.shape[0]} channels but the source has {C}")
        p = ((f.reshape(C, -1).T - mean) @ comps.T - lo) / span
        p = np.clip(p, 0.0, 1.0)
        if k < 3:                                              # pad to RGB with zeros
            p = np.concatenate([p, np.zeros((p.shape[0], 3 - k), p.dtype)], axis=1)
        out.append(p.reshape(f.shape[1], f.shape[2], 3))
    return out


def similarity_map(feats, query) -> np.ndarray:
    """Negative L1 distance between a query feature vector and every cell of a feature map.

    feats: (C, h, w); query: (C,). Returns (h, w) float array; 0 = identical, more negative = farther.
    This is the score point tracking maximises (the official code takes the argmin of the L1 distance).
    """
    f = _feat_chw(feats)
    q = _np(query).astype(np.float32).reshape(-1)
    if q.shape[0] != f.shape[0]:
        raise ValueError(f"query has {q.shape[0]} channels, features have {f.shape[0]}")
    return -np.abs(f - q[:, None, None]).sum(axis=0)


def tracking_window(center_rc, r_p: int, grid_hw) -> tuple[int, int, int, int]:
    """Point-tracking search window around a grid point: (row0, row1, col0, col1), end-exclusive.

    The centre is rounded to the nearest cell; the window is clipped to the grid (as the official code).
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    r, c = int(round(float(center_rc[0]))), int(round(float(center_rc[1])))
    return max(0, r - r_p), min(h, r + r_p + 1), max(0, c - r_p), min(w, c + r_p + 1)


def _sample_feature(feats_chw: np.ndarray, rc) -> np.ndarray:
    """Feature vector at a grid point (row, col): bilinear for fractional points, clipped to the grid."""
    C, h, w = feats_chw.shape
    r = min(max(float(rc[0]), 0.0), h - 1.0)
    c = min(max(float(rc[1]), 0.0), w - 1.0)
    r0, c0 = int(math.floor(r)), int(math.floor(c))
    r1, c1 = min(r0 + 1, h - 1), min(c0 + 1, w - 1)
    dr, dc = r - r0, c - c0
    return ((1 - dr) * (1 - dc) * feats_chw[:, r0, c0] + (1 - dr) * dc * feats_chw[:, r0, c1]
            + dr * (1 - dc) * feats_chw[:, r1, c0] + dr * dc * feats_chw[:, r1, c1])


def psnr(a, b) -> float:
    """PSNR in dB between two uint8 images of the same size (inf when identical)."""
    return _psnr(_image_hw3(a), _image_hw3(b))


def figure_to_png(fig: Figure, dpi: int | None = None) -> bytes:
    """Render a figure to PNG bytes (Agg), e.g. for an ``ipywidgets.Image``."""
    import io
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


class VizFigure(Figure):
    """A plain :class:`~matplotlib.figure.Figure` that also shows itself in Jupyter without pyplot.

    IPython renders a bare ``Figure`` as PNG only once pyplot (the inline backend) is loaded; this adds
    ``_repr_png_`` (Agg) so ``viz.plot_*(...)`` as a cell's last line always displays the figure.
    """

    def _repr_png_(self) -> bytes:
        return figure_to_png(self)


def _records(session_or_history) -> list:
    """A session's history or a list of StepRecords / dicts -> list of dicts with the record fields."""
    hist = session_or_history.history if hasattr(session_or_history, "history") else session_or_history
    out = []
    for i, r in enumerate(hist):
        d = dict(r) if isinstance(r, dict) else {k: getattr(r, k) for k in
                                                 ("step", "loss", "motion_loss", "mask_loss", "handles")
                                                 if hasattr(r, k)}
        d.setdefault("step", i + 1)
        out.append(d)
    return out


def _clean_axes(ax, title=None):
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def plot_features(session_or_feats, current=None, *, image=None, n_components: int = 3,
                  figsize=None) -> Figure:
    """UNet decoder features as PCA -> RGB: source and current side by side (same projection).

    session_or_feats: a DragSession (uses ``features("source")``, ``features("current")`` and its image)
    or (C, h, w) source features; current: (C, h, w) current features for the array form (omitted: only
    the source is drawn); image: optional image drawn as a first panel.
    Similar colours = similar features; where the edit moved content, the current map moves with it.
    """
    if _is_session(session_or_feats):
        s = session_or_feats
        src = s.features("source")
        current = s.features("current") if current is None else current
        image = s.image if image is None else image
        title_cur = f"current features (step {getattr(s, 'n_steps', '?')})"
    else:
        src = session_or_feats
        title_cur = "current features"
    maps = pca_rgb(src, *([current] if current is not None else []), n_components=n_components)
    panels = ([("image", _image_hw3(image))] if image is not None else []) + [("source features (PCA)", maps[0])]
    if current is not None:
        panels.append((title_cur, maps[1]))
    fig = VizFigure(figsize=figsize or (3.2 * len(panels), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, arr) in zip(axes, panels):
        ax.imshow(arr, interpolation="nearest")
        _clean_axes(ax, title)
    C, h, w = _feat_chw(src).shape
    fig.suptitle(f"decoder features: {C} channels on a {h}×{w} grid, top-{min(n_components, C)} PCA of the source",
                 fontsize=10)
    return fig


def plot_similarity(session_or_feats, handle_index: int = 0, point_xy=None, *, current=None, point_rc=None,
                    center_rc=None, target_rc=None, r_p: int | None = None, figsize=None) -> Figure:
    """What point tracking sees: the similarity of one source feature to every cell of the current map.

    Session form: ``plot_similarity(s, handle_index=0)`` takes the source feature at drag
    ``handle_index``'s original handle, scores the current features against it (negative L1), and
    draws the tracking window (radius ``config.r_p`` around the current handle), the original handle,
    the current handle, the target and the window's best cell (where tracking moves the handle).
    ``plot_similarity(s, point_xy=(x, y))`` does the same for any image point (window around it).

    Array form: ``plot_similarity(source_chw, current=current_chw, point_rc=(r, c), center_rc=...,
    target_rc=..., r_p=3)`` with grid points; ``current`` defaults to the source,
    ``center_rc`` (window centre) to ``point_rc``; ``handle_index`` only picks the colour and label.
    Left: the whole grid; right: the window enlarged with each cell's score.
    """
    if _is_session(session_or_feats):
        s = session_or_feats
        src = _feat_chw(s.features("source"))
        cur = _feat_chw(s.features("current")) if current is None else _feat_chw(current)
        r_p = s.config.r_p if r_p is None else r_p
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
            label = f"handle {handle_index}, step {getattr(s, 'n_steps', '?')}"
    else:
        src = _feat_chw(session_or_feats, "source features")
        cur = src if current is None else _feat_chw(current, "current features")
        if point_rc is None:
            raise ValueError("pass point_rc=(row, col) (grid cell of the source feature) with plain arrays")
        center_rc = point_rc if center_rc is None else center_rc
        r_p = 3 if r_p is None else r_p
        label = f"cell ({float(point_rc[0]):.0f}, {float(point_rc[1]):.0f})"

    sim = similarity_map(cur, _sample_feature(src, point_rc))
    h, w = sim.shape
    r0, r1, c0, c1 = tracking_window(center_rc, r_p, (h, w))
    win = sim[r0:r1, c0:c1]
    br, bc = np.unravel_index(np.argmax(win), win.shape)
    best_rc = (r0 + br, c0 + bc)

    fig = VizFigure(figsize=figsize or (8.4, 4.0), layout="constrained")
    ax, axz = fig.subplots(1, 2)
    im = ax.imshow(sim, cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="−L1 distance")
    ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec="cyan", lw=1.5,
                           label=f"tracking window (r_p={r_p})"))
    xy = lambda rc: (float(rc[1]), float(rc[0]))            # grid (row, col) -> axes (x, y)
    draw_drags(ax, [xy(point_rc)], [xy(target_rc)] if target_rc is not None else None,
               current=[xy(center_rc)] if tuple(center_rc) != tuple(point_rc) else None,
               colors=[_color(handle_index)], labels=[str(handle_index)], numbered=target_rc is not None)
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
    cr, cc = int(round(float(center_rc[0]))), int(round(float(center_rc[1])))
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
    if _is_session(session_or_image):
        s = session_or_image
        image = s.image
        starts = [h for h, _ in s.drags]
        targets = [t for _, t in s.drags] if targets is None else targets
        traj = [starts] + [list(r["handles"]) for r in _records(s) if r.get("handles") is not None]
        trajectories = np.asarray(traj, dtype=np.float64).reshape(len(traj), len(starts), 2)
    else:
        image = session_or_image
        trajectories = _np(trajectories).astype(np.float64)
        if trajectories.ndim != 3 or trajectories.shape[-1] != 2:
            raise ValueError(f"trajectories must be (n_steps+1, n_handles, 2), got shape {trajectories.shape}")
    img = _image_hw3(image)
    fig = VizFigure(figsize=figsize or (4.6, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.imshow(img)
    n_h = trajectories.shape[1]
    for i in range(n_h):
        path = trajectories[:, i, :]
        ax.plot(path[:, 0], path[:, 1], "-", color=_color(i), lw=1.5, alpha=0.9)
        ax.plot(path[:, 0], path[:, 1], ".", color=_color(i), ms=3)
    draw_drags(ax, trajectories[0], targets, current=trajectories[-1] if len(trajectories) > 1 else None,
               arrows=False)
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)
    _clean_axes(ax, f"handle trajectories ({len(trajectories) - 1} steps)")
    return fig


def plot_loss(session_or_history, *, figsize=None) -> Figure:
    """Loss per step: total, motion-supervision term and mask term on separate axes (their scales differ).

    session_or_history: a DragSession, or a list of StepRecords / dicts with ``step``, ``loss``,
    ``motion_loss``, ``mask_loss``.
    """
    recs = _records(session_or_history)
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
    if not recs:
        for ax in axes:
            ax.text(0.5, 0.5, "no steps yet", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_before_after(session_or_image, result=None, *, drags=None, handles=None, figsize=None) -> Figure:
    """Input with the drags drawn, and the result with the final handles.

    Session form: ``plot_before_after(s)`` (calls ``s.result()`` unless ``result`` is given).
    Array form: ``plot_before_after(image, result, drags=[(h, t), ...], handles=[...])``.
    """
    if _is_session(session_or_image):
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
    a.imshow(_image_hw3(image))
    if drags:
        draw_drags(a, [h for h, _ in drags], [t for _, t in drags])
    _clean_axes(a, "input + drags")
    b.imshow(_image_hw3(result))
    if drags:
        draw_drags(b, handles if handles else [h for h, _ in drags], [t for _, t in drags], arrows=False)
    _clean_axes(b, after)
    return fig


def plot_inversion_check(session_or_image, reconstruction=None, *, figsize=None) -> Figure:
    """Input vs the denoised, unedited inverted latent, with the PSNR in the title.

    A low PSNR means the edit starts from a poor reconstruction (more LoRA steps, lower
    ``inversion_strength``). Session form calls ``s.reconstruction()``.
    """
    if _is_session(session_or_image):
        image = session_or_image.image
        reconstruction = session_or_image.reconstruction() if reconstruction is None else reconstruction
    else:
        image = session_or_image
        if reconstruction is None:
            raise ValueError("pass reconstruction=<image> with the array form")
    a, b = _image_hw3(image), _image_hw3(reconstruction)
    value = psnr(a, b)
    fig = VizFigure(figsize=figsize or (7.0, 3.9), layout="constrained")
    x, y = fig.subplots(1, 2)
    x.imshow(a)
    _clean_axes(x, "input")
    y.imshow(b)
    _clean_axes(y, "reconstruction (invert → denoise)")
    fig.suptitle(f"inversion check: PSNR {value:.2f} dB", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------
# animation
# ---------------------------------------------------------------------------------------------
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
    if _is_session(session_or_image):
        s = session_or_image
        image = s.image
        recs = _records(s)
        starts = [h for h, _ in s.drags]
        targets = [t for _, t in s.drags] if targets is None else targets
        traj = np.asarray([starts] + [list(r["handles"]) for r in recs], dtype=np.float64)
        trajectories = traj.reshape(len(traj), len(starts), 2)
    else:
        image = session_or_image
        recs = _records(history or [])
        if trajectories is None:
            raise ValueError("pass trajectories=(n_steps+1, n_handles, 2) with the array form")
        trajectories = _np(trajectories).astype(np.float64)
    frames = {int(k): _image_hw3(v) for k, v in (frames or {}).items()}
    backdrop = _image_hw3(image)
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
            ax.plot(p[:, 0], p[:, 1], "-", color=_color(j), lw=1.5)
        draw_drags(ax, trajectories[0], targets, current=trajectories[step] if step else None, arrows=False)
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
        _clean_axes(ax, f"step {step}/{n}")
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
