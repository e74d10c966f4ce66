"""Alembic migrations of the registry database (runs, model versions, aliases, feedback).

`store.registry.upgrade` runs them when a Registry opens; developers add one with
`alembic -c src/modelfoundry/store/migrations/alembic.ini revision -m "what changes"` and check it
with `tests/unit/test_store.py::test_the_migrations_build_exactly_the_schema_the_models_declare`.
"""
