"""Recommendation: learn from user-item interactions, rank every item for each user.

Data: a table of interactions, `data: {source, user, item, rating?, timestamp?}` (CSV, Parquet,
JSONL). Without `rating` every row is a positive; `data.implicit_threshold` keeps the ratings at or
above it as positives. Checks: the user and item columns exist (the closest names suggested), a
rating is a number (row and column named), no id is empty; duplicate (user, item) pairs keep their
latest row, and users and items with fewer than `data.min_interactions` rows are dropped: both
counted in the data report.

Split (never the future into training): each user's last interaction (by `timestamp`, or a seeded
random one without it) is the test split, the one before it validation, the rest training; users with
fewer than 3 interactions stay in training. Items seen only in validation or test are cold-start items,
counted in the report.

Models (models/registry.py): `popularity`, `mf`; training inputs are (user, positive item) pairs (the
model draws the negatives), ranking inputs are users (B, 1) whose outputs are every item's score.
Metrics: full ranking (evaluate/ranking.py) over the items the user did not interact with in training
(test: nor in validation), beside the popularity baseline's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from modelfoundry.data import tabular
from modelfoundry.errors import InputError, UserError, did_you_mean
from modelfoundry.evaluate.ranking import ItemSets, popularity_scores, ranking_metrics
from modelfoundry.tasks.base import Objective, Task

FAMILIES = ("mf", "two_tower", "popularity")
FEEDBACK = ("click", "like")  # what the page and POST /v1/feedback take as a new interaction
INTERACTIONS = "interactions.json"  # in the package: the users and every item each interacted with
HISTORY = 20  # items of a user's history an answer shows

STARTER = """\
# modelfoundry config: recommendation (rank items per user). Train with `foundry train config.yaml`.
task: recommendation
data:
  source: interactions.csv   # .csv / .parquet / .jsonl, one row per interaction
  user: user_id              # the user id column
  item: item_id              # the item id column
  # rating: rating           # a column of numbers; with implicit_threshold, ratings >= it are positives
  # implicit_threshold: 4
  # timestamp: timestamp     # each user's latest interactions are held out (else random ones)
  min_interactions: 1        # drop users and items with fewer interactions
model:
  name: mf                   # or popularity (the baseline every report shows anyway)
evaluate:
  k: [10, 20]                # ndcg@10, recall@20, ...
"""


class RankingObjective(Objective):
    """BPR (one drawn negative) or sampled softmax (several) on the model's (B, 1 + n) scores; validation:
    full-ranking metrics of every validation user."""

    monitors: ClassVar[dict[str, str]] = {
        "val_loss": "min",
        "val_mrr": "max",
        **{f"val_{m}@{k}": "max" for m in ("ndcg", "recall", "hitrate") for k in (5, 10, 20, 50, 100)},
    }

    def __init__(self, ks: list[int]):
        self.ks = ks

    def loss(self, outputs, targets, weights=None):
        if outputs.shape[1] == 2:  # BPR: the positive above the drawn negative
            return -torch.nn.functional.logsigmoid(outputs[:, 0] - outputs[:, 1]).mean()
        return torch.nn.functional.cross_entropy(outputs, torch.zeros_like(targets))

    def metrics(self, outputs, targets) -> dict[str, float]:
        scores = ranking_metrics(
            outputs, targets.relevant, targets.exclude, self.ks, targets.popularity, with_loss=True
        )
        return {f"val_{k}": v for k, v in scores.items() if "@" in k or k in ("mrr", "loss")}

    def line(self, record: dict) -> str:
        k = self.ks[0]
        return f"val_loss {record['val_loss']:.4f}  ndcg@{k} {record[f'val_ndcg@{k}']:.4f}"


class RankingTargets:
    """What ranking a split's users is scored against: each user's relevant items, the items excluded
    from their ranking, and the training popularity (for the popularity bias)."""

    def __init__(
        self, relevant: ItemSets, exclude: ItemSets, popularity: np.ndarray, users=None, titles=None
    ):
        self.relevant, self.exclude, self.popularity = relevant, exclude, popularity
        self.users, self.titles = users, titles  # the rows' user ids and item titles, for the report

    def numpy(self):
        return self

    def to(self, device):
        return self

    def __len__(self) -> int:
        return len(self.relevant)


class PairData:
    """Training interactions: `batches` yields ((user, item) pairs (B, 2), zeros (B,))."""

    def __init__(self, pairs: torch.Tensor):
        self.inputs = pairs
        self.targets = torch.zeros(len(pairs), dtype=torch.long, device=pairs.device)

    def __len__(self) -> int:
        return len(self.inputs)

    def to(self, device) -> PairData:
        moved = PairData(self.inputs.to(device))
        moved.side = getattr(self, "side", {})
        return moved

    def batches(self, batch_size: int, shuffle: bool = False, generator=None):
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size].to(self.inputs.device)
            yield self.inputs[idx], self.targets[idx]


class RankingData:
    """The users of a validation or test split: `batches` yields (user indices (B, 1), row numbers (B,));
    `targets` says what their rankings are scored against."""

    def __init__(self, users: torch.Tensor, targets: RankingTargets):
        self.inputs, self.targets = users[:, None], targets

    def __len__(self) -> int:
        return len(self.inputs)

    def to(self, device) -> RankingData:
        return RankingData(self.inputs[:, 0].to(device), self.targets)

    def batches(self, batch_size: int, shuffle: bool = False, generator=None):
        for start in range(0, len(self), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(self)))
            yield self.inputs[start : start + batch_size], rows


class Recommendation(Task):
    name = "recommendation"
    kind = "interactions"
    is_classifier = False
    objective_class = RankingObjective
    default_monitor = "val_ndcg@10"
    small_val_monitor = "val_mrr"  # every user's full rank counts, not only the top 10's hits
    default_model = "mf"
    headline = ("ndcg@10", "recall@10", "hitrate@10", "mrr")
    retrain_metric, retrain_higher_is_better = "ndcg@10", True
    review_gap = ("ndcg@10", 0.05)
    starter = STARTER

    # ---- config ------------------------------------------------------------------------------

    def check_config(self, cfg) -> list[str]:
        data, problems = cfg.data, []
        for key in ("user", "item"):
            if not getattr(data, key):
                problems.append(f"data.{key} is required for recommendation: name the {key} id column")
        if data.label:
            problems.append(
                "data.label: recommendation reads data.user, data.item (and data.rating); remove data.label"
            )
        if data.implicit_threshold is not None and not data.rating:
            problems.append("data.implicit_threshold needs data.rating: name the rating column")
        if cfg.model.name is not None and cfg.model.name not in FAMILIES:
            problems.append(
                f"model.name: {cfg.model.name!r} is not a recommendation model; use one of "
                f"{', '.join(FAMILIES)}.{did_you_mean(cfg.model.name, FAMILIES)}"
            )
        if not cfg.evaluate.k or any(k < 1 for k in cfg.evaluate.k):
            problems.append(f"evaluate.k: {cfg.evaluate.k} must list cut-offs of 1 or more, e.g. [10, 20]")
        for key in ("loss", "label_smoothing"):
            if getattr(cfg.train, key):
                problems.append(
                    f"train.{key}: not used by recommendation (model.negatives sets the loss: BPR or "
                    "softmax); remove it"
                )
        if cfg.train.folds:
            problems.append("train.folds: recommendation splits each user's history in time; remove it")
        return problems + self.check_monitor(cfg)

    def objective(self, train_cfg, target_spec: dict | None = None) -> Objective:
        return RankingObjective((target_spec or {}).get("k", [10, 20]))

    # ---- data --------------------------------------------------------------------------------

    def prepare_data(self, config, base_dir: Path, resplit=None):
        from modelfoundry.data.prepare import Prepared, resolve_source

        if resplit is not None:
            raise UserError("train.folds: recommendation splits each user's history in time; remove it.")
        data = config.data
        path = resolve_source(data.source, base_dir)
        frame, report = read_interactions(path, data)
        feedback = read_feedback(data, base_dir, set(frame["item"]), report)
        users = pd.Index(sorted(set(frame["user"]) | set(feedback["user"])))
        items = pd.Index(sorted(pd.unique(frame["item"])))
        titles = item_titles(data, base_dir, items, report) if data.items else None
        u = users.get_indexer(frame["user"])
        i = items.get_indexer(frame["item"])
        times = frame["time"].to_numpy() if data.timestamp else None
        part = split_per_user(u, times, data.split.val > 0, data.split.test > 0, data.split.seed)
        train = part == 0
        popularity = np.bincount(i[train], minlength=len(items))
        report["splits"] = {name: int((part == p).sum()) for p, name in enumerate(("train", "val", "test"))}
        report["cold_start"] = {
            name: {
                "items": len(set(i[part == p]) - set(i[train])),
                "users": len(set(u[part == p]) - set(u[train])),
            }
            for p, name in ((1, "val"), (2, "test"))
        }
        report["n_users"], report["n_items"] = len(users), len(items)
        n = len(users)
        seen_train = ItemSets.from_pairs(u[train], i[train], n)
        seen_val = ItemSets.from_pairs(u[part <= 1], i[part <= 1], n)
        pairs = np.stack([u[train], i[train]], 1)
        if len(feedback):  # clicks and likes from the service: training only, each `weight` times
            extra = np.stack([users.get_indexer(feedback["user"]), items.get_indexer(feedback["item"])], 1)
            pairs = np.concatenate([pairs, np.repeat(extra, data.feedback.weight, 0)])
        parts = {"train": PairData(torch.as_tensor(pairs, dtype=torch.long))}
        parts["train"].side = {
            "user_side": side_features(data.users, data.user, "data.users", base_dir, users, report),
            "item_side": side_features(data.items, data.item, "data.items", base_dir, items, report),
        }
        for p, name, exclude in ((1, "val", seen_train), (2, "test", seen_val)):
            held = part == p
            who = np.unique(u[held])
            if len(who) == 0:
                parts[name] = None
                continue
            relevant = ItemSets.from_pairs(u[held], i[held], n).take(who)
            parts[name] = RankingData(
                torch.as_tensor(who),
                RankingTargets(relevant, exclude.take(who), popularity, [users[w] for w in who], titles),
            )
        if len(feedback):
            u = np.concatenate([u, users.get_indexer(feedback["user"])])
            i = np.concatenate([i, items.get_indexer(feedback["item"])])
        everything = ItemSets.from_pairs(u, i, n)  # the package excludes all a user interacted with
        files = {
            INTERACTIONS: json.dumps(
                {
                    "users": [str(x) for x in users],
                    "seen": [everything.row(r).tolist() for r in range(n)],
                    "titles": titles,
                }
            )
        }
        columns = {
            key: getattr(data, key) for key in ("user", "item", "rating", "timestamp", "implicit_threshold")
        }
        preprocessing = {"kind": "interactions", "popularity": popularity.tolist(), "columns": columns}
        return Prepared(
            parts["train"],
            parts["val"],
            parts["test"],
            [str(x) for x in items],
            (
                len(users),
                parts["train"].side["user_side"].shape[1],
                parts["train"].side["item_side"].shape[1],
            ),
            preprocessing,
            report,
            parts["test"].targets.users if parts["test"] is not None else [],  # the test users, by id
            files,
            {"k": sorted(set(config.evaluate.k))},
        )

    def describe_targets(self, labels: list[str]) -> str:
        return f"{len(labels):,} items"

    # ---- predictions, metrics, report --------------------------------------------------------

    def predictions(self, outputs, spec: dict) -> np.ndarray:
        """Scores (U, I) of every item, numpy."""
        return outputs.float().cpu().numpy()

    def metrics(self, predictions, targets, spec: dict, labels=None) -> dict:
        ks = spec.get("target", {}).get("k", [10, 20])
        args = (targets.relevant, targets.exclude, ks, targets.popularity)
        out = ranking_metrics(predictions, *args)
        out["popularity"] = ranking_metrics(popularity_scores(targets.popularity, len(predictions)), *args)
        out["n"] = out["users"]
        out.update(getattr(targets, "notes", {}))
        return out

    def mistakes(self, predictions, targets, spec: dict, display, k: int = 24) -> list[dict]:
        return []

    # compression trade-off table (foundry compress): ranking quality, and how alike the top 10 stay
    variant_columns = (
        ("ndcg@10", "ndcg@10", ".4f"),
        ("recall@10", "recall@10", ".4f"),
        ("agreement", "same top 10 as original", ".1%"),
    )

    def variant_scores(self, predictions, targets, spec: dict, reference) -> dict:
        metrics = ranking_metrics(predictions, targets.relevant, targets.exclude, [10], targets.popularity)
        agreement = 1.0
        if reference is not None:  # the share of each user's top 10 (over all items) that stays
            mine = torch.as_tensor(predictions).topk(10, dim=1).indices
            theirs = torch.as_tensor(reference).topk(10, dim=1).indices
            agreement = float((mine[:, :, None] == theirs[:, None, :]).any(2).double().mean())
        return {"ndcg@10": metrics["ndcg@10"], "recall@10": metrics["recall@10"], "agreement": agreement}

    def report_sections(self, predictions, targets, spec: dict) -> list[tuple[str, str, str]]:
        if predictions is None:
            return []
        from modelfoundry.evaluate.ranking_report import sections

        return sections(predictions, targets, spec["labels"], spec.get("target", {}).get("k", [10, 20]))

    def shown(self, item) -> dict:
        return {}

    def score(self, predictions, targets, spec: dict) -> float:
        return ranking_metrics(predictions, targets.relevant, targets.exclude, [10], targets.popularity)[
            "ndcg@10"
        ]

    # ---- the Predictor and the HTTP service --------------------------------------------------

    def card(self, spec: dict) -> dict:
        # the items are not labels to list on the page: their count says enough
        return {"users": spec["input_shape"][0], "items": len(spec["labels"]), "labels": []}

    batch_suffixes = ()  # POST /v1/predict/batch: nothing to score by file; /v1/recommend answers users

    def cli_inputs(self, predictor, inputs: list[str]):
        raise UserError(
            f"predict: a recommendation model recommends to users: `foundry predict RUN --user "
            f"{inputs[0] if inputs else 'ID'} --k 10`."
        )

    def encode_inputs(self, predictor, inputs, origin: str = "input"):
        """User ids (known to the model) -> their indices (N, 1)."""
        index = known(predictor)["index"]
        users = [inputs] if isinstance(inputs, (str, int)) else list(inputs)
        missing = [u for u in users if str(u) not in index]
        if missing:
            raise UserError(f"{origin}: user {missing[0]!r} is not a user of this model; use recommend().")
        return torch.tensor([[index[str(u)]] for u in users], dtype=torch.long)

    def recommend(self, predictor, users: list, k: int, exclude_seen: bool) -> list[dict]:
        """Top k per user by one matrix product and `topk` over every item; a user the model never saw
        (cold start) gets the most popular items, and the answer says so."""
        items = predictor.labels
        check_k(k, len(items), "k")
        state = known(predictor)
        names = [str(u) for u in users]
        rows = [state["index"].get(u) for u in names]
        warm = [r for r in rows if r is not None]
        scores = {}
        if warm:
            device = next(predictor.model.parameters()).device
            with torch.inference_mode():
                out = predictor.model(torch.tensor(warm, device=device)[:, None]).float().cpu()  # (B, I)
                if exclude_seen:
                    out = out.masked_fill(_seen_mask(state["seen"], warm, len(items)), -torch.inf)
                top = out.topk(k, dim=1)
            scores = {r: (top.indices[j].tolist(), top.values[j].tolist()) for j, r in enumerate(warm)}
        popular = state["popular"][:k]
        answers = []
        for name, r in zip(names, rows):
            if r is None:
                listed = [(i, float(state["popularity"][i])) for i in popular]
                note = f"user {name!r} is new to the model (cold start): the {k} most popular items"
            else:
                listed = [(i, v) for i, v in zip(*scores[r]) if v != -torch.inf]
                note = None
            history = state["seen"].row(r)[:HISTORY].tolist() if r is not None else []
            answer = {
                "user": name,
                "cold_start": r is None,
                "history": [{"item": items[i], **title(state, i)} for i in history],
                "items": [
                    {"item": items[i], "score": round(float(v), 6), **title(state, i)} for i, v in listed
                ],
            }
            if note:
                answer["note"] = note
            answers.append(answer)
        return answers

    def similar(self, predictor, item, k: int) -> list[dict]:
        """The k items whose vectors point most the same way (cosine) as `item`'s."""
        items = predictor.labels
        check_k(k, len(items) - 1, "k")
        position = known(predictor)["items"].get(str(item))
        if position is None:
            raise InputError(
                404, "item", f"item {item!r} is not an item of this model.{did_you_mean(str(item), items)}"
            )
        if not hasattr(predictor.model, "item_vectors") or predictor.spec["model"]["name"] == "popularity":
            raise InputError(
                422, "item", "this model has no item vectors to compare; train mf for similar items."
            )
        with torch.inference_mode():
            vectors = torch.nn.functional.normalize(predictor.model.item_vectors().float().cpu(), dim=1)
            cosine = vectors @ vectors[position]
            cosine[position] = -torch.inf
            top = cosine.topk(k)
        state = known(predictor)
        return [
            {"item": items[i], "score": round(float(v), 6), **title(state, i)}
            for i, v in zip(top.indices.tolist(), top.values.tolist())
        ]

    # ---- feedback: clicks and likes as new interactions ---------------------------------------

    def encode_request(self, predictor, inputs: list, limits, field: str = "inputs"):
        """Feedback's input: {"user": id, "item": id} (an item of the model; a new user is welcome)."""
        if field != "input":  # POST /v1/predict
            raise InputError(
                422, field, 'a recommendation model answers POST /v1/recommend {"user": "42", "k": 10}.'
            )
        stored = []
        for n, value in enumerate(inputs):
            where = field if field == "input" else f"{field}.{n}"
            if not isinstance(value, dict) or set(value) != {"user", "item"}:
                raise InputError(422, where, 'an interaction is {"user": id, "item": id}.')
            if str(value["item"]) not in known(predictor)["items"]:
                raise InputError(
                    422,
                    f"{where}.item",
                    f"item {value['item']!r} is not an item of this model."
                    f"{did_you_mean(str(value['item']), predictor.labels)}",
                )
            stored.append({"row": {"user": str(value["user"]), "item": str(value["item"])}})
        return None, stored

    def correction(self, value, spec: dict) -> str:
        if value not in FEEDBACK:
            raise ValueError(
                f"{value!r} is not feedback on a recommendation; send one of {', '.join(FEEDBACK)}."
            )
        return value

    def feedback_records(self, rows, config: dict, folder: Path) -> Path:
        """Clicks and likes as interactions in the training data's columns (JSONL), for data.feedback."""
        from modelfoundry.tasks.text import write_jsonl

        data = config["data"]
        data.pop("label", None)  # retrain names a label column for tables; interactions have none
        records = [{data["user"]: r.input["row"]["user"], data["item"]: r.input["row"]["item"]} for r in rows]
        return write_jsonl(records, folder)

    def heldout_targets(self, data) -> list:
        """Per test user: the held-out items and the items ranked around (both as ids)."""
        targets, labels = data.test.targets, data.labels
        return [
            {
                "relevant": [labels[c] for c in targets.relevant.row(r)],
                "exclude": [labels[c] for c in targets.exclude.row(r)],
            }
            for r in range(len(targets.relevant))
        ]

    def example_scores(self, predictor, inputs: list, targets: list) -> np.ndarray:
        """ndcg@10 per test user (inputs: user ids, targets: `heldout_targets`'), or per held-back click or
        like (inputs: {"user", "item"}), ranked against every item the package has not seen the user with."""
        state, columns = known(predictor), known(predictor)["items"]
        out = np.zeros(len(inputs))
        for n, (who, target) in enumerate(zip(inputs, targets)):
            user = who["user"] if isinstance(who, dict) else who
            relevant = [who["item"]] if isinstance(who, dict) else target["relevant"]
            row = state["index"].get(str(user))
            if row is None:
                continue
            if isinstance(who, dict):
                exclude = [c for c in state["seen"].row(row).tolist() if predictor.labels[c] != who["item"]]
            else:
                exclude = [columns[i] for i in target["exclude"] if i in columns]
            wanted = [columns[i] for i in relevant if i in columns]
            scores = predictor.run(torch.tensor([[row]]))
            metrics = ranking_metrics(
                scores,
                ItemSets(np.array([0, len(wanted)]), np.array(wanted, dtype=np.int64)),
                ItemSets(np.array([0, len(exclude)]), np.array(exclude, dtype=np.int64)),
                [10],
                np.asarray(predictor.spec["preprocessing"]["popularity"]),
            )
            out[n] = metrics["ndcg@10"]
        return out

    # ---- evaluation of new data --------------------------------------------------------------

    def read_labelled(self, predictor, source: Path, label: str | None):
        """Interactions that came after the run's data: each known user's items in the file are ranked
        against every item but those the user interacted with anywhere in the run's data."""
        from modelfoundry.config import DataConfig

        columns = predictor.spec["preprocessing"]["columns"]
        frame, _ = read_interactions(source, DataConfig(source=str(source), **columns))
        state = known(predictor)
        user_rows = frame["user"].map(state["index"])
        item_rows = frame["item"].map(state["items"])
        usable = user_rows.notna() & item_rows.notna()
        if not usable.any():
            raise UserError(
                f"--data: {source}: none of its {len(frame):,} interactions is of a user and an item this "
                f"model knows (e.g. user {frame['user'].iloc[0]!r}, item {frame['item'].iloc[0]!r}). "
                "Evaluate "
                "on later interactions of the users and items the run was trained on."
            )
        u, i = user_rows[usable].astype(int).to_numpy(), item_rows[usable].astype(int).to_numpy()
        who = np.unique(u)
        n = len(state["index"])
        targets = RankingTargets(
            ItemSets.from_pairs(u, i, n).take(who),
            state["seen"].take(who),
            np.asarray(predictor.spec["preprocessing"]["popularity"]),
        )
        targets.notes = {
            "new_users": int(frame.loc[user_rows.isna(), "user"].nunique()),
            "new_items": int(frame.loc[item_rows.isna(), "item"].nunique()),
            "interactions_scored": int(usable.sum()),
        }
        return [state["users"][r] for r in who], targets, None

    def encode_targets(self, raw, spec: dict, origin: str):
        return raw


def known(predictor) -> dict:
    """What the package says about users and items, read once per Predictor: user id -> row, item id ->
    column, each user's seen items (all the run's data), the popularity order and item titles."""
    state = predictor.extras.get("recommendation")
    if state is None:
        saved = json.loads((predictor.path / INTERACTIONS).read_text())
        seen = saved["seen"]
        counts = np.array([len(s) for s in seen], dtype=np.int64)
        popularity = np.asarray(predictor.spec["preprocessing"]["popularity"])
        state = {
            "users": saved["users"],
            "index": {u: r for r, u in enumerate(saved["users"])},
            "items": {item: c for c, item in enumerate(predictor.labels)},
            "seen": ItemSets(
                np.concatenate([[0], np.cumsum(counts)]),
                np.concatenate([np.asarray(s, dtype=np.int64) for s in seen])
                if seen
                else np.zeros(0, np.int64),
            ),
            "popularity": popularity,
            "popular": np.argsort(-popularity, kind="stable").tolist(),
            "titles": saved.get("titles"),
        }
        predictor.extras["recommendation"] = state
    return state


def _seen_mask(seen: ItemSets, rows: list[int], n_items: int) -> torch.Tensor:
    """(len(rows), n_items) bool: the items each of these users interacted with."""
    return seen.take(np.asarray(rows)).mask(0, len(rows), n_items)


def title(state: dict, column: int) -> dict:
    titles = state.get("titles")
    return {"title": titles[column]} if titles and titles[column] is not None else {}


def check_k(k, most: int, field: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > most:
        raise InputError(
            422, field, f"k: {k!r} must be a whole number from 1 to {most} (the items this model can list)."
        )


# ---- reading and checking the interactions -------------------------------------------------------


def read_interactions(path: Path, data) -> tuple[pd.DataFrame, dict]:
    """The interactions as a frame of user, item (strings) and time (a number ordering each user's rows;
    the row number without data.timestamp), checked; and the data report's counts."""
    origin = str(path)
    if path.is_dir():
        raise UserError(
            f"data.source: {path} is a folder; recommendation reads a .csv, .parquet or .jsonl file."
        )
    frame = tabular.read_table(path)
    for key in ("user", "item", "rating", "timestamp"):
        column = getattr(data, key)
        if column and column not in frame.columns:
            raise UserError(
                f"{origin}: data.{key} column '{column}' not found.{did_you_mean(column, frame.columns)} "
                f"Columns: {', '.join(map(str, frame.columns[:30]))}."
            )
    report: dict = {"source": origin, "n_rows": len(frame)}
    out = pd.DataFrame({"user": frame[data.user], "item": frame[data.item]})
    for key in ("user", "item"):
        ids = out[key]
        empty = ids.isna() | (ids.astype(str).str.strip() == "")
        if empty.any():
            row = int(np.argmax(empty.to_numpy()))
            raise UserError(
                f"{origin}: {tabular.row_name(origin, row)}, column '{getattr(data, key)}': the {key} id is "
                f"empty ({int(empty.sum())} such rows). Fill in the ids or remove those rows."
            )
        out[key] = ids.map(_id_text)
    if data.timestamp:
        out["time"] = _times(frame[data.timestamp], data.timestamp, origin)
    else:
        out["time"] = np.arange(len(frame), dtype=np.float64)
    if data.rating:
        ratings, bad = tabular.as_numbers(frame[data.rating])
        if bad is not None:
            raise UserError(
                f"{origin}: {tabular.row_name(origin, bad)}, rating column '{data.rating}': "
                f"{tabular.plain(frame[data.rating].iloc[bad])} is not a number. Write ratings as numbers, "
                "or leave data.rating out to count every row as a positive."
            )
        if data.implicit_threshold is not None:
            positive = (ratings >= data.implicit_threshold).to_numpy()
            report["below_threshold"] = int((~positive).sum())
            out = out[positive]
    out = out.sort_values("time", kind="stable")
    duplicates = out.duplicated(["user", "item"], keep="last")
    report["duplicate_pairs"] = int(duplicates.sum())
    out = out[~duplicates]
    out, report["too_few_interactions"] = _min_interactions(out, data.min_interactions)
    if out.empty:
        raise UserError(
            f"{origin}: no interactions left after the threshold and data.min_interactions "
            f"({data.min_interactions}). Lower them."
        )
    report["n_examples"] = len(out)
    warnings = []
    if report["duplicate_pairs"]:
        warnings.append(f"{report['duplicate_pairs']} duplicate (user, item) pairs: kept the latest of each")
    report["warnings"] = warnings
    return out.reset_index(drop=True), report


def item_titles(data, base_dir: Path, items: pd.Index, report: dict) -> list[str | None]:
    """data.items: a side table of the items, keyed by the data.item column; its `title` column (else
    `movie_title` or `name`) names each item in the report and the served answers. An id of it that
    matches no interaction is counted; a table none of whose ids match is an error (a wrong key)."""

    table, ids = side_table(data.items, data.item, "data.items", base_dir, items, report)
    column = next((c for c in ("title", "movie_title", "name") if c in table.columns), None)
    if column is None:
        return None
    names = dict(zip(ids, table[column].astype(str)))
    return [names.get(item) for item in items]


def read_feedback(data, base_dir: Path, items: set, report: dict) -> pd.DataFrame:
    """data.feedback (written by `foundry retrain`): clicks and likes as (user, item) rows; items the
    interactions do not have are dropped and counted."""
    if data.feedback is None:
        return pd.DataFrame({"user": [], "item": []}, dtype=str)
    from modelfoundry.data.prepare import resolve_source

    path = resolve_source(data.feedback.source, base_dir, "data.feedback.source")
    table = tabular.read_table(path)
    frame = pd.DataFrame({"user": table[data.user].map(_id_text), "item": table[data.item].map(_id_text)})
    known_items = frame["item"].isin(items)
    report["feedback"] = {
        "interactions": int(known_items.sum()),
        "unknown_items": int((~known_items).sum()),
        "weight": data.feedback.weight,
    }
    return frame[known_items]


def side_table(source: str, key: str, name: str, base_dir: Path, ids: pd.Index, report: dict):
    """A side table (data.users / data.items) and its ids as text, matched to the interactions' by the
    column `key` (data.user / data.item). Ids without interactions are counted in the report; a table
    none of whose ids match is an error (a wrong key or id format)."""
    from modelfoundry.data.prepare import resolve_source

    path = resolve_source(source, base_dir, name)
    table = tabular.read_table(path)
    if key not in table.columns:
        raise UserError(
            f"{name}: {path} has no column '{key}' to match the interactions by."
            f"{did_you_mean(key, table.columns)} Columns: {', '.join(table.columns[:30])}."
        )
    keys = table[key].map(_id_text)
    matched = keys.isin(ids)
    if not matched.any():
        raise UserError(
            f"{name}: none of the {len(keys):,} ids in column '{key}' of {path} (e.g. {keys.iloc[0]!r}) "
            f"matches an id of the interactions (e.g. {ids[0]!r}). Use the same ids in both files."
        )
    report[f"{name.removeprefix('data.')}_table"] = {
        "rows": len(keys),
        "without_interactions": int((~matched).sum()),
    }
    return table, keys


SIDE_CATEGORIES = 20  # a side column's most common values each get a feature; the rest share one
NOT_FEATURES = ("title", "movie_title", "name")


def side_features(source, key: str, name: str, base_dir: Path, ids: pd.Index, report: dict) -> np.ndarray:
    """(len(ids), F) float32 features of a side table, in the order of `ids` (zeros without one): numbers
    standardised, other columns one-hot over their most common values; titles and columns of mostly
    distinct text (zip codes) left out."""
    if not source:
        return np.zeros((len(ids), 0), dtype=np.float32)
    table, keys = side_table(source, key, name, base_dir, ids, report)
    table = table.assign(**{key: keys}).drop_duplicates(key).set_index(key).reindex(ids)
    blocks = []
    for column in table.columns:
        values = table[column]
        numbers, bad = tabular.as_numbers(values)
        if bad is None and numbers.notna().any():
            std = numbers.std() or 1.0
            blocks.append(((numbers - numbers.mean()) / std).fillna(0.0).to_numpy()[:, None])
        elif column not in NOT_FEATURES and values.nunique() <= max(SIDE_CATEGORIES * 5, len(values) // 10):
            common = values.value_counts().index[:SIDE_CATEGORIES]
            blocks.append(np.stack([(values == c).to_numpy() for c in common], 1))
    if not blocks:
        return np.zeros((len(ids), 0), dtype=np.float32)
    return np.concatenate(blocks, 1).astype(np.float32)


def _id_text(value) -> str:
    """An id as text: 42.0 (a number column pandas read as float) is "42"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _times(column: pd.Series, name: str, origin: str) -> np.ndarray:
    numbers, bad = tabular.as_numbers(column)
    if bad is None and numbers.notna().all():
        return numbers.to_numpy(dtype=np.float64)
    parsed = pd.to_datetime(column, errors="coerce", utc=True)
    if parsed.isna().any():
        row = int(np.argmax(parsed.isna().to_numpy()))
        raise UserError(
            f"{origin}: {tabular.row_name(origin, row)}, timestamp column '{name}': "
            f"{tabular.plain(column.iloc[row])} is neither a number nor a date. Write times as numbers "
            "(e.g. Unix seconds) or ISO dates, or leave data.timestamp out."
        )
    return parsed.astype("int64").to_numpy(dtype=np.float64)


def _min_interactions(frame: pd.DataFrame, least: int) -> tuple[pd.DataFrame, dict]:
    """Drop users and items with fewer than `least` interactions, until none is left (a few rounds)."""
    dropped = {"users": 0, "items": 0, "interactions": 0}
    if least <= 1:
        return frame, dropped
    for _ in range(10):
        users = frame["user"].map(frame["user"].value_counts()) >= least
        items = frame["item"].map(frame["item"].value_counts()) >= least
        keep = users & items
        if keep.all():
            break
        dropped["users"] += int(frame.loc[~users, "user"].nunique())
        dropped["items"] += int(frame.loc[~items, "item"].nunique())
        dropped["interactions"] += int((~keep).sum())
        frame = frame[keep]
    return frame, dropped


def split_per_user(users: np.ndarray, times, val: bool, test: bool, seed: int) -> np.ndarray:
    """Leave-last-out per user: 2 (test) for each user's last interaction, 1 (validation) for the one
    before, 0 (training) for the rest; users with fewer than 3 interactions stay in training. `times`
    (N,) orders each user's rows (ties by row order); None: a seeded random order per user."""
    n = len(users)
    if times is None:
        times = np.random.default_rng(seed).permutation(n).astype(np.float64)
    order = np.lexsort((times, users))
    sorted_users = users[order]
    counts = np.bincount(users)
    ends = np.cumsum(counts)[sorted_users]  # each row's user's last position + 1, in sorted order
    from_end = ends - np.arange(n)  # 1 for the user's last row
    enough = counts[sorted_users] >= 3
    part_sorted = np.zeros(n, dtype=np.int8)
    held = [(2, test), (1, val)]
    position = 1
    for p, wanted in held:
        if wanted:
            part_sorted[enough & (from_end == position)] = p
            position += 1
    part = np.empty(n, dtype=np.int8)
    part[order] = part_sorted
    return part
