"""Baseline: runs, model versions, aliases and feedback as modelfoundry 0.1 made them.

Registries from before migrations were made by `create_all` and grew columns one by one, so this
step creates only what is missing: on an empty database everything, on an older registry the
tables and columns it lacks. Its rows are never touched.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def tables() -> list[sa.Table]:
    meta = sa.MetaData()
    return [
        sa.Table(
            "runs",
            meta,
            sa.Column("id", sa.String(80), primary_key=True),
            sa.Column("name", sa.String(200)),
            sa.Column("task", sa.String(60), nullable=False),
            sa.Column("model", sa.String(60), nullable=False),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("config", sa.JSON, nullable=False),
            sa.Column("metrics", sa.JSON),
            sa.Column("timings", sa.JSON),
            sa.Column("error", sa.Text),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("finished_at", sa.DateTime(timezone=True)),
            sa.Column("train_seconds", sa.Float),
        ),
        sa.Table(
            "model_versions",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(80), nullable=False, index=True),
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("variant", sa.String(40), nullable=False),
            sa.Column("task", sa.String(60), nullable=False),
            sa.Column("labels", sa.JSON, nullable=False),
            sa.Column("metrics", sa.JSON),
            sa.Column("parent", sa.Integer),
            sa.Column("lineage", sa.Integer),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        ),
        sa.Table(
            "model_aliases",
            meta,
            sa.Column("name", sa.String(80), primary_key=True),
            sa.Column("version_id", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        ),
        sa.Table(
            "feedback",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("request_id", sa.String(64), index=True),
            sa.Column("model_version", sa.Integer, index=True),
            sa.Column("run_id", sa.String(80), nullable=False),
            sa.Column("kind", sa.String(10), nullable=False),
            sa.Column("input", sa.JSON, nullable=False),
            sa.Column("predicted", sa.String(200)),
            sa.Column("label", sa.String(200), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        ),
    ]


def upgrade() -> None:
    connection = op.get_bind()
    existing = sa.inspect(connection)
    present = set(existing.get_table_names())
    for table in tables():
        if table.name not in present:
            table.create(connection)
            continue
        have = {c["name"] for c in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:  # columns added before migrations existed are all nullable
                op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))


def downgrade() -> None:
    for table in reversed(tables()):
        op.drop_table(table.name)
