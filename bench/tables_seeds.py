"""Tables with defaults over seeds: foundry given only `task`, `data` (and the seed) against LightGBM
defaults, HistGradientBoosting and logistic / ridge regression on the same seeded split, for the small
statsmodels sets whose test splits are too small for one seed to decide (anes96: 189 test rows, one example
= 0.53 points).

Run from the repo root (needs `pip install statsmodels`):
    .venv/bin/python bench/tables_seeds.py anes96 fair
"""

import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tables as T
from rich.console import Console

from modelfoundry.data.split import split_indices
from modelfoundry.runner import train
from modelfoundry.tasks import get_task

folder = Path(tempfile.mkdtemp())
os.environ["FOUNDRY_HOME"] = str(folder / "runs")
for name in sys.argv[1:]:
    task, make = T.STATSMODELS[name]
    frame = make()
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    ours, hand = [], []
    for seed in range(5):
        split = split_indices(get_task(task).strata(frame["target"].to_numpy()), 0.1, 0.2, seed, True)
        seen = np.sort(np.concatenate([split["train"], split["val"]]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = train(
                {
                    "task": task,
                    "data": {"source": str(path), "label": "target", "split": {"seed": seed}},
                    "train": {"seed": seed},
                },
                run_dir=folder / f"{name}{seed}",
                console=Console(stderr=True, quiet=True),
            )
            t = run.metrics["test"]
            o = t.get("accuracy", t.get("r2"))
            x, y, xt, yt = T.features(frame.iloc[seen], frame.iloc[split["test"]])
            h = T.by_hand(task == "tabular_classification", x, y, xt, yt)
        ours.append(o)
        hand.append(h)
        print(
            name,
            seed,
            round(o, 4),
            {k: round(v, 4) for k, v in h.items()},
            run.metrics.get("auto", {}).get("picked"),
            flush=True,
        )
    print(
        name,
        "mean foundry",
        round(np.mean(ours), 4),
        "by hand",
        {k: round(np.mean([h[k] for h in hand]), 4) for k in hand[0]},
        flush=True,
    )
