"""The record and its wire format: the one definition the server, its storage
and the client share. Standard library only.

``ModelInstance``'s fields are written down here, once. The server's JSON keys
are these field names (it serialises the dataclass itself), the SQL table's
columns are checked against them, and the client reads an answer back with
``from_wire``, which is derived from the same fields: a field added here is
sent, stored and parsed without a second list to keep in step.

Constructing a ``ModelInstance`` does not validate it (exactly like the DB-GPT
dataclass it stands in for); the server validates what it receives
(``model_registry.validation``), and ``check`` catches the mistakes a client
can see for itself.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from .errors import InvalidRequest, RegistryUnavailable

__all__ = [
    "CHECK_REASON",
    "DERIVED_FIELDS",
    "STARTING_CHECK",
    "STATES",
    "LOAD_FIELDS",
    "OVERRIDABLE_FIELDS",
    "SERVER_MANAGED_FIELDS",
    "Change",
    "InstanceKey",
    "ModelInstance",
    "ModelSummary",
    "apply_overrides",
    "check",
    "from_wire",
    "GRACE_REASON",
    "DRAINED_REASON",
    "held",
    "held_by_check",
    "with_probes",
    "summary_from_wire",
    "state_of",
    "to_wire",
]

_new_tuple = tuple.__new__


class InstanceKey(NamedTuple):
    """Identity of an instance: one worker process serving one model."""

    model_name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.model_name!r} at {self.address}"


@dataclass
class ModelInstance:
    """One instance of a model serving traffic.

    The first nine fields keep DB-GPT's order and names, so code written for
    its ``ModelInstance`` constructs this one unchanged. ``healthy``,
    ``last_heartbeat``, ``registered_at``, ``unhealthy_since``,
    ``queue_length``, ``overrides`` and ``cooldown_until`` are managed by the
    registry: values sent by clients are ignored and replaced by the
    registry's own.

    ``overrides`` holds what an operator set (``enabled``, ``weight``, and
    ``metadata`` keys), re-applied over every re-registration; ``None`` when
    nothing is overridden. ``cooldown_until``: routers reported failures, so
    selection and healthy listings leave the instance out until then.

    ``check`` and ``metrics``: what the registry probes (an HTTP health check)
    and scrapes (the engine's Prometheus endpoint) for this instance, as the
    client gave them (``model_registry.probes``). ``state_reason``: why the
    instance last turned unhealthy (``probe: connection refused``), ``None``
    while it is healthy. ``waiting``, ``running``, ``kv_cache_usage`` (0 to 1)
    and ``load_at``: the engine's load, scraped or sent with a heartbeat, and
    when it was measured; managed by the registry, like ``queue_length``.

    ``ready``: ``False`` while the worker is still loading its model (it is
    listed, never selected, and not expired until its ``startup_grace``
    seconds, the registry's default when ``None``, have passed since it
    registered). ``state``: what all this adds up to, one of ``STATES``
    (``state_of``); derived, never stored, and ``state_reason`` says why.

    Not slotted on purpose: orjson serialises a dataclass with a ``__dict__``
    about three times faster than a slotted one, for some 50 more bytes.
    """

    model_name: str
    host: str
    port: int
    weight: float = 1.0
    check_healthy: bool = True
    healthy: bool = False
    enabled: bool = True
    prompt_template: str | None = None
    last_heartbeat: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    registered_at: datetime | None = None
    unhealthy_since: datetime | None = None
    queue_length: int | None = None
    overrides: dict[str, Any] | None = None
    cooldown_until: datetime | None = None
    check: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    state_reason: str | None = None
    waiting: int | None = None
    running: int | None = None
    kv_cache_usage: float | None = None
    load_at: datetime | None = None
    ready: bool = True
    startup_grace: float | None = None
    state: str = "ready"

    def __post_init__(self) -> None:
        self.state = state_of(self)

    @property
    def key(self) -> InstanceKey:
        # tuple.__new__: the NamedTuple without its Python-level __new__ (a hot path)
        return _new_tuple(InstanceKey, (self.model_name, self.host, self.port))

    def in_cooldown(self, now: datetime) -> bool:
        """Whether routers' failure reports keep it out of selection at ``now``."""
        return self.cooldown_until is not None and self.cooldown_until > now


#: An instance's states, in the order ``state_of`` tells them apart.
STATES = ("unhealthy", "starting", "disabled", "cooling", "ready")
#: How ``state_reason`` begins while an instance's check has not yet passed once.
STARTING_CHECK = "probe: not yet passed"
#: Fields derived from the others, never stored (no column, no journal entry).
DERIVED_FIELDS = frozenset({"state"})


def state_of(record: ModelInstance) -> str:
    """The instance's state: ``unhealthy`` (silent, failing its check, deregistered,
    or not ready within its start-up grace), ``starting`` (registered ``ready:
    false``, or its check has not yet passed), ``disabled`` (drained), ``cooling``
    (routers' reports keep it out, or it is on trial after that), ``ready``. The
    first that applies, in that order."""
    if not record.healthy:
        reason = record.state_reason
        return "starting" if reason is not None and reason.startswith(STARTING_CHECK) else "unhealthy"
    if not record.ready:
        return "starting"
    if not record.enabled:
        return "disabled"
    if record.cooldown_until is not None:
        return "cooling"
    return "ready"


#: The fields the registry sets; a client's values for them are ignored.
SERVER_MANAGED_FIELDS = frozenset(
    {
        "state",
        "healthy",
        "last_heartbeat",
        "registered_at",
        "unhealthy_since",
        "queue_length",
        "overrides",
        "cooldown_until",
        "state_reason",
        "waiting",
        "running",
        "kv_cache_usage",
        "load_at",
    }
)

#: How ``state_reason`` begins while the instance's own check holds it unhealthy: a
#: heartbeat then does not bring it back, only passing the check does.
CHECK_REASON = "probe: "


def held_by_check(record: ModelInstance) -> bool:
    """Whether ``record`` is unhealthy because its check fails (or has not yet passed)."""
    reason = record.state_reason
    return not record.healthy and reason is not None and reason.startswith(CHECK_REASON)


#: How ``state_reason`` begins once a worker was not ready within its start-up grace.
GRACE_REASON = "not ready within its start-up grace"
#: How ``state_reason`` begins while an operator keeps an instance drained.
DRAINED_REASON = "drained by "


def held(record: ModelInstance) -> bool:
    """Whether a heartbeat leaves ``record`` unhealthy: its check holds it
    (``held_by_check``), or it was not ready within its start-up grace (only
    ``ready: true``, or registering again, brings that back)."""
    if held_by_check(record):
        return True
    reason = record.state_reason
    return not record.healthy and reason is not None and reason.startswith(GRACE_REASON)


#: The fields of an engine's load (``load_at`` says when it was measured).
LOAD_FIELDS = ("waiting", "running", "kv_cache_usage")

#: The fields an operator may override (``PATCH``), and so pin.
OVERRIDABLE_FIELDS = ("enabled", "weight", "metadata")


def apply_overrides(record: ModelInstance, overrides: dict[str, Any] | None) -> None:
    """Set ``record``'s overridable fields to the pinned values, in place: what
    ``overrides`` means, wherever a record is stored."""
    record.overrides = overrides
    if not overrides:
        return
    if "enabled" in overrides:
        record.enabled = overrides["enabled"]
    if "weight" in overrides:
        record.weight = overrides["weight"]
    if "metadata" in overrides:
        record.metadata = {**record.metadata, **overrides["metadata"]}


@dataclass(slots=True, frozen=True)
class ModelSummary:
    """Counts of one model's instances, as ``GET /api/v1/models`` reports them."""

    model_name: str
    total: int
    healthy: int
    enabled: int
    available: int  # healthy, enabled and not cooling down: what selection can pick from


class Change(StrEnum):
    """What happened to an instance: the ``type`` of a watch event."""

    REGISTERED = "registered"
    UPDATED = "updated"
    READY = "ready"  # a worker that registered ``ready: false`` says it is ready
    STARTING = "starting"  # a ready worker says it is not (loading another model)
    UNHEALTHY = "unhealthy"
    HEALTHY = "healthy"
    ENABLED = "enabled"
    DISABLED = "disabled"
    COOLDOWN = "cooldown"  # out of selection for a while: failing, or busy (``state_reason`` says)
    TRIAL = "trial"  # its cooldown is over: on trial, a few requests until a router reports
    RESTORED = "restored"
    DEREGISTERED = "deregistered"  # marked unhealthy by its worker or an operator, and kept
    EVICTED = "evicted"  # deleted by the checker after staying unhealthy past --evict-after
    PURGED = "purged"  # deleted by an operator (DELETE ... purge=true)


# -- the wire format -----------------------------------------------------------

_FIELDS = dataclasses.fields(ModelInstance)
_HINTS = typing.get_type_hints(ModelInstance)
#: Fields that travel as RFC 3339 text, derived from the annotations.
_MOMENTS = frozenset(
    f.name for f in _FIELDS if datetime in (_HINTS[f.name], *typing.get_args(_HINTS[f.name]))
)
_NAMES = frozenset(f.name for f in _FIELDS)


def to_wire(instance: ModelInstance) -> dict[str, Any]:
    """What a client sends for an instance: every field the client owns."""
    return {f.name: getattr(instance, f.name) for f in _FIELDS if f.name not in SERVER_MANAGED_FIELDS}


def from_wire(value: dict[str, Any]) -> ModelInstance:
    """A record as the registry sent it (server-managed fields included).

    Unknown keys are ignored, so a client keeps working against a newer
    registry; timestamps are parsed back to timezone-aware datetimes. An
    answer that is not a record (a proxy's, say) raises ``RegistryUnavailable``.
    """
    if not isinstance(value, dict):
        raise RegistryUnavailable(f"the registry answered {type(value).__name__} where an instance belongs")
    fields = {k: v for k, v in value.items() if k in _NAMES}
    try:
        for name in _MOMENTS & fields.keys():
            if fields[name] is not None:
                fields[name] = datetime.fromisoformat(fields[name])
        record = ModelInstance(**fields)
    except (TypeError, ValueError) as exc:
        raise RegistryUnavailable(f"the registry answered something that is not an instance: {exc}") from None
    if type(record.weight) is int:
        record.weight = float(record.weight)
    return record


def with_probes(
    instance: ModelInstance,
    check: Mapping[str, Any] | str | None = None,
    metrics: Mapping[str, Any] | str | None = None,
) -> ModelInstance:
    """``instance`` with a ``check`` and ``metrics`` to register it with, when given: a
    mapping, or a path (``"/health"``, ``"/metrics"``) for the defaults."""
    if check is None and metrics is None:
        return instance
    changes: dict[str, Any] = {}
    if check is not None:
        changes["check"] = {"http": check} if isinstance(check, str) else dict(check)
    if metrics is not None:
        changes["metrics"] = {"url": metrics} if isinstance(metrics, str) else dict(metrics)
    return dataclasses.replace(instance, **changes)


def summary_from_wire(value: dict[str, Any]) -> ModelSummary:
    """One entry of ``GET /api/v1/models``'s ``models``."""
    return ModelSummary(**{f.name: value[f.name] for f in dataclasses.fields(ModelSummary)})


def check(instance: ModelInstance) -> ModelInstance:
    """``instance`` if a registry could accept it, as far as a client can tell
    (types and ranges of the identity and weight); ``InvalidRequest`` naming
    the field otherwise. The registry applies the full rules itself."""
    problems = []
    name, host, port, weight = instance.model_name, instance.host, instance.port, instance.weight
    if not isinstance(name, str) or not 1 <= len(name) <= 256:
        problems.append(("model_name", "must be a string of 1 to 256 characters"))
    if not isinstance(host, str) or not 1 <= len(host) <= 255:
        problems.append(("host", "must be a hostname, an IPv4 address or an IPv6 address"))
    if type(port) is not int or not 1 <= port <= 65535:
        problems.append(("port", f"must be an integer from 1 to 65535, got {port!r}"))
    if type(weight) not in (int, float) or not math.isfinite(weight) or weight < 0:
        problems.append(("weight", f"must be a finite number of at least 0, got {weight!r}"))
    if not isinstance(instance.metadata, dict):
        problems.append(("metadata", "must be an object"))
    if problems:
        field_name, message = problems[0]
        detail = "; ".join(f"{f}: {m}" for f, m in problems)
        raise InvalidRequest(422, "invalid_input", detail, field_name)
    return instance
