"""What the controllers this registry stands in for expect of its timing.

DB-GPT's and FastChat's workers beat at their own intervals, which this
registry cannot change (FastChat's every 45 s by default). A heartbeat timeout
shorter than the upstream controller's own expiration would mark such workers
unhealthy between beats, so the first registration through a compatibility
API under such a timeout logs, once, what to change.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

__all__ = ["DBGPT", "FASTCHAT", "TimeoutAdvice", "Upstream"]

log = logging.getLogger("registry")


class Upstream(NamedTuple):
    name: str
    beats_every: float  # its workers' default heartbeat interval, s
    expiration: float  # its controller's default heartbeat timeout, s
    worker_setting: str  # where its workers' interval is set


DBGPT = Upstream("DB-GPT", 20, 60, "heartbeat_interval in the worker's configuration")
FASTCHAT = Upstream("FastChat", 45, 90, "FASTCHAT_WORKER_HEART_BEAT_INTERVAL on the workers")


class TimeoutAdvice:
    """Logs once per upstream when the registry's timeout is too short for its workers."""

    def __init__(self, heartbeat_timeout: float) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self._told: set[str] = set()

    def registered(self, upstream: Upstream) -> None:
        if upstream.name in self._told or self.heartbeat_timeout >= upstream.expiration:
            return
        self._told.add(upstream.name)
        log.warning(
            f"{upstream.name} workers beat every {upstream.beats_every:g} s by default, and this registry "
            f"marks an instance unhealthy after {self.heartbeat_timeout:g} s of silence: start it with "
            f"--heartbeat-timeout {upstream.expiration:g} ({upstream.name}'s own), or shorten "
            f"{upstream.worker_setting} to a third of the timeout",
            extra={"upstream": upstream.name, "heartbeat_timeout_s": self.heartbeat_timeout},
        )
