"""The planner against reality (issue 6): `foundry plan calibrate`, then the shipped example configs
trained with `foundry train`, each run's predicted training time beside the measured one.

predicted = counted training FLOPs / calibrated rate + epochs * (steps * (step + modules * module) + epoch)
(src/modelfoundry/plan/check.py). The tolerance the e2e test asserts is 3x either way; this bench
records how close the prediction really is on a quiet machine.

Run from the repo root, on a quiet machine (about two minutes on 2 CPU cores):
    .venv/bin/python bench/plan_check.py --write
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from record import write_section

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("digits", "breast_cancer", "wine")
TOLERANCE = 3.0


def foundry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modelfoundry", *args], cwd=REPO, capture_output=True, text=True, check=True
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="examples/NAME.yaml to train")
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    os.environ["FOUNDRY_HOME"] = str(home)
    calibration = json.loads(foundry("plan", "calibrate", "--json").stdout)
    lines = [
        (
            "| config | FLOPs (counted) | steps x modules | compute s | loop s | predicted s | measured s | "
            "predicted / measured |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for name in args.configs:
        before = set(home.iterdir())
        foundry("train", str(REPO / "examples" / f"{name}.yaml"))
        run = next(p for p in set(home.iterdir()) - before if p.is_dir())
        metrics = json.loads((run / "metrics.json").read_text())
        plan, epochs = metrics["plan"], metrics["epochs_run"]
        ratios.append(plan["predicted_over_measured"])
        lines.append(
            f"| {name} ({epochs} epochs) | {plan['training_flops']:.3g} | "
            f"{plan['steps_per_epoch']} x {plan['modules']} | {plan['compute_seconds']:.2f} | "
            f"{plan['overhead_seconds']:.2f} | {plan['predicted_seconds']:.2f} | "
            f"{plan['measured_seconds']:.2f} | {plan['predicted_over_measured']:.2f} |"
        )
        print(lines[-1], flush=True)
    within = all(1 / TOLERANCE <= r <= TOLERANCE for r in ratios)
    body = (
        f"`foundry plan calibrate`: fp32 matmul {calibration['matmul_fp32_flops'] / 1e9:.1f} GFLOP/s, MLP "
        f"training MFU {calibration['mfu']:.2f}; foundry's loop {calibration['step_seconds'] * 1e3:.2f} ms "
        f"per step + {calibration['module_step_seconds'] * 1e3:.3f} ms per module per step + "
        f"{calibration['epoch_seconds'] * 1e3:.1f} ms per epoch. Then `foundry train examples/NAME.yaml`:\n\n"
        + "\n".join(lines)
        + f"\n\nPredicted / measured from {min(ratios):.2f} to {max(ratios):.2f}; the stated tolerance "
        f"(tests/e2e/test_plan_cli.py) is {TOLERANCE:g}x either way: "
        + ("all within." if within else "**some outside.**")
        + " Measured s is the sum of the epochs "
        "(training + validation), as the plan predicts it; model build, evaluation and the report are "
        "not in it."
    )
    print(body)
    if args.write:
        write_section("plan vs measured (foundry plan calibrate + the `plan` record of each run)", body)
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
