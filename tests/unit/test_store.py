"""Model versions, aliases and feedback in a throwaway registry under a temporary FOUNDRY_HOME."""

from __future__ import annotations

import csv
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from modelfoundry.errors import UserError
from modelfoundry.store.feedback import Feedback, FeedbackStore, export, to_json
from modelfoundry.store.models import ModelStore
from modelfoundry.store.registry import Registry

LABELS = ["cat", "dog"]


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request, tmp_path, monkeypatch) -> Path:
    """FOUNDRY_HOME in tmp: run ids resolve here, and nothing is written to ./runs. Every test runs on
    SQLite (the default file in FOUNDRY_HOME) and on a real PostgreSQL server (FOUNDRY_DB=postgresql://...)."""
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FOUNDRY_DB", raising=False)
    if request.param == "postgresql":
        monkeypatch.setenv("FOUNDRY_DB", request.getfixturevalue("empty_postgres"))
    return tmp_path / "home"


@pytest.fixture
def registry(home) -> Registry:
    return Registry()


@pytest.fixture
def store(registry) -> ModelStore:
    return ModelStore(registry)


def register(store: ModelStore, home: Path, run_id: str, parent: int | None = None, variant: str = "base"):
    """A version for a run folder under FOUNDRY_HOME, as a finished training run leaves it."""
    package = home / run_id / "model"
    package.mkdir(parents=True, exist_ok=True)
    return store.register(
        run_id, package, "text_classification", LABELS, {"test_accuracy": 0.9}, variant=variant, parent=parent
    )


# ---------- versions ----------


def test_versions_are_numbered_and_found_by_name_number_and_alias(store, home):
    v1 = register(store, home, "run-1")
    v2 = register(store, home, "run-2")
    assert (v1.name, v2.name) == ("v1", "v2")
    assert store.get("v1").run_id == "run-1"
    assert store.get("2").run_id == "run-2"
    assert store.get(2).run_id == "run-2"
    assert store.get("v1").path == str((home / "run-1" / "model").resolve())
    assert store.get("v1").labels == LABELS and store.get("v1").metrics == {"test_accuracy": 0.9}
    store.set_alias("champion", v1.id)
    assert store.get("champion").id == v1.id
    assert [v.name for v in store.list()] == ["v2", "v1"]
    assert [v.name for v in store.list(limit=1)] == ["v2"]


def test_a_run_id_or_folder_finds_its_newest_version(store, home):
    register(store, home, "20240101-aaaa")
    register(store, home, "20240202-bbbb")
    newest = register(store, home, "20240101-aaaa", variant="int8")
    assert store.get("20240101-aaaa").id == newest.id
    assert store.get(str(home / "20240202-bbbb")).name == "v2"


def test_a_folder_elsewhere_named_like_a_run_of_this_registry_is_not_that_runs_version(store, home, tmp_path):
    register(store, home, "run")  # `foundry serve /elsewhere/run` must serve that folder, not this run
    elsewhere = tmp_path / "elsewhere" / "run"
    elsewhere.mkdir(parents=True)
    with pytest.raises(UserError, match="is not a finished run of this registry"):
        store.get(str(elsewhere))
    assert store.get("run").path == str((home / "run" / "model").resolve())


def test_a_run_id_prefix_from_the_registry_finds_its_version(store, registry, home, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "20240303-cccc"
    elsewhere.mkdir(parents=True)
    registry.start("20240303-cccc", None, "text_classification", "bow", elsewhere, {})
    version = store.register("20240303-cccc", elsewhere / "model", "text_classification", LABELS, None)
    assert store.get("20240303-cc").id == version.id


def test_an_unknown_version_number_says_how_to_list_versions(store, home):
    register(store, home, "run-1")
    for ref in ("v9", "9"):
        with pytest.raises(UserError, match=f"no model version {ref};.*foundry models list"):
            store.get(ref)


def test_an_unknown_reference_suggests_a_near_alias(store, home):
    store.set_alias("champion", register(store, home, "run-1").id)
    with pytest.raises(
        UserError, match="'champoin' is neither.*Did you mean 'champion'.*foundry models list"
    ):
        store.get("champoin")
    with pytest.raises(UserError, match="'zzz' is neither.*Aliases: champion.*foundry models list"):
        store.get("zzz")


def test_an_unknown_reference_with_no_aliases_says_so(store):
    with pytest.raises(UserError, match="No aliases yet.*foundry models list"):
        store.get("champion")


def test_a_run_without_a_version_must_be_a_finished_run_of_this_registry(store, registry, home):
    (home / "run-1").mkdir(parents=True)
    registry.start("run-1", None, "text_classification", "bow", home / "run-1", {})
    with pytest.raises(UserError, match="is not a finished run of this registry.*foundry models list"):
        store.get("run-1")
    assert store.list() == []


def test_a_finished_run_from_before_versions_becomes_a_version_when_asked_for(store, registry, home):
    package = home / "run-old" / "model"
    package.mkdir(parents=True)
    (package / "model.json").write_text(
        json.dumps({"task": "text_classification", "labels": LABELS, "test_accuracy": 0.75})
    )
    (package / "model.safetensors").write_bytes(b"")
    registry.start("run-old", None, "text_classification", "bow", home / "run-old", {})
    registry.finish("run-old", "completed")
    version = store.get("run-old")
    assert (version.name, version.run_id, version.labels) == ("v1", "run-old", LABELS)
    assert version.metrics == {"test_accuracy": 0.75} and version.path == str(package.resolve())
    assert store.get("run-old").id == version.id and len(store.list()) == 1  # registered once


# ---------- aliases ----------


def test_set_alias_moves_the_alias_and_aliases_lists_them_per_version(store, home):
    v1, v2 = register(store, home, "run-1"), register(store, home, "run-2")
    store.set_alias("champion", v1.id)
    store.set_alias("challenger", v2.id)
    store.set_alias("stable.2024-01_a", v1.id)
    assert store.aliases(v1.id) == ["champion", "stable.2024-01_a"]
    store.set_alias("champion", v2.id)
    assert store.get("champion").id == v2.id
    assert store.aliases(v1.id) == ["stable.2024-01_a"]
    assert store.aliases(v2.id) == ["challenger", "champion"]
    assert store.aliases() == ["challenger", "champion", "stable.2024-01_a"]


@pytest.mark.parametrize("name", ["v3", "3", "", "bad name", "-x", "_x", "a" * 81, "x/y"])
def test_invalid_alias_names_are_refused(store, home, name):
    v1 = register(store, home, "run-1")
    with pytest.raises(UserError, match="alias .*starts with a letter.*not a version number"):
        store.set_alias(name, v1.id)
    assert store.aliases() == []


def test_an_alias_with_a_trailing_newline_is_refused(store, home):
    v1 = register(store, home, "run-1")
    with pytest.raises(UserError, match="alias"):
        store.set_alias("champion\n", v1.id)


# ---------- lineage ----------


def test_a_retrained_version_keeps_the_lineage_of_its_parent(store, home):
    v1 = register(store, home, "run-1")
    other = register(store, home, "run-2")
    v3 = register(store, home, "run-3", parent=v1.id)
    v4 = register(store, home, "run-4", parent=v3.id)
    assert v1.lineage == v1.id and other.lineage == other.id
    assert (v3.parent, v3.lineage) == (v1.id, v1.id)
    assert (v4.parent, v4.lineage) == (v3.id, v1.id)
    assert store.get("v4").lineage == v1.id
    assert sorted(store.lineage_versions(v1.id)) == [v1.id, v3.id, v4.id]
    assert store.lineage_versions(other.id) == [other.id]


# ---------- feedback ----------


def add(feedback: FeedbackStore, label: str, version: int | None, text: str = "some text", **kwargs) -> int:
    return feedback.add(
        run_id="run-1", kind="text", input={"text": text}, label=label, model_version=version, **kwargs
    )


def test_feedback_lists_newest_first_and_filters_by_version(registry):
    feedback = FeedbackStore(registry)
    ids = [add(feedback, f"label-{i}", version) for i, version in enumerate([1, 2, 1, 3, None])]
    assert len(set(ids)) == 5
    assert [r.label for r in feedback.list()] == ["label-4", "label-3", "label-2", "label-1", "label-0"]
    assert [r.label for r in feedback.list(limit=2)] == ["label-4", "label-3"]
    assert [r.label for r in feedback.list(versions=[1, 3])] == ["label-3", "label-2", "label-0"]
    assert feedback.list(versions=[7]) == []
    assert len(feedback.list(limit=None)) == 5


def test_feedback_list_without_a_limit_returns_every_row(registry):
    feedback = FeedbackStore(registry)
    with Session(registry.engine) as s, s.begin():  # one commit: 120 separate ones take a second
        s.add_all(
            Feedback(
                model_version=1,
                run_id="run-1",
                kind="text",
                input={"text": f"text {i}"},
                label="cat",
                created_at=datetime.now(UTC),
            )
            for i in range(120)
        )
    assert len(feedback.list()) == 100  # the default limit
    rows = feedback.list(limit=None)
    assert len(rows) == 120 and rows[-1].input == {"text": "text 0"}


def test_feedback_rows_survive_reopening_the_database(registry):
    add(FeedbackStore(registry), "dog", 2, predicted="cat", request_id="abc123")
    (row,) = FeedbackStore(Registry(registry.url)).list()
    assert (row.label, row.predicted, row.model_version, row.request_id) == ("dog", "cat", 2, "abc123")
    assert to_json(row)["model_version"] == "v2" and to_json(row)["input"] == {"text": "some text"}
    json.dumps(to_json(row))


TRICKY = [  # inputs a user might send: quotes, commas, newlines, non-ASCII, a table row
    {
        "kind": "text",
        "input": {"text": 'say "hi", then\nleave — ok?'},
        "label": "greeting, rude",
        "predicted": "neutral",
    },
    {"kind": "table", "input": {"row": {"age": 41, "city": "Zürich"}}, "label": "yes", "predicted": None},
]


@pytest.fixture
def tricky_rows(registry):
    feedback = FeedbackStore(registry)
    for i, row in enumerate(TRICKY):
        feedback.add(run_id="run-1", model_version=i + 1, **row)
    return feedback.list(limit=None)


def test_export_jsonl_round_trips_inputs_and_labels(tricky_rows, tmp_path):
    assert export(tricky_rows, tmp_path / "feedback.jsonl") == 2
    records = [json.loads(line) for line in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["input"], r["label"], r["predicted"]) for r in records] == [
        (t["kind"], t["input"], t["label"], t["predicted"]) for t in reversed(TRICKY)
    ]
    assert [r["model_version"] for r in records] == ["v2", "v1"]


def test_export_csv_round_trips_inputs_and_labels(tricky_rows, tmp_path):
    assert export(tricky_rows, tmp_path / "feedback.csv") == 2
    with (tmp_path / "feedback.csv").open(newline="") as f:
        records = list(csv.DictReader(f))
    assert [(r["kind"], json.loads(r["input"]), r["label"], r["predicted"]) for r in records] == [
        (t["kind"], t["input"], t["label"], t["predicted"] or "") for t in reversed(TRICKY)
    ]
    assert [r["model_version"] for r in records] == ["v2", "v1"]


def test_export_of_no_rows_writes_an_empty_file(tmp_path):
    assert export([], tmp_path / "none.jsonl") == 0
    assert (tmp_path / "none.jsonl").read_text() == ""
    assert export([], tmp_path / "none.csv") == 0
    assert list(csv.DictReader((tmp_path / "none.csv").open(newline=""))) == []


@pytest.mark.parametrize("name", ["feedback.json", "feedback.txt", "feedback"])
def test_export_to_another_format_is_refused(tricky_rows, tmp_path, name):
    with pytest.raises(UserError, match=f"{name}: export to a .jsonl or .csv file"):
        export(tricky_rows, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_concurrent_writers_lose_no_feedback(registry):
    """Many request threads (or a server beside `foundry`) storing feedback in one SQLite file at once."""
    threads, per_thread = 8, 25
    errors: list[BaseException] = []
    ids: list[int] = []
    start = threading.Barrier(threads)

    def write(worker: int) -> None:
        try:
            feedback = FeedbackStore(Registry(registry.url))
            start.wait(timeout=30)
            for i in range(per_thread):
                ids.append(add(feedback, f"w{worker}-{i}", worker))
        except BaseException as exc:  # noqa: BLE001  reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(w,)) for w in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert errors == []
    rows = FeedbackStore(registry).list(limit=None)
    assert len(rows) == len(ids) == threads * per_thread
    assert len({r.id for r in rows}) == threads * per_thread and set(ids) == {r.id for r in rows}
    assert {r.label for r in rows} == {f"w{w}-{i}" for w in range(threads) for i in range(per_thread)}


# ---------- schema upgrades ----------


def test_an_older_registry_gains_the_new_tables_and_columns_and_keeps_its_runs(home):
    """A registry written before versions, feedback and `train_seconds` existed opens without a manual
    migration."""
    from sqlalchemy import create_engine, inspect, text

    from modelfoundry.store.registry import database_url

    url = database_url()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    old = create_engine(url)
    with old.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE runs (id VARCHAR(80) PRIMARY KEY, name VARCHAR(200), task VARCHAR(60), "
                "model VARCHAR(60), status VARCHAR(20), path TEXT, config JSON, metrics JSON, "
                "timings JSON, error TEXT, created_at TIMESTAMP, finished_at TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO runs (id, task, model, status, path, config, created_at) VALUES "
                "('old-run', 'image_classification', 'cnn', 'completed', '/x', '{}', '2025-01-01')"
            )
        )
    old.dispose()
    registry = Registry()
    tables = inspect(registry.engine).get_table_names()
    assert {"runs", "model_versions", "model_aliases", "feedback"} <= set(tables)
    assert "train_seconds" in {c["name"] for c in inspect(registry.engine).get_columns("runs")}
    assert registry.get("old-run").status == "completed" and registry.get("old-run").train_seconds is None
    registry.finish("old-run", "completed", timings={"train": 3.0})
    assert Registry().get("old-run").train_seconds == 3.0


def test_the_migrations_build_exactly_the_schema_the_models_declare(registry):
    """A model change without its Alembic migration (store/migrations/versions) fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from modelfoundry.store.registry import Base

    with registry.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == "0002"
        assert compare_metadata(context, Base.metadata) == []


def test_processes_opening_a_new_registry_at_once_all_find_it_ready(home):
    """DDP ranks, a server and a CLI may create the registry together: one migrates, the others wait."""
    import subprocess
    import sys

    code = (
        "from modelfoundry.store.registry import Registry; r = Registry(); "
        "r.start('run-' + __import__('os').urandom(4).hex(), None, 'image_classification', 'cnn', "
        "__import__('pathlib').Path('.'), {})"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, errors
    assert len(Registry().list()) == 4


def test_a_very_long_alias_gives_the_limit_and_is_not_echoed_whole(store, home):
    v1 = register(store, home, "run-1")
    with pytest.raises(UserError) as info:
        store.set_alias("a" * 5000, v1.id)
    message = str(info.value)
    assert "5,000 characters long" in message and "at most 80 characters" in message
    assert len(message) < 300
    store.set_alias("a" * 80, v1.id)
    assert store.aliases() == ["a" * 80]
