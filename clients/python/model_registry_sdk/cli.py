"""The client's command line: subcommands that talk to a running registry through the sync client:
``list``, ``models``, ``register``, ``deregister``, ``heartbeat``, ``select``,
the operator's ``drain``, ``undrain`` and ``set-weight``, which pin their
change over the worker's re-registrations, and the admin's ``token create``,
``token list`` and ``token revoke``. The caller's token comes from
``$REGISTRY_TOKEN``.

Output is a readable table, or JSON with ``--json`` (for scripts). A registry
that cannot be reached or refuses the request ends in one line on stderr and
exit status 1. ``model-registry-client`` runs them alone (what a worker's
host installs); the server's ``model-registry`` has them too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import orjson

from .errors import RegistryClientError, RegistryUnavailable
from .record import InstanceKey, ModelInstance
from .retry import Retry
from .sync import RegistryClient

__all__ = ["COMMANDS", "add_client_commands", "main", "run_client_command"]

DEFAULT_URL = "http://127.0.0.1:8000"
COMMANDS = (
    "list",
    "models",
    "register",
    "deregister",
    "heartbeat",
    "select",
    "drain",
    "undrain",
    "set-weight",
    "token",
)
#: Commands that print one instance.
_SINGLE = ("select", "register", "deregister", "heartbeat", "drain", "undrain", "set-weight")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. \'{"gpu": "a100"}\'')
    return value


def _identity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_name", help="model name, e.g. meta-llama/Llama-3.1-8B-Instruct")
    parser.add_argument("host", help="worker host")
    parser.add_argument("port", type=int, help="worker port")


def add_client_commands(commands: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("REGISTRY_URL", DEFAULT_URL),
        help="registry URL, or several comma-separated (default: $REGISTRY_URL or %(default)s)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument(
        "--ca-bundle",
        default=os.environ.get("REGISTRY_CA_BUNDLE"),
        help="CA certificates (PEM) to verify an https:// registry with (default: $REGISTRY_CA_BUNDLE)",
    )

    listing = commands.add_parser("list", parents=[common], help="list instances")
    listing.add_argument("--model", dest="model_name", help="only this model")
    listing.add_argument("--healthy-only", action="store_true", help="only healthy instances")
    commands.add_parser("models", parents=[common], help="list models with their counts")

    register = commands.add_parser("register", parents=[common], help="register (or update) an instance")
    _identity(register)
    register.add_argument("--weight", type=float, default=1.0, help="selection weight (default: 1)")
    register.add_argument("--disabled", action="store_true", help="register it out of selection")
    register.add_argument(
        "--no-check-healthy", action="store_true", help="exempt it from the heartbeat timeout"
    )
    register.add_argument("--prompt-template", help="prompt template name")
    register.add_argument("--metadata", type=_json_object, default={}, help="metadata as a JSON object")
    register.add_argument(
        "--check",
        metavar="PATH",
        help="have the registry probe it: a path on it (/health) or a URL of its own host and port",
    )
    register.add_argument("--check-interval", type=float, help="seconds between probes (default: 10)")
    register.add_argument("--check-timeout", type=float, help="seconds a probe may take (default: 2)")
    register.add_argument(
        "--metrics",
        metavar="PATH",
        help="have the registry scrape its engine's Prometheus endpoint (/metrics)",
    )
    register.add_argument("--metrics-interval", type=float, help="seconds between scrapes (default: 10)")

    deregister = commands.add_parser("deregister", parents=[common], help="mark an instance unhealthy")
    _identity(deregister)
    deregister.add_argument("--purge", action="store_true", help="delete it instead")

    heartbeat = commands.add_parser("heartbeat", parents=[common], help="send one heartbeat")
    _identity(heartbeat)
    heartbeat.add_argument("--queue-length", type=int, help="load to report")

    select = commands.add_parser("select", parents=[common], help="pick one healthy instance of a model")
    select.add_argument("model_name")
    select.add_argument(
        "--strategy",
        default="weighted",
        choices=("weighted", "round_robin", "least_load", "power_of_two"),
        help="how to pick (default: weighted)",
    )

    drain = commands.add_parser(
        "drain", parents=[common], help="take an instance out of selection, even if it registers again"
    )
    _identity(drain)
    undrain = commands.add_parser("undrain", parents=[common], help="put a drained instance back in service")
    _identity(undrain)
    weight = commands.add_parser(
        "set-weight", parents=[common], help="pin an instance's selection weight over its registrations"
    )
    _identity(weight)
    weight.add_argument("weight", type=_weight, help="the weight, or 'worker' to let the worker's own apply")
    _add_token_commands(commands, common)


def _add_token_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    token = commands.add_parser(
        "token", help="create, list and revoke API tokens (an admin's; the caller's from $REGISTRY_TOKEN)"
    )
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="create a token and print its secret, once")
    create.add_argument("--name", required=True, help="its name, for logs and revocation")
    create.add_argument("--role", required=True, choices=("worker", "router", "operator", "admin"))
    create.add_argument(
        "--models", help="for a worker: the model names it may act on, globs, comma-separated"
    )
    create.add_argument("--expires", help="a lifetime like 30d, 12h or 90m (default: never)")
    actions.add_parser("list", parents=[common], help="list tokens (names, roles, scopes; never secrets)")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a token: refused within 2 s")
    revoke.add_argument("name")


def _token_command(client: RegistryClient, args: argparse.Namespace) -> int:
    action = args.token_command
    if action == "create":
        models = [p.strip() for p in args.models.split(",") if p.strip()] if args.models else None
        made = client.create_token(args.name, args.role, models, args.expires)
        # The secret alone on stdout (for $(...)), or everything as JSON.
        sys.stdout.write((orjson.dumps(made).decode() if args.json else made["token"]) + "\n")
    elif action == "list":
        tokens = client.list_tokens()
        if args.json:
            sys.stdout.write(orjson.dumps(tokens).decode() + "\n")
        else:
            rows = [
                [
                    t["name"],
                    t["role"],
                    ",".join(t["models"] or ["*"]),
                    t["expires_at"] or "never",
                    "yes" if t["expired"] else "no",
                ]
                for t in tokens
            ]
            _table(["NAME", "ROLE", "MODELS", "EXPIRES", "EXPIRED"], rows)
    else:
        client.revoke_token(args.name)
        if args.json:
            sys.stdout.write(orjson.dumps({"revoked": args.name}).decode() + "\n")
    return 0


def _weight(text: str) -> float | None:
    if text == "worker":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def _call(client: RegistryClient, args: argparse.Namespace) -> Any:
    command = args.command
    if command in ("drain", "undrain", "set-weight"):
        key = InstanceKey(args.model_name, args.host, args.port)
        if command == "drain":
            return [client.drain(key)]
        if command == "undrain":
            return [client.undrain(key)]
        return [client.set_weight(key, args.weight)]
    if command == "list":
        return client.list_instances(args.model_name, args.healthy_only)
    if command == "models":
        return client.list_models()
    if command == "select":
        return [client.select(args.model_name, args.strategy)]
    if command == "deregister":
        key = InstanceKey(args.model_name, args.host, args.port)
        return [client.deregister(key, purge=args.purge)]
    instance = ModelInstance(args.model_name, args.host, args.port)
    if command == "heartbeat":
        return [client.heartbeat(instance, args.queue_length)]
    instance = dataclasses.replace(
        instance,
        weight=args.weight,
        enabled=not args.disabled,
        check_healthy=not args.no_check_healthy,
        prompt_template=args.prompt_template,
        metadata=args.metadata,
    )
    check = _spec("http", args.check, interval=args.check_interval, timeout=args.check_timeout)
    metrics = _spec("url", args.metrics, interval=args.metrics_interval)
    return [client.register(instance, check=check, metrics=metrics)]


def _spec(target_name: str, target: str | None, **options: float | None) -> dict[str, Any] | None:
    """A ``check`` or ``metrics`` object from the flags; the registry's defaults for the rest."""
    if target is None:
        return None
    return {target_name: target, **{k: v for k, v in options.items() if v is not None}}


def run_client_command(args: argparse.Namespace) -> int:
    try:
        with RegistryClient(args.url, retry=Retry(attempts=3, deadline=5.0), ca=args.ca_bundle) as client:
            if args.command == "token":
                return _token_command(client, args)
            result = _call(client, args)
    except RegistryUnavailable as exc:
        return _error(args, f"cannot reach the registry: {exc}; start it, or pass --url / set REGISTRY_URL")
    except RegistryClientError as exc:
        return _error(args, f"the registry refused: {exc.detail} ({exc.status} {exc.code})")
    except ValueError as exc:  # a malformed --url
        return _error(args, str(exc))
    if args.json:
        single = args.command in _SINGLE
        sys.stdout.write(orjson.dumps(result[0] if single else result, option=orjson.OPT_UTC_Z).decode())
        sys.stdout.write("\n")
    elif args.command == "models":
        _table(["MODEL", "TOTAL", "HEALTHY", "ENABLED", "AVAILABLE"], _model_rows(result))
    else:
        _table(["MODEL", "ADDRESS", "HEALTHY", "ENABLED", "WEIGHT", "QUEUE", "LAST HEARTBEAT"], _rows(result))
    return 0


def _error(args: argparse.Namespace, message: str) -> int:
    sys.stderr.write(f"{getattr(args, 'prog', 'model-registry')}: {message}\n")
    return 1


def main(argv: Sequence[str] | None = None) -> None:
    """``model-registry-client COMMAND ...``."""
    parser = argparse.ArgumentParser(
        prog="model-registry-client", description="Talk to a running model-registry."
    )
    add_client_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    parser.set_defaults(prog=parser.prog)
    raise SystemExit(run_client_command(parser.parse_args(argv)))


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = max(0, int((datetime.now(timezone.utc) - moment).total_seconds()))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def _rows(instances: Sequence[ModelInstance]) -> list[list[str]]:
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    return [
        [
            i.model_name,
            i.key.address,
            yes(i.healthy),
            yes(i.enabled),
            f"{i.weight:g}",
            "-" if i.queue_length is None else str(i.queue_length),
            _ago(i.last_heartbeat),
        ]
        for i in instances
    ]


def _model_rows(models: Sequence[Any]) -> list[list[str]]:
    return [[m.model_name, str(m.total), str(m.healthy), str(m.enabled), str(m.available)] for m in models]


def _table(header: list[str], rows: list[list[str]]) -> None:
    write = sys.stdout.write
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    if not rows:
        write("(none)\n")
