"""The instances table and the checker's two partial indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa

from alembic import op
from model_registry.storage.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("model_name", sa.String(256), primary_key=True),
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("port", sa.Integer, primary_key=True),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("check_healthy", sa.Boolean, nullable=False),
        sa.Column("healthy", sa.Boolean, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("prompt_template", sa.Text, nullable=True),
        sa.Column("last_heartbeat", UTCDateTime, nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("registered_at", UTCDateTime, nullable=True),
        sa.Column("unhealthy_since", UTCDateTime, nullable=True),
        sa.Column("queue_length", sa.Integer, nullable=True),
    )
    # Rendered by the dialect exactly as the checker's queries render them, so
    # SQLite's planner sees that the queries match these index predicates.
    healthy, check_healthy = sa.column("healthy"), sa.column("check_healthy")
    expirable = (healthy == sa.true()) & (check_healthy == sa.true())
    evictable = healthy == sa.false()
    op.create_index(
        "ix_instances_expirable",
        "instances",
        ["last_heartbeat"],
        sqlite_where=expirable,
        postgresql_where=expirable,
    )
    op.create_index(
        "ix_instances_evictable",
        "instances",
        ["unhealthy_since"],
        sqlite_where=evictable,
        postgresql_where=evictable,
    )


def downgrade() -> None:
    op.drop_index("ix_instances_evictable", table_name="instances")
    op.drop_index("ix_instances_expirable", table_name="instances")
    op.drop_table("instances")
