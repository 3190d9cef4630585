"""Values a worker computes once and keeps for the next samples: the files of a study share their keywords,
spillover matrix, gates and transforms, so parsing and building them again for every file is wasted work."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Memo"]

V = TypeVar("V")
_MISSING = object()


class Memo(Generic[V]):
    """A process-wide table of values built once per key, emptied when it holds ``limit`` keys (a worker that meets
    many distinct keys, e.g. files from many instruments, keeps a bounded number of them).

    Parameters
    ----------
    limit : int
        Keys held before the table is emptied.

    Notes
    -----
    A value is shared by every caller of its key: store only values nobody changes (read-only arrays, tuples,
    immutable objects), or hand out copies. ``build`` raising leaves nothing behind, so a bad input raises every
    time it is met. ``None`` is a value like any other.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._values: dict[Hashable, V] = {}

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        """The value of ``key``, built by ``build()`` the first time it is asked for."""
        found = self._values.get(key, _MISSING)
        if found is _MISSING:
            found = build()
            if len(self._values) >= self.limit:
                self._values.clear()
            self._values[key] = found
        return found  # type: ignore[return-value]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)
