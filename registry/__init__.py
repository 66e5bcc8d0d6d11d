"""model-registry: a registry of the instances of machine-learning models that serve traffic.

from registry import Registry, ModelInstance
from storage import open_storage

async with open_storage("sqlite+aiosqlite:///registry.db") as storage:
    async with Registry(storage) as registry:
        await registry.register_instance(ModelInstance("glm-4@llm", "10.0.0.5", 8001))
"""

from storage import InstanceKey, ModelInstance, ModelSummary, Snapshot, StorageUnavailable

from .clock import Clock, ManualClock, SystemClock
from .errors import InstanceNotFound, InvalidInstance, NoHealthyInstance, RegistryError
from .service import CheckResult, Registry

__all__ = [
    "CheckResult",
    "Clock",
    "InstanceKey",
    "InstanceNotFound",
    "InvalidInstance",
    "ManualClock",
    "ModelInstance",
    "ModelSummary",
    "NoHealthyInstance",
    "Registry",
    "RegistryError",
    "Snapshot",
    "StorageUnavailable",
    "SystemClock",
]
