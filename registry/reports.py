"""Failures seen by routers: when a beating instance goes into cooldown.

A worker can keep beating while every request to it fails (model crashed,
GPU wedged, credits exhausted). Routers report each outcome; after
``threshold`` failures within ``window`` seconds with no success between, the
instance goes into cooldown for ``cooldown`` seconds. A success clears the
count. Counts are kept per registry process (bounded: only instances with
recent failures are held); the cooldown itself is stored, so every replica
honours it.

Each threshold can be set per instance in its metadata, under the same names
as the settings: ``unhealthy_threshold``, ``failure_window``,
``failure_cooldown``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .storage import InstanceKey

__all__ = ["FailurePolicy", "FailureTracker"]


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    threshold: int = 3
    window: float = 60.0
    cooldown: float = 30.0

    def for_instance(self, metadata: dict[str, Any]) -> FailurePolicy:
        """This policy with the instance's own settings (from its metadata) over it."""
        return FailurePolicy(
            _number(metadata, "unhealthy_threshold", self.threshold, int),
            _number(metadata, "failure_window", self.window, float),
            _number(metadata, "failure_cooldown", self.cooldown, float),
        )


def _number(metadata: dict[str, Any], name: str, default: Any, kind: type) -> Any:
    value = metadata.get(name)
    # bool is an int to Python, never a threshold; ignore what does not fit.
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return kind(value)
    return default


class FailureTracker:
    """Recent failures per instance, by monotonic time."""

    def __init__(self) -> None:
        self._failures: dict[InstanceKey, deque[float]] = {}

    def failed(self, key: InstanceKey, at: float, policy: FailurePolicy) -> int:
        """Count a failure; returns the failures within the window, this one included."""
        times = self._failures.setdefault(key, deque())
        times.append(at)
        while times and times[0] <= at - policy.window:
            times.popleft()
        while len(times) > policy.threshold:  # more are never needed: keep it bounded
            times.popleft()
        return len(times)

    def succeeded(self, key: InstanceKey) -> None:
        self._failures.pop(key, None)

    def forget_older_than(self, moment: float) -> None:
        """Drop instances whose last failure is older than ``moment`` (the checker's housekeeping)."""
        for key in [k for k, times in self._failures.items() if times[-1] < moment]:
            del self._failures[key]

    def __len__(self) -> int:
        return len(self._failures)
