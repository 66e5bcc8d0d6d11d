"""The route table."""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from model_registry.auth import Action

from . import dashboard, dbgpt, docs, fastchat, metrics, openapi, tokens, views, watch
from .errors import View, guard, unrouted
from .keys import Lifecycle

__all__ = ["setup_routes"]

#: Every route, with the action it needs (``model_registry.auth.GRANTS`` says
#: which roles have it). Scoped actions are checked again, per model, by the view.
ROUTES: list[tuple[str, str, View, Action]] = [
    ("POST", "/api/v1/instances", views.register, Action.REGISTER),
    ("GET", "/api/v1/instances", views.list_instances, Action.READ),
    ("DELETE", "/api/v1/instances", views.deregister, Action.DEREGISTER),
    ("PATCH", "/api/v1/instances", views.patch, Action.PATCH),
    ("POST", "/api/v1/reports", views.report, Action.REPORT),
    ("POST", "/api/v1/heartbeat", views.heartbeat, Action.HEARTBEAT),
    ("POST", "/api/v1/heartbeats", views.heartbeats, Action.HEARTBEAT),
    ("POST", "/api/v1/instances/batch", views.register_batch, Action.REGISTER),
    ("GET", "/api/v1/models", views.models, Action.READ),
    ("GET", "/api/v1/select", views.select, Action.READ),
    ("GET", "/api/v1/watch", watch.watch, Action.READ),
    ("POST", "/api/v1/tokens", tokens.create, Action.TOKENS),
    ("GET", "/api/v1/tokens", tokens.listing, Action.TOKENS),
    ("DELETE", "/api/v1/tokens/{name}", tokens.revoke, Action.TOKENS),
    ("GET", "/health", views.health, Action.PUBLIC),
    ("GET", "/metrics", metrics.metrics, Action.READ),
    ("GET", "/openapi.json", openapi.document, Action.PUBLIC),
    ("GET", "/docs", docs.page, Action.PUBLIC),
    ("GET", "/docs/assets/{name}", docs.asset, Action.PUBLIC),
    ("GET", "/", dashboard.page, Action.PUBLIC),
    ("GET", "/ui/{name}", dashboard.asset, Action.PUBLIC),
    ("GET", "/api/v1/session", dashboard.session, Action.PUBLIC),
    ("POST", "/api/v1/session", dashboard.sign_in, Action.PUBLIC),
    ("DELETE", "/api/v1/session", dashboard.sign_out, Action.PUBLIC),
    # DB-GPT's model controller (see api.dbgpt)
    ("GET", "/api/health", dbgpt.health, Action.PUBLIC),
    ("POST", "/api/controller/models", dbgpt.register, Action.REGISTER),
    ("GET", "/api/controller/models", dbgpt.list_instances, Action.READ),
    ("DELETE", "/api/controller/models", dbgpt.deregister, Action.DEREGISTER),
    ("POST", "/api/controller/heartbeat", dbgpt.heartbeat, Action.HEARTBEAT),
    # FastChat's controller (see api.fastchat)
    ("POST", "/register_worker", fastchat.register_worker, Action.REGISTER),
    ("POST", "/receive_heart_beat", fastchat.receive_heart_beat, Action.HEARTBEAT),
    ("POST", "/list_models", fastchat.list_models, Action.READ),
    ("POST", "/list_language_models", fastchat.list_language_models, Action.READ),
    ("POST", "/list_multimodal_models", fastchat.list_multimodal_models, Action.READ),
    ("POST", "/refresh_all_workers", fastchat.refresh_all_workers, Action.READ),
    ("POST", "/get_worker_address", fastchat.get_worker_address, Action.READ),
    ("POST", "/worker_get_status", fastchat.worker_get_status, Action.READ),
    ("GET", "/test_connection", fastchat.connection_check, Action.READ),
]

#: Routes that still answer while the server drains (the health checks say so themselves).
WHILE_DRAINING = {views.health, dbgpt.health, metrics.metrics}


def setup_routes(app: web.Application, lifecycle: Lifecycle) -> None:
    allowed: dict[str, set[str]] = {}
    timings = app[metrics.METRICS]
    for method, path, view, action in ROUTES:
        times = timings.route(f"{method} {path}")
        handler = guard(view, lifecycle, action, while_draining=view in WHILE_DRAINING, times=times)
        if method == "GET":  # and HEAD, as aiohttp's add_get does
            app.router.add_get(path, handler)
            allowed.setdefault(path, set()).update({"GET", "HEAD"})
        else:
            app.router.add_route(method, path, handler)
            allowed.setdefault(path, set()).add(method)
    # Last, so that it only catches what no route above matched; and the one
    # target that is no path, ``OPTIONS *`` (which would be aiohttp's plain text).
    app.router.add_route("*", "/{tail:.*}", unrouted(allowed))
    asterisk = _Asterisk()
    asterisk.add_route("*", unrouted(allowed))
    app.router.register_resource(asterisk)


class _Asterisk(web.Resource):
    """The request target ``*`` (``OPTIONS * HTTP/1.1``), which no path route
    matches: aiohttp would answer it with a plain-text 404."""

    @property
    def canonical(self) -> str:
        return "*"  # the router looks resources up by the request's path: this one's is "*"

    def _match(self, path: str) -> dict[str, str] | None:
        return {} if path == "*" else None

    def raw_match(self, path: str) -> bool:
        return path == "*"

    def get_info(self) -> dict[str, str]:  # type: ignore[override]
        return {"path": "*"}

    def url_for(self) -> URL:  # type: ignore[override]
        return URL.build(path="*", encoded=True)

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("the * target cannot be under a prefix")
