"""The run registry: one row per training run, in SQLite by default or any SQLAlchemy URL
(`FOUNDRY_DB=postgresql://...`)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from modelfoundry.errors import UserError
from modelfoundry.runfiles import runs_root


class Base(DeclarativeBase):
    pass


class RunRecord(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(60))
    model: Mapped[str] = mapped_column(String(60))
    status: Mapped[str] = mapped_column(String(20))  # running | completed | failed
    path: Mapped[str] = mapped_column(Text)
    config: Mapped[dict] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)  # headline test/val numbers
    timings: Mapped[dict | None] = mapped_column(JSON)  # seconds per phase
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    train_seconds: Mapped[float | None] = mapped_column(Float)
    host: Mapped[str | None] = mapped_column(
        String(255)
    )  # where a running run's process is: stale-run detection
    pid: Mapped[int | None] = mapped_column(Integer)

    @property
    def shown_status(self) -> str:
        """`running` only while its process lives: a run whose process on this machine is gone (killed,
        machine restarted) is `stopped`; `foundry train --resume --run-dir PATH` continues it."""
        if (
            self.status == "running"
            and self.host == socket.gethostname()
            and self.pid
            and not _alive(self.pid)
        ):
            return "stopped"
        return self.status


def database_url() -> str:
    url = os.environ.get("FOUNDRY_DB") or f"sqlite:///{runs_root() / 'registry.db'}"
    # A plain postgresql:// URL means the psycopg (3) driver we ship, not SQLAlchemy's default psycopg2.
    return (
        "postgresql+psycopg://" + url.removeprefix("postgresql://")
        if url.startswith("postgresql://")
        else url
    )


class Registry:
    def __init__(self, url: str | None = None):
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

        self.url = url or database_url()
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = create_engine(self.url, pool_pre_ping=not self.url.startswith("sqlite"))
            if self.url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_settings)
            from modelfoundry.store import feedback, models  # noqa: F401  their tables join Base.metadata

            upgrade(self.engine)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise UserError(
                f"FOUNDRY_DB: {hide_password(self.url)} is not a database URL SQLAlchemy can use ({exc}). "
                "Use sqlite:///path/registry.db or postgresql://user:password@host:5432/dbname."
            ) from None
        except OperationalError as exc:
            raise UserError(connection_problem(self.url, exc)) from None

    def start(self, run_id: str, name: str | None, task: str, model: str, path: Path, config: dict) -> None:
        with Session(self.engine) as s, s.begin():
            record = s.get(RunRecord, run_id) or RunRecord(id=run_id, created_at=_now())
            record.name, record.task, record.model, record.path = name, task, model, str(path.resolve())
            record.config, record.status, record.error, record.finished_at = config, "running", None, None
            record.host, record.pid = socket.gethostname(), os.getpid()
            s.add(record)

    def finish(
        self,
        run_id: str,
        status: str,
        metrics: dict | None = None,
        timings: dict | None = None,
        error: str | None = None,
    ) -> None:
        with Session(self.engine) as s, s.begin():
            record = s.get(RunRecord, run_id)
            if record is None:
                return
            record.status, record.metrics, record.timings, record.error = status, metrics, timings, error
            record.finished_at = _now()
            record.train_seconds = (timings or {}).get("train")

    def list(self, limit: int = 50) -> list[RunRecord]:
        with Session(self.engine) as s:
            return list(s.scalars(select(RunRecord).order_by(RunRecord.created_at.desc()).limit(limit)))

    def get(self, run: str) -> RunRecord:
        """A run by id, id prefix, or folder path."""
        with Session(self.engine) as s:
            record = s.get(RunRecord, run) or s.get(RunRecord, Path(run).name)
            if record is None:
                matches = list(
                    s.scalars(select(RunRecord).where(RunRecord.id.startswith(run, autoescape=True)))
                )
                if len(matches) == 1:
                    record = matches[0]
                elif len(matches) > 1:
                    raise UserError(f"run '{run}' is ambiguous: {', '.join(m.id for m in matches[:5])}")
            if record is None:
                raise UserError(
                    f"no run '{run}' in the registry ({self.url}). `foundry runs list` shows them."
                )
            return record


def connection_problem(url: str, exc: Exception, setting: str = "FOUNDRY_DB") -> str:
    """Which part of connecting failed: the server, the login, or the database, in words."""
    from sqlalchemy.engine import make_url

    parts = make_url(url)
    where = f"{parts.host or 'localhost'}:{parts.port or 5432}"
    detail = (
        str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        if str(getattr(exc, "orig", exc)).strip()
        else ""
    )
    lowered = detail.lower()
    if "password" in lowered or "authentication" in lowered:
        what = (
            f"the server at {where} refused the login of user '{parts.username}': check the password in "
            f"{setting}"
        )
    elif "does not exist" in lowered and "database" in lowered:
        what = (
            f"the server at {where} has no database '{parts.database}': create it (createdb "
            f"{parts.database}) or fix the name in {setting}"
        )
    elif any(
        s in lowered
        for s in (
            "refused",
            "timeout",
            "timed out",
            "could not translate",
            "no route",
            "name or service",
            "unreachable",
        )
    ):
        what = f"cannot reach a database server at {where}: is it running, and is the host and port right?"
    elif url.startswith("sqlite"):
        what = (
            f"cannot open the SQLite file {url.removeprefix('sqlite:///')}: check the folder exists and is "
            "writable"
        )
    else:
        what = "could not connect"
    return f"{setting}={hide_password(url)}: {what} ({detail})."


def hide_password(url: str) -> str:
    """The URL as shown in messages, files and reports: never with its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  an unparseable URL is shown as given
        return url


MIGRATIONS = Path(__file__).with_name("migrations")


def upgrade(engine) -> list[str]:
    """Bring the database to the schema this modelfoundry expects with its Alembic migrations
    (store/migrations/versions): a new database gets every table, an older registry the tables and
    columns it lacks, its rows untouched. Returns the revisions applied (none when already current).

    Several processes may open the same registry at once (DDP ranks, a server and a CLI): the
    migration runs under a lock (PostgreSQL advisory lock, or a lock file beside a SQLite database)
    and whoever comes second finds the schema current."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()

    def current() -> str | None:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    if current() == head:
        return []
    with _migration_lock(engine):
        before = current()
        if before == head:
            return []
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        return [r.revision for r in reversed(list(script.iterate_revisions(head, before)))]


@contextlib.contextmanager
def _migration_lock(engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy import text

        with engine.connect() as connection:
            connection.execute(
                text("SELECT pg_advisory_lock(7317021)")
            )  # any fixed key: "modelfoundry migrates"
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(7317021)"))
                connection.commit()
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        import fcntl

        with open(f"{engine.url.database}.migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    else:
        yield


def _sqlite_settings(connection, _record) -> None:
    """WAL lets readers work beside a writer (a server storing feedback while `foundry` lists it);
    the busy timeout makes concurrent writers wait their turn instead of failing."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def resolve_run(run: str) -> Path:
    """A run folder from a path, an id, or an id prefix."""
    path = Path(run)
    if path.is_dir():
        return path
    if (runs_root() / run).is_dir():
        return runs_root() / run
    return Path(Registry().get(run).path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _now() -> datetime:
    return datetime.now(UTC)


def to_json(record: RunRecord) -> dict:
    fields = {c.name: getattr(record, c.name) for c in RunRecord.__table__.columns}
    return json.loads(json.dumps({**fields, "status": record.shown_status}, default=str))
