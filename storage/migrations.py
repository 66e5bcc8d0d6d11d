"""Alembic migrations: where they live and how to apply them.

The revision scripts are in the repository's top-level ``alembic/`` folder.
``upgrade_connection`` runs on a connection the caller already holds (the
server does this at start-up, inside ``SQLStorage``); ``upgrade`` is what
``model-registry migrate`` runs. Both are idempotent: an up-to-date schema is
left alone.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy.engine import Connection

from alembic import command

__all__ = ["SCRIPT_LOCATION", "alembic_config", "current_revision", "upgrade_connection"]

SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "alembic"


def alembic_config(connection: Connection | None = None) -> Config:
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
    command.upgrade(alembic_config(connection), "head")


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()
