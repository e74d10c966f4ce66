"""Model versions and aliases, in the same database as the runs.

Every finished training run registers its package as a version (v1, v2, ...). Aliases are names
that point at one version each (`champion`, `challenger`, or any name); `foundry serve champion`
resolves the alias when it starts and again on reload. A retrained version keeps the lineage of
the version it was retrained from, so the feedback given to any of them trains the next one.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelfoundry.errors import UserError, did_you_mean
from modelfoundry.store.registry import Base, Registry, resolve_run, runs_root


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(80), index=True)
    path: Mapped[str] = mapped_column(Text)  # the package folder (runs/<id>/model)
    variant: Mapped[str] = mapped_column(String(40))  # "base"; compression adds its variants
    task: Mapped[str] = mapped_column(String(60))
    labels: Mapped[list] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    parent: Mapped[int | None] = mapped_column(Integer)  # the version this one was retrained from
    lineage: Mapped[int | None] = mapped_column(Integer)  # the first version of the line
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    @property
    def name(self) -> str:
        return f"v{self.id}"


class Alias(Base):
    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


MAX_ALIAS = 80
ALIAS_PATTERN = re.compile(rf"[A-Za-z][A-Za-z0-9_.-]{{0,{MAX_ALIAS - 1}}}")


class ModelStore:
    """Versions and aliases over a `Registry`'s database."""

    def __init__(self, registry: Registry | None = None):
        self.registry = registry or Registry()
        self.engine = self.registry.engine

    def register(
        self,
        run_id: str,
        package: Path,
        task: str,
        labels: list[str],
        metrics: dict | None,
        variant: str = "base",
        parent: int | None = None,
    ) -> ModelVersion:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            lineage = s.get(ModelVersion, parent).lineage if parent is not None else None
            version = ModelVersion(
                run_id=run_id,
                path=str(Path(package).resolve()),
                variant=variant,
                task=task,
                labels=labels,
                metrics=metrics,
                parent=parent,
                lineage=lineage,
                created_at=_now(),
            )
            s.add(version)
            s.flush()
            version.lineage = version.lineage or version.id
            return version

    def get(self, ref: str | int) -> ModelVersion:
        """A version by alias, `v3` / `3`, run id (its newest base version) or run folder."""
        ref = str(ref)
        with Session(self.engine, expire_on_commit=False) as s:
            alias = s.get(Alias, ref)
            if alias is not None:
                return s.get(ModelVersion, alias.version_id)
            number = re.fullmatch(r"v?(\d+)", ref)
            if number:
                version = s.get(ModelVersion, int(number.group(1)))
                if version is not None:
                    return version
                if ref.startswith("v") or len(ref) < 6:  # longer digits may be a run id prefix (a date)
                    raise UserError(f"no model version {ref}; `foundry models list` shows them.")
        folder = self._run_folder(ref)
        with Session(self.engine, expire_on_commit=False) as s:
            versions = s.scalars(
                select(ModelVersion)
                .where(ModelVersion.run_id == folder.name)
                .order_by(ModelVersion.id.desc())
            ).all()
        # a run id names one folder of this registry; a run folder elsewhere with the same name (a run trained
        # into a temporary folder, another registry's) is not that run's version. A folder in this registry's
        # home is its run even where the recorded path differs (a home copied or moved whole).
        ours = _in_home(folder)
        version = next((v for v in versions if ours or _inside(Path(v.path), folder)), None)
        return version or self._register_existing(folder)

    def _register_existing(self, folder: Path) -> ModelVersion:
        """A finished run of this registry from before versions existed: its package becomes a version."""
        from modelfoundry.runfiles import package_folder

        try:
            record = self.registry.get(folder.name)
            known = record.status == "completed" and (_in_home(folder) or _inside(folder, Path(record.path)))
        except UserError:
            known = False
        if not known:
            raise UserError(
                f"{folder} is not a finished run of this registry ({self.registry.url}), so it has no "
                "model version; `foundry models list` shows versions."
            )
        package = package_folder(folder)
        spec = json.loads((package / "model.json").read_text())
        return self.register(
            folder.name, package, spec["task"], spec["labels"], {"test_accuracy": spec.get("test_accuracy")}
        )

    def _run_folder(self, ref: str) -> Path:
        try:
            return resolve_run(ref).resolve()
        except UserError:
            names = self.aliases()
            hint = did_you_mean(ref, names) or (
                f" Aliases: {', '.join(names)}." if names else " No aliases yet."
            )
            raise UserError(
                f"'{ref}' is neither an alias, a model version (v3) nor a run.{hint} "
                "`foundry models list` shows versions and aliases."
            ) from None

    def set_alias(self, name: str, version_id: int) -> None:
        if not ALIAS_PATTERN.fullmatch(name) or re.fullmatch(r"v?\d+", name):
            shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}..."  # not 5,000 characters back
            too_long = f" it is {len(name):,} characters long;" if len(name) > MAX_ALIAS else ""
            raise UserError(
                f"alias {shown}:{too_long} use a name of at most {MAX_ALIAS} characters that starts with a "
                "letter (letters, digits, '_', '-', '.'), not a version number like v3."
            )
        with Session(self.engine) as s, s.begin():
            if s.get(ModelVersion, version_id) is None:
                raise UserError(f"no model version v{version_id}; `foundry models list` shows them.")
            alias = s.get(Alias, name) or Alias(name=name)
            alias.version_id, alias.updated_at = version_id, _now()
            s.add(alias)

    def aliases(self, version_id: int | None = None) -> list[str]:
        with Session(self.engine) as s:
            query = select(Alias.name).order_by(Alias.name)
            if version_id is not None:
                query = query.where(Alias.version_id == version_id)
            return list(s.scalars(query))

    def list(self, limit: int = 50) -> list[ModelVersion]:
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(limit)))

    def lineage_versions(self, lineage: int) -> list[int]:
        with Session(self.engine) as s:
            return list(s.scalars(select(ModelVersion.id).where(ModelVersion.lineage == lineage)))


def _now() -> datetime:
    return datetime.now(UTC)


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies in it (a package in its run folder), comparing resolved paths."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _in_home(folder: Path) -> bool:
    """Whether `folder` is a run folder of this registry's home (runs/<id>)."""
    return folder.resolve().parent == runs_root().resolve()
