"""``RegistryClient``: the same calls for code without an event loop.

The client owns a private event loop in a daemon thread; every call is
submitted to it with ``run_coroutine_threadsafe`` and waited for. Any number of
threads may share one client, and the caller needs no loop of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from .aio import AsyncRegistryClient
from .cache import HealthyCache, Predicate
from .errors import ClientClosed
from .record import InstanceKey, ModelInstance, ModelSummary
from .retry import Retry

__all__ = ["RegistryClient", "SyncHealthyCache"]

T = TypeVar("T")


class RegistryClient:
    """Synchronous twin of ``AsyncRegistryClient``; use as ``with RegistryClient(url) as client:``."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        retry: Retry | bool = True,
        reset_after: int = 3,
        token: str | None = None,
        ca: str | None = None,
    ) -> None:
        self._aio = AsyncRegistryClient(urls, retry=retry, reset_after=reset_after, token=token, ca=ca)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="registry-client", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def urls(self) -> list[str]:
        return self._aio.urls

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The client's own loop (``HeartbeatAgent`` runs on it)."""
        return self._loop

    @property
    def async_client(self) -> AsyncRegistryClient:
        return self._aio

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and wait for its result."""
        if self._closed:
            coro.close()
            raise ClientClosed()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a RegistryClient cannot be called from its own loop; use async_client")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.run(self._aio.close())
            self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the API, as in AsyncRegistryClient ---------------------------------

    def register(
        self,
        instance: ModelInstance,
        *,
        check: Mapping[str, Any] | str | None = None,
        metrics: Mapping[str, Any] | str | None = None,
    ) -> ModelInstance:
        """See ``AsyncRegistryClient.register``."""
        return self.run(self._aio.register(instance, check=check, metrics=metrics))

    def create_token(
        self, name: str, role: str, models: Sequence[str] | None = None, expires: str | None = None
    ) -> dict[str, Any]:
        return self.run(self._aio.create_token(name, role, models, expires))

    def list_tokens(self) -> list[dict[str, Any]]:
        return self.run(self._aio.list_tokens())

    def revoke_token(self, name: str) -> None:
        self.run(self._aio.revoke_token(name))

    def heartbeat(
        self,
        instance: ModelInstance,
        queue_length: int | None = None,
        *,
        load: Mapping[str, Any] | None = None,
    ) -> ModelInstance:
        return self.run(self._aio.heartbeat(instance, queue_length, load=load))

    def heartbeats(
        self,
        instances: Sequence[ModelInstance],
        queue_length: int | None = None,
        *,
        load: Mapping[str, Any] | None = None,
    ) -> list[tuple[str, str | None]]:
        return self.run(self._aio.heartbeats(instances, queue_length, load=load))

    def register_many(self, instances: Sequence[ModelInstance]) -> list[tuple[str, str | None]]:
        return self.run(self._aio.register_many(instances))

    def deregister(self, instance: ModelInstance | InstanceKey, *, purge: bool = False) -> ModelInstance:
        return self.run(self._aio.deregister(instance, purge=purge))

    def patch(self, instance: ModelInstance | InstanceKey, **changes: Any) -> ModelInstance:
        return self.run(self._aio.patch(instance, **changes))

    def drain(self, instance: ModelInstance | InstanceKey) -> ModelInstance:
        return self.run(self._aio.drain(instance))

    def undrain(self, instance: ModelInstance | InstanceKey) -> ModelInstance:
        return self.run(self._aio.undrain(instance))

    def set_weight(self, instance: ModelInstance | InstanceKey, weight: float | None) -> ModelInstance:
        return self.run(self._aio.set_weight(instance, weight))

    def report(
        self,
        instance: ModelInstance | InstanceKey,
        ok: bool,
        *,
        error: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> ModelInstance:
        return self.run(self._aio.report(instance, ok, error=error, status=status, retry_after=retry_after))

    def list_instances(
        self, model_name: str | None = None, healthy_only: bool = False
    ) -> list[ModelInstance]:
        return self.run(self._aio.list_instances(model_name, healthy_only))

    def list_models(self) -> list[ModelSummary]:
        return self.run(self._aio.list_models())

    def select(
        self, model_name: str, strategy: str = "weighted", fallback: str | None = None
    ) -> ModelInstance:
        return self.run(self._aio.select(model_name, strategy, fallback))

    def select_why(
        self, model_name: str, strategy: str = "weighted", fallback: str | None = None
    ) -> tuple[ModelInstance, dict[str, Any]]:
        return self.run(self._aio.select_why(model_name, strategy, fallback))

    def health(self) -> dict[str, Any]:
        return self.run(self._aio.health())

    def wait_until_ready(self, timeout: float = 30.0, interval: float = 0.2) -> dict[str, Any]:
        return self.run(self._aio.wait_until_ready(timeout, interval))

    def healthy_cache(self, model_name: str | None = None) -> SyncHealthyCache:
        """``with client.healthy_cache(name) as cache: cache.instances()``; see ``HealthyCache``."""
        return SyncHealthyCache(self, model_name)


class SyncHealthyCache:
    """A ``HealthyCache`` kept current on the client's loop and read from any thread."""

    def __init__(self, client: RegistryClient, model_name: str | None = None) -> None:
        self._client = client
        self._cache = HealthyCache(client.async_client, model_name)

    @property
    def revision(self) -> int | None:
        return self._cache.revision

    def instances(self, model_name: str | None = None) -> list[ModelInstance]:
        return self._cache.instances(model_name)

    def wait_ready(self, timeout: float) -> None:
        self._client.run(self._cache.wait_ready(timeout))

    def wait_for(self, predicate: Predicate, timeout: float) -> list[ModelInstance]:
        return self._client.run(self._cache.wait_for(predicate, timeout))

    def __enter__(self) -> SyncHealthyCache:
        self._client.run(self._cache.__aenter__())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.run(self._cache.__aexit__(None, None, None))
