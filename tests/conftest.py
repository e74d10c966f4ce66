"""Suite-wide settings. pytest runs two workers (-n 2) on two cores: one thread each avoids
oversubscription, which slows small-model training several-fold. CLI subprocesses inherit it."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 2-layer, 32-wide BERT folder with the MiniLM tokenizer (see tests/tiny_hf.py)."""
    from tiny_hf import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def postgres_database() -> str:
    """A PostgreSQL database of this test worker's own, on the server `.ci/postgres.sh` starts
    (FOUNDRY_TEST_POSTGRES). Skipped without one, except in CI (FOUNDRY_REQUIRE_POSTGRES)."""
    base = os.environ.get("FOUNDRY_TEST_POSTGRES")
    if not base:
        if os.environ.get("FOUNDRY_REQUIRE_POSTGRES"):
            pytest.fail("FOUNDRY_TEST_POSTGRES is not set; .ci/postgres.sh should have started a server")
        pytest.skip('no PostgreSQL server: eval "$(bash .ci/postgres.sh)" starts one')
    from sqlalchemy import create_engine, text

    name = f"foundry_test_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        if not connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def empty_postgres(postgres_database) -> str:
    """The worker's PostgreSQL database with every table dropped: a registry as a fresh install sees it."""
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(postgres_database)
    metadata = MetaData()
    metadata.reflect(engine)
    metadata.drop_all(engine)
    engine.dispose()
    return postgres_database


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A 2-layer, 32-wide random Llama folder with a byte-level ChatML tokenizer (see tests/tiny_llama.py)."""
    from tiny_llama import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
