"""Request handlers: parse, call one registry method, serialise."""

from __future__ import annotations

from aiohttp import web

from registry.validation import key_from

from .keys import LIFECYCLE, REGISTRY, SETTINGS
from .params import duration_param, model_name_param, query_flag, revision_param, strategy_param
from .problem import ApiError
from .responses import json_response, read_object

__all__ = [
    "deregister",
    "health",
    "heartbeat",
    "list_instances",
    "models",
    "patch",
    "register",
    "report",
    "select",
]


async def register(request: web.Request) -> web.Response:
    instance, created = await request.app[REGISTRY].register(await read_object(request))
    return json_response(instance, status=201 if created else 200)


async def heartbeat(request: web.Request) -> web.Response:
    return json_response(await request.app[REGISTRY].heartbeat(await read_object(request)))


async def deregister(request: web.Request) -> web.Response:
    key, purge = key_from(request.query), query_flag(request, "purge")
    return json_response(await request.app[REGISTRY].deregister(key, purge=purge))


#: The response header that carries the registry's revision (for ``?index=``).
INDEX_HEADER = "X-Registry-Index"


async def list_instances(request: web.Request) -> web.Response:
    model_name = model_name_param(request, required=False)
    healthy_only = query_flag(request, "healthy_only")
    registry = request.app[REGISTRY]
    await _long_poll(request, model_name)
    revision = registry.revision  # read first: a change during the read is then not missed
    found = await registry.instances(model_name, healthy_only)
    return json_response({"instances": found, "count": len(found)}, headers={INDEX_HEADER: str(revision)})


async def models(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    await _long_poll(request, None)
    revision = registry.revision
    answer = {"models": await registry.models(), "self_preservation": registry.self_preservation}
    return json_response(answer, headers={INDEX_HEADER: str(revision)})


async def patch(request: web.Request) -> web.Response:
    key = key_from(request.query)
    return json_response(await request.app[REGISTRY].patch(key, await read_object(request)))


async def report(request: web.Request) -> web.Response:
    instance, failures = await request.app[REGISTRY].report(await read_object(request))
    return json_response({"instance": instance, "failures": failures})


async def _long_poll(request: web.Request, model_name: str | None) -> None:
    """With ``?index=N``, wait (up to ``wait``, default 5 min, or --max-wait)
    until something after revision N changes, as Consul's blocking queries do."""
    index = revision_param(request, "index")
    if index is None and "wait" not in request.query:
        return  # the common case: a plain read
    max_wait = request.app[SETTINGS].max_wait
    wait = duration_param(request, "wait", limit=max_wait)
    if index is None:
        raise ApiError(
            422,
            "invalid_input",
            "wait: only means something with index=N (the X-Registry-Index of your last answer)",
            field="wait",
        )
    await request.app[REGISTRY].wait_for_change(index, model_name, max_wait if wait is None else wait)


async def select(request: web.Request) -> web.Response:
    model_name = model_name_param(request, required=True)
    strategy = strategy_param(request)
    return json_response(await request.app[REGISTRY].select(model_name, strategy))


async def health(request: web.Request) -> web.Response:
    if request.app[LIFECYCLE].draining:
        raise ApiError(503, "shutting_down", "the registry is shutting down", headers={"Retry-After": "1"})
    return json_response({"status": "ok", **await request.app[REGISTRY].health()})
