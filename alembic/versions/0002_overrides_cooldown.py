"""Operator overrides (drain, weight, metadata) and failure cooldowns.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa

from alembic import op
from model_registry.storage.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table in place beyond adding columns.
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("overrides", sa.JSON, nullable=True))
        batch.add_column(sa.Column("cooldown_until", UTCDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("cooldown_until")
        batch.drop_column("overrides")
