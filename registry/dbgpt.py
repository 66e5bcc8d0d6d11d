"""DB-GPT's method names for the in-process registry.

Code written against DB-GPT's ``ModelRegistry`` (``register_instance``,
``send_heartbeat``, ``get_all_instances``, ``select_one_health_instance``,
...) runs against ``Registry`` unchanged. Unlike DB-GPT's, a deregistration
that matches nothing raises ``InstanceNotFound`` rather than answering True,
and an empty selection raises ``NoHealthyInstance`` rather than returning None.
"""

from __future__ import annotations

from typing import Any, Protocol

from model_registry_sdk.record import InstanceKey, ModelInstance

from .validation import instance_from

__all__ = ["DBGPTMethods"]


class _Registry(Protocol):
    async def register(self, instance: ModelInstance) -> tuple[ModelInstance, bool]: ...
    async def deregister(self, key: InstanceKey, *, purge: bool = False) -> ModelInstance: ...
    async def heartbeat(self, instance: ModelInstance, queue_length: int | None = None) -> ModelInstance: ...
    async def instances(self, model_name: str | None = None, healthy_only: bool = False) -> Any: ...
    async def select(self, model_name: str) -> ModelInstance: ...


class DBGPTMethods:
    """A mixin for ``Registry``: each method is one of its own under DB-GPT's name."""

    async def register_instance(self: _Registry, instance: ModelInstance) -> bool:
        await self.register(instance)
        return True

    async def deregister_instance(self: _Registry, instance: ModelInstance, *, purge: bool = False) -> bool:
        await self.deregister(instance_from(instance).key, purge=purge)
        return True

    async def send_heartbeat(self: _Registry, instance: ModelInstance) -> bool:
        await self.heartbeat(instance, instance.queue_length)
        return True

    async def get_all_instances(
        self: _Registry, model_name: str | None = None, healthy_only: bool = False
    ) -> list[ModelInstance]:
        return await self.instances(model_name, healthy_only)

    async def select_one_health_instance(self: _Registry, model_name: str) -> ModelInstance:
        return await self.select(model_name)
