"""`UndoStack`: bounded undo/redo of whole widget states (any value the widget can restore)."""
from __future__ import annotations

__all__ = ["UndoStack"]


class UndoStack:
    """States to go back to (`undo`) and forward again (`redo`); a new `push` drops the redo branch.

    The widget pushes its state *before* each gesture changes it; `undo(current)` / `redo(current)` take
    the state now and return the one to restore (None when there is none).
    """

    def __init__(self, depth: int = 50):
        self.depth = int(depth)
        self._undo: list = []
        self._redo: list = []

    def push(self, state) -> None:
        self._undo.append(state)
        del self._undo[:-self.depth]
        self._redo.clear()

    def undo(self, current):
        if not self._undo:
            return None
        self._redo.append(current)
        return self._undo.pop()

    def redo(self, current):
        if not self._redo:
            return None
        self._undo.append(current)
        return self._redo.pop()

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)
