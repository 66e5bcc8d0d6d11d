"""SQLite: drop the checker's partial indexes.

A SQLite file is the journal of an in-memory index that answers every query,
sweeps included, so nothing reads these indexes there; yet every heartbeat
written behind had to move its row in ``ix_instances_expirable``, which made
each flush take about twice as long. PostgreSQL, where the sweeps run in SQL,
keeps them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import sqlalchemy as sa

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    if _sqlite():
        op.drop_index("ix_instances_expirable", table_name="instances")
        op.drop_index("ix_instances_evictable", table_name="instances")


def downgrade() -> None:
    if _sqlite():
        healthy, check_healthy = sa.column("healthy"), sa.column("check_healthy")
        expirable = (healthy == sa.true()) & (check_healthy == sa.true())
        op.create_index("ix_instances_expirable", "instances", ["last_heartbeat"], sqlite_where=expirable)
        op.create_index(
            "ix_instances_evictable", "instances", ["unhealthy_since"], sqlite_where=healthy == sa.false()
        )
