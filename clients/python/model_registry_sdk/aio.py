"""``AsyncRegistryClient``: the registry's HTTP API as async methods returning records."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

from .cache import HealthyCache
from .clock import Clock
from .errors import RegistryUnavailable
from .record import (
    LOAD_FIELDS,
    InstanceKey,
    ModelInstance,
    ModelSummary,
    from_wire,
    summary_from_wire,
    to_wire,
    with_probes,
)
from .retry import Retry
from .transport import Transport
from .watch import WatchEvent, watch

__all__ = ["AsyncRegistryClient", "wait_until_ready"]

_V1 = "/api/v1"


def key_params(key: InstanceKey) -> dict[str, str]:
    return {"model_name": key.model_name, "host": key.host, "port": str(key.port)}


class AsyncRegistryClient:
    """Talks to one registry, or to several replicas (a list, or ``"http://a:8000,http://b:8000"``).

    Use as ``async with AsyncRegistryClient(url) as client:``; once closed it
    refuses further calls with ``ClientClosed``. Calls retry per ``retry``
    (``retry=False`` for a single attempt) and raise the errors of
    ``model_registry_sdk.errors``.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        retry: Retry | bool = True,
        reset_after: int = 3,
        clock: Clock | None = None,
        token: str | None = None,
        ca: str | None = None,
    ) -> None:
        """``token``: the API token (default ``$REGISTRY_TOKEN``), sent as
        ``Authorization: Bearer``. ``ca``: a CA bundle (PEM) to verify an HTTPS
        registry with (default ``$REGISTRY_CA_BUNDLE``, else the system's)."""
        policy = retry if isinstance(retry, Retry) else Retry() if retry else Retry(attempts=1)
        token = os.environ.get("REGISTRY_TOKEN") if token is None else token
        ca = os.environ.get("REGISTRY_CA_BUNDLE") if ca is None else ca
        self._transport = Transport(urls, policy, reset_after=reset_after, clock=clock, token=token, ca=ca)

    @property
    def urls(self) -> list[str]:
        return list(self._transport.urls)

    @property
    def retry(self) -> Retry:
        return self._transport.retry

    @property
    def clock(self) -> Clock:
        return self._transport.clock

    @property
    def closed(self) -> bool:
        return self._transport.closed

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncRegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the API -----------------------------------------------------------

    async def register(
        self,
        instance: ModelInstance,
        *,
        check: Mapping[str, Any] | str | None = None,
        metrics: Mapping[str, Any] | str | None = None,
    ) -> ModelInstance:
        """Register (or update) ``instance``. ``check``: an active health check the
        registry runs on it (``{"http": "/health", "interval": 10, ...}``, or just the
        path); ``metrics``: its engine's Prometheus endpoint to scrape (``{"url":
        "/metrics", "interval": 10}``, or just the path). Either replaces the
        instance's own ``check`` / ``metrics`` when given."""
        body = to_wire(with_probes(instance, check, metrics))
        answer = await self._transport.request("POST", f"{_V1}/instances", json=body)
        return from_wire(answer)

    async def heartbeat(
        self,
        instance: ModelInstance,
        queue_length: int | None = None,
        *,
        load: Mapping[str, Any] | None = None,
        deadline: float | None = None,
    ) -> ModelInstance:
        """Beat for ``instance``. The whole instance is sent, so a registry that
        lost it registers it again as described. ``load``: the engine's load, any
        of ``waiting``, ``running`` (request counts) and ``kv_cache_usage`` (0 to 1)."""
        body = {**to_wire(instance), "queue_length": queue_length}
        if load:
            body.update({name: load[name] for name in LOAD_FIELDS if load.get(name) is not None})
        answer = await self._transport.request("POST", f"{_V1}/heartbeat", json=body, deadline=deadline)
        return from_wire(answer)

    async def heartbeats(
        self,
        instances: Sequence[ModelInstance],
        queue_length: int | None = None,
        *,
        load: Mapping[str, Any] | None = None,
        deadline: float | None = None,
    ) -> list[tuple[str, str | None]]:
        """Beat for several instances in one request (at most 1,000), each sent whole
        with the same load: a result for each, in order, ``("known", None)``,
        ``("registered", None)`` (the registry had lost it) or ``("refused", why)``."""
        body: dict[str, Any] = {"queue_length": queue_length}
        if load:
            body.update({name: load[name] for name in LOAD_FIELDS if load.get(name) is not None})
        beats = [{**to_wire(instance), **body} for instance in instances]
        return await self._batch("heartbeats", "beats", beats, deadline)

    async def register_many(
        self, instances: Sequence[ModelInstance], *, deadline: float | None = None
    ) -> list[tuple[str, str | None]]:
        """Register several instances in one request (at most 1,000), written at once:
        a result for each, in order, ``("created", None)``, ``("updated", None)`` or
        ``("refused", why)``."""
        items = [to_wire(instance) for instance in instances]
        return await self._batch("instances/batch", "instances", items, deadline)

    async def _batch(
        self, path: str, field: str, items: list[dict[str, Any]], deadline: float | None
    ) -> list[tuple[str, str | None]]:
        answer = await self._transport.request(
            "POST", f"{_V1}/{path}", json={field: items}, deadline=deadline
        )
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise RegistryUnavailable(f"the registry answered a batch ({path}) with no result for each item")
        return [
            (str(r.get("result")), r.get("detail")) if isinstance(r, dict) else ("refused", None)
            for r in results
        ]

    async def deregister(
        self, instance: ModelInstance | InstanceKey, *, purge: bool = False, deadline: float | None = None
    ) -> ModelInstance:
        key = instance.key if isinstance(instance, ModelInstance) else instance
        params = {**key_params(key), "purge": "true" if purge else "false"}
        answer = await self._transport.request("DELETE", f"{_V1}/instances", params=params, deadline=deadline)
        return from_wire(answer)

    async def patch(self, instance: ModelInstance | InstanceKey, **changes: Any) -> ModelInstance:
        """An operator's change, pinned over re-registrations: ``enabled``,
        ``weight``, ``metadata`` (a dict of keys); ``None`` releases a pin."""
        key = instance.key if isinstance(instance, ModelInstance) else instance
        answer = await self._transport.request(
            "PATCH", f"{_V1}/instances", params=key_params(key), json=changes
        )
        return from_wire(answer)

    async def drain(self, instance: ModelInstance | InstanceKey) -> ModelInstance:
        """Take the instance out of selection until ``undrain``, whatever the worker registers."""
        return await self.patch(instance, enabled=False)

    async def undrain(self, instance: ModelInstance | InstanceKey) -> ModelInstance:
        return await self.patch(instance, enabled=None)

    async def set_weight(self, instance: ModelInstance | InstanceKey, weight: float | None) -> ModelInstance:
        """Pin the selection weight (``None`` gives the choice back to the worker)."""
        return await self.patch(instance, weight=weight)

    async def report(
        self,
        instance: ModelInstance | InstanceKey,
        ok: bool,
        *,
        error: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> ModelInstance:
        """Tell the registry how a request to ``instance`` went (routers do
        this): enough failures in a row put it in cooldown, a success ends it,
        a 429 (or a 503 with ``retry_after``, its ``Retry-After`` in seconds)
        passes it over without counting a failure, another 4xx counts for
        nothing. Returns the instance as the registry now sees it."""
        key = instance.key if isinstance(instance, ModelInstance) else instance
        body = {**key._asdict(), "ok": ok, "error": error, "status": status}
        if retry_after is not None:
            body["retry_after"] = retry_after
        # Not retried: a report that did land would count twice.
        answer = await self._transport.request("POST", f"{_V1}/reports", json=body, idempotent=False)
        return from_wire(answer["instance"])

    async def list_instances(
        self, model_name: str | None = None, healthy_only: bool = False
    ) -> list[ModelInstance]:
        params = {"healthy_only": "true" if healthy_only else "false"}
        if model_name is not None:
            params["model_name"] = model_name
        answer = await self._transport.request("GET", f"{_V1}/instances", params=params)
        return [from_wire(item) for item in answer["instances"]]

    async def list_models(self) -> list[ModelSummary]:
        answer = await self._transport.request("GET", f"{_V1}/models")
        return [summary_from_wire(item) for item in answer["models"]]

    async def select(
        self, model_name: str, strategy: str = "weighted", fallback: str | None = None
    ) -> ModelInstance:
        """One healthy instance, picked by ``strategy``: weighted, round_robin, least_load or
        power_of_two. ``AllCoolingDown`` (with ``retry_after``) when every one is cooling
        down, unless ``fallback="least_bad"``: then the one whose cooldown ends first."""
        return (await self.select_why(model_name, strategy, fallback))[0]

    async def select_why(
        self, model_name: str, strategy: str = "weighted", fallback: str | None = None
    ) -> tuple[ModelInstance, dict[str, Any]]:
        """``select``, and why it picked that one: ``{"strategy", "load", "fresh"}``, to log,
        with ``"degraded": true`` when the fallback picked an instance cooling down."""
        params = {"model_name": model_name, "strategy": strategy}
        if fallback is not None:
            params["fallback"] = fallback
        answer = await self._transport.request("GET", f"{_V1}/select", params=params)
        reason = answer.get("reason") if isinstance(answer, dict) else None
        reason = dict(reason) if isinstance(reason, dict) else {}
        reason["degraded"] = bool(answer.get("degraded")) if isinstance(answer, dict) else False
        return from_wire(answer), reason

    def watch(self, model_name: str | None = None) -> AsyncIterator[WatchEvent]:
        """A snapshot of ``model_name``'s instances (or every model's), then each change as it
        happens, for ever: reconnects and resumes by itself (see ``model_registry_sdk.watch``).
        Raises ``InvalidRequest`` for bad parameters and ``ClientClosed`` once the client closes."""
        return watch(self._transport, model_name)

    def healthy_cache(self, model_name: str | None = None, *, clock: Clock | None = None) -> HealthyCache:
        """The available instances of ``model_name`` (or all), in memory, kept current by
        ``watch``: ``async with client.healthy_cache(name) as cache: cache.instances()``.
        Cooldowns end by ``clock`` (the client's by default)."""
        return HealthyCache(self, model_name, clock=clock)

    # -- tokens (an admin's) ------------------------------------------------

    async def create_token(
        self, name: str, role: str, models: Sequence[str] | None = None, expires: str | None = None
    ) -> dict[str, Any]:
        """A new token; the answer's ``token`` is its secret, shown this once."""
        body: dict[str, Any] = {"name": name, "role": role}
        if models:
            body["models"] = list(models)
        if expires is not None:
            body["expires"] = expires
        return await self._transport.request("POST", f"{_V1}/tokens", json=body, idempotent=False)  # type: ignore[no-any-return]

    async def list_tokens(self) -> list[dict[str, Any]]:
        """Every token's name, role, scope and expiry (never a secret)."""
        return (await self._transport.request("GET", f"{_V1}/tokens"))["tokens"]  # type: ignore[no-any-return]

    async def revoke_token(self, name: str) -> None:
        await self._transport.request("DELETE", f"{_V1}/tokens/{quote(name, safe='')}")

    async def health(self) -> dict[str, Any]:
        return await self._transport.request("GET", "/health")

    async def wait_until_ready(self, timeout: float = 30.0, interval: float = 0.2) -> dict[str, Any]:
        """Poll ``/health`` until a registry answers 200; ``RegistryUnavailable`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + timeout
        while True:
            remaining = give_up_at - loop.time()
            try:
                return await self._transport.request("GET", "/health", deadline=max(0.05, remaining))
            except RegistryUnavailable as exc:
                if loop.time() + interval >= give_up_at:
                    raise RegistryUnavailable(
                        f"the registry was not ready within {timeout:g} s: {exc}"
                    ) from exc
            await asyncio.sleep(interval)


async def wait_until_ready(
    urls: str | Sequence[str], timeout: float = 30.0, interval: float = 0.2
) -> dict[str, Any]:
    """Return ``/health`` of the first registry to answer 200 within ``timeout``."""
    async with AsyncRegistryClient(urls, retry=Retry(attempts=1, timeout=min(3.0, timeout))) as client:
        return await client.wait_until_ready(timeout, interval)
