"""The SQL schema, declared once for every SQL backend and for Alembic.

Column names are the ``ModelInstance`` field names, so a row becomes a record
with ``ModelInstance(**row._mapping)`` and a record becomes a row with
``dataclasses.asdict``: there is no hand-written field-by-field copy to keep in
sync. Migrations in ``alembic/versions`` must produce exactly this schema
(``tests/storage/test_migrations.py`` checks it).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    true,
)
from sqlalchemy.types import TypeDecorator

__all__ = ["EXPIRABLE", "EVICTABLE", "SELECT_ALL", "instances", "metadata", "tokens"]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database.

    SQLite has no time zones: values are stored as naive UTC text (which sorts
    chronologically) and come back marked UTC. PostgreSQL stores
    ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware datetimes")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class ExactFloat(TypeDecorator[float]):
    """A float that comes back as ``float``: SQLite's RETURNING may hand back
    ``1`` for a stored ``1.0``."""

    impl = Float
    cache_ok = True

    def process_result_value(self, value: float | None, dialect) -> float | None:
        return None if value is None else float(value)


metadata = MetaData()

#: How full PostgreSQL fills a page of instances: the rest is room for its rows'
#: next versions, so that a beat's new version fits beside the old (a HOT update
#: needs the same page). Measured: 90 % of beats HOT, WAL 461 -> 129 B a beat.
FILLFACTOR = 70

instances = Table(
    "instances",
    metadata,
    Column("model_name", String(256), primary_key=True),
    Column("host", String(255), primary_key=True),
    Column("port", Integer, primary_key=True),
    Column("weight", ExactFloat, nullable=False),
    Column("check_healthy", Boolean, nullable=False),
    Column("healthy", Boolean, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("prompt_template", Text, nullable=True),
    Column("last_heartbeat", UTCDateTime, nullable=True),
    Column("metadata", JSON, nullable=False),
    Column("registered_at", UTCDateTime, nullable=True),
    Column("unhealthy_since", UTCDateTime, nullable=True),
    Column("queue_length", Integer, nullable=True),
    Column("overrides", JSON, nullable=True),
    Column("cooldown_until", UTCDateTime, nullable=True),
    Column("check", JSON, nullable=True),
    Column("metrics", JSON, nullable=True),
    Column("state_reason", Text, nullable=True),
    Column("waiting", Integer, nullable=True),
    Column("running", Integer, nullable=True),
    Column("kv_cache_usage", ExactFloat, nullable=True),
    Column("load_at", UTCDateTime, nullable=True),
    Column("ready", Boolean, nullable=False, server_default=true()),
    Column("startup_grace", ExactFloat, nullable=True),
    postgresql_with={"fillfactor": FILLFACTOR},
)

#: Every row, in the table's column order (the record's): what a start-up reads
#: through the driver itself, without SQLAlchemy's rows. "check" is an SQL keyword.
SELECT_ALL = "SELECT " + ", ".join(f'"{c.name}"' for c in instances.c) + " FROM instances"

#: API tokens: a digest of each secret, never the secret (see ``model_registry.auth``).
tokens = Table(
    "tokens",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("models", JSON, nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

_c = instances.c
# The checker's two sweeps: what each can touch. Eviction has a partial index
# (a handful of rows); expiry has none, on purpose: an index on the heartbeat
# column would make every beat's update a new version in every index (and so
# never HOT), while the sweep that would use it runs once an interval on one
# replica, and scans the table anyway for its census (migration 0008). Only
# PostgreSQL has these: a SQLite file is the journal of an in-memory index that
# sweeps in memory (migration 0003).
EXPIRABLE = (_c.healthy == true()) & (_c.check_healthy == true())
EVICTABLE = _c.healthy == false()

#: The names of the indexes only PostgreSQL has.
POSTGRESQL_ONLY_INDEXES = ("ix_instances_evictable", "ix_instances_address")
#: Columns a beat writes (those it may change), which no index may cover on
#: PostgreSQL, so that its update is HOT (heap-only: no index entries written).
BEAT_COLUMNS = ("last_heartbeat", "queue_length", "waiting", "running", "kv_cache_usage", "load_at")

Index("ix_instances_evictable", _c.unhealthy_since, postgresql_where=EVICTABLE).ddl_if(dialect="postgresql")
# One worker process's records (``Storage.at``: FastChat's heartbeats name the
# worker, not its models). SQLite answers it from memory (migration 0004).
Index("ix_instances_address", _c.host, _c.port).ddl_if(dialect="postgresql")
