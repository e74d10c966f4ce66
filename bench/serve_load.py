"""Serving under load: `foundry serve` (micro-batching) against a hand-written FastAPI endpoint, same model.

Both servers run on loopback, each in its own process with the same torch threads (OMP_NUM_THREADS). A
closed-loop load generator (asyncio + aiohttp, a third process) keeps C requests in flight, each worker
sending its next request when the last one answers, until N have answered; C = 1, 8, 32, 64, after a warm-up
at the same C. Every request is one real input to POST /v1/predict: `{"inputs": [<base64 PNG of one 8x8
digits image>], "top_k": 1}`. The baseline is what a team writes by hand: a sync `def` endpoint (FastAPI runs
it in its thread pool) that decodes the image and calls `modelfoundry.load(run).predict_proba([image])`, one
request at a time. An (info) third server answers the same requests without a model: the ceiling FastAPI and
this client set on this machine. Per server and level: answered requests/s, p50/p99 latency as the client
sees it, errors (non-2xx, exceptions, malformed answers), labels that differ from the in-process predictor's,
our mean batch size (from the `foundry_batch_size` histogram of /metrics), and the CPU time per request of
the server process and of the client (from /proc and the client's process time: what a request costs even on
a busy machine).
Targets (issue 4):
- foundry serve at concurrency 32: >= 5x the baseline's requests/s;
- foundry serve at concurrency 1: p50 within 2 ms of calling the model directly (in-process median of
  `predictor.predict_proba([one decoded image])`);
- 0 errors across 10,000 requests at concurrency 64.

Run from the repo root on a quiet machine (trains the digits CNN for 2 epochs first unless --run is given):
    .venv/bin/python bench/serve_load.py
    .venv/bin/python bench/serve_load.py --run runs/<id> --write    # also record it in bench/RESULTS.md
    .venv/bin/python bench/serve_load.py --max-wait-ms 2            # flags passed on to `foundry serve`
    .venv/bin/python bench/serve_load.py --quick                    # small N: checks the script, numbers
                                                                    # meaningless
    .venv/bin/python bench/serve_load.py --before main              # also `foundry serve` as of git ref
                                                                    # main, side by side: before/after
Exits 1 when a target is missed (not with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
FOUNDRY = Path(sys.executable).with_name("foundry")
MODELS = {"digits": "examples/digits.yaml", "text": "examples/reviews.yaml"}  # text: MiniLM on 120 reviews
OURS, BASELINE, FLOOR = "foundry serve", "hand-written FastAPI", "(info) no-op FastAPI endpoint"
TARGET_RATIO, TARGET_P50_GAP_MS, TARGET_ERROR_REQUESTS = 5.0, 2.0, 10_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------- the inputs: real examples, as a client sends them ----------


def raw_inputs(model: str) -> list[str]:
    """What goes into `inputs`: base64 PNGs of the 1,797 sklearn digits (0..16 scaled to 0..255), or review
    texts."""
    if model == "text":
        import pandas as pd

        return pd.read_csv(REPO / "examples/tiny/reviews.csv")["review"].astype(str).tolist()
    from PIL import Image
    from sklearn.datasets import load_digits

    encoded = []
    for image in load_digits().images:  # (8, 8) in 0..16
        buffer = io.BytesIO()
        Image.fromarray((image * 255 / 16).round().astype("uint8"), mode="L").save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    return encoded


def decode(item: str, image_model: bool):
    """A request input as the predictor takes it: the PIL image of a base64 PNG, or the text itself."""
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(item))) if image_model else item


# ---------- the baseline server (run as `serve_load.py --baseline-server RUN --port P`) ----------


class PredictRequest(BaseModel):  # at module level: FastAPI resolves the endpoint's (string) annotations here
    inputs: list[str]
    top_k: int = 1


def baseline_app(run: str, backend: str):
    """What a team writes by hand around the same model: one sync endpoint, no batching."""
    from fastapi import FastAPI

    import modelfoundry

    predictor = modelfoundry.load(run, backend=backend)
    image_model = predictor.spec["preprocessing"]["kind"] == "image"
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(body: PredictRequest) -> dict:  # a plain def: FastAPI runs it in its thread pool
        probabilities = predictor.predict_proba([decode(item, image_model) for item in body.inputs])  # (N, C)
        predictions = []
        for p in probabilities:
            top = p.argsort()[::-1][: body.top_k]
            predictions.append(
                {
                    "label": predictor.labels[top[0]],
                    "probability": float(p[top[0]]),
                    "top_k": [{"label": predictor.labels[j], "probability": float(p[j])} for j in top],
                }
            )
        return {"predictions": predictions}

    return app


def floor_app():
    """(info) The same request and answer shape without a model: what FastAPI and the client alone cost
    here."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    @app.post("/v1/predict")
    async def predict(body: PredictRequest) -> dict:
        return {"predictions": [{"label": "", "probability": 1.0, "top_k": []} for _ in body.inputs]}

    return app


def run_baseline_server(app, port: int) -> None:
    import uvicorn

    # The same uvicorn settings as `foundry serve`: default loop and HTTP parser, no access log.
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------- the load generator (run as `serve_load.py --drive URL --inputs FILE ...`) ----------


async def closed_loop(
    session, url: str, bodies: list[bytes], labels: list[str], concurrency: int, total: int
) -> dict:
    """`concurrency` workers, each sending its next request when the last answered, until `total` were
    sent."""
    latencies, failures, counts, sent = [], [], {"ok": 0, "wrong": 0}, 0

    async def worker() -> None:
        nonlocal sent
        while sent < total:
            i, sent = sent % len(bodies), sent + 1
            start = time.perf_counter()
            try:
                async with session.post(url, data=bodies[i]) as response:
                    content, status = await response.read(), response.status
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    failures.append(f"HTTP {status}: {content[:300].decode(errors='replace')}")
                    continue
                label = json.loads(content)["predictions"][0]["label"]
            except Exception as exc:  # noqa: BLE001  reset, timeout, malformed answer: each counts as an error
                latencies.append(time.perf_counter() - start)
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            counts["ok"] += 1
            counts["wrong"] += labels is not None and label != labels[i]

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "wall": time.perf_counter() - start,
        "latencies": latencies,
        "ok": counts["ok"],
        "wrong": counts["wrong"],
        "errors": len(failures),
        "failures": list(dict.fromkeys(failures))[:3],
    }  # the first distinct ones


async def batch_totals(session, base: str) -> tuple[float, float] | None:
    """(sum, count) of the `foundry_batch_size` histogram, or None when the server has no /metrics."""
    async with session.get(base + "/metrics") as response:
        if response.status != 200:
            return None
        text = await response.text()
    values = dict(
        line.split()[:2]
        for line in text.splitlines()
        if line.startswith(("foundry_batch_size_sum ", "foundry_batch_size_count "))
    )
    return float(values["foundry_batch_size_sum"]), float(values["foundry_batch_size_count"])


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # fields 3.. of proc_pid_stat(5)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


async def drive(
    base: str, inputs_file: Path, concurrency: int, total: int, warmup: int, server_pid: int
) -> dict:
    import aiohttp

    data = json.loads(inputs_file.read_text())  # noqa: ASYNC240  before the first request: nothing to block
    bodies = [json.dumps({"inputs": [item], "top_k": 1}).encode() for item in data["inputs"]]
    connector = aiohttp.TCPConnector(limit=concurrency)  # one kept-alive connection per worker
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=60),
        headers={"Content-Type": "application/json"},
    ) as session:
        url, labels = base + "/v1/predict", data["labels"]  # labels: None for the no-op endpoint
        if warmup:
            await closed_loop(session, url, bodies, labels, concurrency, warmup)
        before = await batch_totals(session, base)
        server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
        result = await closed_loop(session, url, bodies, labels, concurrency, total)
        result["server_cpu"], result["client_cpu"] = (
            cpu_seconds(server_pid) - server_cpu,
            time.process_time() - client_cpu,
        )
        after = await batch_totals(session, base)
    if before and after and after[1] > before[1]:
        result["mean_batch"] = (after[0] - before[0]) / (after[1] - before[1])
    return result


# ---------- the orchestra: model, servers, levels, report ----------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(name: str, command: list[str], env: dict, log_file: Path) -> tuple[subprocess.Popen, str]:
    """Start a server on a free loopback port; returns it and its base URL once GET /readyz answers 200."""
    port = free_port()
    with open(log_file, "w") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"{name} exited with {process.returncode} before it was ready; its output "
                f"({log_file}):\n{log_file.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return process, base
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(
        f"{name} was not ready after 180 s; its output ({log_file}):\n{log_file.read_text()[-3000:]}"
    )


def checkout_src(ref: str, folder: Path) -> str:
    """The src/ folder of git REF of this repository, extracted under `folder`; returns its path."""
    import tarfile

    done = subprocess.run(["git", "archive", ref, "src"], cwd=REPO, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"--before {ref}: git archive failed: {done.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(folder, filter="data")
    return str(folder / "src")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def train_model(model: str, epochs: int, folder: Path) -> Path:
    """Train with the real CLI, as a user would; returns the run folder."""
    run = folder / model
    command = [str(FOUNDRY), "train", MODELS[model], "--run-dir", str(run), "--set", f"train.epochs={epochs}"]
    log(f"training: {' '.join(command)}")
    if subprocess.run(command, cwd=REPO, stdout=sys.stderr, check=False).returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed (its output is above).")
    return run


def direct_call_ms(predictor, items: list, calls: int = 500) -> float:
    """Median milliseconds of `predict_proba([one decoded input])` in this process, after 50 warm-up calls."""
    import numpy as np

    times = []
    for i in range(50 + calls):
        start = time.perf_counter()
        predictor.predict_proba([items[i % len(items)]])
        times.append(time.perf_counter() - start)
    return float(np.median(times[50:]) * 1000)


def measure(
    name: str,
    server: subprocess.Popen,
    base: str,
    inputs_file: Path,
    concurrency: int,
    requests: int,
    warmup: int,
) -> dict:
    """One level, driven from a separate process so the client does not share the orchestrator's
    interpreter."""
    command = [
        sys.executable,
        __file__,
        "--drive",
        base,
        "--inputs",
        str(inputs_file),
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        "--warmup",
        str(warmup),
        "--server-pid",
        str(server.pid),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, stdout=subprocess.PIPE, env=env, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"the load generator failed against {name} at concurrency {concurrency} (output above)."
        )
    result = json.loads(done.stdout)
    import numpy as np

    latencies = np.array(result.pop("latencies")) * 1000
    result.update(
        server=name,
        concurrency=concurrency,
        requests=requests,
        rate=result["ok"] / result["wall"],
        p50=float(np.percentile(latencies, 50)),
        p99=float(np.percentile(latencies, 99)),
    )
    log(
        f"{name:>{len(FLOOR)}} c={concurrency:<3} {result['rate']:8,.0f} req/s  p50 {result['p50']:6.2f} ms  "
        f"p99 {result['p99']:7.2f} ms  errors {result['errors']}  wrong {result['wrong']}"
        + (f"  mean batch {result['mean_batch']:.1f}" if "mean_batch" in result else "")
        + f"  server CPU {result['server_cpu'] / requests * 1000:.2f} ms/req"
    )
    for failure in result["failures"]:
        log(f"    e.g. {failure}")
    return result


def report(results: list[dict], direct_ms: float, args, threads: int, run: Path) -> tuple[str, int]:
    """The markdown table, the targets with PASS/MISS, and notes; returns it and the number of misses."""
    header = (
        "| server | concurrency | requests | req/s | p50 ms | p99 ms | errors | labels ≠ in-process "
        "| mean batch | server CPU ms/req | client CPU ms/req |"
    )
    rows = [header, "|---|" + "---:|" * 10]
    for r in results:
        floor = r["server"] == FLOOR
        batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "-" if floor else "1"
        rows.append(
            f"| {r['server']} | {r['concurrency']} | {r['requests']:,} | {r['rate']:,.0f} | {r['p50']:.2f} | "
            f"{r['p99']:.2f} | {r['errors']} | {'-' if floor else r['wrong']} | {batch} | "
            f"{r['server_cpu'] / r['requests'] * 1000:.2f} | {r['client_cpu'] / r['requests'] * 1000:.2f} |"
        )
    at = {(r["server"], r["concurrency"]): r for r in results}
    targets, misses = ["| target | measured | goal | result |", "|---|---|---|---|"], 0

    def verdict(ok: bool | None, caveat: str = "") -> str:
        nonlocal misses
        if ok is None:
            return "not measured"
        misses += not ok and not args.quick
        return ("PASS" if ok else "MISS") + caveat

    ours32, base32 = at.get((OURS, 32)), at.get((BASELINE, 32))
    ratio = ours32["rate"] / base32["rate"] if ours32 and base32 and base32["rate"] > 0 else None
    targets.append(
        f"| {OURS} / {BASELINE} req/s at concurrency 32 | "
        f"{f'{ratio:.1f}x' if ratio else '-'} | >= {TARGET_RATIO:.0f}x | "
        f"{verdict(None if ratio is None else ratio >= TARGET_RATIO)} |"
    )
    ours1 = at.get((OURS, 1))
    gap = ours1["p50"] - direct_ms if ours1 else None
    targets.append(
        f"| {OURS} p50 at concurrency 1 minus a direct call | "
        + (f"{gap:.2f} ms (p50 {ours1['p50']:.2f} ms, direct {direct_ms:.2f} ms)" if ours1 else "-")
        + f" | <= {TARGET_P50_GAP_MS:.0f} ms | {verdict(None if gap is None else gap <= TARGET_P50_GAP_MS)} |"
    )
    ours64 = at.get((OURS, 64))
    short = ours64 and ours64["requests"] < TARGET_ERROR_REQUESTS
    targets.append(
        f"| {OURS} errors at concurrency 64 | "
        + (f"{ours64['errors']} of {ours64['requests']:,}" if ours64 else "-")
        + f" | 0 of {TARGET_ERROR_REQUESTS:,} | "
        + verdict(
            None if not ours64 else ours64["errors"] == 0,
            f" (only {ours64['requests']:,} requests)" if short else "",
        )
        + " |"
    )
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    image_model = args.model == "digits"
    source = (
        f"run {run}" if args.run else f"`foundry train {MODELS[args.model]} --set train.epochs={args.epochs}`"
    )
    one_input = "decoded image" if image_model else "text"
    notes = [
        (
            f"model: {args.model} ({source}), backend {args.backend}; each request carries one input "
            "(`top_k: 1`), cycling through "
            f"{'the 1,797 sklearn digits as 8x8 PNGs' if image_model else 'the review texts'}"
        ),
        (
            f"both servers: loopback, OMP_NUM_THREADS={threads} (torch threads), uvicorn "
            f"{version('uvicorn')} ({loop} loop, {http}), log level warning, no access log; {OURS} with "
            f"--max-batch-size {args.max_batch_size} --max-wait-ms {args.max_wait_ms:g}, its other options "
            "default"
        ),
        (
            f"{BASELINE}: a sync `def` endpoint (FastAPI {version('fastapi')}, its thread pool) "
            f"{'decoding the base64 PNG with Pillow and ' if image_model else ''}calling "
            f"`modelfoundry.load(run).predict_proba([{one_input}])` per request; no batching (mean batch 1)"
        ),
        (
            f"{FLOOR}: an `async def` endpoint parsing the same body and answering the same shape without a "
            "model, on the same uvicorn: about the most requests/s a FastAPI server reaches with this client "
            f"on this machine, which bounds what batching can win: {OURS} / {BASELINE} <= its req/s / "
            f"{BASELINE}'s"
        ),
        (
            f"direct call: median of 500 in-process `predict_proba([{one_input}])` calls, "
            f"{threads} torch threads"
        ),
        (
            f"client: a separate process, asyncio + aiohttp {version('aiohttp')}, one kept-alive connection "
            f"per worker; {args.warmup} warm-up requests at the same concurrency before each level; req/s: "
            "answered requests / wall seconds of the level; latency: from sending to the answer parsed; "
            "errors: non-2xx, exceptions, malformed answers; labels ≠ in-process: answers whose label "
            "differs from the predictor's in this process; CPU ms/req: CPU time (all threads) of the server "
            "process and of the client over the level, per request: what a request costs, whatever else ran "
            "on the machine"
        ),
        (
            f"the client, both servers and this script share {len(os.sched_getaffinity(0))} cores: on a "
            "small machine the client's CPU is part of what is measured, for both servers alike"
        ),
    ]
    if args.before:
        notes.insert(
            3,
            f"{OURS} @{args.before}: the same `foundry serve` command, run from "
            f"`git archive {args.before} src` on the same model in the same run: the cost of a request "
            "before and after a change",
        )
    body = "\n".join(rows) + "\n\n" + "\n".join(targets) + "\n\n" + "\n".join(f"- {note}" for note in notes)
    return body, misses


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="digits",
        choices=list(MODELS),
        help="what to train when no --run (a --run is sent inputs of its kind)",
    )
    parser.add_argument("--run", type=Path, help="serve this run folder instead of training one")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs when no --run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--requests", type=int, default=2000, help="requests per level")
    parser.add_argument(
        "--requests-64",
        type=int,
        default=TARGET_ERROR_REQUESTS,
        help=f"requests at concurrency 64 for {OURS} (the error target counts 10,000)",
    )
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests before each level")
    parser.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS of both servers (default: torch's)"
    )
    parser.add_argument("--max-batch-size", type=int, default=64, help="passed to foundry serve")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="passed to foundry serve")
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "torch", "onnx"], help="for both servers"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="check the script: 100 requests per level (300 at 64), 20 warm-up, "
        "1 training epoch; numbers meaningless, nothing written",
    )
    parser.add_argument(
        "--before",
        metavar="REF",
        help="also serve with `foundry serve` as of git REF (e.g. main; from `git archive REF src`), "
        "in the same run: what a change did to the cost of a request",
    )
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    internal = parser.add_argument_group("internal (the script runs itself with these)")
    internal.add_argument("--baseline-server", metavar="RUN", help="run the hand-written server")
    internal.add_argument("--floor-server", action="store_true", help="run the no-op endpoint")
    internal.add_argument("--port", type=int)
    internal.add_argument("--drive", metavar="URL", help="run one level of load against URL, print JSON")
    internal.add_argument("--inputs", type=Path, help="JSON file of inputs and expected labels, for --drive")
    internal.add_argument("--server-pid", type=int, help="the server's process, whose CPU time --drive reads")
    args = parser.parse_args()
    if args.quick:  # smaller defaults; flags given explicitly still win
        parser.set_defaults(requests=100, requests_64=300, warmup=20, epochs=1)
        args = parser.parse_args()
    if args.baseline_server or args.floor_server:
        run_baseline_server(
            floor_app() if args.floor_server else baseline_app(args.baseline_server, args.backend), args.port
        )
        return 0
    if args.drive:
        result = asyncio.run(
            drive(args.drive, args.inputs, args.concurrency[0], args.requests, args.warmup, args.server_pid)
        )
        print(json.dumps(result))
        return 0
    if not FOUNDRY.is_file():
        raise SystemExit(f"{FOUNDRY} not found; run this with the project's virtualenv (.venv/bin/python).")

    import torch

    import modelfoundry

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    home = tempfile.TemporaryDirectory(prefix="foundry-bench-serve-")  # removed at exit
    folder = Path(home.name)
    os.environ["FOUNDRY_HOME"] = str(folder / "home")  # the run registry of training and serving goes here
    run = args.run.resolve() if args.run else train_model(args.model, args.epochs, folder)

    try:
        predictor = modelfoundry.load(run, backend=args.backend)
    except modelfoundry.UserError as exc:
        raise SystemExit(f"--run: {exc}") from None
    kind = predictor.spec["preprocessing"]["kind"]
    if kind not in ("image", "text"):
        raise SystemExit(f"--run {run}: a {kind} model; this benchmark sends digits images or review texts.")
    args.model, image_model = ("digits" if kind == "image" else "text"), kind == "image"  # --run decides
    inputs = raw_inputs(args.model)
    items = [decode(item, image_model) for item in inputs]
    if image_model:
        for item in items:
            item.load()  # decoded once here, so the direct call times the predictor, not PNG decoding
    labels = [predictor.labels[i] for i in predictor.predict_proba(items).argmax(1)]
    inputs_file = folder / "inputs.json"
    inputs_file.write_text(json.dumps({"inputs": inputs, "labels": labels}))
    direct_ms = direct_call_ms(predictor, items)
    log(f"direct call: median {direct_ms:.3f} ms per predict_proba([one input]), {threads} torch threads")
    del predictor, items

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    ours_command = [
        str(FOUNDRY),
        "serve",
        str(run),
        "--host",
        "127.0.0.1",
        "--backend",
        args.backend,
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-wait-ms",
        str(args.max_wait_ms),
    ]
    commands = {
        BASELINE: ([sys.executable, __file__, "--baseline-server", str(run), "--backend", args.backend], env),
        OURS: (ours_command, env),
        FLOOR: ([sys.executable, __file__, "--floor-server"], env),
    }
    order = [OURS, BASELINE, FLOOR]
    if args.before:  # the same command, run from the package as it was at REF
        before = f"{OURS} @{args.before}"
        source = checkout_src(args.before, folder / "before")
        commands[before] = (
            [sys.executable, "-m", "modelfoundry", *ours_command[1:]],
            {**env, "PYTHONPATH": source},
        )
        order.insert(1, before)
    unchecked_file = folder / "inputs-unchecked.json"  # the no-op endpoint's labels are not checked
    unchecked_file.write_text(json.dumps({"inputs": inputs, "labels": None}))
    servers, results = {}, []
    try:
        for index, (name, (command, server_env)) in enumerate(commands.items()):
            log_file = folder / f"server-{index}.log"
            servers[name] = (*start_server(name, command, server_env, log_file), log_file)
            log(f"{name} ready at {servers[name][1]}")
        for level, concurrency in enumerate(args.concurrency):
            names, turn = list(commands), level % len(commands)
            for name in names[turn:] + names[:turn]:  # rotate who goes first
                requests = args.requests_64 if name == OURS and concurrency == 64 else args.requests
                process, base, _ = servers[name]
                results.append(
                    measure(
                        name,
                        process,
                        base,
                        unchecked_file if name == FLOOR else inputs_file,
                        concurrency,
                        requests,
                        args.warmup,
                    )
                )
    finally:
        for name, (process, _, log_file) in servers.items():
            stop_server(process)
            output = log_file.read_text().strip()
            if output:
                log(f"--- {name} output ---\n{output[-3000:]}")
    results.sort(key=lambda r: (order.index(r["server"]), r["concurrency"]))
    body, misses = report(results, direct_ms, args, threads, run)
    print(body)
    if args.write and not args.quick:
        from record import write_section

        title = "serve_load" if args.model == "digits" else f"serve_load ({args.model} model)"
        log(
            "written to "
            f"{write_section(title, body, {n: version(n) for n in ('fastapi', 'uvicorn', 'aiohttp')})}"
        )
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
