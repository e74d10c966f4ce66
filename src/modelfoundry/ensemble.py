"""Ensembles (model fusion): `foundry ensemble RUN_A RUN_B ... --method mean|weighted|stack`.

An ensemble is a model package like any other (`runs/<id>/model/`), registered as a model version, that
holds its members' packages (`members/0/`, `members/1/`, ...) and combines what their Predictors say:
class probabilities (N, C) or values (N,). Each member reads and encodes the raw inputs itself, so
members of any family and preprocessing combine (an MLP and gradient-boosted trees, say). The
combiner's numbers live in the package's `model.safetensors`:

    mean      weights 1/M: the average of the members' probabilities (or values)
    weighted  weights >= 0 summing to 1 (log loss; squared error for values); the default: unlike the mean,
              it does not fall below its better member when one member is much weaker (UCI Adult: gbdt
              0.8783, MLP 0.8603, mean 0.8780, weighted 0.8783; bench/RESULTS.md)
    stack     a logistic regression on the members' probabilities side by side (a linear regression on
              their values)

Both are fitted on the members' out-of-fold predictions when every member was trained with the same
--folds and seed, else on the validation split.

Members must share the task, the labels and the input columns. The validation and test splits are
those of the first member's config; the report shows each member and the ensemble side by side on them.
"""

from __future__ import annotations

import html
import json
import secrets
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.markup import escape

from modelfoundry.errors import UserError
from modelfoundry.predictor import Predictor
from modelfoundry.runfiles import (
    TEMPORARY,
    atomic_folder,
    atomic_write,
    atomic_write_json,
    package_folder,
    run_folder,
    runs_root,
)
from modelfoundry.tasks import task_of

METHODS = ("mean", "weighted", "stack")
MEMBERS = "members"


@dataclass
class Heldout:
    """A split's examples as a Predictor takes them (raw inputs), and their targets as users write them
    (class names, numbers)."""

    inputs: list
    targets: list


# ---- the Predictor of an ensemble ----------------------------------------------------------------


class MembersInputs:
    """Encoded inputs of an ensemble: each member's own encoding of the same N inputs. Slicing slices the
    inputs (every member's alike), as the service does to queue a file in pieces."""

    def __init__(self, parts):
        self.parts = list(parts)

    def __getitem__(self, index: slice) -> MembersInputs:
        return MembersInputs(part[index] for part in self.parts)

    def __len__(self) -> int:
        return len(self.parts[0])


class EnsemblePredictor(Predictor):
    """Combines its members' predictions. An encoded input is a MembersInputs: each member's own encoding."""

    def __init__(self, members: list[Predictor], combiner: dict[str, np.ndarray], spec: dict, path: Path):
        super().__init__(None, spec, path)
        self.members = members
        self.combiner = combiner
        self.task_module = _MembersEncode(self.task_module)

    def __repr__(self) -> str:
        names = [m.spec["model"]["name"] for m in self.members]
        method = self.spec["ensemble"]["method"]
        return f"EnsemblePredictor(task={self.task!r}, method={method!r}, members={names})"

    def encode(self, inputs, origin: str = "input") -> MembersInputs:
        return MembersInputs(member.encode(inputs, origin) for member in self.members)

    def run(self, x: MembersInputs, batch_size: int = 256) -> np.ndarray:
        outputs = [member.run(part, batch_size) for member, part in zip(self.members, x.parts)]
        return combine(self.combiner, outputs)

    proba = run

    def join(self, payloads: list[MembersInputs]) -> MembersInputs:
        return MembersInputs(
            member.join([p.parts[i] for p in payloads]) for i, member in enumerate(self.members)
        )


class _MembersEncode:
    """The members' task, except that a request's inputs are checked and encoded by every member (each has
    its own preprocessing); the first member's errors and stored inputs are the ones shown."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name: str):
        return getattr(self._task, name)

    def encode_request(self, predictor, inputs: list, limits, field: str = "inputs"):
        encoded = [m.task_module.encode_request(m, inputs, limits, field) for m in predictor.members]
        return MembersInputs(x for x, _ in encoded), encoded[0][1]

    def encode_batch(self, predictor, inputs: list, limits, field: str):
        encoded = [m.task_module.encode_batch(m, inputs, limits, field) for m in predictor.members]
        return MembersInputs(x for x, _ in encoded), encoded[0][1]

    def encode_files(self, predictor, contents: list, limits, field: str, **options):
        encoded = [
            m.task_module.encode_files(m, contents, limits, field, **options) for m in predictor.members
        ]
        return MembersInputs(x for x, _ in encoded), encoded[0][1]


def load_ensemble(folder: Path, spec: dict, device: str = "cpu", backend: str = "auto") -> EnsemblePredictor:
    """The Predictor of an ensemble package; each member loads with its own backend."""
    from safetensors.numpy import load_file

    from modelfoundry.predictor import load

    if backend == "onnx":
        raise UserError(
            f"{folder}: an ensemble has no model.onnx of its own; its members run on their own backends. "
            "Load it with backend 'auto' (leave --backend out)."
        )
    members = [load(folder / m["path"], device=device) for m in spec["ensemble"]["members"]]
    return EnsemblePredictor(members, load_file(str(folder / "model.safetensors")), spec, folder)


def refuse_ensemble(path: Path, command: str) -> None:
    """export, compress and retrain work on one trained model; an ensemble package holds several."""
    folder = package_folder(path)
    spec = json.loads((folder / "model.json").read_text())
    if "ensemble" in spec:
        runs = ", ".join(m["run"] for m in spec["ensemble"]["members"])
        raise UserError(
            f"{command}: {run_folder(folder).name} is an ensemble of {len(spec['ensemble']['members'])} "
            f"models ({runs}), and {command} works on one model. Run `foundry {command}` on each member, "
            "then `foundry ensemble` the results."
        )


# ---- combining -----------------------------------------------------------------------------------


def combine(combiner: dict[str, np.ndarray], outputs: list[np.ndarray]) -> np.ndarray:
    """The members' predictions -> the ensemble's: (N, C) probabilities or (N,) values."""
    if "weights" in combiner:
        return sum(float(w) * o for w, o in zip(combiner["weights"], outputs))
    features = np.concatenate([o.reshape(len(o), -1) for o in outputs], 1)  # (N, M*C) or (N, M)
    z = features @ combiner["coef"].T + combiner["intercept"]  # (N, C) logits or (N, 1) values
    if outputs[0].ndim == 1:
        return z[:, 0]
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def fit_combiner(method: str, outputs: list[np.ndarray], targets: np.ndarray) -> dict[str, np.ndarray]:
    """The combiner of `method` fitted to the members' predictions of some examples and their targets:
    class indices (N,) for probabilities, numbers (N,) for values."""
    m = len(outputs)
    if method == "mean":
        return {"weights": np.full(m, 1 / m)}
    if method == "weighted":
        return {"weights": _fit_weights(outputs, targets)}
    features = np.concatenate([o.reshape(len(o), -1) for o in outputs], 1)
    if outputs[0].ndim == 1:
        from sklearn.linear_model import LinearRegression

        linear = LinearRegression().fit(features, targets)
        return {"coef": linear.coef_.reshape(1, -1), "intercept": np.atleast_1d(linear.intercept_)}
    from sklearn.linear_model import LogisticRegression

    classes = outputs[0].shape[1]
    logistic = LogisticRegression(max_iter=2000).fit(features, targets)
    coef, intercept = np.zeros((classes, features.shape[1])), np.full(classes, -30.0)  # unseen: ~0
    if len(logistic.classes_) == 2:  # one row of logits for the second class: softmax([0, z]) = sigmoid(z)
        coef[logistic.classes_[1]], intercept[logistic.classes_[1]] = (
            logistic.coef_[0],
            logistic.intercept_[0],
        )
        intercept[logistic.classes_[0]] = 0.0
    else:
        coef[logistic.classes_], intercept[logistic.classes_] = logistic.coef_, logistic.intercept_
    return {"coef": coef, "intercept": intercept}


def _fit_weights(outputs: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """Weights on the simplex (a softmax of free numbers) minimising the log loss of the weighted
    probabilities, or the squared error of the weighted values."""
    from scipy.optimize import minimize

    stacked = np.stack(outputs)  # (M, N, C) or (M, N)
    rows = np.arange(len(targets))

    def loss(theta: np.ndarray) -> float:
        w = np.exp(theta - theta.max())
        w /= w.sum()
        mixed = np.tensordot(w, stacked, 1)
        if stacked.ndim == 3:
            return float(-np.log(np.clip(mixed[rows, targets], 1e-12, None)).mean())
        return float(((mixed - targets) ** 2).mean())

    theta = minimize(loss, np.zeros(len(outputs)), method="Nelder-Mead" if len(outputs) < 3 else "Powell").x
    w = np.exp(theta - theta.max())
    return w / w.sum()


# ---- making an ensemble --------------------------------------------------------------------------


@dataclass
class Member:
    ref: str  # as the user named it
    name: str  # the run id
    package: Path
    predictor: Predictor
    config: dict  # its run's config.yaml, paths absolute


def make_ensemble(
    refs: list[str], method: str = "weighted", name: str | None = None, console: Console | None = None
):
    """`foundry ensemble`: a new run and model version combining the packaged models `refs` (run ids,
    versions, aliases or run folders). Returns the runner's Run."""
    from modelfoundry.runner import Run
    from modelfoundry.store.models import ModelStore
    from modelfoundry.store.registry import Registry
    from modelfoundry.training.folds import load_oof

    console = console or Console(stderr=True)
    if method not in METHODS:
        raise UserError(f"--method: {method!r} is not a way to combine; use one of {', '.join(METHODS)}.")
    if len(refs) < 2:
        raise UserError(
            f"foundry ensemble: {len(refs)} run given ({', '.join(refs) or 'none'}); an ensemble combines "
            "two or more: foundry ensemble RUN_A RUN_B [...]."
        )
    if len(set(refs)) < len(refs):
        twice = sorted({r for r in refs if refs.count(r) > 1})
        raise UserError(f"foundry ensemble: {', '.join(twice)} given more than once; name each member once.")
    members = [_member(ref) for ref in refs]
    check_members(members)
    first = members[0]
    heldout = heldout_splits(first.config, Path(first.predictor.spec.get("config_dir", ".")))
    fit_on = _fit_data(method, members, heldout, console)
    if any(load_oof(run_folder(m.package)) is not None or m.predictor.spec.get("refit") for m in members):
        heldout["val"] = (
            None  # a member trained on it (--folds, train.refit): its scores there would flatter it
        )
    run_id = f"{datetime.now():%Y%m%d-%H%M%S}-{name or 'ensemble-' + method}-{secrets.token_hex(2)}"
    path = runs_root() / "".join(c if c.isalnum() or c in "-_" else "-" for c in run_id)
    path.mkdir(parents=True)
    config = {
        **first.config,
        "name": name,
        "ensemble": {"method": method, "members": [m.name for m in members]},
    }
    atomic_write(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    registry = Registry()
    task = first.predictor.task_module
    registry.start(path.name, name, first.predictor.task, "ensemble", path, config)
    try:
        metrics = write_ensemble(
            path, [m.predictor for m in members], [m.name for m in members], method, heldout, console, fit_on
        )
    except BaseException as exc:
        registry.finish(path.name, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    headline = {
        f"{split}_{k}": metrics[split][k]
        for split in ("val", "test")
        if split in metrics
        for k in task.headline
        if k in metrics[split]
    }
    registry.finish(path.name, "completed", metrics=headline)
    version = ModelStore(registry).register(
        path.name, path / "model", first.predictor.task, first.predictor.labels, headline
    )
    console.print(f"registered model version {version.name}", highlight=False)
    return Run(path.name, path, metrics, version.id)


def _member(ref: str) -> Member:
    from modelfoundry.config import absolute_paths
    from modelfoundry.predictor import load
    from modelfoundry.store.models import ModelStore

    try:
        version = ModelStore().get(ref)
        package, name = package_folder(version.path), version.run_id
    except UserError as exc:
        if not Path(ref).is_dir():  # a run folder outside this registry is a member too
            raise UserError(f"foundry ensemble: member '{ref}': {exc}") from None
        package = package_folder(ref)
        name = run_folder(package).name
    predictor = load(package)
    config_file = run_folder(package) / "config.yaml"
    if not config_file.is_file():
        raise UserError(
            f"foundry ensemble: member '{ref}' ({package}) has no config.yaml beside its package, so its "
            "validation and test splits cannot be read again. Ensemble runs trained by `foundry train`."
        )
    base_dir = Path(predictor.spec.get("config_dir", "."))
    config = absolute_paths(yaml.safe_load(config_file.read_text()), base_dir)
    return Member(ref, name, package, predictor, config)


def check_members(members: list[Member]) -> None:
    """One clear error when the members do not answer the same question on the same inputs."""
    first = members[0]
    problems = []
    for m in members[1:]:
        a, b = first.predictor.spec, m.predictor.spec
        if a["task"] != b["task"]:
            problems.append(f"{m.name} is a {b['task']} model, {first.name} a {a['task']} model")
        elif a["labels"] != b["labels"]:
            problems.append(f"{m.name} has labels {b['labels']}, {first.name} has {a['labels']}")
        elif _inputs(a) != _inputs(b):
            problems.append(f"{m.name} reads {_inputs(b)}, {first.name} reads {_inputs(a)}")
    if problems:
        raise UserError(
            "foundry ensemble: the members must share the task, the labels and the input columns: "
            + "; ".join(problems)
            + ". Ensemble runs trained on the same data for the same task."
        )
    for m in members[1:]:
        if m.config.get("data", {}).get("source") != first.config.get("data", {}).get(
            "source"
        ) or m.config.get("data", {}).get("split") != first.config.get("data", {}).get("split"):
            warnings.warn(
                f"{m.name} was trained on other data or another split than {first.name}, whose validation "
                "and test splits the ensemble is fitted and scored on: its scores there may be optimistic.",
                stacklevel=2,
            )


def _inputs(spec: dict) -> dict:
    """What a model reads, as its request names it: the kind of input and its columns."""
    pre = spec["preprocessing"]
    shown = {"kind": pre["kind"]}
    if "columns" in pre:
        shown["columns"] = sorted(c["name"] for c in pre["columns"])
    if "text_column" in pre:
        shown["text_column"] = pre["text_column"]
    return shown


def heldout_splits(config: dict, base_dir: Path) -> dict[str, Heldout | None]:
    """The validation and test splits of a run's config as raw inputs and targets (None: no such split)."""
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare

    cfg, _ = load_config({k: v for k, v in config.items() if k != "ensemble"})
    sizes = {}

    def val_then_test(split: dict, strata, part_of) -> dict:
        sizes["val"] = len(split["val"])
        return {**split, "test": np.concatenate([split["val"], split["test"]])}

    with warnings.catch_warnings():  # the members' runs already reported their data
        warnings.simplefilter("ignore")
        data = prepare(cfg, base_dir, val_then_test)
    task = task_of({"task": cfg.task})
    inputs, targets, n = list(data.test_display), task.heldout_targets(data), sizes["val"]
    return {
        "val": Heldout(inputs[:n], targets[:n]) if n else None,
        "test": Heldout(inputs[n:], targets[n:]) if len(inputs) > n else None,
    }


def _fit_data(method: str, members: list[Member], heldout: dict, console: Console) -> dict | None:
    """What the combiner is fitted on: {"what", "outputs", "targets"}; None for `mean`, which fits nothing."""
    from modelfoundry.training.folds import load_oof

    if method == "mean":
        return None
    oofs = [load_oof(run_folder(m.package)) for m in members]
    if all(o is not None for o in oofs):
        first = oofs[0]
        same = all(
            np.array_equal(o["index"], first["index"]) and np.array_equal(o["fold"], first["fold"])
            for o in oofs
        )
        if same:
            what = (
                f"out-of-fold predictions of {first['k']} folds ({len(first['index']):,} train+val examples)"
            )
            console.print(f"{method}: fitted on {what}", highlight=False)
            return {"what": what, "outputs": [o["predictions"] for o in oofs], "targets": first["targets"]}
        console.print(
            f"{method}: the members' folds differ (another --folds or seed), so not their out-of-fold "
            "predictions",
            highlight=False,
        )
    trained_on_val = [m.name for m, o in zip(members, oofs) if o is not None]
    if trained_on_val:
        raise UserError(
            f"--method {method}: {', '.join(trained_on_val)} trained its final model on the validation "
            "split (--folds), so a combiner fitted there would favour it. Use --method mean, or members "
            "that all used the same --folds (and seed): then it fits on their out-of-fold predictions."
        )
    refitted = [m.name for m in members if m.predictor.spec.get("refit")]
    if refitted:
        raise UserError(
            f"--method {method}: {', '.join(refitted)} was trained again on train+val (train.refit, on by "
            "default for model.name auto), so a combiner fitted on the validation split would favour it. "
            "Use --method mean, or train the members with --set train.refit=false."
        )
    if heldout["val"] is None:
        raise UserError(
            f"--method {method} fits on the validation split, and {members[0].name}'s config has none "
            "(data.split.val: 0). Use --method mean, or members trained with a validation split."
        )
    val = heldout["val"]
    what = f"the validation split ({len(val.targets):,} examples)"
    console.print(f"{method}: fitted on {what}", highlight=False)
    return {
        "what": what,
        "outputs": [m.predictor.predictions(val.inputs) for m in members],
        "targets": val.targets,
    }


def write_ensemble(
    path: Path,
    members: list[Predictor],
    names: list[str],
    method: str,
    heldout: dict[str, Heldout | None],
    console: Console,
    fit_on: dict | None = None,
    extra_metrics: dict | None = None,
    extra_sections: list | None = None,
    data_report: dict | None = None,
) -> dict:
    """Fit the combiner, write the package (`path/model/`), metrics.json and report.html of an ensemble of
    `members` into the run folder `path`; returns the metrics."""
    import torch
    from safetensors.torch import save_file

    first = members[0]
    task = first.task_module
    spec = {k: v for k, v in first.spec.items() if k not in ("variant", "test_accuracy", "format")}
    fit_targets = _prediction_targets(task, fit_on["targets"], first.labels) if fit_on else None
    combiner = fit_combiner(method, fit_on["outputs"] if fit_on else [None] * len(members), fit_targets)
    spec.update(
        model={"name": "ensemble", "options": {}},
        run_id=path.name,
        created=datetime.now().isoformat(timespec="seconds"),
        ensemble={
            "method": method,
            "fitted_on": fit_on["what"] if fit_on else "nothing: the plain mean",
            "members": [
                {"path": f"{MEMBERS}/{i}", "run": name, "model": m.spec["model"]["name"]}
                for i, (name, m) in enumerate(zip(names, members))
            ],
        },
    )
    scores, predictions = {}, {}
    for split, part in heldout.items():
        if part is None:
            continue
        targets = task.encode_targets(part.targets, spec, f"{split} split")
        outputs = [m.predictions(part.inputs) for m in members]
        predictions[split] = (combine(combiner, outputs), targets, part)
        scores[split] = {
            "members": [task.metrics(o, targets, m.spec) for o, m in zip(outputs, members)],
            "ensemble": task.metrics(predictions[split][0], targets, spec),
        }
    if "test" in scores:
        spec["test_accuracy"] = scores["test"]["ensemble"].get("accuracy")
    with atomic_folder(path / "model") as tmp:
        for i, member in enumerate(members):
            shutil.copytree(member.path, tmp / MEMBERS / str(i), ignore=shutil.ignore_patterns(TEMPORARY))
        save_file(
            {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in combiner.items()},
            str(tmp / "model.safetensors"),
        )
        from modelfoundry.predictor import FORMAT

        (tmp / "model.json").write_text(json.dumps({"format": FORMAT, **spec}, indent=2))
    metrics = {split: s["ensemble"] for split, s in scores.items()}
    metrics["ensemble"] = {
        **spec["ensemble"],
        "combiner": {k: np.asarray(v).round(6).tolist() for k, v in combiner.items()},
        "members": [
            {
                "run": name,
                "model": m.spec["model"]["name"],
                **{split: s["members"][i] for split, s in scores.items()},
            }
            for i, (name, m) in enumerate(zip(names, members))
        ],
    }
    metrics.update(extra_metrics or {})
    from modelfoundry.evaluate.report import write_report
    from modelfoundry.evaluate.review import review

    metrics["warnings"] = review(metrics, task)
    atomic_write_json(path / "metrics.json", metrics)
    _print_side_by_side(console, task, names, members, scores)
    for warning in metrics["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)

    test = predictions.get("test")
    write_report(
        path / "report.html",
        title=path.name,
        metrics={k: metrics[k] for k in ("val", "test") if k in metrics},
        history=[],
        warnings=metrics["warnings"],
        data_report=data_report
        or {"source": spec.get("config_dir", ""), "ensemble": spec["ensemble"]["fitted_on"]},
        labels=first.labels,
        mistakes=task.mistakes(test[0], test[1], spec, test[2].inputs) if test else [],
        config={"ensemble": spec["ensemble"]},
        sections=(task.report_sections(test[0], test[1], spec) if test else [])
        + list(extra_sections or [])
        + [members_section(task, names, members, scores, spec["ensemble"])],
    )
    return metrics


def _prediction_targets(task, targets: list, labels: list[str]) -> np.ndarray:
    """Targets in the units of the predictions: class indices for probabilities, numbers for values."""
    if task.is_classifier:
        return task.encode_targets(targets, {"labels": labels}, "validation split")
    return np.asarray(targets, dtype=np.float64)


def _columns(task, scores: dict) -> list[tuple[str, str]]:
    shown = dict.fromkeys(task.headline + ("rmse", "mae", "r2"))
    return [
        (split, key)
        for split in ("val", "test")
        if split in scores
        for key in shown
        if isinstance(scores[split]["ensemble"].get(key), (int, float))
    ]


def _print_side_by_side(console: Console, task, names, members, scores: dict) -> None:
    from rich.table import Table

    columns = _columns(task, scores)
    table = Table("model", *[f"{split} {key}" for split, key in columns])
    for i, (name, m) in enumerate(zip(names, members)):
        table.add_row(
            f"{name} ({m.spec['model']['name']})",
            *[f"{scores[split]['members'][i][key]:.4f}" for split, key in columns],
        )
    table.add_row(
        "[bold]ensemble", *[f"[bold]{scores[split]['ensemble'][key]:.4f}" for split, key in columns]
    )
    console.print(table)


def members_section(task, names, members, scores: dict, ensemble: dict) -> tuple[str, str, str]:
    """The report's section: every member and the ensemble side by side."""
    columns = _columns(task, scores)
    head = "".join(f"<th>{split} {html.escape(key)}</th>" for split, key in columns)
    rows = "".join(
        f"<tr><td>{html.escape(name)} ({html.escape(m.spec['model']['name'])})</td>"
        + "".join(f"<td>{scores[split]['members'][i][key]:.4f}</td>" for split, key in columns)
        + "</tr>"
        for i, (name, m) in enumerate(zip(names, members))
    )
    rows += "<tr><td><strong>ensemble</strong></td>" + "".join(
        f"<td><strong>{scores[split]['ensemble'][key]:.4f}</strong></td>" for split, key in columns
    )
    body = (
        f"<p>Method: {html.escape(ensemble['method'])}; combiner fitted on "
        f"{html.escape(ensemble['fitted_on'])}.</p><table><tr><th>model</th>{head}</tr>{rows}</tr></table>"
    )
    return "ensemble", "Members and the ensemble", body
