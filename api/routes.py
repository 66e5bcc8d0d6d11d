"""The route table."""

from __future__ import annotations

from aiohttp import web

from . import views, watch
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
]

#: Routes that still answer while the server drains (``/health`` says so itself).
WHILE_DRAINING = {views.health}


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
