"""DB-GPT: its method names for the in-process registry, and what its
controller's listing means over HTTP (``controller_listing``).

Code written against DB-GPT's ``ModelRegistry`` (``register_instance``,
``send_heartbeat``, ``get_all_instances``, ``select_one_health_instance``,
...) runs against ``Registry`` unchanged. Unlike DB-GPT's, a deregistration
that matches nothing raises ``InstanceNotFound`` rather than answering True,
and an empty selection raises ``NoHealthyInstance`` rather than returning None.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from model_registry_sdk.record import InstanceKey, ModelInstance

from .validation import instance_from

__all__ = ["DBGPTMethods", "controller_listing", "is_worker_key"]

# (``compat.DBGPT`` says what DB-GPT's workers expect of the heartbeat timeout.)


class _Registry(Protocol):
    async def register(self, instance: ModelInstance) -> tuple[ModelInstance, bool]: ...
    async def deregister(self, key: InstanceKey, *, purge: bool = False) -> ModelInstance: ...
    async def heartbeat(self, instance: ModelInstance, queue_length: int | None = None) -> ModelInstance: ...
    async def instances(self, model_name: str | None = None, healthy_only: bool = False) -> Any: ...
    async def select(self, model_name: str) -> ModelInstance: ...
    def now(self) -> datetime: ...


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


def is_worker_key(model_name: str) -> bool:
    """Whether DB-GPT can read ``model_name`` as a worker key, ``name@type``:
    its worker manager unpacks ``name.split("@")`` into exactly two parts."""
    return model_name.count("@") == 1


async def controller_listing(
    registry: _Registry, model_name: str | None, healthy_only: bool
) -> list[ModelInstance]:
    """What DB-GPT's ``GET /api/controller/models`` lists.

    ``healthy_only`` means *available*: healthy, enabled, not cooling down and
    with a weight above 0. DB-GPT routes at random among what it returns and
    reads neither ``enabled`` nor ``weight``, so a drained instance must not
    be returned to it at all. Without a model
    (every model), only names DB-GPT can split (``is_worker_key``): one that it
    cannot (a FastChat worker's or a native instance's, without ``@``) would
    break its whole listing; asked for by name, such an instance is listed.
    """
    found = await registry.instances(model_name or None, healthy_only)
    if healthy_only:
        now = registry.now()
        found = [r for r in found if r.enabled and r.weight > 0 and not r.in_cooldown(now)]
    if not model_name:
        found = [r for r in found if is_worker_key(r.model_name)]
    return found
