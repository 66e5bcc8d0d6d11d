"""Alembic migrations: where they live and how to apply them.

The revision scripts are in the repository's top-level ``alembic/`` folder,
installed as ``model_registry/migrations`` (a package path, found through the
import system: in a wheel, and in an editable install through the
``registry/migrations`` link to ``alembic/``).
``upgrade_connection`` runs on a connection the caller already holds: ``SQLStorage``
does this whenever it opens (``serve`` and ``migrate`` alike). It is idempotent:
an up-to-date schema is left alone, and recognised without loading Alembic at
all (importing it and reading its scripts took about half a second of every start).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["HEAD", "PACKAGE", "alembic_config", "current_revision", "script_location", "upgrade_connection"]

#: Where the revision scripts are installed.
PACKAGE = "model_registry.migrations"

#: The newest revision in ``alembic/versions`` (a test keeps the two in step).
HEAD = "0008"


def script_location() -> Path:
    """The folder of the installed migration scripts (``env.py``, ``versions/``)."""
    spec = importlib.util.find_spec(PACKAGE)
    for entry in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(entry) / "env.py").is_file():
            return Path(entry)
    raise FileNotFoundError(
        f"migration scripts not found in the installed package ({PACKAGE.replace('.', '/')}/env.py is "
        "missing): reinstall model-registry (pip install --force-reinstall model-registry)"
    )


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location()))
    if connection is not None:
        # alembic/env.py looks here first: migrate on the caller's connection.
        config.attributes["connection"] = connection
    return config


def upgrade_connection(connection: Connection) -> None:
    """Bring the schema to the newest revision (sync; use with ``run_sync``)."""
    if current_revision(connection) == HEAD:
        return
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


def current_revision(connection: Connection) -> str | None:
    """The schema's revision, read from Alembic's table (``None`` for an empty database)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
