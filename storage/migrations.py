"""Alembic migrations: where they live and how to apply them.

The revision scripts are in the repository's top-level ``alembic/`` folder.
``upgrade_connection`` runs on a connection the caller already holds: ``SQLStorage``
does this whenever it opens (``serve`` and ``migrate`` alike). It is idempotent:
an up-to-date schema is left alone, and recognised without loading Alembic at
all (importing it and reading its scripts took about half a second of every start).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["HEAD", "SCRIPT_LOCATION", "alembic_config", "current_revision", "upgrade_connection"]

SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "alembic"

#: The newest revision in ``alembic/versions`` (a test keeps the two in step).
HEAD = "0003"


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    if not (SCRIPT_LOCATION / "env.py").is_file():
        raise FileNotFoundError(
            f"migration scripts not found in {SCRIPT_LOCATION}: install model-registry from its "
            "source tree (pip install -e .) so that alembic/ sits beside storage/"
        )
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
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
