"""Hyperparameter search on builtin:digits (issue 7), measured: does a 20-trial study with the median pruner
find a config at least as accurate as the shipped one, and how many epochs does pruning save?

Side by side, through the functions `foundry tune` calls (modelfoundry.tune.search):
- the shipped config, examples/digits.yaml: its test accuracy is the bar;
- a study of `--trials` trials over SPACE (around the shipped values) with `tune.pruner: median`;
- the same study without pruning (`tune.pruner: none`), same sampler seed.
The best config of each study is trained as a normal registered run and scored on the test split; then
the shipped and both best configs are trained again on `--seeds` (each seed sets init and split), since
one seed of 360 test images moves in steps of 0.28 points and the shipped config reaches 1.0 on seed 0.
Targets: the pruned study's best config reaches >= the shipped config's mean test accuracy, and pruning
cuts the epochs trained by all trials by >= 40% against no pruning. Exits 1 when one is missed (not with
--quick).

Run from the repo root (about 25 minutes on 2 CPU cores: 40 epochs per finished trial, 40 trials, 12 runs):
    .venv/bin/python bench/tune.py --write
    .venv/bin/python bench/tune.py --quick      # 4 trials of 3 epochs: checks the script, numbers meaningless
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from rich.console import Console

from modelfoundry.runner import train
from modelfoundry.tune import search
from record import write_section

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "examples" / "digits.yaml"
# Around the shipped values (lr 0.003, weight_decay 5e-4, width 32, dropout 0.2, label_smoothing 0.05).
SPACE = {
    "train.lr": {"loguniform": [1.0e-3, 1.0e-2]},
    "train.weight_decay": {"loguniform": [1.0e-5, 1.0e-2]},
    "model.width": {"choice": [16, 32, 48]},
    "model.dropout": {"uniform": [0.0, 0.4]},
    "train.label_smoothing": {"uniform": [0.0, 0.1]},
}
EPOCH_CUT_TARGET = 0.40


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20, help="trials per study")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        help="override a key of every config, e.g. --set train.epochs=20",
    )
    parser.add_argument(
        "--metric",
        default="val_loss",
        choices=["val_loss", "val_accuracy", "val_f1_macro"],
        help="what the studies optimise; val_loss by default: on the digits' 180 validation "
        "images most trials reach val_accuracy 1.0, which leaves TPE nothing to choose by",
    )
    parser.add_argument(
        "--seeds",
        default="0,1,2",
        help="the shipped and the best configs are also trained on these seeds (init and split): "
        "360 test images make one seed's accuracy move in steps of 0.28 points",
    )
    parser.add_argument(
        "--quick", action="store_true", help="4 trials of 3 epochs, pruning from the 2nd trial"
    )
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("FOUNDRY_HOME", tempfile.mkdtemp(prefix="bench-tune-"))
    console = Console(stderr=True)
    trials = 4 if args.quick else args.trials
    overrides = (
        ["train.epochs=3", "tune.pruner_startup_trials=1", "tune.pruner_warmup_epochs=0"]
        if args.quick
        else []
    ) + args.overrides

    shipped_overrides = [o for o in overrides if not o.startswith("tune.")]
    console.print(f"training the shipped config {SHIPPED.relative_to(REPO)}", highlight=False)
    clock = time.perf_counter()
    shipped = train(SHIPPED, shipped_overrides, console=Console(stderr=True, quiet=True))
    rows = [
        {
            "name": "shipped examples/digits.yaml",
            "trials": "-",
            "finished": "-",
            "pruned": "-",
            "epochs": shipped.metrics["epochs_run"],
            "seconds": time.perf_counter() - clock,
            "val": None,
            "test": shipped.metrics["test"]["accuracy"],
        }
    ]
    for pruner in ("median", "none"):
        rows.append(run_study(pruner, trials, overrides, console, args.metric))
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    for row, config in zip(rows, [SHIPPED] + [r["best_config"] for r in rows[1:]]):
        row["seed_tests"] = [
            train(
                config,
                shipped_overrides + [f"train.seed={s}", f"data.split.seed={s}"],
                console=Console(stderr=True, quiet=True),
            ).metrics["test"]["accuracy"]
            for s in seeds
        ]

    body, misses = report(rows, trials, args)
    print(body)
    if args.write and not args.quick:
        write_section("tune", body, {"optuna": optuna.__version__})
    return 1 if misses and not args.quick else 0


def run_study(pruner: str, trials: int, overrides: list[str], console: Console, metric: str) -> dict:
    """One study of `trials` trials in a fresh SQLite file; its best config trained as a registered run."""
    config = yaml.safe_load(SHIPPED.read_text())
    config["tune"] = {"metric": metric, "pruner": pruner, "space": copy.deepcopy(SPACE)}
    storage = f"sqlite:///{Path(os.environ['FOUNDRY_HOME']) / f'tune-{pruner}.db'}"
    spec = search.open_study(config, overrides, storage, study_name=f"digits-{pruner}")
    console.print(f"study digits-{pruner}: {trials} trials, pruner {pruner}", highlight=False)
    clock = time.perf_counter()
    search.optimize(spec, trials, None, console)
    seconds = time.perf_counter() - clock
    result = search.finish(
        spec,
        Path(os.environ["FOUNDRY_HOME"]) / "tune" / f"digits-{pruner}",
        True,
        Console(stderr=True, quiet=True),
    )
    states = [t.state for t in spec.study.trials]
    return {
        "name": f"{trials} trials, pruner {pruner}",
        "trials": len(states),
        "finished": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "epochs": result.epochs_total,
        "seconds": seconds,
        "val": spec.study.best_value,
        "test": result.run.metrics["test"]["accuracy"],
        "best": search.best_values(spec),
        "report": result.report,
        "best_config": result.best_config,
    }


def report(rows: list[dict], trials: int, args) -> tuple[str, int]:
    shipped, pruned, unpruned = rows
    seeds = args.seeds.replace(",", ", ")
    lines = [
        (
            "| | trials | finished | pruned | epochs trained | seconds | best "
            f"{args.metric.replace('_', ' ')} | test accuracy | mean test accuracy, seeds {seeds} |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        val = "-" if r["val"] is None else f"{r['val']:.4f}"
        mean = sum(r["seed_tests"]) / len(r["seed_tests"])
        lines.append(
            f"| {r['name']} | {r['trials']} | {r['finished']} | {r['pruned']} | {r['epochs']:,} | "
            f"{r['seconds']:,.0f} | {val} | {r['test']:.4f} | {mean:.4f} "
            f"({' / '.join(f'{t:.4f}' for t in r['seed_tests'])}) |"
        )
    cut = 1 - pruned["epochs"] / unpruned["epochs"]
    mean_of = {id(r): sum(r["seed_tests"]) / len(r["seed_tests"]) for r in rows}
    accurate = mean_of[id(pruned)] >= mean_of[id(shipped)]
    checks = [
        (
            f"- mean test accuracy over seeds {seeds} of the pruned study's best config >= the shipped "
            f"config's: {mean_of[id(pruned)]:.4f} vs {mean_of[id(shipped)]:.4f}: "
            f"{'pass' if accurate else 'FAIL'} (one seed, as the study ran: {pruned['test']:.4f} vs "
            f"{shipped['test']:.4f})"
        ),
        (
            f"- epochs cut by pruning >= {EPOCH_CUT_TARGET:.0%}: {cut:.1%} ({pruned['epochs']:,} vs "
            f"{unpruned['epochs']:,}): {'pass' if cut >= EPOCH_CUT_TARGET else 'FAIL'}"
        ),
    ]
    notes = [
        (
            f"Search space: {', '.join(f'`{k}: {v}`' for k, v in SPACE.items())}; TPE sampler (seed 0), "
            f"median pruner (5 finished trials before it judges, 2 warm-up epochs), {args.metric} of the "
            "best epoch. Seconds: the trials only; test accuracy: the best config retrained as a registered "
            "run (seed 0); the mean: the shipped and each best config trained again per seed, the seed "
            "setting both the initialisation and the split (train.seed, data.split.seed)."
        ),
        f"Best values with pruning: {', '.join(f'{k}={_short(v)}' for k, v in pruned['best'].items())}.",
    ]
    if args.quick:
        notes.insert(0, "**Quick run (4 trials of 3 epochs): the numbers check the script, nothing else.**")
    if args.overrides:
        notes.append(f"Overrides: {' '.join(args.overrides)}.")
    return "\n".join(lines) + "\n\n" + "\n".join(checks) + "\n\n" + "\n\n".join(notes), (not accurate) + (
        cut < EPOCH_CUT_TARGET
    )


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
