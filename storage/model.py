"""The record every storage backend stores and returns.

It lives here, under the storage contract, because dependencies point one way
(``api`` -> ``registry`` -> ``storage``): the contract must be able to name its
record without importing the service layer. ``registry`` re-exports it as the
domain object, so users write ``from registry import ModelInstance``.

The field annotations carry the validation rules (pydantic reads them through
``registry.validation``); constructing a ``ModelInstance`` directly does not
validate, exactly like the DB-GPT dataclass it stands in for.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, NamedTuple

import orjson
from pydantic import AfterValidator, ConfigDict, Field, Strict

__all__ = [
    "NO_METADATA",
    "Census",
    "InstanceKey",
    "ModelInstance",
    "ModelSummary",
    "OVERRIDABLE_FIELDS",
    "SERVER_MANAGED_FIELDS",
    "Snapshot",
    "apply_overrides",
    "merge_overrides",
    "normalize_host",
    "override",
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
QueueLength = Annotated[int, Strict(), Field(ge=0)]


_new_tuple = tuple.__new__


def _refusal(message: str) -> Callable[..., Any]:
    """A method that refuses the change it stands for, with ``message`` (the fix)."""

    def refuse(self: object, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(message)

    return refuse


class _NoMetadata(dict):
    """Empty metadata that refuses changes: one object that every stored record
    without metadata shares, so a change meant for one record must fail loudly
    rather than reach them all. Equal to ``{}``; serialised as ``{}``."""

    _refuse = _refusal(
        "a stored record's metadata is read-only: derive a changed copy with "
        "dataclasses.replace(record, metadata={...})"
    )
    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]


#: The metadata of every stored record that has none (see ``_NoMetadata``).
NO_METADATA: dict[str, Any] = _NoMetadata()


class Snapshot(list):  # type: ignore[type-arg]
    """A read that is handed out again, unchanged, until what it shows changes
    (a model's serving instances, kept by the index).

    Read-only, since every caller gets the same object; with one slot,
    ``memo``, where a reader keeps what it derived from it (the API keeps the
    JSON it wrote, so that it writes each answer once per change, not once
    per read). A change makes a new snapshot, so a memo is never stale.
    """

    __slots__ = ("memo",)

    def __init__(self, records: Iterable[ModelInstance] = ()) -> None:
        super().__init__(records)
        self.memo: Any = None

    _refuse = _refusal("a snapshot is shared and read-only: change a copy, list(snapshot)")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse  # type: ignore[assignment]
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse  # type: ignore[assignment]


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

    Not slotted on purpose: orjson serialises a dataclass with a ``__dict__``
    about three times faster than a slotted one, for some 50 more bytes.
    """

    __pydantic_config__ = ConfigDict(revalidate_instances="always")

    model_name: ModelName
    host: Host
    port: Port
    weight: Weight = 1.0
    check_healthy: Flag = True
    healthy: bool = False
    enabled: Flag = True
    prompt_template: Annotated[str, Strict(), Field(max_length=16 * 1024)] | None = None
    last_heartbeat: datetime | None = None
    metadata: Metadata = field(default_factory=dict)
    registered_at: datetime | None = None
    unhealthy_since: datetime | None = None
    queue_length: QueueLength | None = None
    overrides: dict[str, Any] | None = None
    cooldown_until: datetime | None = None

    @property
    def key(self) -> InstanceKey:
        # tuple.__new__: the NamedTuple without its Python-level __new__ (a hot path)
        return _new_tuple(InstanceKey, (self.model_name, self.host, self.port))

    def in_cooldown(self, now: datetime) -> bool:
        """Whether routers' failure reports keep it out of selection at ``now``."""
        return self.cooldown_until is not None and self.cooldown_until > now


SERVER_MANAGED_FIELDS = frozenset(
    {
        "healthy",
        "last_heartbeat",
        "registered_at",
        "unhealthy_since",
        "queue_length",
        "overrides",
        "cooldown_until",
    }
)

#: The fields an operator may override (``PATCH``), and so pin.
OVERRIDABLE_FIELDS = ("enabled", "weight", "metadata")


def merge_overrides(current: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any] | None:
    """``current`` overrides with ``changes`` applied: a value pins the field,
    ``None`` releases it; ``metadata`` pins (or, with ``None`` values,
    releases) individual keys. ``None`` when nothing is left pinned."""
    merged = dict(current or {})
    for name, value in changes.items():
        if name == "metadata" and value is not None:
            keys = {**merged.get("metadata", {}), **value}
            keys = {k: v for k, v in keys.items() if v is not None}
            if keys:
                merged["metadata"] = keys
            else:
                merged.pop("metadata", None)
        elif value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged or None


def override(record: ModelInstance, changes: dict[str, Any]) -> None:
    """Apply an operator's ``changes`` to ``record`` in place (see ``merge_overrides``).

    Releasing ``enabled`` enables the instance (an operator who stops draining
    it puts it back in service); releasing a ``metadata`` key removes it;
    releasing ``weight`` keeps the current weight until the worker registers again.
    """
    if "enabled" in changes and changes["enabled"] is None:
        record.enabled = True
    released = [k for k, v in (changes.get("metadata") or {}).items() if v is None]
    if released:
        record.metadata = {k: v for k, v in record.metadata.items() if k not in released}
    apply_overrides(record, merge_overrides(record.overrides, changes))


def apply_overrides(record: ModelInstance, overrides: dict[str, Any] | None) -> None:
    """Set ``record``'s overridable fields to the pinned values, in place."""
    record.overrides = overrides
    if not overrides:
        return
    if "enabled" in overrides:
        record.enabled = overrides["enabled"]
    if "weight" in overrides:
        record.weight = overrides["weight"]
    if "metadata" in overrides:
        record.metadata = {**record.metadata, **overrides["metadata"]}


class Census(NamedTuple):
    """How many instances a sweep would act on, counted before it acts."""

    checked: int  # healthy instances the checker watches (check_healthy)
    silent: int  # of those, last heard before the expiry cutoff
    total: int  # every record
    evictable: int  # unhealthy since before the eviction cutoff


@dataclass(slots=True, frozen=True)
class ModelSummary:
    """Counts of one model's instances, as ``GET /api/v1/models`` reports them."""

    model_name: str
    total: int
    healthy: int
    enabled: int
    available: int  # healthy and enabled: what selection can pick from
