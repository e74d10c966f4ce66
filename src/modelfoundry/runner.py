"""A training run from end to end: config -> data -> model -> fit -> evaluate -> package -> report.

A run is a folder `runs/<run-id>/` holding config.yaml, data_report.json, metrics.json,
report.html, checkpoints/, tensorboard/ and model/ (the package `load()` reads).
"""

from __future__ import annotations

import io
import json
import math
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.markup import escape

from modelfoundry.builder import build, model_options
from modelfoundry.config import Config, config_to_dict, load_config
from modelfoundry.data.prepare import Prepared, prepare
from modelfoundry.errors import UserError
from modelfoundry.evaluate.review import review
from modelfoundry.plan.check import plan_vs_measured
from modelfoundry.predictor import Predictor, save_package
from modelfoundry.runfiles import (
    CALIBRATION,
    HELDOUT,
    atomic_write,
    atomic_write_json,
    package_folder,
    remove_leftovers,
    run_folder,
    runs_root,
    save_sample,
)
from modelfoundry.store.registry import Registry
from modelfoundry.tasks import get_task, task_of
from modelfoundry.tasks.tabular import BUILTIN_LABEL
from modelfoundry.training import distributed
from modelfoundry.training.features import cached_features
from modelfoundry.training.loop import predict_logits


@dataclass
class Run:
    id: str
    path: Path
    metrics: dict
    version: int | None = None  # the model version in the registry

    def __repr__(self) -> str:
        test = self.metrics.get("test", {})
        return f"Run(id={self.id!r}, path='{self.path}', test_accuracy={test.get('accuracy')})"


def new_run_id(config: Config) -> str:
    stem = (
        config.name or f"{config.data.source.split(':')[-1].split('/')[-1].split('.')[0]}-{config.model.name}"
    )
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:40]
    return f"{datetime.now():%Y%m%d-%H%M%S}-{stem}-{secrets.token_hex(2)}"


def train(
    config: str | Path | dict,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    parent_version: int | None = None,
    variant: str = "base",
) -> Run:
    """Train, evaluate and package a model, registered as a new model version; returns the run with its
    metrics.

    `parent_version`: the version this run retrains (`foundry retrain`) or compresses (`variant`
    "distilled"); the new version joins its lineage. Under torchrun (DDP) every process calls this; rank
    0 alone writes the run and returns its metrics, the other ranks return the same id and path without.
    """
    console = console or Console(stderr=True)
    cfg, base_dir = load_config(config, overrides)
    candidates = auto_candidates(cfg, config, overrides)
    device = distributed.init(cfg.train.device)  # DDP: under torchrun, join the process group (gloo or nccl)
    if cfg.train.folds and distributed.world_size() > 1:
        raise UserError(
            f"train.folds (--folds {cfg.train.folds}): k-fold cross-validation trains its folds one after "
            "another in one process; train without --nproc/--nnodes, or without --folds."
        )
    if cfg.train.folds and candidates:
        raise UserError(
            f"train.folds (--folds {cfg.train.folds}) needs one model family: model.name auto picks one "
            f"of {', '.join(candidates)} on a single validation split. Set model.name to one of them "
            f"(--set model.name={next(iter(candidates))}), or train without --folds to let auto pick."
        )
    if cfg.train.folds and resume:
        raise UserError(
            f"--resume does not continue a run with --folds {cfg.train.folds}: start it again without "
            "--resume."
        )
    if not distributed.is_main():  # DDP: the other ranks train beside rank 0 and write and print nothing
        path = Path(distributed.broadcast_object())
        _run(cfg, base_dir, None, resume, Console(file=io.StringIO()), device, candidates=candidates)
        distributed.finish()  # waits for rank 0 to write the run
        return Run(path.name, path, {})
    if resume and run_dir is None:
        run_dir = _interrupted_run(cfg)
        console.print(f"resuming {run_dir}", highlight=False)
    path = Path(run_dir) if run_dir else runs_root() / new_run_id(cfg)
    if resume and not (path / "checkpoints").is_dir():
        raise UserError(
            f"--resume: {path} has no checkpoints/ folder, so there is nothing to resume. "
            "Start the run again without --resume."
        )
    distributed.broadcast_object(str(path))  # DDP: one run folder, named by rank 0
    path.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)  # half-written files of a killed run; the real files are intact
    run_id = path.name
    resolved = config_to_dict(cfg)
    atomic_write(path / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    registry = Registry()
    registry.start(run_id, cfg.name, cfg.task, cfg.model.name, path, resolved)
    try:
        if (
            cfg.train.folds
        ):  # k-fold cross-validation: a run per fold, then the final model (training/folds.py)
            from modelfoundry.training.folds import train_folds

            metrics, timings = train_folds(cfg, base_dir, path, console, device)
            trained = cfg
        else:
            metrics, timings, trained = _run(
                cfg, base_dir, path, resume, console, device, candidates=candidates
            )
    except BaseException as exc:
        registry.finish(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    if (
        trained is not cfg
    ):  # auto: the run is the picked family's (refit: train.refit true), as the config says
        cfg, resolved = trained, config_to_dict(trained)
        atomic_write(path / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        registry.start(run_id, cfg.name, cfg.task, cfg.model.name, path, resolved)
    headline = {
        f"{split}_{k}": v[k]
        for split, v in metrics.items()
        if split in ("val", "test")
        for k in get_task(cfg.task).headline
        if k in v
    }
    registry.finish(run_id, "completed", metrics=headline, timings=timings)
    from modelfoundry.store.models import ModelStore

    version = ModelStore(registry).register(
        run_id,
        path / "model",
        cfg.task,
        json.loads((path / "model" / "model.json").read_text())["labels"],
        headline,
        variant,
        parent_version,
    )
    console.print(f"registered model version {version.name}", highlight=False)
    distributed.finish()
    return Run(run_id, path, metrics, version.id)


def _typical_example(train) -> torch.Tensor:
    """One example as a batch of one, for counting FLOPs: in-memory data says which (texts: the median
    length); streamed data gives its first."""
    return train.inputs[:1] if hasattr(train, "inputs") else next(iter(train.batches(1)))[0]


def _interrupted_run(cfg: Config) -> Path:
    """`--resume` without `--run-dir`: the newest run of this very config that stopped (killed) or failed
    (interrupted) and left checkpoints behind."""
    wanted = json.dumps(config_to_dict(cfg), sort_keys=True, default=str)
    for record in Registry().list(limit=200):
        if (
            record.shown_status in ("stopped", "failed")
            and (Path(record.path) / "checkpoints").is_dir()
            and json.dumps(record.config, sort_keys=True, default=str) == wanted
        ):
            return Path(record.path)
    raise UserError(
        "--resume: no stopped or interrupted run of this config with checkpoints in the registry. "
        "Give the run folder with --run-dir (`foundry runs list` shows the runs), or start anew "
        "without --resume."
    )


def _run(*args, **kwargs) -> tuple[dict, dict, Config]:
    """`_train_and_evaluate`, with torch's thread count as it found it afterwards (a small model trained on
    one thread is also evaluated on one)."""
    threads = torch.get_num_threads()
    try:
        return _train_and_evaluate(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _train_and_evaluate(
    cfg: Config,
    base_dir: Path,
    path: Path | None,
    resume: bool,
    console: Console,
    device: torch.device,
    resplit=None,
    extra_metrics: dict | None = None,
    extra_sections: list | None = None,
    candidates: dict[str, Config] | None = None,
) -> tuple[dict, dict, Config]:
    """`path` None: a DDP rank other than 0, which trains beside rank 0 and writes nothing. Returns the
    metrics, the timings and the config of the model trained (auto: the picked candidate's).

    `resplit`: replaces the data's split (see `prepare`; k-fold cross-validation trains each fold so);
    `extra_metrics` and `extra_sections` go into metrics.json and report.html besides the run's own;
    `candidates`: model.name auto's config of each family to compare."""
    task = get_task(cfg.task)
    timings = {}
    clock = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    own = task.run(cfg, base_dir, path, resume, console, device)  # a token stream (text_generation)
    if own is not None:
        return (*own, cfg)
    data = prepare(cfg, base_dir, resplit)
    if path:
        atomic_write_json(path / "data_report.json", data.report)
    timings["data"] = time.perf_counter() - clock
    shape = data.input_shape
    console.print(
        f"data: {data.report['splits']} examples (train/val/test), {task.describe_targets(data.labels)}, "
        + (f"up to {shape[0]} tokens per text" if "max_length" in data.preprocessing else f"input {shape}"),
        highlight=False,
    )
    clock = time.perf_counter()
    splits = {
        name: getattr(data, name) and getattr(data, name).to(device) for name in ("train", "val", "test")
    }
    balance = balance_groups(cfg, task, data, splits, device, console)
    refits = _refits(
        next(iter(candidates.values())) if candidates else cfg, bool(candidates), splits
    )  # checked before training
    picked = None
    if candidates:  # model.name auto: train each candidate family, keep the best on the validation split
        cfg, built, result, setup, picked = _pick(
            candidates, base_dir, data, splits, path, resume, console, device
        )
    else:
        built, result, setup = _train_one(cfg, base_dir, data, splits, path, resume, console, device)
    val_scores, refit, trained_cfg = None, None, cfg  # trained_cfg: what the run's config.yaml says
    if refits and result.best_epoch >= 1:  # train.refit: again on train+val, for as long
        val_scores = predict_logits(built.model, splits["val"])  # the validation numbers: the first model's
        trained_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"refit": True})})
        cfg, built, refit, threads = _refit(cfg, built, result, base_dir, data, splits, console, device)
        result = replace(result, threads=threads)
    model = built.model
    if result.threads == 1:  # evaluating (explanations, importance) a model trained on one thread: the same
        torch.set_num_threads(1)
    timings["train"] = result.earlier_seconds + time.perf_counter() - clock  # every process of a resumed run
    if path is None:
        return {}, timings, trained_cfg

    clock = time.perf_counter()
    metrics: dict = {
        "recipe": {"from": cfg.recipe, "chosen": built.choices},
        "best_epoch": result.best_epoch,
        "epochs_run": result.history[-1].get("epoch", len(result.history)) if result.history else 0,
        "stopped_early": result.stopped_early,
        "precision": result.precision,
    }
    if setup:
        metrics["distributed"] = setup
    if balance:
        metrics["balance_groups"] = balance
    if picked:
        metrics["auto"] = picked
    if refit:
        metrics["refit"] = refit
    spec = {
        "task": cfg.task,
        "model": {
            "name": cfg.model.name,
            "options": {**model_options(cfg, base_dir), **getattr(model, "resolved_options", {})},
        },
        "input_shape": list(data.input_shape),
        "labels": data.labels,
        "preprocessing": data.preprocessing,
        "label_column": cfg.data.label or (BUILTIN_LABEL if cfg.data.source.startswith("builtin:") else None),
        "run_id": path.name,
        "created": datetime.now().isoformat(timespec="seconds"),
        "config_dir": str(base_dir.resolve()),  # where the config's relative data paths start (retrain)
    }
    if data.target:
        spec["target"] = data.target
    if refit:  # the package was trained on the validation split too (ensemble.py then fits nothing on it)
        spec["refit"] = refit
    predictions = {}
    for name in ("val", "test"):
        if splits[name] is not None:
            scores = (
                val_scores
                if name == "val" and val_scores is not None
                else predict_logits(model, splits[name])
            )
            predictions[name] = task.predictions(scores, spec)
            metrics[name] = task.metrics(predictions[name], getattr(data, name).targets.numpy(), spec)
    test_targets = data.test.targets.numpy() if data.test is not None else None
    if data.groups and "test" in predictions:  # evaluate.sensitive: the audit of the test split's groups
        spec["fairness"] = fairness_settings(cfg)
        metrics["fairness"] = task.fairness(
            predictions["test"], test_targets, data.groups["test"], spec, spec["fairness"]
        )
    if cfg.evaluate.threshold_policy:  # per-group thresholds from the validation split, applied from now on
        spec["threshold_policy"] = threshold_policy(cfg, task, data, spec, predictions)
        metrics["threshold_policy"] = spec["threshold_policy"]
    if "test" in predictions:  # global explanations (tables: which columns the model relies on)
        predictor = Predictor(model.eval(), spec)
        importance = task.importance(predictor, data.test_display, test_targets, spec)
        if importance:
            metrics["importance"] = importance
        overall = task.global_explanation(predictor, data.test_display, predictions["test"], spec)
        if overall:  # texts and images: tokens or mean saliency per class
            metrics["global_explanation"] = overall
    metrics["history"] = result.history
    # calibration measures this CPU; a GPU plan would need that GPU's rates, DDP a model of the all-reduce
    if device.type == "cpu" and distributed.world_size() == 1 and any(p.numel() for p in model.parameters()):
        metrics["plan"] = plan_vs_measured(
            model,
            _typical_example(data.train),
            len(data.train),
            len(data.val) if data.val is not None else 0,
            len(result.history),
            sum(r["seconds"] for r in result.history),
            math.ceil(len(data.train) / built.train.batch_size),
        )
    metrics["warnings"] = review(metrics, task) + metrics.get("fairness", {}).get("warnings", [])
    for warning in metrics["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    spec["test_accuracy"] = metrics.get("test", {}).get("accuracy")
    if cfg.train.distill:
        from modelfoundry.data import text

        teacher = package_folder(text.resolve_path(cfg.train.distill.teacher, base_dir))
        spec["variant"] = {
            "kind": "distilled",
            "of_run": json.loads((teacher / "model.json").read_text()).get("run_id"),
            "temperature": cfg.train.distill.temperature,
            "alpha": cfg.train.distill.alpha,
        }
    save_package(path / "model", model, spec, {**data.files, **getattr(model, "package_files", dict)()})
    save_sample(path, HELDOUT, data.test if data.test is not None else data.val)
    save_sample(path, CALIBRATION, data.train)
    metrics.update(extra_metrics or {})
    atomic_write_json(path / "metrics.json", metrics)
    timings["evaluate"] = time.perf_counter() - clock
    test = data.test.targets.numpy() if data.test is not None else None
    write_run_report(
        path,
        cfg.name or path.name,
        metrics,
        data,
        spec,
        predictions.get("test"),
        test,
        config_to_dict(  # the options "auto" settled on (gbdt's leaves, linear's L2), as the package has them
            cfg.model_copy(
                update={"model": cfg.model.model_copy(update=getattr(model, "resolved_options", {}))}
            )
        ),
        extra_sections,
        Predictor(model.eval(), spec, path / "model"),
    )
    return metrics, timings, trained_cfg


def _train_one(cfg: Config, base_dir: Path, data, splits: dict, path, resume, console, device):
    """Build the config's model, say what it is and which defaults it took, and train it."""
    built = build(cfg, base_dir, data, device, console)
    model = built.model
    from_recipe = {k: v for k, v in cfg.recipe.items() if " recipe" in v}
    if from_recipe:
        values = ", ".join(f"{k.removeprefix('train.')}={_shown(cfg, k)}" for k in from_recipe)
        console.print(
            f"recipe: {cfg.model.name} defaults for keys the config leaves unset: {values}", highlight=False
        )
    for choice in built.choices:
        console.print(f"chosen: {choice}", highlight=False)
    size = (
        model.describe()
        if hasattr(model, "describe")
        else f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    console.print(f"model: {cfg.model.name} with {size} on {device}", highlight=False)
    setup = None
    if distributed.world_size() > 1:  # DDP: how each batch is split, and the effective batch
        line, setup = distributed.describe(cfg.train, len(data.train))
        console.print(line, highlight=False)
    trained, fitted, augment, train_cfg = model, splits, built.augment, built.train
    if train_cfg.features_only:  # a linear probe: the frozen backbone's features, computed once
        clock = time.perf_counter()
        trained, fitted = cached_features(model.to(device), {k: splits[k] for k in ("train", "val")})
        augment, train_cfg = None, train_cfg.model_copy(update={"freeze_epochs": 0, "lr_backbone": None})
        console.print(
            f"features: {fitted['train'].inputs.shape[1]} per example computed once in "
            f"{time.perf_counter() - clock:.1f}s; training the head on them (no augmentation)",
            highlight=False,
        )
    result = built.fit(
        trained,
        fitted["train"],
        fitted["val"],
        train_cfg,
        device=device,
        checkpoint_dir=path and path / "checkpoints",
        resume=resume,
        log_dir=path and path / "tensorboard",
        augment=augment,
        console=console,
        teacher=built.teacher,
        objective=built.objective,
    )
    return built, result, setup


def _refits(cfg: Config, auto: bool, splits: dict) -> bool:
    """Whether the model, once trained, is trained again on train+val (train.refit; unset: for model.name
    auto, when it can be). The first model's early stopping on the validation split says for how long; the
    second sees the validation rows too, 11-14% more on the usual split, as a model fitted by hand on
    train+val or a tuned one refitted does (bench/RESULTS.md, "train.refit"). The evaluate keys that fit
    something on the validation split's predictions of the shipped model, streamed or weighted data,
    distillation and DDP keep the first model. Called before training: train.refit true that cannot be
    done stops the run before it trains."""
    from modelfoundry.data.prepare import ArrayData

    if cfg.train.refit is False or (cfg.train.refit is None and not auto):
        return False
    why = (
        "there is no validation split to find how long to train"
        if splits["val"] is None
        else "the training data is streamed or weighted (train.balance_groups), not one table in memory"
        if type(splits["train"]) is not ArrayData or type(splits["val"]) is not ArrayData
        else "evaluate.threshold_policy fits its thresholds on the validation split's predictions"
        if cfg.evaluate.threshold_policy
        else "train.distill trains from a teacher"
        if cfg.train.distill
        else "DDP trains in many processes"
        if distributed.world_size() > 1
        else ""
    )
    if why and cfg.train.refit:
        raise UserError(f"train.refit: true, but {why}. Remove train.refit (or set it to false).")
    return not why


def _refit(cfg: Config, built, result, base_dir: Path, data, splits: dict, console: Console, device):
    """Train `cfg`'s model again, from scratch, on train+val, for the epochs (or rounds) the first model's
    early stopping kept, with the options it settled on ("auto" sizes, L2). Returns the config and Built of
    the second model, what metrics.json and the package record of it, and its FitResult's threads."""
    from modelfoundry.data.prepare import ArrayData
    from modelfoundry.training.folds import for_epochs

    clock = time.perf_counter()
    train, val = splits["train"], splits["val"]
    both = ArrayData(torch.cat([train.inputs, val.inputs]), torch.cat([train.targets, val.targets]))
    settled = getattr(built.model, "resolved_options", {})
    refit_cfg, length = for_epochs(
        cfg.model_copy(update={"model": cfg.model.model_copy(update=settled)}),
        result.best_epoch,
        "the best {} on the validation split",
    )
    console.print(
        f"refit: training {cfg.model.name} again on the {len(both):,} train+val examples"
        + (f" for {length}" if length else ""),
        highlight=False,
    )
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    again, fitted, _ = _train_one(
        refit_cfg,
        base_dir,
        replace(data, train=both.to(torch.device("cpu")), val=None),
        {**splits, "train": both, "val": None},
        None,  # no checkpoints: a refit is short, and --resume continues the first model's
        False,
        Console(quiet=True),
        device,
    )
    record = {
        "examples": len(both),
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - clock, 2),
        "why": f"trained again on train+val ({len(train):,} + {len(val):,} examples)"
        + (f" for {length}" if length else "")
        + "; the validation numbers are the first model's, trained on the training split alone",
    }
    return refit_cfg, again, record, fitted.threads


AUTO_MINUTES = 2.0  # model.name auto: the most minutes each candidate trains (all its folds), unless set


def auto_candidates(cfg: Config, config, overrides: list[str] | None) -> dict[str, Config]:
    """model.name auto: the config of each family the task compares (its recipe applied), by name; {} for
    a config that names its family."""
    from modelfoundry.models.registry import AUTO

    if cfg.model.name != AUTO:
        return {}
    # a quick comparison: each candidate trains at most AUTO_MINUTES unless the config says how long
    budget = [] if cfg.user_set("train.max_minutes") else [f"train.max_minutes={AUTO_MINUTES}"]
    return {
        name: load_config(config, [*(overrides or []), *budget, f"model.name={name}"])[0]
        for name in get_task(cfg.task).auto_models
    }


def _pick(candidates: dict[str, Config], base_dir: Path, data, splits: dict, path, resume, console, device):
    """Train every candidate and keep the one with the best score (the first on a tie). Below
    AUTO_FOLD_ROWS training examples the candidates are compared by the loss out of k folds of the training
    split (training/folds.py `out_of_fold_score`), where a few dozen or hundred validation rows would pick
    by luck, and then only the picked one trains its final model; on more, by the metric the run monitors
    on the validation split (the loss below SMALL_VAL validation examples, where accuracy moves in steps).
    Without a validation split the first candidate is trained alone. Returns the picked candidate's
    config, Built, FitResult and DDP setup, and what the choice was (for metrics.json and the report)."""
    from modelfoundry.config import SMALL_VAL
    from modelfoundry.tasks import MINIMIZED
    from modelfoundry.training.folds import auto_fold_count, out_of_fold_score, simplest_within_error

    first = next(iter(candidates.values()))
    task = get_task(first.task)
    val = splits["val"]
    if val is None:
        name = next(iter(candidates))
        console.print(f"auto: {name}, the first choice for this data (no validation split to compare on)")
        built, result, setup = _train_one(
            candidates[name], base_dir, data, splits, path, resume, console, device
        )
        why = "no validation split to compare on; the first choice for this data"
        return candidates[name], built, result, setup, {"picked": name, "why": why, "candidates": {}}
    folds = auto_fold_count(splits["train"], task) if distributed.world_size() == 1 else 0
    metric = (
        first.train.monitor
        if first.user_set("train.monitor")
        else (task.small_val_monitor if folds or len(val) < SMALL_VAL else task.default_monitor)
    )
    lower = metric in MINIMIZED
    budget = (
        f"at most {first.train.max_minutes:g} minutes each{', its folds together' if folds else ''}"
        if first.train.max_minutes
        else "no time limit"
    )
    on = (
        f"over {folds} folds of the {len(splits['train']):,} training examples (out-of-fold; each fold stops "
        f"early on the {len(val):,} validation examples)"
        if folds
        else f"on {len(val):,} validation examples"
    )
    console.print(f"auto: comparing {', '.join(candidates)} by {metric} {on} ({budget})", highlight=False)
    trained, scores = {}, {}
    quiet = Console(quiet=True)
    for name, cfg in candidates.items():
        console.print(f"auto: candidate {name}", highlight=False)
        if folds:
            scores[name] = out_of_fold_score(
                cfg,
                data,
                splits,
                folds,
                metric,
                lambda c, d, s: _train_one(c, base_dir, d, s, None, False, quiet, device)[0],
                device,
            )
            console.print(
                f"auto: {name} {metric} {scores[name][metric]:.4f} out of {folds} folds "
                f"({scores[name]['seconds']:.1f} s)",
                highlight=False,
            )
        else:
            torch.manual_seed(cfg.train.seed)
            np.random.seed(cfg.train.seed)
            clock = time.perf_counter()
            built, result, setup = _train_one(cfg, base_dir, data, splits, path, resume, console, device)
            score = built.objective.metrics(predict_logits(built.model, val), val.targets)[metric]
            trained[name] = (cfg, built, result, setup)
            scores[name] = {metric: score, "seconds": round(time.perf_counter() - clock, 2)}
        scores[name]["recipe"] = {k: str(_shown(cfg, k)) for k, v in cfg.recipe.items() if " recipe" in v}
    name = (
        min(scores, key=lambda n: scores[n][metric])
        if lower
        else max(scores, key=lambda n: scores[n][metric])
    )
    if scores[name][metric] == scores[next(iter(scores))][metric]:
        name = next(iter(scores))  # a tie goes to the first choice
    shown = ", ".join(f"{n} {s[metric]:.4f}" for n, s in scores.items())
    where = (
        f"out of {folds} folds of {len(splits['train']):,} training examples"
        if folds
        else f"on {len(val):,} validation examples"
    )
    why = f"the {'lowest' if lower else 'highest'} {metric} {where} ({shown})"
    simpler = simplest_within_error(scores, metric, lower, task.auto_simplest_first) if folds else None
    if simpler and simpler[1]:  # the one-standard-error rule kept a simpler family
        name, why = simpler[0], f"{simpler[1]}; {name} had {why}"
    console.print(f"auto: picked {name}: {why}", highlight=False)
    if folds:  # the picked family's final model: trained on the whole training split, as alone
        cfg = candidates[name]
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        trained[name] = (cfg, *_train_one(cfg, base_dir, data, splits, path, resume, console, device))
    choice = {"picked": name, "why": why, "metric": metric, "candidates": scores}
    if folds:
        choice["folds"] = folds
    return *trained[name], choice


def balance_groups(cfg: Config, task, data: Prepared, splits: dict, device, console: Console) -> dict:
    """train.balance_groups: the training split's batches carry weights that balance each (group, label)
    cell in the loss (train.balance_method). Returns what metrics.json records of it (nothing when off)."""
    column, method = cfg.train.balance_groups, cfg.train.balance_method
    if not column:
        return {}
    from modelfoundry.training.weights import WeightedData, balance_weights

    weights, cells = balance_weights(
        data.groups["train"][column], task.balance_cells(data.train.targets.numpy(), data.labels), method
    )
    splits["train"] = WeightedData(data.train, weights).to(device)
    console.print(
        f"balance_groups: {column}: {len(cells)} (group / label) cells, {method}; example weights "
        f"{weights.min():.3g} to {weights.max():.3g}",
        highlight=False,
    )
    weight_range = [float(weights.min()), float(weights.max())]
    return {"column": column, "method": method, "cells": cells, "weight_range": weight_range}


def threshold_policy(cfg: Config, task, data: Prepared, spec: dict, predictions: dict) -> dict:
    """evaluate.threshold_policy: the thresholds fitted on the validation split, and the test split's
    accuracy and gaps before and after them (what the package keeps and metrics.json shows)."""
    from modelfoundry.evaluate import thresholds

    policy_cfg = cfg.evaluate.threshold_policy
    thresholds.check_policy(data.labels)
    if "val" not in predictions or "test" not in predictions:
        raise UserError(
            "evaluate.threshold_policy: the thresholds are chosen on the validation split and judged on the "
            "test split; this run has no "
            + ("validation" if "val" not in predictions else "test")
            + " split. Give data.split.val and data.split.test a share above 0 (or a val_source / "
            "test_source)."
        )
    column = policy_cfg.sensitive
    groups = {k: task.encoded_groups(spec, getattr(data, k).inputs, column) for k in ("val", "test")}
    policy = thresholds.fit(
        predictions["val"][:, 1], data.val.targets.numpy(), groups["val"], policy_cfg.equalize, column
    )
    test_targets = data.test.targets.numpy()
    after = thresholds.apply(predictions["test"], groups["test"], policy)
    settings = {**fairness_settings(cfg), "intersections": False}
    judged = {
        name: (
            task.metrics(p, test_targets, spec),
            task.fairness(p, test_targets, data.groups["test"], spec, settings),
        )
        for name, p in (("before", predictions["test"]), ("after", after))
    }
    return {**policy, "test": thresholds.compare(judged["before"], judged["after"], column)}


def fairness_settings(cfg: Config) -> dict:
    """What the package keeps of evaluate.*, so that `foundry evaluate --data` audits new data alike."""
    ev = cfg.evaluate
    return {"sensitive": ev.sensitive, "threshold": ev.fairness_threshold, "intersections": ev.intersections}


def _shown(cfg: Config, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def write_run_report(
    path: Path,
    title: str,
    metrics: dict,
    data: Prepared,
    spec: dict,
    predictions,
    targets,
    config: dict,
    extra_sections: list | None = None,
    predictor=None,
) -> Path:
    """report.html of a run: the task's metrics, sections and worst mistakes of the test split (the worst
    explained by `predictor`, the packaged model, when given), and any `extra_sections` (anchor, heading,
    HTML) after them."""
    from modelfoundry.evaluate.explain import explain_mistakes
    from modelfoundry.evaluate.report import write_report

    task = task_of(spec)
    mistakes = task.mistakes(predictions, targets, spec, data.test_display)
    if predictor is not None:
        mistakes = explain_mistakes(predictor, mistakes)
    return write_report(
        path / "report.html",
        title=title,
        metrics={k: metrics[k] for k in ("val", "test") if k in metrics},
        history=metrics.get("history", []),
        warnings=metrics.get("warnings", []),
        data_report=data.report,
        labels=data.labels,
        mistakes=mistakes,
        config=config,
        sections=task.report_sections(predictions, targets, spec)
        + _auto_section(metrics.get("auto"), metrics.get("refit"))
        + audit_sections(metrics, task)
        + list(extra_sections or []),
    )


def audit_sections(metrics: dict, task) -> list[tuple[str, str, str]]:
    from modelfoundry.evaluate.fairness import report_section
    from modelfoundry.evaluate.importance import report_section as importance_section
    from modelfoundry.evaluate.thresholds import report_section as thresholds_section

    sections = [importance_section(metrics["importance"])] if metrics.get("importance") else []
    if metrics.get("global_explanation"):
        sections.append(task.global_section(metrics["global_explanation"]))
    sections += [report_section(metrics["fairness"])] if metrics.get("fairness") else []
    return sections + (
        [thresholds_section(metrics["threshold_policy"])] if metrics.get("threshold_policy") else []
    )


def _auto_section(picked: dict | None, refit: dict | None = None) -> list[tuple[str, str, str]]:
    """model.name auto's choice as a report section: each candidate's validation score, time and recipe;
    and how the final model was trained again on train+val (train.refit), with or without auto."""
    import html

    again = f"<p>Final model: {html.escape(refit['why'])}.</p>" if refit else ""
    if not picked:
        return [("refit", "Final model (train.refit)", again)] if refit else []

    rows = "".join(
        f"<tr><td>{html.escape(name)}{' (picked)' if name == picked['picked'] else ''}</td>"
        f"<td>{score[picked['metric']]:.4f}</td><td>{score['seconds']:.1f} s</td>"
        f"<td>{html.escape(', '.join(f'{k}={v}' for k, v in score['recipe'].items()) or 'none')}</td></tr>"
        for name, score in picked["candidates"].items()
    )
    metric = picked["metric"] + (f" (out of {picked['folds']} folds)" if picked.get("folds") else "")
    table = (
        f"<table><tr><th>model</th><th>{html.escape(metric)}</th><th>time</th><th>recipe</th></tr>"
        f"{rows}</table>"
        if rows
        else ""
    )
    body = (
        f"<p>model.name auto picked <b>{html.escape(picked['picked'])}</b>: {html.escape(picked['why'])}.</p>"
    )
    return [("auto", "Model choice (auto)", body + table + again)]


def evaluate(
    run: str | Path, data_path: str | Path, console: Console | None = None, label: str | None = None
) -> tuple[dict, Path]:
    """Evaluate a packaged model on new labelled data; writes metrics.json and report.html under
    `<run>/evaluations/<data name>-<time>/`. Returns the metrics of that data (under 'test') and the folder.

    `label`: the label column of the data when it is not named as in training."""
    from modelfoundry.evaluate.explain import explain_mistakes
    from modelfoundry.evaluate.report import write_report
    from modelfoundry.predictor import load

    predictor = load(run)
    spec, source, task = predictor.spec, Path(data_path), predictor.task_module
    if not source.exists():
        raise UserError(f"--data: {source} not found.")
    folder = run_folder(package_folder(run)) / "evaluations" / f"{source.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    scored = task.score_source(predictor, source)
    if scored is not None:  # no labels to read: the task scores the data itself (text: bits per byte)
        metrics = {"test": scored, "data": str(source)}
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "metrics.json", metrics)
        write_report(
            folder / "report.html",
            title=f"{spec.get('run_id', 'model')} on {source.name}",
            metrics={"test": scored},
            history=[],
            data_report={"source": str(source)},
            labels=[],
            mistakes=[],
            config={"run": str(run), "data": str(source)},
            sections=task.report_sections(None, None, spec),
        )
        return metrics, folder
    inputs, raw, display = task.read_labelled(predictor, source, label)
    targets = task.encode_targets(raw, spec, f"--data: {source}")
    groups = None
    if spec.get("fairness"):  # the run audited groups: audit the new data's too
        from modelfoundry.evaluate.fairness import new_data_groups

        frame = task.labelled_columns(predictor, source, display)
        groups = new_data_groups(source, frame, spec["fairness"]["sensitive"])
    predictions = predictor.predictions(inputs)
    metrics = {"test": task.metrics(predictions, targets, spec), "data": str(source)}
    if groups is not None:
        metrics["fairness"] = task.fairness(predictions, targets, groups, spec, spec["fairness"])
    metrics["warnings"] = review(metrics, task) + metrics.get("fairness", {}).get("warnings", [])
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "metrics.json", metrics)
    data_report = {"source": str(source), "n_examples": len(raw)}
    if task.is_classifier:
        from modelfoundry.data.validate import class_balance

        data_report["class_counts"], data_report["warnings"] = class_balance(raw, predictor.labels)
    write_report(
        folder / "report.html",
        title=f"{spec.get('run_id', 'model')} on {source.name}",
        metrics={"test": metrics["test"]},
        history=[],
        warnings=metrics["warnings"],
        data_report=data_report,
        labels=predictor.labels,
        mistakes=explain_mistakes(predictor, task.mistakes(predictions, targets, spec, display)),
        config={"run": str(run), "data": str(source)},
        sections=task.report_sections(predictions, targets, spec) + audit_sections(metrics, task),
    )
    return metrics, folder
