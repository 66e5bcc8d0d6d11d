"""``model-registry``: the command line. It parses settings and hands them on.

Every ``serve`` flag defaults to its ``REGISTRY_*`` environment variable, then
to the default in ``registry.settings.Settings``; ``--help`` shows both.
Failures a user can fix end in one line on stderr naming the cause and the fix,
and a non-zero exit: 2 for bad configuration, 1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import types
import typing
from collections.abc import Sequence

from pydantic import ValidationError

from model_registry.settings import DERIVED, Settings, backends_of
from model_registry.storage import InvalidStorageURL, StorageUnavailable, open_storage, redact
from model_registry.validation import problems_of
from model_registry_sdk.cli import COMMANDS as CLIENT_COMMANDS
from model_registry_sdk.cli import add_client_commands, run_client_command

from .logs import configure_logging
from .server import StartupError, serve

__all__ = ["main"]

log = logging.getLogger("model-registry")

#: Every setting is a flag of ``serve``, but the admin token: only its file or
#: REGISTRY_ADMIN_TOKEN, since a flag's value shows in every process listing.
_SERVE_FLAGS = tuple(name for name in Settings.model_fields if name != "admin_token")


def _add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    field = Settings.model_fields[name]
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # float | None: a derived default
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:  # a switch: --insecure-no-auth
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            action="store_true",
            default=argparse.SUPPRESS,
            help=f"{field.description} (env REGISTRY_{name.upper()})",
        )
        return
    kind = annotation if annotation in (int, float) else str
    choices = typing.get_args(annotation) or None  # a Literal's values
    default = DERIVED.get(name, field.default)
    parser.add_argument(
        "--" + name.replace("_", "-"),
        dest=name,
        type=kind,
        choices=choices,
        default=argparse.SUPPRESS,
        metavar="{" + ",".join(choices) + "}" if choices else kind.__name__.upper(),
        help=f"{field.description} [{backends_of(name)}] (default: {default}; env REGISTRY_{name.upper()})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-registry",
        description="A registry of the instances of machine-learning models that serve traffic.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="run the registry service")
    for name in _SERVE_FLAGS:
        _add_setting(serve_parser, name)
    migrate_parser = commands.add_parser(
        "migrate", help="create or upgrade the database schema, then exit (serve also does it)"
    )
    for name in ("storage", "db_connect_timeout", "log_level", "log_format"):
        _add_setting(migrate_parser, name)
    add_client_commands(commands)
    return parser


async def _migrate(settings: Settings) -> None:
    storage = open_storage(settings.storage, pool=settings.pool)
    if not storage.durable:
        log.info("nothing to migrate: %s storage has no schema", storage.name)
        return
    async with storage:
        log.info("schema is up to date", extra={"storage": redact(settings.storage)})


def _settings(given: dict[str, object]) -> Settings:
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{field.replace('_', '-')}: {message}" if field != "body" else message
            for field, message in problems_of(exc)
        )
        _fail(f"invalid configuration: {problems}", code=2)
        raise  # unreachable: _fail exits


def main(argv: Sequence[str] | None = None) -> None:
    namespace = _parser().parse_args(argv)
    if namespace.command in CLIENT_COMMANDS:
        configure_logging("warning")
        raise SystemExit(run_client_command(namespace))
    args = vars(namespace)
    command = args.pop("command")
    configure_logging()  # until the settings say how
    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    work = serve(settings) if command == "serve" else _migrate(settings)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(work)
    except (StartupError, InvalidStorageURL) as exc:
        _fail(str(exc), code=2)
    except StorageUnavailable as exc:
        said = f" (the database said: {exc.driver})" if exc.driver else ""
        _fail(
            f"cannot open storage {redact(settings.storage)}: {exc}{said}: check that the database "
            "is reachable and its directory exists and is writable, or pass --storage",
            code=1,
        )
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        _fail("interrupted", code=130)


def _loop_factory() -> typing.Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (``pip install model-registry[fast]``)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _fail(message: str, *, code: int) -> typing.NoReturn:
    log.error(message)
    raise SystemExit(code)
