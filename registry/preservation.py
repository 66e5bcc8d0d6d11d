"""Self-preservation: when most of a fleet falls silent at once, suspect the registry.

If one check would mark unhealthy more than ``share`` of the healthy instances
(and at least ``minimum`` of them), the likelier cause is on the registry's
side: its network was cut, its process or host was paused, its database
stalled. Marking them would flush a live fleet. The checker holds back and
says so, for at most ``max_protection`` seconds: after that it marks them
anyway, so that dead instances are not served forever. Eviction is guarded the
same way, against the share of all instances.

Defaults: ``share`` 0.5 (a real failure seldom takes half a fleet in one check
interval, while a registry-side fault takes all of it); ``minimum`` 3 (a
fleet of one or two losing everything is plausible and must not wait);
``max_protection`` 120 s (workers beat every 10 s, so a registry-side fault
that ends is visible within a few beats, while a real mass failure is served
stale for at most two more minutes).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Guard", "Preservation"]


@dataclass(frozen=True, slots=True)
class Preservation:
    share: float = 0.5
    minimum: int = 3
    max_protection: float = 120.0


class Guard:
    """One guarded action (expiry or eviction): whether to hold back now."""

    def __init__(self, policy: Preservation) -> None:
        self.policy = policy
        self.since: float | None = None  # monotonic time protection began
        self.held = 0

    def hold(self, affected: int, population: int, now: float) -> bool:
        """True to hold back an action that would affect ``affected`` of ``population``."""
        policy = self.policy
        if affected < policy.minimum or affected <= policy.share * population:
            self.since, self.held = None, 0
            return False
        if self.since is None:
            self.since = now
        self.held = affected
        if now - self.since < policy.max_protection:
            return True
        self.since, self.held = None, 0  # protected long enough: act
        return False

    @property
    def active(self) -> bool:
        return self.since is not None

    def remaining(self, now: float) -> float:
        return 0.0 if self.since is None else max(0.0, self.policy.max_protection - (now - self.since))
