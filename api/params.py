"""Query parameters: parsed strictly, refused with 422 naming the parameter."""

from __future__ import annotations

from aiohttp import web

from .problem import ApiError

__all__ = ["model_name_param", "query_flag"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def query_flag(request: web.Request, name: str) -> bool:
    """A boolean parameter; absent means false."""
    raw = request.query.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ApiError(422, "invalid_input", f"{name}: must be true or false, got {raw!r}", field=name)


def model_name_param(request: web.Request, *, required: bool) -> str | None:
    value = request.query.get("model_name")
    if value is None and not required:
        return None
    if not value:
        raise ApiError(
            422, "invalid_input", "model_name: the query parameter is required", field="model_name"
        )
    return value
