"""The route table."""

from __future__ import annotations

from aiohttp import web

from . import dbgpt, fastchat, views, watch
from .errors import guard, unrouted
from .keys import Lifecycle

__all__ = ["setup_routes"]

ROUTES = [
    ("POST", "/api/v1/instances", views.register),
    ("GET", "/api/v1/instances", views.list_instances),
    ("DELETE", "/api/v1/instances", views.deregister),
    ("PATCH", "/api/v1/instances", views.patch),
    ("POST", "/api/v1/reports", views.report),
    ("POST", "/api/v1/heartbeat", views.heartbeat),
    ("GET", "/api/v1/models", views.models),
    ("GET", "/api/v1/select", views.select),
    ("GET", "/api/v1/watch", watch.watch),
    ("GET", "/health", views.health),
    # DB-GPT's model controller (see api.dbgpt)
    ("GET", "/api/health", dbgpt.health),
    ("POST", "/api/controller/models", dbgpt.register),
    ("GET", "/api/controller/models", dbgpt.list_instances),
    ("DELETE", "/api/controller/models", dbgpt.deregister),
    ("POST", "/api/controller/heartbeat", dbgpt.heartbeat),
    # FastChat's controller (see api.fastchat)
    ("POST", "/register_worker", fastchat.register_worker),
    ("POST", "/receive_heart_beat", fastchat.receive_heart_beat),
    ("POST", "/list_models", fastchat.list_models),
    ("POST", "/list_language_models", fastchat.list_language_models),
    ("POST", "/list_multimodal_models", fastchat.list_multimodal_models),
    ("POST", "/refresh_all_workers", fastchat.refresh_all_workers),
    ("POST", "/get_worker_address", fastchat.get_worker_address),
    ("POST", "/worker_get_status", fastchat.worker_get_status),
    ("GET", "/test_connection", fastchat.connection_check),
]

#: Routes that still answer while the server drains (the health checks say so themselves).
WHILE_DRAINING = {views.health, dbgpt.health}


def setup_routes(app: web.Application, lifecycle: Lifecycle) -> None:
    allowed: dict[str, set[str]] = {}
    for method, path, view in ROUTES:
        handler = guard(view, lifecycle, while_draining=view in WHILE_DRAINING)
        if method == "GET":  # and HEAD, as aiohttp's add_get does
            app.router.add_get(path, handler)
            allowed.setdefault(path, set()).update({"GET", "HEAD"})
        else:
            app.router.add_route(method, path, handler)
            allowed.setdefault(path, set()).add(method)
    # Last, so that it only catches what no route above matched.
    app.router.add_route("*", "/{tail:.*}", unrouted(allowed))
