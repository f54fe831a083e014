"""The pieces every `dragnb.viz` figure shares: array coercion, the matplotlib drag renderer, the PCA
colouring, the tracking map (from `dragnb.drag`, not a copy), PNG output and the figure class."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..drawing import DRAG_COLORS, as_rgb_array, pair_shapes
from ..metrics import psnr as _psnr

__all__ = ["DRAG_COLORS", "draw_drags", "pca_rgb", "tracking_map", "similarity_map", "tracking_window", "psnr",
           "figure_to_png", "VizFigure", "as_numpy", "is_session", "feat_chw", "records", "clean_axes"]


def as_numpy(x) -> np.ndarray:
    """torch.Tensor | array-like -> numpy array (float tensors become float32 on CPU)."""
    if hasattr(x, "detach"):                      # torch.Tensor, without importing torch
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def is_session(obj) -> bool:
    """True for a DragSession (anything with its public features/history/drags)."""
    return hasattr(obj, "features") and hasattr(obj, "history") and hasattr(obj, "drags")


def feat_chw(x, name="features") -> np.ndarray:
    """(C, h, w) or (1, C, h, w) torch/numpy features -> (C, h, w) float32 numpy."""
    a = as_numpy(x).astype(np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (C, h, w) (or (1, C, h, w)), got shape {a.shape}")
    return a


def _feat_bchw(x, name="features"):
    """(C, h, w) or (1, C, h, w) torch/numpy features -> a (1, C, h, w) CPU tensor (tensors keep their dtype)."""
    import torch
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[0] != 1:
        raise ValueError(f"{name} must be (C, h, w) (or (1, C, h, w)), got shape {tuple(t.shape)}")
    return t


def draw_drags(ax, handles: Sequence, targets: Sequence | None = None, *, current: Sequence | None = None,
               numbered: bool = True, colors: Sequence[str] | None = None, labels: Sequence[str] | None = None,
               size: float = 60.0, arrows: bool = True, indices: Sequence[int] | None = None) -> None:
    """Draw drag pairs on an axes: numbered coloured handles, targets, and handle -> target arrows.

    The matplotlib renderer of :func:`dragnb.drawing.pair_shapes`. Points are in the axes' data
    coordinates as ``(x, y)`` (for an ``imshow`` of an image: pixels). handles: the drags' start points;
    targets: where they should go (same length or None); current: where point tracking has the handles
    now (drawn as crosses, a dashed line from the handle). Pair ``k`` is drag ``indices[k]`` (default
    ``k``): colour ``DRAG_COLORS[index]`` and label ``index + 1``, unless ``colors`` / ``labels`` say otherwise.
    """
    shapes = pair_shapes(handles, targets, current, radius=0.0, head=0.0, indices=indices, arrows=arrows)
    if colors is not None and len(colors) < len(shapes):
        colors = [colors[k % len(colors)] for k in range(len(shapes))]
    for k, s in enumerate(shapes):
        col = colors[k] if colors is not None else s.color
        if s.shaft is not None:
            ax.annotate("", xy=s.shaft[1], xytext=s.shaft[0], arrowprops=dict(arrowstyle="->", color=col, lw=1.8,
                                                                              shrinkA=3, shrinkB=3))
        if s.link is not None:
            ax.annotate("", xy=s.link[1], xytext=s.link[0], arrowprops=dict(arrowstyle="-", color=col, lw=1.2,
                                                                            ls="--", shrinkA=0, shrinkB=0))
        ax.scatter([s.handle[0]], [s.handle[1]], s=size, c=col, edgecolors="white", linewidths=1.2, zorder=5,
                   label="handle" if k == 0 else None)
        if s.target is not None:
            ax.scatter([s.target[0]], [s.target[1]], s=size, facecolors="none", edgecolors=col, linewidths=2.0,
                       zorder=5, label="target" if k == 0 else None)
        if s.current is not None:
            ax.scatter([s.current[0]], [s.current[1]], s=size * 1.2, c=col, marker="X", edgecolors="white",
                       linewidths=0.8, zorder=6, label="current" if k == 0 else None)
        if numbered:
            ax.annotate(labels[k] if labels else s.label, s.handle, xytext=(4, 4), textcoords="offset points",
                        color="white", fontsize=8, fontweight="bold", zorder=7,
                        bbox=dict(boxstyle="round,pad=0.15", fc=col, ec="none", alpha=0.85))


def pca_rgb(source, *others, n_components: int = 3, clip_percentile: float = 1.0):
    """Project feature maps to RGB with a PCA fitted on ``source`` only.

    source: (C, h, w) features (torch or numpy); others: more (C, h', w') maps projected with the same
    components, centring and colour scaling, so colours are comparable between them.
    Returns a list of (h, w, 3) float arrays in [0, 1], the source first. Component signs are fixed
    (largest loading positive) so colours do not flip between calls.
    """
    src = feat_chw(source, "source features")
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
    for f in (src,) + tuple(feat_chw(o, "features") for o in others):
        if f.shape[0] != C:
            raise ValueError(f"features have {f.shape[0]} channels but the source has {C}")
        p = ((f.reshape(C, -1).T - mean) @ comps.T - lo) / span
        p = np.clip(p, 0.0, 1.0)
        if k < 3:                                              # pad to RGB with zeros
            p = np.concatenate([p, np.zeros((p.shape[0], 3 - k), p.dtype)], axis=1)
        out.append(p.reshape(f.shape[1], f.shape[2], 3))
    return out


def tracking_map(source, current, point_rc, center_rc=None, *, r_p: int = 3, patch: int = 0,
                 whole_grid: bool = False) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """What point tracking sees: :func:`dragnb.drag.tracking_distance` as numpy, for drawing.

    source, current: (C, h, w) features (torch or numpy); point_rc: the source point (original handle),
    center_rc: the window centre (current handle; default point_rc), both (row, col) on the grid;
    r_p, patch: the tracker's window radius and patch radius (``config.r_p``, ``config.track_patch``).
    Returns ``(box, dist)``: the window (row0, row1, col0, col1), end-exclusive, and the (rows, cols) L1
    distance there, the very map ``track_points`` takes the argmin of. ``whole_grid=True`` widens the
    window to the whole grid (same distances, everywhere).
    """
    from ..drag import tracking_distance
    f0, f1 = _feat_bchw(source, "source features"), _feat_bchw(current, "current features")
    if f0.shape[1] != f1.shape[1]:
        raise ValueError(f"current features have {f1.shape[1]} channels but the source has {f0.shape[1]}")
    center_rc = point_rc if center_rc is None else center_rc
    radius = max(f1.shape[2], f1.shape[3]) if whole_grid else int(r_p)
    box, dist = tracking_distance(f0, f1, point_rc, center_rc, radius, patch)
    return box, dist.float().numpy()


def similarity_map(feats, query) -> np.ndarray:
    """Negative L1 distance between a query feature vector and every cell of a feature map.

    feats: (C, h, w); query: (C,). Returns (h, w) float array; 0 = identical, more negative = farther.
    This is the score point tracking maximises with ``track_patch=0`` (computed by the tracker's own
    :func:`dragnb.drag.tracking_distance`, with the query as a 1×1 source map and the whole grid as window).
    """
    f = feat_chw(feats)
    q = as_numpy(query).astype(np.float32).reshape(-1)
    if q.shape[0] != f.shape[0]:
        raise ValueError(f"query has {q.shape[0]} channels, features have {f.shape[0]}")
    _, dist = tracking_map(q[:, None, None], f, (0, 0), (0, 0), whole_grid=True)
    return -dist


def tracking_window(center_rc, r_p: int, grid_hw) -> tuple[int, int, int, int]:
    """Point-tracking search window around a grid point: (row0, row1, col0, col1), end-exclusive.

    :func:`dragnb.drag.tracking_box`: the centre's integer part, the window clipped to the grid.
    """
    from ..drag import tracking_box
    return tracking_box(center_rc, int(r_p), grid_hw)


def psnr(a, b) -> float:
    """PSNR in dB between two uint8 images of the same size (inf when identical)."""
    return _psnr(as_rgb_array(a), as_rgb_array(b))


def figure_to_png(fig: Figure, dpi: int | None = None) -> bytes:
    """Render a figure to PNG bytes (Agg), e.g. for an ``ipywidgets.Image``."""
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


def records(session_or_history) -> list:
    """A session's history or a list of StepRecords / dicts -> list of dicts with the record fields."""
    hist = session_or_history.history if hasattr(session_or_history, "history") else session_or_history
    out = []
    for i, r in enumerate(hist):
        d = dict(r) if isinstance(r, dict) else {k: getattr(r, k) for k in
                                                 ("step", "loss", "motion_loss", "mask_loss", "handles",
                                                  "t_index", "timestep")
                                                 if hasattr(r, k)}
        d.setdefault("step", i + 1)
        out.append(d)
    return out


def trajectory(session) -> np.ndarray:
    """(steps + 1, n_handles, 2) image points (x, y): the drags' handles, then each step's tracked handles."""
    starts = [h for h, _ in session.drags]
    rows = [starts] + [list(r["handles"]) for r in records(session) if r.get("handles") is not None]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(starts), 2)


def clean_axes(ax, title=None):
    """No ticks (an image panel), and an optional title."""
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)

