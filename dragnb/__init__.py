"""dragnb: DragDiffusion (point-based image editing on diffusion models) for notebooks.

    from dragnb import load_model, DragSession, DragEditor
"""
from .config import DragConfig
from .models import DragModel, load_model, tiny_model
from .cache import SourceCache
from .session import DragDiverged, DragSession, StepRecord
from .speed import set_speed
from .threads import set_threads

__version__ = "0.1.0"
__all__ = ["DragConfig", "DragModel", "SourceCache", "DragSession", "DragDiverged", "StepRecord", "load_model", "tiny_model", "set_threads", "set_speed",
           "DragEditor", "DragCanvas", "FeatureExplorer", "__version__"]


def __getattr__(name):  # the widgets import ipywidgets/ipycanvas only when asked for
    if name in ("DragEditor", "DragCanvas", "FeatureExplorer"):
        from . import widgets
        return getattr(widgets, name)
    raise AttributeError(f"module 'dragnb' has no attribute {name!r}")
