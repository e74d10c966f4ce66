"""runs.host and runs.pid: where a running run's process is, so a killed run shows as stopped.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}
    with op.batch_alter_table("runs") as batch:
        if "host" not in have:
            batch.add_column(sa.Column("host", sa.String(255)))
        if "pid" not in have:
            batch.add_column(sa.Column("pid", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("pid")
        batch.drop_column("host")
