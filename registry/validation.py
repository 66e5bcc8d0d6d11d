"""Turning untrusted input into valid records, with one message per bad field.

The rules are the annotations on ``ModelInstance``; pydantic enforces them.
Anything that arrives from outside (a JSON body, a Python caller's object) goes
through here before the registry stores it.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from storage.model import (
    SERVER_MANAGED_FIELDS,
    Flag,
    Host,
    InstanceKey,
    Metadata,
    ModelInstance,
    ModelName,
    QueueLength,
    Weight,
)

from .errors import InvalidInstance

__all__ = [
    "heartbeat_from",
    "instance_from",
    "key_from",
    "known_beat",
    "override_from",
    "problems_of",
    "report_from",
    "record_from",
]

_INSTANCE = TypeAdapter(ModelInstance)


class _KeyQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    model_name: ModelName
    host: Host
    port: Annotated[int, Field(ge=1, le=65535)]  # lax: query strings carry digits


_QUEUE_LENGTH = TypeAdapter(QueueLength | None)
_KEY_QUERY = TypeAdapter(_KeyQuery)


class _Override(BaseModel):
    """An operator's change: a value pins the field, ``null`` releases it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: Flag | None = None
    weight: Weight | None = None
    metadata: Metadata | None = None


class Report(BaseModel):
    """What a router saw of one request to an instance."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_name: ModelName
    host: Host
    port: Annotated[int, Field(strict=True, ge=1, le=65535)]
    ok: Annotated[bool, Field(strict=True)]
    error: Annotated[str, Field(max_length=1024)] | None = None
    status: Annotated[int, Field(strict=True, ge=100, le=599)] | None = None

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.model_name, self.host, self.port)


_OVERRIDE = TypeAdapter(_Override)
_REPORT = TypeAdapter(Report)


def problems_of(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "body"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "not something that can be set here"
        problems.append((field, message))
    return problems


def _validate(adapter: TypeAdapter, value: Any) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise InvalidInstance(problems_of(exc)) from None


def record_from(value: dict[str, Any]) -> ModelInstance:
    """A record as the registry sent it, server-managed fields included (for clients)."""
    return _validate(_INSTANCE, value)


def instance_from(value: ModelInstance | dict[str, Any]) -> ModelInstance:
    """A validated copy of ``value``; server-managed fields are dropped unread."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in SERVER_MANAGED_FIELDS}
    return _validate(_INSTANCE, value)


def heartbeat_from(body: dict[str, Any]) -> tuple[ModelInstance, int | None]:
    """A heartbeat body: the instance (registered as such if the registry lost
    it) and the load it reports."""
    instance = instance_from(body)
    try:
        queue_length = _QUEUE_LENGTH.validate_python(body.get("queue_length"))
    except ValidationError as exc:
        raise InvalidInstance([("queue_length", m) for _, m in problems_of(exc)]) from None
    return instance, queue_length


def known_beat(body: dict[str, Any]) -> tuple[InstanceKey, int | None] | None:
    """The identity and load in a heartbeat body if they have the right types
    (not checked further); ``None`` sends the body through full validation.

    Only for beating an instance that already exists: a key that matches a
    stored one exactly is valid, because the stored one was validated.
    """
    try:
        identity = _identity(body)
    except KeyError:
        return None
    model_name, host, port = identity
    if type(model_name) is str and type(host) is str and type(port) is int:
        load = body.get("queue_length")
        if load is None or (type(load) is int and load >= 0):
            return _new_key(InstanceKey, identity), load  # NamedTuple's __new__, without its frame
    return None


_identity = operator.itemgetter("model_name", "host", "port")
_new_key = tuple.__new__


def key_from(query: Mapping[str, str]) -> InstanceKey:
    """The identity named by query parameters (``port`` arrives as text)."""
    parsed = _validate(_KEY_QUERY, dict(query))
    return InstanceKey(parsed.model_name, parsed.host, parsed.port)


def override_from(body: dict[str, Any]) -> dict[str, Any]:
    """An operator's changes (``enabled``, ``weight``, ``metadata``), only the fields given."""
    parsed = _validate(_OVERRIDE, body)
    changes = {name: getattr(parsed, name) for name in parsed.model_fields_set}
    if not changes:
        raise InvalidInstance([("body", "nothing to change: give enabled, weight or metadata")])
    return changes


def report_from(body: dict[str, Any]) -> Report:
    """A router's report on one request to an instance."""
    return _validate(_REPORT, body)
