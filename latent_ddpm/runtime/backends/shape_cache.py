"""A bounded, thread-safe LRU of objects built per input shape: compiled models, specialised sessions.

Specialising a graph to one shape is what makes it fast (the shape arithmetic folds away, kernels are
chosen for the exact sizes), but building one takes from a fraction of a second to many seconds and holds
its own copy of the repacked weights. So each engine keeps the few shapes it was last called with, and a
shape is built once even when several threads ask for it at the same moment (the Pipeline is shared by the
demo's worker threads); other shapes stay usable while one is being built.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class ShapeCache(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def keys(self) -> list[Hashable]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The object for ``key``, built by ``build()`` on a miss; the least recently used beyond the bound
        is dropped (a caller still holding it keeps it alive until its call ends)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:  # built by another thread while this one waited
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                value = build()
            except BaseException:
                with self._lock:
                    self._building.pop(key, None)
                raise
            with self._lock:
                self._items[key] = value
                self._building.pop(key, None)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return value
