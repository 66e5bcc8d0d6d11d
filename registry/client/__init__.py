"""How workers and controllers talk to the registry.

    from registry.client import AsyncRegistryClient, RegistryClient, HeartbeatAgent

``AsyncRegistryClient`` and ``RegistryClient`` (sync, thread-safe) have the same
methods and return ``ModelInstance`` records; ``HeartbeatAgent`` registers,
beats and deregisters for a worker. ``AsyncRegistryClient.watch`` follows the
registry's changes (``WatchEvent``), and ``healthy_cache`` keeps the available
instances in memory with it. Errors: ``registry.client.errors``.

This package is the one part of ``registry`` that speaks HTTP; nothing else in
``registry`` imports it.
"""

from .agent import HeartbeatAgent
from .aio import AsyncRegistryClient, wait_until_ready
from .cache import HealthyCache
from .errors import (
    ClientClosed,
    ClientError,
    InstanceNotFound,
    InvalidRequest,
    NoHealthyInstance,
    RegistryClientError,
    RegistryError,
    RegistryUnavailable,
)
from .retry import Retry
from .sync import RegistryClient, SyncHealthyCache
from .watch import WatchEvent

__all__ = [
    "AsyncRegistryClient",
    "ClientClosed",
    "ClientError",
    "HealthyCache",
    "HeartbeatAgent",
    "InstanceNotFound",
    "InvalidRequest",
    "NoHealthyInstance",
    "RegistryClient",
    "RegistryClientError",
    "RegistryError",
    "RegistryUnavailable",
    "Retry",
    "SyncHealthyCache",
    "WatchEvent",
    "wait_until_ready",
]
