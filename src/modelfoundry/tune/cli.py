"""`foundry tune CONFIG`: search the config's `tune.space` with Optuna and train the best config.

Registered in the main CLI with `app.command("tune")(tune_command)`; UserErrors propagate to it, which
prints them as one message and exits with status 2. Optuna and torch are imported only when it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modelfoundry.errors import UserError

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def tune_command(
    config: Annotated[Path, typer.Argument(help="YAML config with a tune: section (space, metric)")],
    trials: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="trials this process runs (default tune.trials, "
            "else 20; without it --timeout alone decides)",
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="study database, any SQLAlchemy URL: sqlite:///tune.db, "
            "postgresql://user:pw@host/db (default runs/tune.db)"
        ),
    ] = None,
    timeout: Annotated[
        str | None, typer.Option(help="stop starting trials after this long: 90s, 10m, 1h")
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            help="study name (default the config's name, else its file "
            "name); the same name resumes or joins a study"
        ),
    ] = None,
    worker: Annotated[
        bool,
        typer.Option(
            help="only run trials of a shared study (needs --storage); the "
            "process without --worker writes the best config"
        ),
    ] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: --set train.epochs=5")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="folder for best_config.yaml and tune_report.html (default runs/tune/<study>)"),
    ] = None,
    train_best: Annotated[
        bool, typer.Option("--train/--no-train", help="train the best config as a registered run")
    ] = True,
) -> None:
    """Search hyperparameters (Optuna TPE + median pruning), then train the best config as a normal run."""
    from modelfoundry.config import load_config
    from modelfoundry.tune.search import parse_duration

    seconds = parse_duration(timeout)
    cfg, _ = load_config(config, set_ or [])  # config mistakes before optuna and torch are imported
    from modelfoundry.tasks import get_task

    if get_task(cfg.task).untunable:
        raise UserError(f"foundry tune: {get_task(cfg.task).untunable}")
    from modelfoundry.tune import search

    spec = search.open_study(config, set_ or [], storage, study, worker)
    trials = trials or cfg.tune.trials or (None if seconds else search.DEFAULT_TRIALS)
    before = len(spec.study.trials)
    err.print(
        f"study {spec.study.study_name!r} in {spec.storage}: {before} trial(s) so far; running "
        + (f"{trials} more" if trials else "trials")
        + (f" for at most {timeout}" if seconds else "")
        + f", optimising {spec.metric}"
        + (" (worker)" if worker else ""),
        highlight=False,
    )
    try:
        ran = search.optimize(spec, trials, seconds, err)
    except KeyboardInterrupt:
        err.print(
            f"interrupted; the study is kept in {spec.storage}: run the same command again to resume it.",
            highlight=False,
        )
        raise typer.Exit(130) from None
    _print_best(spec, ran)
    if worker:
        return
    result = search.finish(spec, output or search.output_folder(spec.study.study_name), train_best, err)
    lines = [
        f"best config: {result.best_config}",
        f"report:      {result.report}",
        (
            f"study:       {spec.storage} "
            f"(study {spec.study.study_name!r}; resume or add workers with --storage and --study)"
        ),
    ]
    if result.run:
        from modelfoundry.tasks import get_task

        metric = get_task(spec.raw["task"]).retrain_metric
        test = result.run.metrics.get("test") or result.run.metrics.get("val") or {}
        value = test.get(metric, float("nan"))
        lines.insert(1, f"run:         {result.run.path} (test {metric} {value:.4f})")
    out.print("\n".join(lines), highlight=False)


def _print_best(spec, ran: int) -> None:
    import optuna

    from modelfoundry.tasks import MINIMIZED

    finished = spec.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = len(spec.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    out.print(
        f"study {spec.study.study_name!r}: {len(spec.study.trials)} trials ({ran} run now), "
        f"{len(finished)} finished, {pruned} pruned",
        highlight=False,
    )
    ranked = sorted(finished, key=lambda t: t.value, reverse=spec.metric not in MINIMIZED)[:5]
    if not ranked:
        return
    keys = [d.key for d in spec.dims]
    table = Table("rank", "trial", spec.metric, "epochs", *keys, title="best trials")
    for rank, t in enumerate(ranked, 1):
        table.add_row(
            str(rank),
            str(t.number),
            f"{t.value:.4f}",
            str(t.user_attrs.get("epochs", "")),
            *[_fmt(t.params.get(k, "")) for k in keys],
        )
    out.print(table)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
