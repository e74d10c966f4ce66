"""What every task answers, with the classification answers as defaults.

A task is two things put together: its inputs (images, texts or table rows: `image.py`,
`text.py`, `tabular.py` read, check and encode them) and its target (classes here; a number in
`regression.py`). Subclasses override what differs; nothing outside `tasks/` asks a task's name.

Targets travel through training encoded: class indices for classifiers, the standardised value
for regression. `Task.predictions` turns model outputs back into what users see (probabilities,
values), and metrics, mistakes and served answers are computed from those.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from modelfoundry.errors import InputError, UserError, did_you_mean


@dataclass
class Targets:
    """The targets of every example, encoded for training, and what the package keeps about them.

    values: (N,) the raw targets from `make_targets`; after `fit_targets`, int64 class indices or float32
        standardised numbers.
    strata: (N,) what the split stratifies on (the labels, or quantile bins of a number).
    """

    values: np.ndarray
    labels: list[str]
    strata: np.ndarray
    spec: dict = field(default_factory=dict)  # e.g. regression: {"column", "mean", "std"}


class Objective:
    """The loss the training loop minimises and the validation numbers it records, for classes."""

    monitors: ClassVar[dict[str, str]] = {"val_accuracy": "max", "val_loss": "min", "val_f1_macro": "max"}

    def __init__(self, label_smoothing: float = 0.0):
        from torch import nn

        self._loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self._eval_loss = nn.CrossEntropyLoss()

    def loss(self, outputs, targets, weights=None):
        """`weights` (B,): per-example weights (train.balance_groups); the loss is their weighted mean."""
        if weights is None:
            return self._loss(outputs, targets)
        return weighted_mean(self._loss, outputs, targets, weights)

    def distill(self, outputs, teacher_outputs, temperature: float):
        """Hinton et al. 2015: match the softened teacher, scaled by T^2."""
        import torch

        return (
            torch.nn.functional.kl_div(
                torch.log_softmax(outputs.float() / temperature, 1),
                torch.log_softmax(teacher_outputs / temperature, 1),
                log_target=True,
                reduction="batchmean",
            )
            * temperature
            * temperature
        )

    def metrics(self, outputs, targets) -> dict[str, float]:
        """Validation numbers of logits (N, C) against class indices (N,), computed on the device."""
        import torch

        predicted = outputs.argmax(1)
        n = outputs.shape[1]
        confusion = torch.bincount(targets * n + predicted, minlength=n * n).reshape(n, n).double()
        tp = confusion.diag()
        precision = tp / confusion.sum(0).clamp(min=1)
        recall = tp / confusion.sum(1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        # as scikit-learn: classes absent from both are skipped
        present = confusion.sum(1) + confusion.sum(0) > 0
        return {
            "val_loss": self._eval_loss(outputs, targets).item(),
            "val_accuracy": (predicted == targets).double().mean().item(),
            "val_f1_macro": f1[present].mean().item(),
        }

    def evaluate(self, model, val, autocast=None) -> dict[str, float]:
        """The validation numbers of `model` on `val` after an epoch: `metrics` of every example's logits.
        (A language model scores batch by batch instead: its logits of a whole split would not fit.)"""
        from modelfoundry.training.loop import predict_logits

        return self.metrics(predict_logits(model, val, autocast=autocast), val.targets)

    def line(self, record: dict) -> str:
        """The validation part of an epoch's progress line."""
        return f"val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}"


class Task:
    """Classification of some kind of input; subclasses supply the inputs (`kind`) and may change the
    target."""

    name = ""
    kind = ""  # the inputs: "image", "text" or "table"
    is_classifier = True
    objective_class = Objective
    default_monitor = "val_accuracy"
    # what early stopping reads below config.SMALL_VAL validation examples, where the default moves in steps
    small_val_monitor = "val_loss"
    # the numbers of a split that the registry, `runs list` and the CLI table show, best first
    headline = ("accuracy", "f1_macro", "roc_auc")
    # retrain/promote: the metric a challenger must beat the champion on, and which way is better
    retrain_metric, retrain_higher_is_better = "accuracy", True
    # evaluate/review.py: validation and test may differ by this much in this metric before the report says so
    review_gap = ("accuracy", 0.05)
    data_keys: tuple[str, ...] = ()  # data keys of config.TEXT_DATA_KEYS this task reads
    starter = ""  # the commented config `foundry init --task NAME` writes
    # model.name auto (the default where there are some): the families a run trains and compares on the
    # validation split, in order of preference on a tie; none: the default model is mlp
    auto_models: tuple[str, ...] = ()
    # ... and simplest first: compared out of folds, a simpler family within one standard error of the best
    # is kept (training/folds.py `simplest_within_error`)
    auto_simplest_first: tuple[str, ...] = ()
    default_model = "mlp"  # model.name when the config names none and the task has no auto_models
    # family -> {dotted key: value}: where this task's data wants other defaults than the family's recipe
    # (applied over it, under the user's keys)
    family_recipes: ClassVar[dict[str, dict]] = {}
    # `foundry tune`: None where its trials can train this task, else why not (said instead of a traceback)
    untunable: str | None = None

    # ---- config ------------------------------------------------------------------------------

    def check_config(self, cfg) -> list[str]:
        """Problems with a config for this task, each naming the key and the fix (checked with the rest)."""
        problems = []
        data = cfg.data
        if not data.source.startswith("builtin:") and not data.label and self.kind != "image":
            problems.append(f"data.label is required for {self.name}: name the label column")
        if cfg.train.loss is not None:
            problems.append(
                f"train.loss: {cfg.train.loss!r} is for tabular_regression; a classifier is trained with "
                "cross-entropy. Remove the key."
            )
        problems += self.check_monitor(cfg)
        return problems

    def check_monitor(self, cfg) -> list[str]:
        allowed = self.objective_class.monitors
        problems = []
        for key, value in (
            ("train.monitor", cfg.train.monitor),
            ("tune.metric", cfg.tune and cfg.tune.metric),
        ):
            if value is not None and value not in allowed:
                problems.append(
                    f"{key}: {value!r} is not a validation metric of {self.name}; use one of "
                    f"{', '.join(allowed)}.{did_you_mean(value, allowed)}"
                )
        return problems

    def objective(self, train_cfg, target_spec: dict | None = None) -> Objective:
        return Objective(train_cfg.label_smoothing)

    # ---- a run -------------------------------------------------------------------------------

    def run(self, cfg, base_dir: Path, path: Path | None, resume: bool, console, device) -> tuple | None:
        """A task whose data is no set of examples with targets (text generation: a token stream) reads,
        trains (through `training.loop.fit`), evaluates and packages here, and returns (metrics, timings);
        None: the runner's common path (prepare, build, fit, predictions, metrics)."""
        return None

    def predictor(self, model, spec: dict, folder: Path | None):
        """What `modelfoundry.load` returns for a package of this task."""
        from modelfoundry.predictor import Predictor

        return Predictor(model, spec, folder)

    def score_source(self, predictor, source: Path) -> dict | None:
        """`foundry evaluate --data` of a task that scores new data itself (no labels to read): its
        metrics; None: the common path (read_labelled, predictions, metrics)."""
        return None

    # ---- data --------------------------------------------------------------------------------

    def prepare_data(self, config, base_dir: Path, resplit=None):
        """The whole of `data.prepare.prepare` for a task whose data are not labelled examples (a
        `Prepared`), or None: the shared reading, checks and split of examples and their targets."""
        return

    def load(self, data, base_dir: Path, path: Path, image_shape=None):
        """Read one source: (examples, raw targets, origin, extra report fields). Per kind of input."""
        raise NotImplementedError

    def raw_targets(self, column: pd.Series, origin: str) -> np.ndarray:
        """A label column (a whole file's or a streamed chunk's, without gaps) as the task reads it: class
        names as strings."""
        if pd.api.types.is_float_dtype(column):
            fractional = (column != column.round()).to_numpy()
            if fractional.any():
                from modelfoundry.data.tabular import plain, row_name

                i = int(np.argmax(fractional))
                raise UserError(
                    f"{origin}: {row_name(origin, column.index[i])}, label column '{column.name}': "
                    f"{plain(column.iloc[i])} is a number with a fraction, and a classifier predicts "
                    "classes. Predict the number with task: tabular_regression, or write the classes as "
                    "names or whole numbers."
                )
            column = column.astype(np.int64)  # "1.0" read from a column with gaps is class "1"
        return column.astype(str).to_numpy()

    def count_targets(self, raw: np.ndarray, part_of: np.ndarray, counts: dict | None = None) -> dict:
        """Adds some examples' raw targets to `counts`, per part (train, val, test, feedback): all that
        `check_targets` needs. Streamed readers call it per chunk; `make_targets` once. Classes: examples
        per class."""
        counts = {} if counts is None else counts
        for part in dict.fromkeys(part_of.tolist()):
            counts.setdefault(part, Counter()).update(raw[part_of == part].tolist())
        return counts

    def check_targets(self, counts: dict, origin: str, data, report: dict, values=None) -> tuple[list, dict]:
        """The checks on every example's targets once all are counted, and what the report says of them.
        Classes: at least two, and every class of a validation or test part seen in training. Returns the
        class names and what the package keeps about the target (nothing, for classes). `values`: the raw
        targets the reader holds (all of them in memory, a sample when streamed)."""
        from modelfoundry.data import validate

        total = sum(counts.values(), Counter())
        labels = validate.class_names(total, origin)
        examples = sum(total.values())
        if examples >= 20 and len(labels) > examples / 2:
            raise UserError(
                f"{origin}: label column '{data.label or 'target'}' has {len(labels):,} different values "
                f"in {examples:,} rows, such as {labels[0]!r} and {labels[1]!r}: it looks like an ID, not "
                "classes. Name the column that holds the classes in data.label, or predict a number with "
                "task: tabular_regression."
            )
        validate.check_trained(counts, origin, report.get("sources"))
        report["class_counts"], balance = validate.class_balance(total, labels)
        report["warnings"] = report.get("warnings", []) + balance
        return labels, {}

    def strata(self, raw: np.ndarray) -> np.ndarray:
        """What the in-memory split stratifies on: the classes. (A streamed split is by a hash of the row
        number, stratified only in expectation.)"""
        return np.asarray(raw)

    def make_targets(self, raw: np.ndarray, part_of: np.ndarray, report: dict, origin: str, data) -> Targets:
        """Every example's targets at once (in memory), checked; encoded by `fit_targets` after the split."""
        labels, spec = self.check_targets(self.count_targets(raw, part_of), origin, data, report, raw)
        return Targets(raw, labels, self.strata(raw), spec)

    def fit_targets(self, targets: Targets, train_index: np.ndarray) -> None:
        """Anything learnt from the training split's targets (regression standardises here), then the
        targets encoded for training: class indices."""
        targets.values = self.encode_targets(targets.values, {"labels": targets.labels}, "data")

    def output_size(self, labels: list[str]) -> int:
        return len(labels)

    def model_text_spec(self, preprocessing: dict) -> dict | None:
        """What a text model's builder needs to know about the tokens; None for other inputs."""
        return None

    def model_table_spec(self, preprocessing: dict) -> dict | None:
        """What a table model's builder may want to know about the encoded columns (gbdt: which encoded
        features are one category's one-hot block); None for other inputs."""
        return None

    def augmentation(self, cfg):
        """The training-time augmentation of the config, or None."""
        return

    # ---- predictions, metrics, report --------------------------------------------------------

    def predictions(self, outputs, spec: dict) -> np.ndarray:
        """Model outputs (N, C) -> class probabilities (N, C), numpy."""
        import torch

        return torch.softmax(outputs.float(), 1).cpu().numpy()

    def metrics(self, predictions: np.ndarray, targets: np.ndarray, spec: dict, labels=None) -> dict:
        from modelfoundry.evaluate.metrics import classification_metrics

        return classification_metrics(predictions, targets, labels or spec["labels"])

    def mistakes(self, predictions, targets, spec: dict, display, k: int = 24) -> list[dict]:
        """The worst mistakes of a split, worst first, each with what to show of its input."""
        from modelfoundry.evaluate.metrics import worst_mistakes

        if predictions is None:
            return []
        labels = spec["labels"]
        worst = list(worst_mistakes(predictions, targets, k))
        out = []
        for i, shown in zip(worst, _take(display, worst)):
            item = {
                "true": labels[targets[i]],
                "pred": labels[int(predictions[i].argmax())],
                "confidence": float(predictions[i].max()),
            }
            out.append({**item, **self.shown(shown)})
        return out

    def shown(self, item) -> dict:
        """How the report shows one input: {"image": array} / {"text": str} / {"row": dict}."""
        raise NotImplementedError

    def report_sections(self, predictions, targets, spec: dict) -> list[tuple[str, str, str]]:
        """Extra report sections (anchor, heading, HTML) from the test split's predictions."""
        return []

    def describe_targets(self, labels: list[str]) -> str:
        return f"{len(labels)} classes"

    def fairness(self, predictions, targets, groups: pd.DataFrame, spec: dict, settings: dict) -> dict:
        """The fairness audit of a split (evaluate/fairness.py): per group of each sensitive column, and the
        gaps. Classes: accuracy, precision, recall, F1; with two classes the second is the positive one."""
        from modelfoundry.evaluate import fairness

        labels = spec["labels"]
        per_group = fairness.classification_groups(predictions.argmax(1), np.asarray(targets), len(labels))
        out = fairness.audit(per_group, groups, settings)
        return {"positive_label": labels[1], **out} if len(labels) == 2 else out

    def score(self, predictions: np.ndarray, targets: np.ndarray, spec: dict) -> float:
        """`retrain_metric` alone, cheaply (permutation importance computes it columns x repeats times)."""
        return float((predictions.argmax(1) == targets).mean())

    def importance(self, predictor, display, targets: np.ndarray, spec: dict) -> dict | None:
        """Global explanations of the test split (evaluate/importance.py), or None where the inputs have none
        yet. Per kind of input: tables rank their columns."""
        return None

    def global_explanation(self, predictor, display, predictions: np.ndarray, spec: dict) -> dict | None:
        """What the model relies on over the whole test split, for texts and images (tables rank their
        columns in `importance`); None where there is none. `predictions`: the split's (`predictions`)."""
        return None

    def global_section(self, entry: dict) -> tuple[str, str, str]:
        """The report section of `global_explanation`'s entry (anchor, heading, HTML)."""
        raise NotImplementedError

    def balance_cells(self, targets: np.ndarray, labels: list[str]) -> np.ndarray:
        """What train.balance_groups balances within each group, per example: its class name (regression:
        one cell per group)."""
        return np.asarray(labels, dtype=object)[np.asarray(targets)]

    # ---- explanations of single predictions (evaluate/explain.py) ----------------------------

    explain_steps = 32  # integrated gradients' default steps (per kind of input: bench/explain.py measures)

    def explain(self, predictor, inputs, label: str | None, steps: int | None) -> list[dict]:
        """One explanation per raw input (as `Predictor.predict` takes them)."""
        origin = str(inputs) if isinstance(inputs, (str, Path)) else "input"
        encoded = predictor.encode(inputs, origin)
        return self.explain_batch(predictor, encoded, self.explained_inputs(inputs), label, steps)

    def explain_batch(
        self, predictor, encoded, raw: list | None, label: str | None, steps: int | None
    ) -> list[dict]:
        """One explanation per encoded input: what is explained (`explain_target`: the predicted class, or
        `label`) and why (`explain_encoded`, per kind of input). `raw`: the inputs as shown beside it."""
        from modelfoundry.evaluate.explain import MAX_INPUTS

        if len(encoded) > MAX_INPUTS:
            raise UserError(
                f"explain: {len(encoded):,} inputs; it explains up to {MAX_INPUTS} at a time. Give fewer (a "
                "smaller file, or a few texts or images)."
            )
        predictions = predictor.run(encoded)
        raw = raw or [None] * len(predictions)
        out = []
        for i, prediction in enumerate(predictions):
            target, head = self.explain_target(prediction, predictor.spec, label)
            body = self.explain_encoded(
                predictor, encoded[i : i + 1], target, steps or self.explain_steps, raw[i]
            )
            out.append({**head, **body})
        return out

    def explained_inputs(self, inputs) -> list | None:
        """The raw inputs as an explanation shows them beside its attributions (tables: the rows), or None."""
        return None

    def explain_target(self, prediction: np.ndarray, spec: dict, label: str | None) -> tuple[int, dict]:
        """Which output is explained and what the explanation says of it: the probability (C,) of the
        predicted class, or of `label` when asked."""
        labels = spec["labels"]
        predicted = int(np.argmax(prediction))
        if label is None:
            target = predicted
        elif label in labels:
            target = labels.index(label)
        else:
            raise InputError(
                422,
                "class",
                f"class {label!r} is not a label of this model.{did_you_mean(str(label), labels)} "
                f"Labels: {', '.join(labels)}.",
            )
        return target, {
            "label": labels[target],
            "probability": float(prediction[target]),
            "predicted": labels[predicted],
            "explains": f"probability of {labels[target]!r}",
        }

    def explained(self, outputs, spec: dict, target: int):
        """Model outputs (S, C) -> the number explained (S,): the target class's probability."""
        import torch

        return torch.softmax(outputs.float(), 1)[:, target]

    def tree_contributions(
        self, contributions: np.ndarray, target: int, spec: dict
    ) -> tuple[np.ndarray, float, str]:
        """LightGBM's SHAP values of one row (K, F + 1) (K score columns, the last value the expected score)
        -> (per feature (F,), expected value, what they add up to): the target class's raw score. A binary
        booster has one score, the log-odds of the second class; the first class's is its negative."""
        labels = spec["labels"]
        if len(contributions) == 1:
            sign = 1.0 if target == 1 else -1.0
            row = sign * contributions[0]
            return row[:-1], float(row[-1]), f"log-odds of {labels[target]!r}"
        row = contributions[target]
        return row[:-1], float(row[-1]), f"raw score of {labels[target]!r} (its softmax is the probability)"

    def explain_encoded(self, predictor, encoded, target, steps: int, raw) -> dict:
        """Why the model said what it did of one encoded input (a batch of one): the attributions
        (evaluate/explain.py lists the keys). Per kind of input."""
        raise NotImplementedError

    def explanation_html(self, explanation: dict) -> str:
        """The explanation as HTML (highlighted text, heat map or bars) with its input. Per kind of input."""
        raise NotImplementedError

    def shown_input(self, mistake: dict, predictor=None):
        """A report mistake's shown input (`shown`) as `explain` takes it. Per kind of input."""
        raise NotImplementedError

    def encoded_groups(self, spec: dict, encoded, column: str) -> np.ndarray:
        """Each encoded input's group of `column`, for evaluate.threshold_policy's per-group thresholds (which
        need the group at prediction time). Per kind of input: only table rows carry their columns."""
        raise UserError(
            f"evaluate.threshold_policy: a {self.name} model's inputs do not carry column {column!r} when it "
            "predicts, so a per-group threshold cannot be applied. Remove evaluate.threshold_policy (the "
            "fairness audit still runs), or use train.balance_groups."
        )

    # ---- the Predictor and the HTTP service --------------------------------------------------

    def encode_inputs(self, predictor, inputs, origin: str = "input"):
        """Raw inputs -> the model's input (a tensor (N, ...) or a list of token-id tensors)."""
        raise NotImplementedError

    def encode_request(self, predictor, inputs: list, limits, field: str = "inputs"):
        """JSON inputs of a request -> (the model's input, what feedback keeps of each input).

        Raises InputError naming the input at fault (`inputs.2`, or `input` for feedback's one input).
        `limits` holds the server's limits (serve.service.Settings: max_image_pixels, ...)."""
        raise NotImplementedError

    accepts_files = False  # `POST /v1/predict/file` takes uploads (images)
    # what `POST /v1/predict/batch` (and the page's file picker) takes: file suffixes, and several files?
    batch_suffixes: tuple[str, ...] = (".csv", ".tsv", ".parquet", ".jsonl", ".json")
    batch_multiple = False

    def batch_inputs(self, predictor, files: list[tuple[str, Path]], limits) -> tuple[list[str], list, list]:
        """Uploaded files (name as sent, where it lies on disk) -> (each input's name in the `input` column,
        the inputs as `encode_batch` takes them, notes such as ignored columns). Raises InputError naming
        the file. Per kind of input."""
        raise NotImplementedError

    def encode_batch(self, predictor, inputs: list, limits, field: str):
        """A chunk of `batch_inputs`' inputs -> (model input, what feedback keeps), as `encode_request`."""
        return self.encode_request(predictor, inputs, limits, field)

    def answer(self, predictions: np.ndarray, spec: dict, top_k: int = 1) -> list[dict]:
        """Served / printed answer per input: the label, its probability and the top k."""
        labels = spec["labels"]
        order = np.argsort(-predictions, axis=1)[:, : max(1, top_k)]
        return [
            {
                "label": labels[top[0]],
                "probability": round(float(p[top[0]]), 6),
                "top_k": [{"label": labels[j], "probability": round(float(p[j]), 6)} for j in top],
            }
            for p, top in zip(predictions, order)
        ]

    def printed(self, answer: dict, top_k: int) -> dict:
        """One row of `foundry predict`'s table (and CSV) for an answer."""
        row = {"label": answer["label"], "probability": round(answer["probability"], 4)}
        if top_k > 1:
            row["top_k"] = "; ".join(f"{t['label']}={t['probability']:.3f}" for t in answer["top_k"])
        return row

    def predicted(self, answer: dict):
        """What a served answer says, as feedback stores it."""
        return answer["label"]

    def correction(self, value, spec: dict) -> str:
        """A corrected target sent as feedback, checked; returns what is stored. ValueError names the
        problem."""
        labels = spec["labels"]
        if not isinstance(value, str) or value not in labels:
            raise ValueError(
                f"{value!r} is not a label of this model.{did_you_mean(str(value), labels)} "
                f"Labels: {', '.join(labels)}."
            )
        return value

    def recommend(self, predictor, users: list, k: int, exclude_seen: bool) -> list[dict]:
        """The k best items per user; only recommendation models recommend."""
        raise InputError(
            422, "user", f"a {self.name} model does not recommend items; it predicts from inputs."
        )

    def similar(self, predictor, item, k: int) -> list[dict]:
        raise InputError(422, "item", f"a {self.name} model does not find similar items.")

    def card(self, spec: dict) -> dict:
        """What the model card (`/v1/model`, the page) says about this task's inputs."""
        return {}

    # ---- evaluation of new data, retraining --------------------------------------------------

    def read_labelled(self, predictor, source: Path, label: str | None):
        """New labelled data for `foundry evaluate --data`: (inputs for predict, raw targets, display)."""
        raise NotImplementedError

    def labelled_columns(self, predictor, source: Path, display) -> pd.DataFrame | None:
        """Every column of the rows `read_labelled` returned, in its order (the fairness audit of new data
        reads its groups there); None where the inputs are not rows of a table."""
        return None

    def encode_targets(self, raw, spec: dict, origin: str) -> np.ndarray:
        """Raw targets (of new data, or of a streamed chunk) -> the encoded targets: class indices (N,)."""
        labels = spec["labels"]
        raw = np.asarray([str(v) for v in raw])
        codes = pd.Categorical(raw, categories=labels).codes.astype(np.int64)
        if (codes < 0).any():
            unknown = sorted(set(raw[codes < 0].tolist()))
            raise UserError(
                f"{origin}: label(s) {', '.join(map(repr, unknown[:5]))} were never seen in training; "
                f"the model knows {', '.join(labels)}."
            )
        return codes

    # compression trade-off table: (row key, column heading, format) of the quality columns
    variant_columns = (
        ("accuracy", "accuracy", ".4f"),
        ("f1_macro", "F1 macro", ".4f"),
        ("agreement", "agrees with original", ".1%"),
    )

    def variant_scores(self, predictions: np.ndarray, targets: np.ndarray, spec: dict, reference) -> dict:
        """A compressed variant's quality on the test split, and how often it agrees with the original
        (`reference`: the original's predictions, None for the original itself)."""
        metrics = self.metrics(predictions, targets, spec)
        predicted = predictions.argmax(1)
        agreement = float((predicted == reference.argmax(1)).mean()) if reference is not None else 1.0
        return {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"], "agreement": agreement}

    def parity_view(self, outputs):
        """What an exported graph must reproduce of the model's outputs: the class probabilities."""
        import torch

        return torch.softmax(outputs.float(), 1)

    def agreement(self, reference, candidate) -> float:
        """Share of examples where two `parity_view`s agree: the same most likely class."""
        return float((reference.argmax(1) == candidate.argmax(1)).double().mean())

    def synthetic_inputs(self, spec: dict, count: int, generator):
        """Seeded stand-in model inputs for checks when a run kept no held-out examples."""
        import torch

        return torch.randn(count, *spec["input_shape"], generator=generator)

    def student_data(self, teacher_package: Path, teacher_spec: dict) -> dict:
        """data: keys a distillation student needs to read the teacher's inputs (text: its tokens)."""
        return {}

    def heldout_targets(self, data) -> list:
        """The targets of prepared data's test split as users write them (class names)."""
        return [data.labels[t] for t in data.test.targets.tolist()]

    def example_scores(self, predictor, inputs: list, targets: list) -> np.ndarray:
        """Per-example scores that `aggregate_score` turns into the retrain metric: 1 right, 0 wrong."""
        return (np.array(predictor.predict(inputs)) == np.array(targets)).astype(float)

    def aggregate_score(self, scores: np.ndarray) -> float:
        return float(scores.mean())

    def stored(self, label: str):
        """A stored correction (text) as a target."""
        return label

    def feedback_records(self, rows, config: dict, folder: Path) -> Path:
        """Corrections written as a source laid out like the training data."""
        raise NotImplementedError


# ---- helpers shared by the tasks -----------------------------------------------------------------


def weighted_mean(loss, outputs, targets, weights):
    """A torch loss module's per-example values (B,), averaged with weights (B,)."""
    reduction, loss.reduction = loss.reduction, "none"
    try:
        values = loss(outputs, targets)
    finally:
        loss.reduction = reduction
    return (values * weights).sum() / weights.sum()


def _take(display, indices: list[int]) -> list:
    """The shown inputs of some examples; streamed tables read only those rows, in one pass."""
    return display.take(indices) if hasattr(display, "take") else [display[i] for i in indices]


def one_upload(files: list[tuple[str, Path]], suffixes: tuple[str, ...], what: str) -> tuple[str, Path]:
    """The one file of a batch upload whose inputs are rows of a table (or lines of text)."""
    if len(files) != 1:
        raise InputError(
            422, "file", f"{len(files)} files uploaded; a {what} model scores one file at a time."
        )
    name, path = files[0]
    if Path(name).suffix.lower() not in suffixes:
        raise InputError(
            415,
            "file",
            f"{name}: a {what} model reads {', '.join(suffixes)} files; convert it to one of those.",
        )
    return name, path


def at(field: str, i: int) -> str:
    """The field of input i of a request: `inputs.3`, or `input` for feedback's single input."""
    return field if field == "input" else f"{field}.{i}"


def json_type(value) -> str:
    return {
        str: "a string",
        dict: "an object",
        list: "a list",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_text(value: str) -> str:
    """A JSON string as text every tokenizer, database and UTF-8 file can hold: JSON may carry a lone
    UTF-16 surrogate (`"\\ud800"`, half of an emoji cut in two), which is no character; it becomes
    U+FFFD, the replacement character, as a UTF-8 decoder would make of a broken byte."""
    return value if value.isascii() else _LONE_SURROGATE.sub("\ufffd", value)
