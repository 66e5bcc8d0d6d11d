"""A lifecycle for LLM workers: ``ready`` (false while a worker loads its model)
and its ``startup_grace``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa

from alembic import op
from model_registry.storage.schema import ExactFloat

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Added columns only: ready with a server default (every existing instance is
    # ready), so no table rebuild on SQLite and no rewrite on PostgreSQL (11+).
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("ready", sa.Boolean, nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("startup_grace", ExactFloat, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("startup_grace")
        batch.drop_column("ready")
