"""Reading DragBench's `meta_data.pkl` without letting it run code.

`pickle.load` calls whatever callable a file names (`os.system`, `builtins.eval`, ...): a downloaded benchmark
must not be trusted with that. `load_meta_pickle` unpickles with `RestrictedUnpickler`, whose `find_class`
admits exactly the globals that the official files need and refuses every other with `UnsafePickleError`, which
names the file and the refused global. Nothing named by the file is called before it has been admitted.

What the official files need: the dict, list, tuple, str, int and float opcodes (no global at all) and a numpy
uint8 mask, which numpy pickles as `numpy.core.multiarray._reconstruct(numpy.ndarray, ...)` plus a
`numpy.dtype` (numpy 2 writes `numpy._core...`; protocol 5 writes `numpy.core.numeric._frombuffer`). Numpy
scalars (`multiarray.scalar`) are admitted too, for points saved as numpy integers. A protocol-2 pickle of
bytes uses `_codecs.encode(text, "latin1")`: admitted only with the latin-1 codec.
"""
from __future__ import annotations

import importlib
import io
import os
import pickle

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "load_meta_pickle", "ALLOWED_GLOBALS"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle named a global outside `ALLOWED_GLOBALS`; nothing it names was called."""


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """`_codecs.encode` as protocol-2 pickles of bytes use it, limited to the latin-1 codec."""
    if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"_codecs.encode with codec {encoding!r}: only latin-1 is admitted")
    if not isinstance(text, str):
        raise UnsafePickleError("_codecs.encode of a non-string is not admitted")
    return text.encode("latin1", errors)


# (module, name) -> where to find it now: numpy 1.x and 2.x spell the private module differently
_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
    ("numpy", "ndarray"): ("numpy",),
    ("numpy", "dtype"): ("numpy",),
}
_BUILTINS = {  # harmless constructors of plain values (protocol 0/1 pickles name some containers)
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex, ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_encode,
}
ALLOWED_GLOBALS = tuple(sorted(set(_NUMPY) | set(_BUILTINS)))
"""Every (module, name) a DragBench pickle may name; anything else is refused."""


def _numpy_global(module: str, name: str):
    for candidate in _NUMPY[(module, name)]:
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise UnsafePickleError(f"{module}.{name} is admitted but not found in this numpy")


class RestrictedUnpickler(pickle.Unpickler):
    """An `Unpickler` whose `find_class` admits only `ALLOWED_GLOBALS` (plain values and numpy arrays).

    Args:
        file: a binary file object.
        source: the file's name for error messages.
    """

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _NUMPY:
            return _numpy_global(module, name)
        if key in _BUILTINS:
            return _BUILTINS[key]
        raise UnsafePickleError(
            f"{self.source}: refused to load the global {module}.{name} — a DragBench meta_data.pkl holds only a "
            "dict of a prompt, points and a numpy mask; this file asks for more (it could run code). Nothing was "
            "run. If you trust it, convert it yourself; else get the sample again")


def load_meta_pickle(path) -> object:
    """The object in `path` (a DragBench `meta_data.pkl`), read with `RestrictedUnpickler`.

    Raises `UnsafePickleError` (a ValueError) naming the file and the refused global, and ValueError for a file
    that is not a pickle at all.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=path).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError,
            UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable DragBench pickle ({type(e).__name__}: {e}): "
                         "get the sample again, or give it as meta.json (dragnb's pickle-free twin)") from None
