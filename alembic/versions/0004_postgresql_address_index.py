"""PostgreSQL: index the records by address (host, port).

FastChat's heartbeats name a worker process, not its models, so the registry
finds a worker's records by address (``Storage.at``). SQLite answers that from
its in-memory index and gets no index (see 0003 for why it keeps none).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgresql():
        op.create_index("ix_instances_address", "instances", ["host", "port"])


def downgrade() -> None:
    if _postgresql():
        op.drop_index("ix_instances_address", table_name="instances")
