"""Runs the migrations on the connection store.registry.upgrade hands over (config.attributes), or on
sqlalchemy.url when run by the alembic command line."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from modelfoundry.store import feedback, models  # noqa: F401  their tables join Base.metadata
from modelfoundry.store.registry import Base

config = context.config
connection = config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    context.run_migrations()
else:
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        context.run_migrations()
