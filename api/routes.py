"""The route table."""

from __future__ import annotations

from aiohttp import web

from . import views

__all__ = ["setup_routes"]


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/instances", views.register)
    app.router.add_get("/api/v1/instances", views.list_instances)
    app.router.add_delete("/api/v1/instances", views.deregister)
    app.router.add_post("/api/v1/heartbeat", views.heartbeat)
    app.router.add_get("/api/v1/models", views.models)
    app.router.add_get("/api/v1/select", views.select)
    app.router.add_get("/health", views.health)
