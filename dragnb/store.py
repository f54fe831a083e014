"""`BoundedStore`: named key→value stores under one least-recently-used policy, bounded by entries per store
and by bytes of tensors in all stores together. Thread-safe bookkeeping (nothing is computed under its lock)."""
from __future__ import annotations

import itertools
import numbers
import threading
from collections import OrderedDict

import torch


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(_nbytes(getattr(value, f)) for f in value.__dataclass_fields__)
    return 0


def _bound_entries(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} max_entries={value!r} is not a whole number: give an int >= 1 (entries kept "
                        "per store)")
    if value < 1:
        raise ValueError(f"{what} max_entries={value!r} keeps nothing: give an int >= 1 (entries kept per store)")
    return int(value)


def _bound_bytes(value, what: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} max_bytes={value!r} is not a whole number: give a byte count >= 0 (e.g. "
                        "2 * 2**30), or None for no byte bound")
    if value < 0:
        raise ValueError(f"{what} max_bytes={value!r} is negative: give a byte count >= 0, or None for no "
                         "byte bound")
    return int(value)


class BoundedStore:
    """Stores named `names`, each an ordered map; `put` evicts least recently used entries until each store holds
    at most `max_entries` and all hold at most `max_bytes` bytes of tensors, never the entry just put nor the
    entries whose keys are prefixes of its key (the upstream entries it was made from)."""

    def __init__(self, names, max_entries: int, max_bytes: int | None, what: str = "store"):
        self._what = what
        self.lock = threading.RLock()   # held for bookkeeping only; hold it to read several entries consistently
        self._max_entries, self._max_bytes = _bound_entries(max_entries, what), _bound_bytes(max_bytes, what)
        self._stores: dict[str, OrderedDict] = {name: OrderedDict() for name in names}
        self._used: dict[tuple, int] = {}
        self._tick = itertools.count()
        self.evictions = 0

    @property
    def max_entries(self) -> int:
        return self._max_entries

    @max_entries.setter
    def max_entries(self, value: int) -> None:
        self._max_entries = _bound_entries(value, self._what)
        self.trim()

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int | None) -> None:
        self._max_bytes = _bound_bytes(value, self._what)
        self.trim()

    def contains(self, name: str, k) -> bool:
        with self.lock:
            return k in self._stores[name]

    def size(self, name: str) -> int:
        with self.lock:
            return len(self._stores[name])

    @property
    def nbytes(self) -> int:
        with self.lock:
            return sum(_nbytes(v) for store in self._stores.values() for v in store.values())

    def __len__(self) -> int:
        with self.lock:
            return sum(len(s) for s in self._stores.values())

    def peek(self, name: str, k):
        """The value or None, without counting as a use."""
        with self.lock:
            return self._stores[name].get(k)

    def get(self, name: str, k):
        """The value (now the most recently used) or None."""
        with self.lock:
            store = self._stores[name]
            if k in store:
                store.move_to_end(k)
                self._used[(name, k)] = next(self._tick)
                return store[k]
            return None

    def put(self, name: str, k, value):
        with self.lock:
            store = self._stores[name]
            store[k] = value
            store.move_to_end(k)
            self._used[(name, k)] = next(self._tick)
            self.trim(keep=k)
            return value

    def discard(self, name: str, k) -> None:
        with self.lock:
            if k in self._stores[name]:
                del self._stores[name][k]
                self._used.pop((name, k), None)

    def clear(self) -> None:
        with self.lock:
            for store in self._stores.values():
                store.clear()
            self._used.clear()

    def trim(self, keep: tuple | None = None) -> None:
        """Evict least recently used entries until both bounds hold (never `keep` nor its prefixes)."""
        with self.lock:
            for name, store in self._stores.items():
                while len(store) > self._max_entries:
                    victim = next(k for k in store if keep is None or k != keep)
                    self._evict(name, victim)
            if self._max_bytes is not None:
                while self.nbytes > self._max_bytes:
                    victims = [(n, kk) for n, kk in self._used if keep is None or keep[:len(kk)] != kk]
                    if not victims:
                        break
                    self._evict(*min(victims, key=self._used.get))

    def _evict(self, name: str, k) -> None:
        del self._stores[name][k]
        self._used.pop((name, k), None)
        self.evictions += 1
