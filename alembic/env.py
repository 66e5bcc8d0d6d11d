"""Alembic environment for model-registry.

Two ways in: the registry passes its own connection through
``config.attributes["connection"]`` (see ``storage/migrations.py``); the
``alembic`` command line builds an engine from ``sqlalchemy.url`` in
alembic.ini or from ``REGISTRY_STORAGE``.
"""

import asyncio
import os

from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from model_registry.storage.schema import metadata

config = context.config


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `model-registry migrate`")

shared = config.attributes.get("connection")
if shared is not None:
    run_migrations(shared)
else:
    url = os.environ.get("REGISTRY_STORAGE") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set REGISTRY_STORAGE or sqlalchemy.url to the database to migrate")
    asyncio.run(run_with_own_engine(url))
