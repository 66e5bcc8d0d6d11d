"""``HealthyCache``: the available instances of a model, kept current by ``watch``.

    async with client.healthy_cache("glm-4@llm") as cache:
        await cache.wait_ready(timeout=10)
        for instance in cache.instances():   # from memory: no call to the registry
            ...

A background task, started on entering and cancelled on leaving, consumes
``client.watch`` and applies each event: a snapshot or resync replaces
everything; deregistered and evicted remove the instance; any other change
(cooldown and restored included) stores the instance as the event carries it.
``instances()`` lists the healthy, enabled instances not cooling down.

While the registry is away the cache keeps answering with what it last knew,
and the watch reconnects by itself. Once the watch has failed for good
(``InvalidRequest``, ``ClientClosed``) every method raises that error.

"Cooling down" is read from each record's ``cooldown_until``, against the
client's clock, as the registry itself does: a ``cooldown`` event sets it and
``restored`` clears it, a snapshot carries it, and a cooldown whose
``restored`` never comes (its registry restarted meanwhile) still ends on
time. So the client's clock must roughly agree with the registry's: one ahead
by more than a cooldown's length (30 s by default) misses cooldowns.

The healthy, enabled instances are recomputed after each event and swapped in
whole, so ``instances()`` may be called from any thread
(``RegistryClient.healthy_cache``). ``wait_for`` and ``wait_changed`` look
again after each event (not as time passes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Protocol

from .clock import Clock
from .record import Change, InstanceKey, ModelInstance
from .watch import WatchEvent

__all__ = ["HealthyCache"]

log = logging.getLogger("model_registry_sdk.cache")

_REMOVED = frozenset({Change.DEREGISTERED, Change.EVICTED, Change.PURGED})


class Watchable(Protocol):
    """What the cache follows: a client's ``watch`` and its clock
    (``AsyncRegistryClient``; named by shape, so this module imports no client)."""

    @property
    def clock(self) -> Clock: ...

    def watch(self, model_name: str | None = None) -> AsyncIterator[WatchEvent]: ...


#: What ``wait_for`` waits on: a test of the instances ``instances()`` would list.
Predicate = Callable[[list[ModelInstance]], bool]


class HealthyCache:
    def __init__(
        self, client: Watchable, model_name: str | None = None, *, clock: Clock | None = None
    ) -> None:
        self.model_name = model_name
        self._client = client
        self._clock = clock or client.clock
        self._records: dict[InstanceKey, ModelInstance] = {}
        self._in_service: tuple[ModelInstance, ...] = ()  # healthy and enabled, by key
        self._revision: int | None = None
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._error: Exception | None = None

    # -- reading -------------------------------------------------------------

    @property
    def revision(self) -> int | None:
        """The revision of the last event applied; ``None`` before the first snapshot."""
        return self._revision

    @property
    def ready(self) -> bool:
        return self._revision is not None

    def instances(self, model_name: str | None = None) -> list[ModelInstance]:
        """The healthy, enabled instances not cooling down (of ``model_name``), by key."""
        if self._error is not None:
            raise self._error
        if model_name is not None and self.model_name not in (None, model_name):
            raise ValueError(f"this cache follows {self.model_name!r} only, not {model_name!r}")
        return self._view(model_name)

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the first snapshot; ``TimeoutError`` after ``timeout`` s."""
        await self._wait(lambda: self.ready, timeout)

    async def wait_for(self, predicate: Predicate, timeout: float) -> list[ModelInstance]:
        """Wait until ``predicate(instances())`` holds (once ready); return those instances."""
        await self._wait(lambda: self.ready and predicate(self._view()), timeout)
        return self._view()

    async def wait_changed(self, after_revision: int | None, timeout: float) -> int:
        """Wait for an event past ``after_revision`` (``None``: any); return the new revision."""
        await self._wait(
            lambda: self.ready and (after_revision is None or self.revision > after_revision), timeout
        )
        assert self._revision is not None
        return self._revision

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> HealthyCache:
        if self._task is not None:
            raise RuntimeError("this HealthyCache was already started; create a new one")
        self._task = asyncio.create_task(self._run(), name="healthy-cache")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    # -- the work ------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with contextlib.aclosing(self._client.watch(self.model_name)) as events:
                async for event in events:
                    self._apply(event)
                    async with self._changed:
                        self._changed.notify_all()
        except Exception as exc:  # raised to the readers, who would otherwise wait in vain
            log.warning("the healthy cache stopped: %s", exc)
            self._error = exc
            async with self._changed:
                self._changed.notify_all()

    def _apply(self, event: WatchEvent) -> None:
        if event.instances is not None:
            self._records = {instance.key: instance for instance in event.instances}
        elif event.type in _REMOVED:
            assert event.instance is not None
            self._records.pop(event.instance.key, None)
        else:
            assert event.instance is not None
            self._records[event.instance.key] = event.instance
        in_service = [i for i in self._records.values() if i.healthy and i.enabled]
        self._in_service = tuple(sorted(in_service, key=lambda instance: instance.key))
        self._revision = event.revision

    def _view(self, model_name: str | None = None) -> list[ModelInstance]:
        now = self._clock.now()
        return [
            i
            for i in self._in_service
            if (model_name is None or i.model_name == model_name) and not i.in_cooldown(now)
        ]

    async def _wait(self, condition: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self._error is not None or condition())
        if self._error is not None:
            raise self._error
