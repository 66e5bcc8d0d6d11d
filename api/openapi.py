"""``GET /openapi.json``: the OpenAPI 3.1 document of every route (being built)."""

from __future__ import annotations

from aiohttp import web

from model_registry import Registry

from .responses import json_response

__all__ = ["document"]


async def document(request: web.Request, registry: Registry) -> web.Response:
    return json_response(
        {"openapi": "3.1.0", "info": {"title": "model-registry", "version": "0.1.0"}, "paths": {}}
    )
