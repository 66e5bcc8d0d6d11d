"""Active health checks, engine metrics, and the engine's load: what the registry
probes and scrapes for an instance, why it last turned unhealthy, and the load
it last measured.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa

from alembic import op
from model_registry.storage.schema import ExactFloat, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ADDED = ("check", "metrics", "state_reason", "waiting", "running", "kv_cache_usage", "load_at")


def upgrade() -> None:
    # Added columns only, all nullable: no table rebuild on SQLite, no rewrite on PostgreSQL.
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("check", sa.JSON, nullable=True))
        batch.add_column(sa.Column("metrics", sa.JSON, nullable=True))
        batch.add_column(sa.Column("state_reason", sa.Text, nullable=True))
        batch.add_column(sa.Column("waiting", sa.Integer, nullable=True))
        batch.add_column(sa.Column("running", sa.Integer, nullable=True))
        batch.add_column(sa.Column("kv_cache_usage", ExactFloat, nullable=True))
        batch.add_column(sa.Column("load_at", UTCDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        for name in reversed(_ADDED):
            batch.drop_column(name)
