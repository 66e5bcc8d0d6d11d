"""model-registry's light client: how workers and controllers talk to the registry.

    from model_registry_sdk import AsyncRegistryClient, HeartbeatAgent, ModelInstance, RegistryClient

``AsyncRegistryClient`` and ``RegistryClient`` (sync, thread-safe) have the same
methods and return ``ModelInstance`` records; ``HeartbeatAgent`` registers,
beats and deregisters for a worker. ``AsyncRegistryClient.watch`` follows the
registry's changes (``WatchEvent``), and ``healthy_cache`` keeps the available
instances in memory with it. Errors: ``model_registry_sdk.errors``.

Depends on aiohttp and orjson only. ``record`` (the record and its wire format)
and ``errors`` use nothing but the standard library: the server imports them
too, so both sides speak one definition.
"""

from .agent import HeartbeatAgent
from .aio import AsyncRegistryClient, wait_until_ready
from .cache import HealthyCache
from .errors import (
    AllCoolingDown,
    ClientClosed,
    ClientError,
    InstanceLimit,
    InstanceNotFound,
    InvalidRequest,
    NoHealthyInstance,
    RegistryClientError,
    RegistryError,
    RegistryUnavailable,
)
from .record import Change, InstanceKey, ModelInstance, ModelSummary
from .retry import Retry
from .sync import RegistryClient, SyncHealthyCache
from .watch import WatchEvent

__all__ = [
    "AsyncRegistryClient",
    "Change",
    "ClientClosed",
    "ClientError",
    "HealthyCache",
    "HeartbeatAgent",
    "InstanceKey",
    "InstanceLimit",
    "InstanceNotFound",
    "InvalidRequest",
    "ModelInstance",
    "ModelSummary",
    "NoHealthyInstance",
    "AllCoolingDown",
    "RegistryClient",
    "RegistryClientError",
    "RegistryError",
    "RegistryUnavailable",
    "Retry",
    "SyncHealthyCache",
    "WatchEvent",
    "wait_until_ready",
]
