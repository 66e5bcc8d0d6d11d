"""Pins: what an operator sets stays set.

An operator's ``PATCH`` of ``enabled``, ``weight`` or ``metadata`` keys is
applied to the instance and kept in its ``overrides``, which every later
registration has re-applied over the worker's values (``apply_overrides``,
in the record module: what the field means wherever it is stored). ``null``
releases a pin. The rules of a change live here; storage applies them
atomically (``Storage.override`` takes ``changer(changes)``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from model_registry_sdk.record import ModelInstance, apply_overrides

__all__ = ["changer", "merge_overrides", "override"]


def merge_overrides(current: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any] | None:
    """``current`` overrides with ``changes`` applied: a value pins the field,
    ``None`` releases it; ``metadata`` pins (or, with ``None`` values,
    releases) individual keys. ``None`` when nothing is left pinned."""
    merged = dict(current or {})
    for name, value in changes.items():
        if name == "metadata" and value is not None:
            keys = {**merged.get("metadata", {}), **value}
            keys = {k: v for k, v in keys.items() if v is not None}
            if keys:
                merged["metadata"] = keys
            else:
                merged.pop("metadata", None)
        elif value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged or None


def override(record: ModelInstance, changes: dict[str, Any]) -> None:
    """Apply an operator's ``changes`` to ``record`` in place (see ``merge_overrides``).

    Releasing ``enabled`` enables the instance (an operator who stops draining
    it puts it back in service); releasing a ``metadata`` key removes it;
    releasing ``weight`` keeps the current weight until the worker registers again.
    """
    if "enabled" in changes and changes["enabled"] is None:
        record.enabled = True
    released = [k for k, v in (changes.get("metadata") or {}).items() if v is None]
    if released:
        record.metadata = {k: v for k, v in record.metadata.items() if k not in released}
    apply_overrides(record, merge_overrides(record.overrides, changes))


def changer(changes: dict[str, Any]) -> Callable[[ModelInstance], None]:
    """``override`` with ``changes`` bound: the change ``Storage.override`` applies."""
    return functools.partial(_apply, changes)


def _apply(changes: dict[str, Any], record: ModelInstance) -> None:
    override(record, changes)
