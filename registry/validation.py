"""Turning untrusted input into valid records, with one message per bad field.

The record's fields are defined once, in ``model_registry_sdk.record``; the
rules for them are here, by field name (``RULES``), and pydantic enforces them
on a model built from the record's own fields (``dataclasses.fields``), so a
field added to the record is validated without a second list of fields.
Anything that arrives from outside (a JSON body, a Python caller's object)
goes through here before the registry stores it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import operator
import re
import typing
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    create_model,
)

from model_registry_sdk.record import SERVER_MANAGED_FIELDS, InstanceKey, ModelInstance

from .errors import InvalidInstance
from .failures import PolicyError, check_metadata

__all__ = [
    "MAX_QUEUE_LENGTH",
    "heartbeat_from",
    "instance_from",
    "key_from",
    "known_beat",
    "load_from",
    "normalize_host",
    "override_from",
    "parse",
    "problems_of",
    "report_from",
    "record_from",
]

MAX_METADATA_KEYS = 64
MAX_METADATA_BYTES = 8 * 1024

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# RFC 1123 labels, plus "_" because container runtimes hand out such names.
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _check_model_name(value: str) -> str:
    if _CONTROL_CHARS.search(value):
        raise ValueError("must not contain control characters")
    return value


def normalize_host(value: str) -> str:
    """Return the canonical spelling of a hostname, IPv4 or IPv6 address.

    Identity includes the host, so ``[::1]``, ``0:0::1`` and ``::1`` must be one
    host, and so must ``Worker-1`` and ``worker-1``.
    """
    candidate = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return ipaddress.ip_address(candidate).compressed
    except ValueError:
        pass
    name = candidate[:-1] if candidate.endswith(".") else candidate
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(p) for p in name.split(".")):
        raise ValueError("must be a hostname, an IPv4 address or an IPv6 address")
    return name.lower()


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"must have at most {MAX_METADATA_KEYS} keys, got {len(value)}")
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:
        raise ValueError(f"must be JSON-serialisable ({exc})") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise ValueError(f"must encode to at most {MAX_METADATA_BYTES} bytes of JSON, got {len(encoded)}")
    return value


ModelName = Annotated[str, Strict(), Field(min_length=1, max_length=256), AfterValidator(_check_model_name)]
Host = Annotated[str, Strict(), Field(min_length=1, max_length=255), AfterValidator(normalize_host)]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
# float() because strict mode lets a JSON integer through as an int.
Weight = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False), AfterValidator(float)]
Flag = Annotated[bool, Strict()]
Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]
#: The largest load a worker may report: what every backend's integer column holds.
MAX_QUEUE_LENGTH = 2**31 - 1
QueueLength = Annotated[int, Strict(), Field(ge=0, le=MAX_QUEUE_LENGTH)]


PromptTemplate = Annotated[str, Strict(), Field(max_length=16 * 1024)]
#: Seconds a worker may take to load its model (``ready: false``) before it is unhealthy.
MAX_STARTUP_GRACE = 86_400.0
StartupGrace = Annotated[
    float, Strict(), Field(gt=0, le=MAX_STARTUP_GRACE, allow_inf_nan=False), AfterValidator(float)
]


# ``check`` and ``metrics`` are read by ``probes`` (``_instance``), which names the field
# inside (``check.timeout``).
Spec = Annotated[dict[str, Any], Strict()]

#: The rule for each of the record's fields that has one; the others keep their type.
RULES: dict[str, Any] = {
    "model_name": ModelName,
    "host": Host,
    "port": Port,
    "weight": Weight,
    "check_healthy": Flag,
    "enabled": Flag,
    "prompt_template": PromptTemplate | None,
    "metadata": Metadata,
    "queue_length": QueueLength | None,
    "check": Spec | None,
    "metrics": Spec | None,
    "ready": Flag,
    "startup_grace": StartupGrace | None,
}


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return Field(default_factory=f.default_factory)
    return ... if f.default is dataclasses.MISSING else f.default


_TYPES = typing.get_type_hints(ModelInstance)
_InstanceModel = create_model(  # the record's fields, in the record's order, with the rules above
    "ModelInstance",
    __config__=ConfigDict(extra="ignore", protected_namespaces=()),
    **{f.name: (RULES.get(f.name, _TYPES[f.name]), _default(f)) for f in dataclasses.fields(ModelInstance)},
)
_INSTANCE = TypeAdapter(_InstanceModel)


def _instance(value: Any) -> ModelInstance:
    if isinstance(value, ModelInstance):
        value = value.__dict__
    elif not isinstance(value, dict):
        raise InvalidInstance([("body", f"must be an instance object, got {type(value).__name__}")])
    parsed = _validate(_INSTANCE, value)
    record = ModelInstance(**{name: getattr(parsed, name) for name in _InstanceModel.model_fields})
    if record.check is not None or record.metrics is not None:
        from .probes import check_from, scrape_from  # probes builds on this module

        if record.check is not None:
            record.check = check_from(record.check).model_dump()
        if record.metrics is not None:
            record.metrics = scrape_from(record.metrics).model_dump()
    if record.metadata:
        try:
            check_metadata(record.metadata)
        except PolicyError as exc:
            raise InvalidInstance([(exc.field, exc.message)]) from None
    return record


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


class _Load(BaseModel):
    """An engine's load, as a worker's heartbeat may carry it (``EngineLoad``'s fields)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    waiting: QueueLength | None = None
    running: QueueLength | None = None
    kv_cache_usage: Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)] | None = None


_LOAD = TypeAdapter(_Load)
#: The keys of a heartbeat body that carry an engine's load.
LOAD_KEYS = ("waiting", "running", "kv_cache_usage")


def carries_load(body: dict[str, Any]) -> bool:
    return "waiting" in body or "running" in body or "kv_cache_usage" in body


def load_from(body: dict[str, Any]) -> tuple[int | None, int | None, float | None] | None:
    """The engine's load a heartbeat body carries (``waiting``, ``running``,
    ``kv_cache_usage``), or ``None`` when it carries none."""
    if not carries_load(body):
        return None
    load = _validate(_LOAD, {k: body.get(k) for k in LOAD_KEYS})
    usage = load.kv_cache_usage
    return load.waiting, load.running, None if usage is None else float(usage)


class Report(BaseModel):
    """What a router saw of one request to an instance."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_name: ModelName
    host: Host
    port: Annotated[int, Field(strict=True, ge=1, le=65535)]
    ok: Annotated[bool, Field(strict=True)]
    error: Annotated[str, Field(max_length=1024)] | None = None
    status: Annotated[int, Field(strict=True, ge=100, le=599)] | None = None
    #: Seconds the instance asked to be left alone (its ``Retry-After``): a 429 or 503 with it is busyness.
    retry_after: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] | None = None

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


def parse(model: type[BaseModel], body: Any) -> Any:
    """``body`` as ``model``, or ``InvalidInstance`` naming each bad field (422)."""
    return _validate(TypeAdapter(model), body)


def record_from(value: dict[str, Any]) -> ModelInstance:
    """A validated record with its server-managed fields kept (a stored or sent one)."""
    return _instance(value)


def instance_from(value: ModelInstance | dict[str, Any]) -> ModelInstance:
    """A validated copy of ``value``; server-managed fields are dropped unread."""
    if isinstance(value, ModelInstance):
        value = value.__dict__
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in SERVER_MANAGED_FIELDS}
    return _instance(value)


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
        if load is None or (type(load) is int and 0 <= load <= MAX_QUEUE_LENGTH):
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
