"""The study: Optuna's TPE sampler proposes values, each trial trains the config with them and reports
every epoch's validation metric to the median pruner, and the best config is trained as a normal run.

Trials do not make run folders: the data is prepared once per process (again only when a trial changes
`data.*` keys) and `fit` trains in memory. The study lives in a database (`--storage`, default an SQLite
file in the runs folder), so an interrupted study resumes and workers on other machines join it.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from rich.console import Console
from sqlalchemy.exc import OperationalError

from modelfoundry.config import Config, absolute_paths, apply_overrides, load_config
from modelfoundry.errors import UserError
from modelfoundry.runfiles import atomic_write, runs_root
from modelfoundry.store.registry import connection_problem, hide_password
from modelfoundry.tasks import MINIMIZED
from modelfoundry.tune.space import Dimension, apply_values, parse_space, sample

DEFAULT_TRIALS = 20
# What values can break in one trial without the others being wrong: out of memory, a batch norm
# given a last batch of one example. Anything else (and UserError) stops the study.
TRIAL_ERRORS = (ValueError, RuntimeError)
HEARTBEAT_S = 60  # a trial whose process died is marked failed once it misses its heartbeats this long x 3


@dataclass
class Study:
    """What `tune` needs besides Optuna's study: the config as a dict, the space and how to score."""

    study: optuna.Study
    raw: dict  # the config (YAML + --set) that trial values are put into
    base_dir: Path  # where its relative data paths start
    dims: list[Dimension]
    metric: str
    storage: str  # the URL as shown (no password)
    origin: str


@dataclass
class TuneResult:
    study: optuna.Study
    best_config: Path | None = None
    report: Path | None = None
    run: Any = None  # the registered run of the best config (runner.Run)
    epochs_total: int = 0  # epochs trained by every trial of the study


def parse_duration(text: str | None) -> float | None:
    """`90s`, `10m`, `1h`, `1h30m` or plain seconds -> seconds."""
    if text is None:
        return None
    parts = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
    )
    if not text.strip() or not parts or not any(parts.groups()):
        raise UserError(f"--timeout {text!r}: give a duration such as 90s, 10m, 1h or 1h30m.")
    hours, minutes, seconds = (float(g or 0) for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UserError(f"--timeout {text!r}: the duration must be above zero, such as 90s, 10m, 1h.")
    return total


def default_storage() -> str:
    return f"sqlite:///{runs_root() / 'tune.db'}"


def open_study(
    config: str | Path,
    overrides: list[str] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    worker: bool = False,
) -> Study:
    """Load and check the config and its space, then create the study or join the one of that name."""
    if worker and not storage:
        raise UserError(
            "--worker joins a study that other machines share, so it needs --storage URL (for example "
            "postgresql://user:password@host/db); the default SQLite file is local to this machine."
        )
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial instead of Optuna's log
    cfg, base_dir = load_config(config, overrides)
    origin = str(config) if not isinstance(config, dict) else "config"
    raw = _raw_config(config, overrides)
    dims = parse_space(cfg, raw, origin)
    name = study_name or cfg.name or (Path(config).stem if not isinstance(config, dict) else "study")
    storage, shown = storage or default_storage(), hide_password(storage or default_storage())
    metric = cfg.tune.metric
    direction = "minimize" if metric in MINIMIZED else "maximize"
    study = optuna.create_study(
        study_name=name,
        storage=_storage(storage, shown),
        direction=direction,
        pruner=_pruner(cfg),
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction or study.user_attrs.get("metric", metric) != metric:
        raise UserError(
            f"study {name!r} in {shown} optimises {study.user_attrs.get('metric', 'another metric')} "
            f"({study.direction.name.lower()}); this config's tune.metric is {metric}. Name a new "
            "study with --study NAME."
        )
    study.set_user_attr("metric", metric)
    # Seeded by train.seed and the trials already run, so a resumed study does not replay its first
    # proposals; workers draw unseeded, or every machine would propose the same values.
    study.sampler = optuna.samplers.TPESampler(seed=None if worker else cfg.train.seed + len(study.trials))
    return Study(study, raw, base_dir, dims, metric, shown, origin)


def _raw_config(config: str | Path | dict, overrides: list[str] | None) -> dict:
    raw = (
        dict(config) if isinstance(config, dict) else yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    )
    return apply_overrides(json.loads(json.dumps(raw)), overrides or [])


def _storage(url: str, shown: str) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=3 * HEARTBEAT_S,
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            )
        except OperationalError as exc:  # the server, the login or the database: say which
            raise UserError(connection_problem(url, exc, "--storage")) from None
        except Exception as exc:  # noqa: BLE001  a bad URL or a missing driver
            hint = " Install the database's driver." if "No module named" in str(exc) else ""
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            raise UserError(
                f"--storage {shown!r}: cannot open it: {reason}.{hint} Give an SQLAlchemy URL such as "
                "sqlite:///tune.db or postgresql://user:password@host/db."
            ) from None


def _pruner(cfg: Config) -> optuna.pruners.BasePruner:
    tune = cfg.tune
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    # Steps are 1-based epochs and Optuna prunes from step n_warmup_steps on: hence the + 1.
    return optuna.pruners.MedianPruner(
        n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs + 1
    )


# ---- trials ------------------------------------------------------------------------------------


class TrialRunner:
    """The objective: trains the config with one trial's values and returns its best validation metric."""

    def __init__(self, spec: Study):
        self.spec = spec
        self._data_key, self._data = None, None

    def __call__(self, trial: optuna.Trial) -> float:
        import torch

        from modelfoundry.builder import build

        values = sample(trial, self.spec.dims)
        cfg, _ = load_config(apply_values(self.spec.raw, values))
        data, splits, device = self._prepared(cfg)
        if cfg.train.balance_groups:  # each trial trains as the run will: re-weighted
            from modelfoundry.runner import balance_groups
            from modelfoundry.tasks import get_task

            splits = dict(splits)
            balance_groups(cfg, get_task(cfg.task), data, splits, device, Console(quiet=True))
        torch.manual_seed(cfg.train.seed)
        built = build(cfg, self.spec.base_dir, data, device)
        history: list[dict] = []
        started = time.perf_counter()

        def report_epoch(record: dict) -> None:
            history.append(record)
            trial.report(record[self.spec.metric], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {record['epoch']}")

        try:
            built.fit(  # the training loop, or the family's own (gbdt)
                built.model,
                splits["train"],
                splits["val"],
                built.train,
                device=device,
                augment=built.augment,
                console=Console(quiet=True),
                teacher=built.teacher,
                on_epoch=report_epoch,
                objective=built.objective,
            )
        except (
            TRIAL_ERRORS
        ) as exc:  # the study goes on; the trial line and the report show why this one failed
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            raise
        finally:
            trial.set_user_attr("epochs", len(history))
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        scores = [r[self.spec.metric] for r in history if not math.isnan(r[self.spec.metric])]
        if not scores:
            trial.set_user_attr("error", f"{self.spec.metric} was NaN in every epoch: the training diverged")
            return float("nan")  # Optuna marks the trial failed
        return min(scores) if self.spec.metric in MINIMIZED else max(scores)

    def _prepared(self, cfg: Config):
        """The data of this trial's config: prepared once, again only when tuned keys change it."""
        from modelfoundry.data.prepare import prepare
        from modelfoundry.training.optim import resolve_device

        key = json.dumps(
            [
                cfg.task,
                cfg.data.model_dump(mode="json"),
                cfg.model.name,
                (cfg.model.model_extra or {}).get("path"),
                cfg.train.device,
            ],
            sort_keys=True,
        )
        if key != self._data_key:
            self._data = None  # free the old tensors before making new ones
            data = prepare(cfg, self.spec.base_dir)
            if data.val is None:
                raise UserError(
                    "tune: this config leaves no validation data to score trials by; set data.split.val "
                    "above 0 or give data.val_source."
                )
            device = resolve_device(cfg.train.device)
            self._data = data, {name: getattr(data, name).to(device) for name in ("train", "val")}, device
            self._data_key = key
        return self._data


def optimize(spec: Study, trials: int | None, timeout: float | None, console: Console) -> int:
    """Run trials in this process until `trials` are done or `timeout` seconds pass; returns how many ran."""
    done = []

    def show(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done.append(trial.number)
        console.print(
            trial_line(study, trial, spec.metric, len(done), trials), highlight=False, soft_wrap=True
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        spec.study.optimize(
            TrialRunner(spec),
            n_trials=trials,
            timeout=timeout,
            callbacks=[show],
            catch=TRIAL_ERRORS,
            gc_after_trial=False,
        )
    return len(done)


def trial_line(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, metric: str, count: int, trials: int | None
) -> str:
    """One progress line, such as
    `trial 7 [3/20] complete val_accuracy 0.9712 best 0.9790 (#4) 12 epochs 8.1s lr=...`."""
    state = {"COMPLETE": "complete", "FAIL": "failed"}.get(trial.state.name, trial.state.name.lower())
    value = trial.value if trial.value is not None else _best_reported(trial, metric)
    shown = f"{metric} {value:.4f}" if value is not None and not math.isnan(value) else metric + " -"
    if trial.state == optuna.trial.TrialState.PRUNED:
        state = f"pruned at epoch {trial.user_attrs.get('epochs', '?')}"
    try:
        best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:
        best = "best -"
    params = "  ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    error = f"  ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""
    return (
        f"trial {trial.number:>3} [{count}/{trials or '-'}]  {state:<18} {shown}  {best}  "
        f"{trial.user_attrs.get('epochs', 0)} epochs  {trial.user_attrs.get('seconds', 0):.1f}s  "
        f"{params}{error}"
    )


def _best_reported(trial: optuna.trial.FrozenTrial, metric: str) -> float | None:
    values = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
    return (min(values) if metric in MINIMIZED else max(values)) if values else None


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- the best config ---------------------------------------------------------------------------


def best_values(spec: Study) -> dict[str, Any]:
    """The best trial's values, as the config takes them."""
    dims = {d.key: d for d in spec.dims}
    params = spec.study.best_trial.params
    return {key: dims[key].decode(value) if key in dims else value for key, value in params.items()}


def write_best_config(spec: Study, folder: Path) -> Path:
    """best_config.yaml: the config with the best trial's values and without its tune section."""
    best = spec.study.best_trial
    config = apply_values(spec.raw, best_values(spec))
    config.pop("tune", None)
    config["name"] = f"{spec.study.study_name}-best"
    config.setdefault("model", {})
    absolute_paths(config, spec.base_dir)  # so the file trains from any folder
    header = (
        f"# The best of study '{spec.study.study_name}' ({spec.storage}): trial {best.number}, "
        f"{spec.metric} {best.value:.4f}.\n# Made by `foundry tune {spec.origin}`; train it again with "
        "`foundry train` on this file.\n"
    )
    path = folder / "best_config.yaml"
    atomic_write(path, header + yaml.safe_dump(config, sort_keys=False))
    return path


def finish(spec: Study, folder: Path, train_best: bool, console: Console) -> TuneResult:
    """After the trials: best_config.yaml, its registered run (unless `train_best` is False), the report."""
    from modelfoundry.tune.report import write_tune_report

    trials = spec.study.get_trials(deepcopy=False)
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        counts = ", ".join(
            f"{n} {s.name.lower()}"
            for s in optuna.trial.TrialState
            if (n := sum(t.state == s for t in trials))
        )
        raise UserError(
            f"study {spec.study.study_name!r}: no trial finished ({counts or 'none ran'}), so there is "
            "no best config. Run more trials, or with a longer --timeout."
        )
    result = TuneResult(spec.study, epochs_total=sum(t.user_attrs.get("epochs", 0) for t in trials))
    result.best_config = write_best_config(spec, folder)
    if train_best:
        from modelfoundry.runner import train

        console.print(f"training the best config ({result.best_config}) as a registered run", highlight=False)
        result.run = train(result.best_config, console=console)
    result.report = write_tune_report(folder / "tune_report.html", spec, result)
    return result


def output_folder(study_name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in study_name)
    return runs_root() / "tune" / safe
