"""A byte-bounded LRU for images: frames never change once stored, so a thumbnail or a machine
image the console got once is served from memory afterwards (the cloud decodes a machine image
on every GetFrame with ``include_image``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["ByteLRU"]


class ByteLRU:
    """Used from the server's event loop only (no lock needed)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> bytes | None:
        data = self._items.get(key)
        if data is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return data

    def put(self, key: Hashable, data: bytes) -> None:
        if not data or len(data) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self._items[key] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.size -= len(dropped)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
