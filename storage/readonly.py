"""Read-only values the index hands out to many readers at once.

A stored record is shared (by the index, and by every reader it was handed
to), so what many records or readers share refuses changes loudly rather
than let a change meant for one reach them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from model_registry_sdk.record import ModelInstance

__all__ = ["NO_METADATA", "Snapshot"]


def _refusal(message: str) -> Callable[..., Any]:
    """A method that refuses the change it stands for, with ``message`` (the fix)."""

    def refuse(self: object, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(message)

    return refuse


class _NoMetadata(dict):
    """Empty metadata that refuses changes: one object that every stored record
    without metadata shares, so a change meant for one record must fail loudly
    rather than reach them all. Equal to ``{}``; serialised as ``{}``."""

    _refuse = _refusal(
        "a stored record's metadata is read-only: derive a changed copy with "
        "dataclasses.replace(record, metadata={...})"
    )
    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]


#: The metadata of every stored record that has none (see ``_NoMetadata``).
NO_METADATA: dict[str, Any] = _NoMetadata()


class Snapshot(list):  # type: ignore[type-arg]
    """A read that is handed out again, unchanged, until what it shows changes
    (a model's serving instances, kept by the index).

    Read-only, since every caller gets the same object; with one slot,
    ``memo``, where a reader keeps what it derived from it (the API keeps the
    JSON it wrote, so that it writes each answer once per change, not once
    per read). A change makes a new snapshot, so a memo is never stale.
    """

    __slots__ = ("memo", "__weakref__")  # (weakly held by a budget of memos: api/memos.py)

    def __init__(self, records: Iterable[ModelInstance] = ()) -> None:
        super().__init__(records)
        self.memo: Any = None

    _refuse = _refusal("a snapshot is shared and read-only: change a copy, list(snapshot)")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse  # type: ignore[assignment]
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse  # type: ignore[assignment]
