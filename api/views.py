"""Request handlers: parse, call one registry method, serialise."""

from __future__ import annotations

from aiohttp import web

from registry.validation import key_from

from .keys import LIFECYCLE, REGISTRY
from .params import model_name_param, query_flag
from .problem import ApiError
from .responses import json_response, read_object

__all__ = ["deregister", "health", "heartbeat", "list_instances", "models", "register", "select"]


async def register(request: web.Request) -> web.Response:
    instance, created = await request.app[REGISTRY].register(await read_object(request))
    return json_response(instance, status=201 if created else 200)


async def heartbeat(request: web.Request) -> web.Response:
    return json_response(await request.app[REGISTRY].heartbeat(await read_object(request)))


async def deregister(request: web.Request) -> web.Response:
    key, purge = key_from(request.query), query_flag(request, "purge")
    return json_response(await request.app[REGISTRY].deregister(key, purge=purge))


async def list_instances(request: web.Request) -> web.Response:
    model_name = model_name_param(request, required=False)
    healthy_only = query_flag(request, "healthy_only")
    found = await request.app[REGISTRY].instances(model_name, healthy_only)
    return json_response({"instances": found, "count": len(found)})


async def models(request: web.Request) -> web.Response:
    return json_response({"models": await request.app[REGISTRY].models()})


async def select(request: web.Request) -> web.Response:
    model_name = model_name_param(request, required=True)
    return json_response(await request.app[REGISTRY].select(model_name))


async def health(request: web.Request) -> web.Response:
    if request.app[LIFECYCLE].draining:
        raise ApiError(503, "shutting_down", "the registry is shutting down", headers={"Retry-After": "1"})
    return json_response({"status": "ok", **await request.app[REGISTRY].health()})
