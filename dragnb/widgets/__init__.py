"""Notebook widgets: `DragCanvas` (points and mask on an image) and `DragEditor` (canvas + controls bound to a
`DragSession`). Importing this package needs ipywidgets and ipycanvas; the algorithm modules never do."""
from .canvas import DragCanvas
from .editor import DragEditor
from .explorer import FeatureExplorer

__all__ = ["DragCanvas", "DragEditor", "FeatureExplorer"]
