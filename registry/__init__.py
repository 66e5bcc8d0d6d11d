"""model-registry: a registry of the instances of machine-learning models that serve traffic.

This package (the source tree's ``registry/``) is the domain and its policy;
``model_registry.storage`` (``storage/``) holds the backends, and
``model_registry.api`` (``api/``) the aiohttp service. The record itself is
``model_registry_sdk.record``, shared with the light client.

from model_registry import Registry, ModelInstance
from model_registry.storage import open_storage

async with open_storage("sqlite+aiosqlite:///registry.db") as storage:
    async with Registry(storage) as registry:
        await registry.register_instance(ModelInstance("glm-4@llm", "10.0.0.5", 8001))
"""

from model_registry_sdk.record import InstanceKey, ModelInstance, ModelSummary

from .clock import Clock, ManualClock, SystemClock
from .errors import (
    AllCoolingDown,
    InstanceLimit,
    InstanceNotFound,
    InvalidInstance,
    InvalidRequest,
    NoHealthyInstance,
    RegistryClientError,
    RegistryError,
)
from .service import CheckResult, Registry
from .storage import Snapshot, StorageUnavailable

__all__ = [
    "CheckResult",
    "Clock",
    "InstanceKey",
    "InstanceLimit",
    "InstanceNotFound",
    "InvalidInstance",
    "InvalidRequest",
    "ManualClock",
    "ModelInstance",
    "ModelSummary",
    "NoHealthyInstance",
    "AllCoolingDown",
    "Registry",
    "RegistryClientError",
    "RegistryError",
    "Snapshot",
    "StorageUnavailable",
    "SystemClock",
]
