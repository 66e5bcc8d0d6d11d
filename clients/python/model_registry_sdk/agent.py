"""``HeartbeatAgent``: register, beat and deregister on a worker's behalf.

From async code::

    async with HeartbeatAgent(async_client, instance, interval=10, load=queue.qsize):
        await serve_forever()

A worker serving several models (or several instances) hands the agent a
list: it registers each, and beats them all in one request each interval
(``POST /api/v1/heartbeats``)::

    async with HeartbeatAgent(async_client, [chat, embeddings], interval=10):
        ...

From sync code (the agent runs on the sync client's background thread)::

    agent = HeartbeatAgent(client, instance, interval=10)
    agent.start()
    ...
    agent.stop()   # deregisters, then returns

The agent never raises into the worker because the registry is away: it keeps
trying, logs when it loses the registry and when it finds it again, and each
beat sends the whole instance, so a registry that lost the instance (a restart
on ``memory://``, an eviction) has it back, as described, with the next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from .aio import AsyncRegistryClient
from .errors import RegistryClientError, RegistryUnavailable
from .record import LOAD_FIELDS, InstanceKey, ModelInstance, check
from .sync import RegistryClient

__all__ = ["HeartbeatAgent", "Load"]

log = logging.getLogger("model_registry_sdk.agent")

#: The most instances one agent beats for (one batch of heartbeats).
MAX_BEATS = 1000

#: What ``load`` may return: a queue length, or a mapping holding one (``queue_length``)
#: and, or, the engine's load (``waiting``, ``running``, ``kv_cache_usage`` from 0 to 1).
Load = Callable[[], int | Mapping[str, Any] | None | Awaitable[int | Mapping[str, Any] | None]]


class HeartbeatAgent:
    def __init__(
        self,
        client: AsyncRegistryClient | RegistryClient,
        instance: ModelInstance | Sequence[ModelInstance],
        *,
        interval: float = 10.0,
        load: Load | None = None,
        stop_timeout: float = 5.0,
        purge_on_stop: bool = False,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be above 0 s, got {interval}")
        given = [instance] if isinstance(instance, ModelInstance) else list(instance)
        if not 1 <= len(given) <= MAX_BEATS:
            raise ValueError(f"an agent beats for 1 to {MAX_BEATS} instances, got {len(given)}")
        # A bad instance fails here, in the worker's face.
        self.instances = [check(dataclasses.replace(one)) for one in given]
        self.interval = interval
        self.stop_timeout = stop_timeout
        self.purge_on_stop = purge_on_stop
        self._sync = client if isinstance(client, RegistryClient) else None
        self._client = client.async_client if isinstance(client, RegistryClient) else client
        self._load = load
        self._wake: asyncio.Event | None = None  # set to beat at once (``set_ready``)
        self._task: asyncio.Task[None] | None = None
        self._registered: asyncio.Event | None = None
        self._registered_at: dict[InstanceKey, Any] = {}
        self._lost = False
        self._stopping = False
        self.beats = 0

    @property
    def instance(self) -> ModelInstance:
        """The (first) instance the agent beats for."""
        return self.instances[0]

    def set_ready(self, ready: bool = True) -> None:
        """The worker's model is loaded (or it is loading another): its next beat,
        sent at once when the agent runs, says so, and the registry turns the
        instances ``ready`` (or ``starting``). Register with ``ready=False`` in the
        instance while the model loads, so that no router picks it meanwhile."""
        self.instances = [dataclasses.replace(one, ready=ready) for one in self.instances]
        wake = self._wake
        if wake is not None:
            if self._sync is not None:  # the agent's loop is the sync client's thread
                self._sync.loop.call_soon_threadsafe(wake.set)
            else:
                wake.set()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Any:
        """Start registering and beating; returns at once.

        With an async client, call it from the worker's loop (``await`` is
        allowed, not needed); with a sync client, from any thread.
        """
        if self._sync is not None:
            return self._sync.run(self._start())
        return _done(self._start_now())

    def stop(self) -> Any:
        """Stop beating and deregister, best effort, within ``stop_timeout``.

        With a sync client this blocks until done; with an async client it
        returns an awaitable.
        """
        if self._sync is not None:
            return self._sync.run(self._stop())
        return asyncio.ensure_future(self._stop())

    async def __aenter__(self) -> HeartbeatAgent:
        self._start_now()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    def __enter__(self) -> HeartbeatAgent:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def registered(self) -> bool:
        return self._registered is not None and self._registered.is_set()

    async def wait_registered(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the first registration (async clients)."""
        if self._registered is None:
            raise RuntimeError("the agent is not started")
        try:
            async with asyncio.timeout(timeout):
                await self._registered.wait()
        except TimeoutError:
            return False
        return True

    async def _start(self) -> None:
        self._start_now()

    def _start_now(self) -> None:
        if self._task is not None:
            raise RuntimeError("this HeartbeatAgent was already started; create a new one")
        self._registered = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat-agent")

    async def _stop(self) -> None:
        if self._task is None or self._stopping:
            return
        self._stopping = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        registered = [one for one in self.instances if one.key in self._registered_at]
        await asyncio.gather(*(self._deregister(one) for one in registered))

    async def _deregister(self, instance: ModelInstance) -> None:
        try:
            await self._client.deregister(instance, purge=self.purge_on_stop, deadline=self.stop_timeout)
            log.info("deregistered", extra=self._fields(instance))
        except (RegistryUnavailable, RegistryClientError) as exc:
            log.warning("could not deregister on stop: %s", exc, extra=self._fields(instance))

    # -- the work ------------------------------------------------------------

    async def _run(self) -> None:
        await self._register()
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.interval
        wake = self._wake = asyncio.Event()
        while True:
            # (asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a stop's
            # cancellation that comes as the wake does)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                    await wake.wait()
            wake.clear()
            # A beat that overran skips the slots it missed instead of bursting.
            next_beat = max(next_beat + self.interval, loop.time())
            await self._beat()

    async def _register(self) -> None:
        wait = min(0.2, self.interval)
        pending = list(self.instances)
        while pending:
            try:
                stored = await self._client.register(pending[0])
            except RegistryUnavailable as exc:
                self._lose(exc)
            except RegistryClientError as exc:
                log.error("the registry refused the registration: %s", exc, extra=self._fields(pending[0]))
            else:
                self._registered_at[stored.key] = stored.registered_at
                self._found("registered", pending.pop(0))
                wait = min(0.2, self.interval)
                continue
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.interval)
        assert self._registered is not None
        self._registered.set()

    async def _beat(self) -> None:
        try:
            queue_length, load = await self._load_now()
            if len(self.instances) == 1:
                stored = await self._client.heartbeat(
                    self.instance, queue_length, load=load, deadline=self.interval
                )
                lost = stored.registered_at != self._registered_at.get(stored.key)
                self._registered_at[stored.key] = stored.registered_at
                results: list[tuple[str, str | None]] = [("registered" if lost else "known", None)]
            else:
                results = await self._client.heartbeats(
                    self.instances, queue_length, load=load, deadline=self.interval
                )
        except RegistryUnavailable as exc:
            self._lose(exc)
            return
        except RegistryClientError as exc:
            log.error("the registry refused a heartbeat: %s", exc, extra=self._fields())
            return
        self.beats += 1
        for one, (result, why) in zip(self.instances, results, strict=True):
            if result == "registered":
                log.warning(
                    "the registry had lost this instance; registered it again", extra=self._fields(one)
                )
            elif result == "refused":
                log.error("the registry refused a heartbeat: %s", why, extra=self._fields(one))
        self._found("registry reachable again")

    async def _load_now(self) -> tuple[int | None, dict[str, Any] | None]:
        """The queue length and the engine's load the ``load`` callable reports."""
        if self._load is None:
            return None, None
        try:
            value = self._load()
            if inspect.isawaitable(value):
                value = await value
            engine = None
            if isinstance(value, Mapping):
                engine = {k: value[k] for k in LOAD_FIELDS if value.get(k) is not None} or None
                value = value.get("queue_length")
            return (None if value is None else int(value)), engine
        except Exception as exc:  # the worker's callable: report, never die of it
            log.warning("load callable failed; beating without load: %r", exc, extra=self._fields())
            return None, None

    def _lose(self, exc: Exception) -> None:
        if not self._lost:
            self._lost = True
            log.warning("registry unreachable; will keep trying: %s", exc, extra=self._fields())

    def _found(self, message: str, instance: ModelInstance | None = None) -> None:
        if self._lost or message == "registered":
            log.info(message, extra=self._fields(instance))
        self._lost = False

    def _fields(self, instance: ModelInstance | None = None) -> dict[str, str]:
        instance = instance or self.instance
        return {"model": instance.model_name, "addr": instance.key.address}


def _done(value: Any = None) -> asyncio.Future[Any]:
    future = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
