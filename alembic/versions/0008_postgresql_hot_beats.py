"""PostgreSQL: heartbeats update their rows in place (HOT).

A beat rewrites its instance's heartbeat columns. ``ix_instances_expirable``
indexed one of them, so every beat was a new row version in every index
(PostgreSQL's HOT update needs no indexed column changed, and room on the same
page): 461 bytes of WAL a beat, and indexes that bloat at a fleet's beat rate.
The expiry sweep it served runs once an interval on one replica and scans the
table anyway for its census, so the index goes; pages keep 30 % free for the
rows' next versions (fillfactor 70; new pages only, existing ones as they are
rewritten). Measured by ``benchmarks/fleet.py``: 90 % of beats HOT, 129 bytes
of WAL a beat. SQLite has no such index (0003) nor fillfactor.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa

from alembic import op
from model_registry.storage.schema import FILLFACTOR

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgresql():
        op.drop_index("ix_instances_expirable", table_name="instances")
        op.execute(f"ALTER TABLE instances SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if _postgresql():
        op.execute("ALTER TABLE instances RESET (fillfactor)")
        expirable = (sa.column("healthy") == sa.true()) & (sa.column("check_healthy") == sa.true())
        op.create_index("ix_instances_expirable", "instances", ["last_heartbeat"], postgresql_where=expirable)
