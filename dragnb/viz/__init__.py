"""Matplotlib figures that show what happens inside a drag edit.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` built with the object-oriented
API (``Figure()`` + ``fig.subplots``), so it works headless and never touches pyplot's global state.
In a notebook, a returned figure displays itself as the cell's value. Each function takes either a
:class:`~dragnb.session.DragSession` or plain arrays, so it can be used on synthetic data too.

Coordinates follow the house rule: image points are ``(x, y)`` pixels (x right, y down); feature-grid
points are ``(row, col)``. Image -> grid conversion is the session's (``s.image_to_grid``); the
array forms of these functions take grid points directly and never convert.

Drags are drawn in the one vocabulary of :mod:`dragnb.drawing` (palette ``DRAG_COLORS``, labels
counted from 1); what tracking sees is :func:`dragnb.drag.tracking_distance`, not a copy of it.

The package: ``core`` (shared pieces, the drag renderer, the tracking map), ``figures`` (the
``plot_*`` functions), ``animation`` (``PreviewRecorder``, ``animate_edit``), ``compare`` (methods side by side,
per-timestep previews). It imports matplotlib,
numpy, PIL and (lazily) torch only; never pyplot, never a Jupyter package.
"""
from .animation import PreviewRecorder, animate_edit
from .compare import TimestepPreviews, plot_methods, plot_timestep_previews
from .core import (DRAG_COLORS, VizFigure, draw_drags, figure_to_png, pca_rgb, psnr, similarity_map, tracking_map,
                   tracking_window)
from .figures import (plot_before_after, plot_features, plot_inversion_check, plot_loss, plot_similarity,
                      plot_trajectories)

__all__ = [
    "DRAG_COLORS", "draw_drags", "pca_rgb", "tracking_map", "similarity_map", "tracking_window", "psnr",
    "plot_features", "plot_similarity", "plot_trajectories", "plot_loss", "plot_before_after",
    "plot_inversion_check", "PreviewRecorder", "animate_edit", "figure_to_png", "VizFigure",
    "plot_methods", "plot_timestep_previews", "TimestepPreviews",
]
