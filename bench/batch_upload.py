"""Scoring a large file: `POST /v1/predict/batch` against what a script had to do before it (cut the file into
JSON requests of `--max-inputs` rows to POST /v1/predict, one after another), and `foundry predict` on the
same file.

Trains the breast_cancer MLP (30 number columns, close to the issue's 32-column table) unless --run is given,
writes ROWS rows drawn from its features with a little noise as a CSV, and starts `foundry serve` (one torch
thread, --max-upload-mb 200). Measures, on that one server: the upload's wall time, rows/s and the time to
its first progress line; the 64-row JSON requests' wall time and rows/s; the server's peak memory (VmHWM)
after each; and `foundry predict FILE -o` as a process. Checks the batch's CSV equals `foundry predict`'s.

Run from the repo root:
    .venv/bin/python bench/batch_upload.py               # 100,000 rows
    .venv/bin/python bench/batch_upload.py --write       # also record it in bench/RESULTS.md
    .venv/bin/python bench/batch_upload.py --rows 5000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

from record import write_section

REPO = Path(__file__).resolve().parents[1]


def foundry(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modelfoundry", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


def peak_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--run", help="a trained tabular run (default: train breast_cancer's MLP)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    env = {**os.environ, "FOUNDRY_HOME": str(work / "runs"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    run = args.run
    if run is None:
        config = work / "cancer.yaml"
        config.write_text(
            "task: tabular_classification\ndata: {source: 'builtin:breast_cancer'}\n"
            "model: {name: mlp, hidden: [64, 32]}\ntrain: {epochs: 10}\n"
        )
        foundry("train", config, "--run-dir", work / "runs" / "cancer", env=env)
        run = work / "runs" / "cancer"
    bunch = load_breast_cancer()
    rng = np.random.default_rng(0)
    picked = bunch.data[rng.integers(len(bunch.data), size=args.rows)]
    frame = pd.DataFrame(
        picked * rng.normal(1, 0.02, picked.shape), columns=[str(c) for c in bunch.feature_names]
    )
    data = work / "rows.csv"
    frame.round(5).to_csv(data, index=False)
    size_mb = data.stat().st_size / 2**20
    print(f"{args.rows:,} rows, {size_mb:.1f} MB", flush=True)

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelfoundry",
            "serve",
            str(run),
            "--port",
            "0",
            "--max-upload-mb",
            "200",
            "--max-batch-rows",
            str(max(args.rows, 100_000)),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not (found := re.search(r"on (http://[\d.]+:\d+)", server.stdout.readline())):
            pass
        url = found.group(1)
        client = httpx.Client(timeout=600)
        card = client.get(f"{url}/v1/model").json()
        idle_mb = peak_mb(server.pid)

        start = time.perf_counter()
        first, csv = None, []
        with (
            data.open("rb") as handle,
            client.stream(
                "POST", f"{url}/v1/predict/batch", files={"file": ("rows.csv", handle, "text/csv")}
            ) as response,
        ):
            for line in response.iter_lines():
                message = json.loads(line)
                if first is None and "done" in message:
                    first = time.perf_counter() - start
                csv.append(message.get("csv", ""))
                assert "error" not in message, message
        batch_s = time.perf_counter() - start
        batch_mb = peak_mb(server.pid)

        per_request = card["max_inputs"]
        records = frame.round(5).to_dict(orient="records")
        start = time.perf_counter()
        for i in range(0, len(records), per_request):
            answer = client.post(f"{url}/v1/predict", json={"inputs": records[i : i + per_request]})
            answer.raise_for_status()
        json_s = time.perf_counter() - start
        json_mb = peak_mb(server.pid)
    finally:
        server.terminate()
        server.wait(10)

    start = time.perf_counter()
    foundry("predict", run, data, "-o", work / "cli.csv", env=env)
    cli_s = time.perf_counter() - start
    equal = "".join(csv) == (work / "cli.csv").read_text()

    rows = [
        ("POST /v1/predict/batch (one upload, streamed NDJSON)", batch_s, f"{first:.2f}", f"{batch_mb:.0f}"),
        (f"POST /v1/predict, {per_request} rows per JSON request, in turn", json_s, "-", f"{json_mb:.0f}"),
        ("`foundry predict FILE -o` (a process, torch import included)", cli_s, "-", "-"),
    ]
    heading = (
        f"{args.rows:,} rows x {frame.shape[1]} number columns ({size_mb:.1f} MB CSV), breast_cancer MLP "
        "[64, 32], one torch thread, micro-batches of 64"
    )
    summary = (
        f"Server memory before any request: {idle_mb:.0f} MB. The upload scores {json_s / batch_s:.1f}x as "
        f"many rows/s as the JSON requests. The batch's CSV equals `foundry predict`'s: {equal}."
    )
    lines = [
        heading,
        "",
        "| how | wall s | rows/s | first progress s | server peak MB |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {how} | {s:.1f} | {args.rows / s:,.0f} | {first_s} | {mb} |" for how, s, first_s, mb in rows],
        "",
        summary,
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        print(write_section("batch_upload", table))


if __name__ == "__main__":
    main()
