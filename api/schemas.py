"""The JSON schemas of what the API reads and answers, for ``/openapi.json``.

Derived, not written, where the code has a model: the record's (``model_registry_sdk.record``)
and the pydantic models input is validated with (``model_registry.validation``,
``model_registry.fastchat``, ``api.tokens``), so that a rule changed there changes the
document. The rules that are checks rather than types (a host, a model name, metadata's size)
are added here from the same constants, and a test holds each to its check.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from model_registry import validation
from model_registry.fastchat import HeartBeat, RegisterWorker, WorkerAddressQuery
from model_registry.selection import STRATEGIES
from model_registry_sdk.record import SERVER_MANAGED_FIELDS, Change, ModelSummary

from . import dbgpt, tokens

__all__ = ["HOST_PATTERN", "MODEL_NAME_PATTERN", "components", "identity_rules", "plain", "ref", "strings"]

_REF = "#/components/schemas/{model}"


def ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


# -- helpers --------------------------------------------------------------------


def plain(schema: Any) -> Any:
    """``schema`` without pydantic's titles (a property may still be named ``title``)."""
    if isinstance(schema, dict):
        return {k: plain(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [plain(v) for v in schema]
    return schema


def _json_schema(adapter: TypeAdapter[Any], defs: dict[str, Any], mode: str = "validation") -> dict[str, Any]:
    schema = adapter.json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
    for name, sub in schema.pop("$defs", {}).items():
        defs[name] = plain(sub)
    return plain(schema)


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An answer's object: every property always there, no other."""
    return {**schema, "required": list(schema["properties"]), "additionalProperties": False}


def _obj(**properties: dict[str, Any]) -> dict[str, Any]:
    return _strict({"type": "object", "properties": properties})


_INT = {"type": "integer", "minimum": 0}
_NUMBER = {"type": "number", "minimum": 0}
_MOMENT = {"type": "string", "format": "date-time"}
_MOMENT_OR_NULL = {"anyOf": [_MOMENT, {"type": "null"}]}


def strings() -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string"}}


# The identity's rules that are checks rather than types, as patterns: what a model name
# may not contain (``validation._CONTROL_CHARS``), and what ``validation.normalize_host``
# accepts: a name of RFC 1123 labels (and "_"), or an address, IPv6 ones bracketed or not
# (a test holds the host pattern to normalize_host).
MODEL_NAME_PATTERN = f"^[^{validation._CONTROL_CHARS.pattern[1:-1]}]*$"
_LABEL = "[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_IPV6 = "[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%.+)?"
HOST_PATTERN = rf"^(?:{_LABEL}(?:\.{_LABEL})*\.?|{_IPV6}|\[(?:{_IPV6}|[0-9.]+)\])$"


def identity_rules(properties: dict[str, Any]) -> None:
    """Add the patterns above to the model name and the host among ``properties``, in place."""
    for name, pattern in (("model_name", MODEL_NAME_PATTERN), ("host", HOST_PATTERN)):
        if name in properties:
            properties[name]["pattern"] = pattern


# -- the schemas ---------------------------------------------------------------------


def _metadata_rules(schema: dict[str, Any]) -> None:
    """The metadata rules that are checks rather than types (``validation._check_metadata``)."""
    meta = schema["properties"]["metadata"]
    for arm in meta.get("anyOf", [meta]):
        if arm.get("type") == "object":
            arm["maxProperties"] = validation.MAX_METADATA_KEYS
    meta["description"] = (
        f"at most {validation.MAX_METADATA_KEYS} keys and {validation.MAX_METADATA_BYTES} bytes of JSON"
    )


def _worker(schema: dict[str, Any]) -> dict[str, Any]:
    """A FastChat body: its worker's name is a URL (``model_registry.fastchat.worker_address``)."""
    schema["properties"]["worker_name"]["description"] = (
        "the worker's URL, http://HOST:PORT (a path may follow; no credentials, query or fragment)"
    )
    return schema


def components() -> dict[str, Any]:
    """Every schema the operations refer to, by name."""
    defs: dict[str, Any] = {}
    record = _strict(_json_schema(validation._INSTANCE, defs, mode="serialization"))
    record["description"] = "An instance as the registry stores it (see the README's Fields)."
    registration = _json_schema(validation._INSTANCE, defs)
    identity_rules(record["properties"])
    identity_rules(registration["properties"])
    for name in SERVER_MANAGED_FIELDS:
        registration["properties"].pop(name, None)
    registration.update(
        additionalProperties=True,
        description="What a worker says of itself. Unknown fields and the registry's own are ignored.",
    )
    registration["properties"]["model_name"]["description"] = "no control characters"
    registration["properties"]["host"]["description"] = "a hostname, an IPv4 or an IPv6 address"
    _metadata_rules(registration)
    # A known instance's beat reads only its identity and its load (``validation.known_beat``):
    # the rest of the body is read, as a Registration, only when the beat registers it.
    identity = registration["required"]
    heartbeat = {
        "type": "object",
        "properties": {
            **{name: registration["properties"][name] for name in identity},
            "queue_length": _json_schema(TypeAdapter(validation.RULES["queue_length"]), defs),
            **_json_schema(validation._LOAD, defs)["properties"],
        },
        "required": identity,
        "additionalProperties": True,
        "description": (
            "The instance's identity and its load (`queue_length`; an engine's `waiting`, "
            "`running` and `kv_cache_usage`, 0 to 1). The rest of a Registration "
            "may come along: it is read, with a Registration's rules, only when the beat registers "
            "an instance the registry does not know."
        ),
    }
    report = _json_schema(validation._REPORT, defs)
    identity_rules(report["properties"])
    override = _json_schema(validation._OVERRIDE, defs)
    override.update(minProperties=1)
    _metadata_rules(override)
    guard = _obj(held=_INT, marks_anyway_in_s=_NUMBER)
    event = {"type": "string", "enum": [c.value for c in Change]}
    new_token = _json_schema(TypeAdapter(tokens._NewToken), defs)
    new_token["properties"]["expires"]["description"] = "a duration: 30d, 12h, 90m, 3600s or 2w"
    new_token["properties"]["models"]["description"] = "the model-name globs a worker token may act on"
    token = _obj(
        name={"type": "string"},
        role=ref("Role"),
        models={"anyOf": [strings(), {"type": "null"}]},
        expires_at=_MOMENT_OR_NULL,
        created_at=_MOMENT,
        expired={"type": "boolean"},
    )
    schemas = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {"type": "string", "description": "a code (see the README's Errors)"},
                "detail": {"type": "string", "description": "what happened and what to do, in a sentence"},
                "field": {"type": "string", "description": "the input field at fault"},
                "retry_after": {
                    "type": "number",
                    "description": "all_cooling_down: seconds until the first cooldown ends",
                },
            },
            "required": ["error", "detail"],
            "additionalProperties": False,
        },
        "Instance": record,
        "Selected": {
            **record,
            "properties": {
                **record["properties"],
                "reason": {
                    **_obj(
                        strategy={"enum": [*STRATEGIES, "least_bad"]},
                        load={
                            "anyOf": [{"type": "object", "additionalProperties": True}, {"type": "null"}],
                            "description": "the load the strategy read: the engine's, or the queue length",
                        },
                        fresh={
                            "type": "boolean",
                            "description": "whether that load is recent enough to read",
                        },
                        trial={"type": "boolean", "description": "picked for one of its trial requests"},
                        cooldown_until={
                            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}],
                            "description": "least_bad: when the cooldown of the instance picked ends",
                        },
                    ),
                    "required": ["strategy"],
                },
                "degraded": {
                    "type": "boolean",
                    "description": "picked by `fallback=least_bad` although it is cooling down",
                },
            },
            "required": [*record["required"], "reason", "degraded"],
            "description": "The instance picked, and why (`reason`), for a router's log.",
        },
        "Registration": registration,
        "Heartbeat": heartbeat,
        "Heartbeats": {
            "type": "object",
            "properties": {
                "beats": {
                    "type": "array",
                    "maxItems": 1000,
                    "items": {"description": "a Heartbeat; anything else is refused on its own (its result)"},
                }
            },
            "required": ["beats"],
            "additionalProperties": True,
            "description": "At most 1,000 heartbeats (in at most 1 MiB), each as /api/v1/heartbeat takes it.",
        },
        "Registrations": {
            "type": "object",
            "properties": {
                "instances": {
                    "type": "array",
                    "maxItems": 1000,
                    "items": {
                        "description": "a Registration; anything else is refused on its own (its result)"
                    },
                }
            },
            "required": ["instances"],
            "additionalProperties": True,
            "description": "At most 1,000 registrations (in at most 1 MiB), written at once.",
        },
        "RegistrationResults": _obj(
            results={
                "type": "array",
                "description": "one per instance, in their order",
                "items": {
                    "type": "object",
                    "properties": {
                        "result": {"enum": ["created", "updated", "refused"]},
                        "detail": {"type": "string", "description": "why an instance was refused"},
                    },
                    "required": ["result"],
                    "additionalProperties": False,
                },
            }
        ),
        "HeartbeatResults": _obj(
            results={
                "type": "array",
                "description": "one per beat, in their order",
                "items": {
                    "type": "object",
                    "properties": {
                        "result": {"enum": ["known", "registered", "refused"]},
                        "detail": {"type": "string", "description": "why a beat was refused"},
                    },
                    "required": ["result"],
                    "additionalProperties": False,
                },
            }
        ),
        "Override": override,
        "Report": report,
        "Reported": _obj(
            instance=ref("Instance"),
            failures=_INT,
            outcome={
                "enum": ["success", "failure", "busy", "ignored"],
                "description": "what the report meant (see the README's failure classification)",
            },
            why={"type": "string", "description": "the report in a few words, as reasons quote it"},
        ),
        "InstanceList": _obj(instances={"type": "array", "items": ref("Instance")}, count=_INT),
        "ModelSummary": _strict(_json_schema(TypeAdapter(ModelSummary), defs, mode="serialization")),
        "SelfPreservation": {
            "type": "object",
            "properties": {"active": {"type": "boolean"}, "expiry": guard, "eviction": guard},
            "required": ["active"],
            "additionalProperties": False,
        },
        "Models": _obj(
            models={"type": "array", "items": ref("ModelSummary")}, self_preservation=ref("SelfPreservation")
        ),
        "Health": _obj(
            status={"const": "ok"},
            storage={"type": "string"},
            durable={"type": "boolean"},
            checker_running={"type": "boolean"},
            grace_remaining_s=_NUMBER,
            clock={"enum": ["database", "local"]},
            heartbeat_interval_s=_NUMBER,
            heartbeat_timeout_s=_NUMBER,
            self_preservation=ref("SelfPreservation"),
            watchers=_INT,
            long_polls=_INT,
            connections=_obj(
                open=_INT,
                max={"anyOf": [_INT, {"type": "null"}]},
                refused_per_client=_INT,
                refused_at_limit=_INT,
            ),
        ),
        "WatchMessage": {
            "description": "One message of GET /api/v1/watch: a snapshot (or resync), or an event.",
            "oneOf": [
                _obj(
                    type={"enum": ["snapshot", "resync"]},
                    revision=_INT,
                    instances={"type": "array", "items": ref("Instance")},
                ),
                _obj(type=event, revision=_INT, instance=ref("Instance")),
            ],
        },
        "NewToken": new_token,
        "Token": token,
        "CreatedToken": _strict(
            {**token, "properties": {"token": {"type": "string"}, **token["properties"]}}
        ),
        "TokenList": _obj(tokens={"type": "array", "items": ref("Token")}),
        "Revoked": _obj(revoked={"type": "string"}),
        "DBGPTInstance": _obj(
            **{name: record["properties"][name] for name in dbgpt.FIELDS},
            remove_from_registry={"const": False},
        ),
        "RegisterWorker": _worker(_json_schema(TypeAdapter(RegisterWorker), defs)),
        "WorkerRegistered": {
            **_obj(registered={"type": "boolean"}, models=strings(), detail={"type": "string"}),
            "required": ["registered", "models"],
        },
        "HeartBeat": _worker(_json_schema(TypeAdapter(HeartBeat), defs)),
        "WorkerExists": _obj(exist={"type": "boolean"}),
        "WorkerAddressQuery": _json_schema(TypeAdapter(WorkerAddressQuery), defs),
        "WorkerAddress": _obj(address={"type": "string"}),
        "RegistryStatus": _obj(model_names=strings(), speed=_NUMBER, queue_length=_INT),
    }
    return {**defs, **schemas}
