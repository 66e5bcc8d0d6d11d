"""``GET /metrics``: Prometheus text format (being built)."""

from __future__ import annotations

from aiohttp import web

from model_registry import Registry

__all__ = ["metrics"]


async def metrics(request: web.Request, registry: Registry) -> web.Response:
    return web.Response(text="", content_type="text/plain")
