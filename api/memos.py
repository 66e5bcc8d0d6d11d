"""A budget for the listings' kept JSON (``Snapshot.memo``).

A model's listing is written once per change and kept on its snapshot for the
next readers. Kept for every model, that is another copy of the fleet (some
500 bytes an instance): past ``budget`` bytes, the oldest kept are let go (the
next reader of such a model writes it again). A snapshot that a change
replaced takes its memo with it, and leaves the count at once.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

from model_registry.storage.readonly import Snapshot

__all__ = ["DEFAULT_BUDGET", "Memos"]

#: Bytes of listings kept, by default: every listing of a fleet of 100,000.
DEFAULT_BUDGET = 64 * 1024 * 1024


class Memos:
    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self.bytes = 0
        # id(snapshot) -> (a weak reference to it, its memo's size), oldest first.
        self._kept: OrderedDict[int, tuple[weakref.ref[Snapshot], int]] = OrderedDict()

    def resize(self, budget: int) -> None:
        """Keep at most ``budget`` bytes from now on (the oldest let go at once past it)."""
        self.budget = budget
        self._trim()

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, snapshot: Snapshot, body: bytes) -> None:
        """Set ``snapshot``'s memo to ``body``, letting the oldest go past the budget."""
        size = len(body)
        if size > self.budget:
            return  # one listing larger than the budget (or any, at 0) is written for each reader
        key = id(snapshot)
        snapshot.memo = body
        self._kept[key] = (weakref.ref(snapshot, lambda _ref, key=key: self._gone(key)), size)
        self.bytes += size
        self._trim()

    def _trim(self) -> None:
        while self.bytes > self.budget:
            _, (ref, dropped) = self._kept.popitem(last=False)
            self.bytes -= dropped
            kept = ref()
            if kept is not None:
                kept.memo = None

    def _gone(self, key: int) -> None:
        entry = self._kept.pop(key, None)
        if entry is not None:
            self.bytes -= entry[1]
