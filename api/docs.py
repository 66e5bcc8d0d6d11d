"""``GET /docs``: a reference page for ``/openapi.json``, its assets served from the package (being built)."""

from __future__ import annotations

from aiohttp import web

from model_registry import Registry

from .problem import ApiError

__all__ = ["asset", "page"]


async def page(request: web.Request, registry: Registry) -> web.Response:
    return web.Response(text="<!doctype html><title>model-registry API</title>", content_type="text/html")


async def asset(request: web.Request, registry: Registry) -> web.Response:
    if request.match_info["name"] == "swagger-ui.css":
        return web.Response(text="", content_type="text/css")
    raise ApiError(404, "not_found", "no such asset")
