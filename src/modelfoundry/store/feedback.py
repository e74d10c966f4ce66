"""Corrections from users: the input (or, for images, a file beside the database), what the model
said, the right label, which version said it and when. Each row is committed before the server
answers, so an acknowledged correction survives a crash.

Feedback on a text generation model's answer (kind "generation") keeps everything in `input`:
`{"prompt": text}` or `{"messages": [{"role", "content"}, ...]}`, plus `"answer"` (what the model said,
whole), `"vote"` ("up", "down" or null) and `"better_answer"` (the answer it should have given, or
null); `label` is "better" when there is a better answer, else the vote, and `predicted` the answer's first
200 characters (for listings). Retraining reads prompt/messages -> better_answer as new examples.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import JSON, DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelfoundry.errors import UserError
from modelfoundry.runfiles import runs_root
from modelfoundry.store.registry import Base, Registry


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    model_version: Mapped[int | None] = mapped_column(Integer, index=True)
    run_id: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(10))  # text | table | image
    input: Mapped[dict] = mapped_column(JSON)  # {"text": ...} | {"row": {...}} | {"image": path}
    predicted: Mapped[str | None] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def media_dir() -> Path:
    """Where images given as feedback are kept: beside the runs, never inside a run."""
    return runs_root() / "feedback"


class FeedbackStore:
    def __init__(self, registry: Registry | None = None):
        self.engine = (registry or Registry()).engine

    def add(
        self,
        *,
        run_id: str,
        kind: str,
        input: dict,
        label: str,
        predicted: str | None = None,
        model_version: int | None = None,
        request_id: str | None = None,
    ) -> int:
        with Session(self.engine) as s, s.begin():
            row = Feedback(
                request_id=request_id,
                model_version=model_version,
                run_id=run_id,
                kind=kind,
                input=input,
                predicted=predicted,
                label=label,
                created_at=datetime.now(UTC),
            )
            s.add(row)
            s.flush()
            return row.id

    def relabel(self, feedback_id: int, label: str) -> bool:
        """Give a stored correction another label (its input corrected again); False when it is gone."""
        with Session(self.engine) as s, s.begin():
            row = s.get(Feedback, feedback_id)
            if row is not None:
                row.label = label
            return row is not None

    def replace(self, feedback_id: int, input: dict, label: str, predicted: str | None) -> bool:
        """Rewrite a stored row (the same answer given feedback again: the last one wins); False when gone."""
        with Session(self.engine) as s, s.begin():
            row = s.get(Feedback, feedback_id)
            if row is not None:
                row.input, row.label, row.predicted = input, label, predicted
            return row is not None

    def list(self, limit: int | None = 100, versions: list[int] | None = None) -> list[Feedback]:
        """Newest first; only rows given to `versions` when set."""
        with Session(self.engine) as s:
            query = select(Feedback).order_by(Feedback.id.desc())
            if versions is not None:
                query = query.where(Feedback.model_version.in_(versions))
            return list(s.scalars(query.limit(limit)))


def to_json(row: Feedback) -> dict:
    return {
        "id": row.id,
        "request_id": row.request_id,
        "model_version": row.model_version and f"v{row.model_version}",
        "run_id": row.run_id,
        "kind": row.kind,
        "input": row.input,
        "predicted": row.predicted,
        "label": row.label,
        "created": row.created_at.isoformat(timespec="seconds"),
    }


def export(rows: list[Feedback], path: Path) -> int:
    """Write rows as .jsonl (inputs kept whole) or .csv (inputs as JSON text)."""
    if path.suffix not in (".jsonl", ".csv"):
        raise UserError(f"{path}: export to a .jsonl or .csv file.")
    records = [to_json(r) for r in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["id"])
            writer.writeheader()
            writer.writerows({**r, "input": json.dumps(r["input"])} for r in records)
    return len(records)
