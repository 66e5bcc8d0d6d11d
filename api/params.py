"""Query parameters: parsed strictly, refused with 422 naming the parameter."""

from __future__ import annotations

import re

from aiohttp import web

from model_registry.selection import DEFAULT_STRATEGY, parse_strategy

from .problem import ApiError

__all__ = ["duration_param", "model_name_param", "query_flag", "revision_param", "strategy_param"]

_FLAGS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def query_flag(request: web.Request, name: str) -> bool:
    """A boolean parameter; absent means false."""
    raw = request.query.get(name)
    if raw is None:
        return False
    value = _FLAGS.get(raw)  # as clients spell it; else tidied up below
    if value is None:
        value = _FLAGS.get(raw.strip().lower())
        if value is None:
            raise ApiError(422, "invalid_input", f"{name}: must be true or false, got {raw!r}", field=name)
    return value


def model_name_param(request: web.Request, *, required: bool) -> str | None:
    value = request.query.get("model_name")
    if value is None and not required:
        return None
    if not value:
        raise ApiError(
            422, "invalid_input", "model_name: the query parameter is required", field="model_name"
        )
    return value


def revision_param(request: web.Request, name: str) -> int | None:
    """A revision (a non-negative integer), or ``None`` when absent."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit():
        raise ApiError(
            422, "invalid_input", f"{name}: must be a revision (a whole number), got {raw!r}", field=name
        )
    return int(raw)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration_param(request: web.Request, name: str, *, limit: float) -> float | None:
    """A duration like ``30s``, ``500ms``, ``5m`` or ``10`` (seconds), at most ``limit`` s."""
    raw = request.query.get(name)
    if raw is None:
        return None
    match = _DURATION.match(raw)
    if match is None:
        raise ApiError(
            422,
            "invalid_input",
            f"{name}: must be a duration like 30s, 500ms or 5m, got {raw!r}",
            field=name,
        )
    seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if seconds > limit:
        raise ApiError(
            422,
            "invalid_input",
            f"{name}: at most {limit:g}s (the server's --max-wait), got {raw!r}",
            field=name,
        )
    return seconds


def strategy_param(request: web.Request) -> str:
    """``strategy`` for ``select``: weighted (the default), round_robin, least_load or power_of_two."""
    raw = request.query.get("strategy")
    if raw is None:
        return DEFAULT_STRATEGY
    try:
        return parse_strategy(raw)
    except ValueError as exc:
        raise ApiError(422, "invalid_input", f"strategy: {exc}", field="strategy") from None
