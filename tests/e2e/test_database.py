"""The registry on PostgreSQL through FOUNDRY_DB, and the messages for a database that can't be used."""

from __future__ import annotations

import subprocess
import sys

import pytest

from e2e_helpers import (
    CLI_TIMEOUT_S,
    TINY_MLP,
    assert_ok,
    assert_user_error,
    cli_env,
    write_config,
    write_table,
)

pytestmark = pytest.mark.slow


def foundry_on(db: str, *args, cwd, home) -> subprocess.CompletedProcess:
    env = {**cli_env(home), "FOUNDRY_DB": db}
    return subprocess.run(
        [sys.executable, "-m", "modelfoundry", *map(str, args)],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def test_train_serve_registry_and_versions_on_postgresql(empty_postgres, tmp_path):
    write_table(tmp_path / "train.csv")
    config = write_config(tmp_path / "t.yaml", "tabular_classification", "train.csv")
    home = tmp_path / "runs"
    assert_ok(
        foundry_on(
            empty_postgres, "train", config, *TINY_MLP, "--run-dir", home / "pg-run", cwd=tmp_path, home=home
        )
    )
    assert_ok(foundry_on(empty_postgres, "models", "promote", "pg-run", cwd=tmp_path, home=home))
    listed = foundry_on(empty_postgres, "models", "list", cwd=tmp_path, home=home)
    assert_ok(listed)
    assert "champion" in listed.stdout and "pg-run" in listed.stdout
    runs = foundry_on(empty_postgres, "runs", "list", cwd=tmp_path, home=home)
    assert "pg-run" in runs.stdout and "completed" in runs.stdout
    assert not (home / "registry.db").exists()  # nothing went to the default SQLite file


def test_unreachable_database_server_names_host_and_port(tmp_path):
    result = foundry_on(
        "postgresql://foundry:secret@127.0.0.1:1/registry",
        "runs",
        "list",
        cwd=tmp_path,
        home=tmp_path / "runs",
    )
    message = assert_user_error(result, "cannot reach a database server at 127.0.0.1:1")
    assert "secret" not in message


def test_wrong_password_says_the_login_failed_without_showing_it(postgres_database, tmp_path):
    from sqlalchemy.engine import make_url

    wrong = make_url(postgres_database).set(password="not-the-password").render_as_string(hide_password=False)
    message = assert_user_error(
        foundry_on(wrong, "runs", "list", cwd=tmp_path, home=tmp_path / "runs"),
        "refused the login of user 'foundry'",
        "check the password",
    )
    assert "not-the-password" not in message


def test_missing_database_and_unknown_driver(postgres_database, tmp_path):
    missing = postgres_database.rsplit("/", 1)[0] + "/no_such_registry"
    assert_user_error(
        foundry_on(missing, "runs", "list", cwd=tmp_path, home=tmp_path / "runs"),
        "has no database 'no_such_registry'",
        "createdb no_such_registry",
    )
    assert_user_error(
        foundry_on("mongodb://x/y", "runs", "list", cwd=tmp_path, home=tmp_path / "runs"),
        "not a database URL SQLAlchemy can use",
    )
