"""A bounded map that forgets its least recently written keys first.

The runtime keeps several bounded memories (the writer's stream versions and fenced
lineages, refusal and crash counts per message, a directory's restart history,
search's catch-up facts, a client's unclaimed replies). They share this one helper.

It lives in ``config``, the ground floor of the import layers, because every layer
that keeps such a memory (store, broker, actors) may import it; the rules keep none
and stay pure. It imports only the standard library.

Only writes count as use: :meth:`BoundedLRU.get` does not refresh a key, so what is
forgotten first is what was written longest ago. Not thread-safe: callers that share
one across threads hold their own lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class _Missing:
    """No default given to :meth:`BoundedLRU.pop`."""


_MISSING = _Missing()


class BoundedLRU(Generic[K, V]):
    """At most ``maxsize`` entries; a write past that forgets the oldest written.

    Args:
        maxsize: the most entries kept (0 keeps none).
    """

    __slots__ = ("_data", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be 0 or more, not {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: V | D) -> V | D: ...

    def get(self, key: K, default: V | D | None = None) -> V | D | None:
        """The value of ``key``, else ``default``; does not count as a use."""
        return self._data.get(key, default)

    def put(self, key: K, value: V) -> None:
        """Set ``key`` (as the newest), then forget the oldest beyond ``maxsize``."""
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    @overload
    def pop(self, key: K) -> V: ...

    @overload
    def pop(self, key: K, default: V | D) -> V | D: ...

    def pop(self, key: K, default: V | D | _Missing = _MISSING) -> V | D:
        """Remove ``key`` and return its value (``default`` if absent, else KeyError)."""
        if isinstance(default, _Missing):
            return self._data.pop(key)
        return self._data.pop(key, default)

    def clear(self) -> None:
        """Forget everything."""
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        """The keys, oldest written first."""
        return iter(self._data)

    def __repr__(self) -> str:
        return f"BoundedLRU(maxsize={self.maxsize}, len={len(self._data)})"
