"""`foundry` — the command line. Thin: parse, call one function, print.

Mistakes a user can fix (UserError) print one message and exit with status 2; bugs keep their traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelfoundry.errors import UserError
from modelfoundry.plan.cli import plan_app
from modelfoundry.training.launch import check_strategy, leave, report_to_launcher, under_launcher
from modelfoundry.tune.cli import tune_command

app = typer.Typer(
    help="modelfoundry: data -> trained, evaluated, packaged model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
runs_app = typer.Typer(help="The run registry.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
models_app = typer.Typer(
    help="Model versions and their aliases (champion, challenger, ...).", no_args_is_help=True
)
app.add_typer(models_app, name="models")
feedback_app = typer.Typer(help="Corrections stored by `foundry serve`.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
app.add_typer(
    plan_app,
    name="plan",
    help="What a model costs to train, fine-tune and serve (FLOPs, memory, time, money).",
)
app.command("tune")(tune_command)
# Piped output (CI logs, files) gets wide lines instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@app.command()
def init(
    task: Annotated[
        str,
        typer.Option(
            help="image_classification, text_classification, tabular_classification, tabular_regression, "
            "text_generation or recommendation"
        ),
    ] = "image_classification",
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the config")] = Path(
        "config.yaml"
    ),
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Write a commented starter config."""
    from modelfoundry.starter import starter_config

    if output.exists() and not force:
        raise UserError(f"{output} exists; pass --force to overwrite it or --output to write elsewhere.")
    output.write_text(starter_config(task))
    out.print(f"wrote {output}; train with: foundry train {output}")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: --set train.epochs=5")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="folder of the run (default runs/<run-id>)")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="continue from its last checkpoint the run in --run-dir, or else the "
            "newest stopped run of this config"
        ),
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="processes on this machine for data parallel training "
            "(DDP via torchrun): one per GPU, or per CPU core. train.batch_size "
            "is per process",
        ),
    ] = 1,
    nnodes: Annotated[int, typer.Option(min=1, help="machines taking part; each runs this same command")] = 1,
    rdzv_endpoint: Annotated[
        str | None,
        typer.Option(help="HOST:PORT on the first machine where the machines meet (with --nnodes)"),
    ] = None,
    rdzv_timeout: Annotated[
        float,
        typer.Option(
            min=1,
            help="seconds to wait for the other machines to join "
            "(each attempt to reach the endpoint: at most 30)",
        ),
    ] = 300,
    folds: Annotated[
        int | None,
        typer.Option(
            help="k-fold cross-validation over train+val: one model per fold, the mean and std of each "
            "validation metric, then the final model on all of train+val (train.folds)"
        ),
    ] = None,
    folds_ensemble: Annotated[
        bool, typer.Option(help="with --folds: keep the fold models as an ensemble instead of a final model")
    ] = False,
) -> None:
    """Train, evaluate and package a model."""
    from modelfoundry.config import load_config

    set_ = [*(set_ or []), *([f"train.folds={folds}"] if folds is not None else [])]
    set_ += ["train.folds_ensemble=true"] if folds_ensemble else []
    cfg, _ = load_config(config, set_ or [])  # config mistakes surface in a blink, before torch is imported
    check_strategy(cfg.train.strategy, nproc, nnodes)
    if nproc > 1 or nnodes > 1 or rdzv_endpoint:  # DDP: run this command again as torchrun's processes
        from modelfoundry.training.launch import launch

        launch(
            [
                str(config),
                *(f"--set={item}" for item in set_ or []),
                *(["--run-dir", str(run_dir)] if run_dir else []),
                *(["--resume"] if resume else []),
            ],
            nproc,
            cfg.train.device,
            nnodes,
            rdzv_endpoint,
            rdzv_timeout,
        )
        return
    from modelfoundry.runner import train as run_training

    run = run_training(config, set_ or [], run_dir, resume, console=err)
    if not run.metrics:  # DDP: a process other than rank 0, which evaluates and prints
        return
    test = run.metrics.get("test") or run.metrics.get("val") or {}
    out.print(f"run {run.id}", highlight=False)
    table = Table(show_header=False)
    split = "test" if "test" in run.metrics else "val"
    from modelfoundry.tasks import get_task

    headline = get_task(cfg.task).headline
    base = run.metrics.get("base", {}).get(split, {})  # a fine-tuned pretrained model's starting point
    keys = ("accuracy", "f1_macro", "roc_auc", "ece", "rmse", "mae", "r2", "bits_per_byte", "perplexity")
    for key in dict.fromkeys((*keys, "exact_match", "rouge_l", *headline)):
        if test.get(key) is not None:
            table.add_row(f"{split} {key}", f"{test[key]:.4f}")
        if base.get(key) is not None:
            table.add_row(f"{split} {key} of the base model", f"{base[key]:.4f}")
    if "baseline" in test:  # regression: what always predicting the training mean scores
        table.add_row(f"{split} rmse of the mean", f"{test['baseline']['rmse']:.4f}")
    for key in headline if "popularity" in test else ():  # recommendation: the popularity baseline's
        table.add_row(f"{split} {key} of popularity", f"{test['popularity'][key]:.4f}")
    if "best_epoch" in run.metrics:
        table.add_row("best epoch", f"{run.metrics['best_epoch']} of {run.metrics['epochs_run']}")
    if refit := run.metrics.get("refit"):  # train.refit: the shipped model saw the validation split too
        table.add_row("trained again on", f"train+val ({refit['examples']:,} examples)")
    if folds := run.metrics.get("folds"):  # k-fold cross-validation: each validation number, mean ± std
        for key in ("accuracy", "f1_macro", "roc_auc", "rmse", "mae", "r2"):
            if key in folds["mean"]:
                table.add_row(
                    f"val {key} ({folds['k']} folds)", f"{folds['mean'][key]:.4f} ± {folds['std'][key]:.4f}"
                )
    out.print(table)
    out.print(f"model:  {run.path / 'model'}\nreport: {run.path / 'report.html'}", highlight=False)


@app.command()
def evaluate(
    run: Annotated[str, typer.Argument(help="run id or folder")],
    data: Annotated[
        Path | None, typer.Option(help="labelled data: a CSV/Parquet/JSONL file or an image folder")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="the label column of --data, when it is not named as in training")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Evaluate a packaged model on new labelled data (without --data: show the run's test metrics)."""
    from modelfoundry.runner import evaluate as run_evaluation
    from modelfoundry.store.registry import resolve_run

    path = resolve_run(run)
    if data is None:
        metrics_file = path / "metrics.json"
        if not metrics_file.is_file():
            raise UserError(f"{path}: no metrics.json; the run has not finished.")
        metrics, where = json.loads(metrics_file.read_text()), path
    else:
        metrics, where = run_evaluation(path, data, label=label)
    if as_json:
        return _print_json({"run": path, "report": where / "report.html", "metrics": metrics})
    _print_metrics(metrics)
    for warning in metrics.get("warnings", []):
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    out.print(f"report: {where / 'report.html'}", highlight=False)


@app.command()
def predict(
    run: Annotated[str, typer.Argument(help="run id or folder")],
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="image files or folders, one CSV/Parquet/JSONL file, or texts (a text model also reads "
            "one .txt file, a text per line, or a table with the training text column)"
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write predictions as CSV")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="probabilities of the k most likely labels")] = 1,
    user: Annotated[
        list[str] | None, typer.Option("--user", help="a recommendation model: the user(s) to recommend to")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="with --user: how many items to recommend")] = 10,
    as_json: AsJson = False,
) -> None:
    """Predict labels for new inputs (or recommend items to users: --user 42 --k 10)."""
    from modelfoundry.predictor import load, prediction_table
    from modelfoundry.store.registry import resolve_run

    predictor = load(resolve_run(run))
    task = predictor.task_module
    if user:
        return _recommendations(predictor.recommend(user, k), output, as_json)
    if not inputs:
        raise UserError(
            "predict: give inputs to predict (files, texts), or --user ID for a recommendation model."
        )
    items, names = task.cli_inputs(predictor, inputs)
    predictions = predictor.predictions(items)
    names = names or [str(i + 1) for i in range(len(predictions))]
    answers = task.answer(predictions, predictor.spec, top_k)
    frame = prediction_table(task, answers, names, top_k)
    if output:
        frame.to_csv(output, index=False)
        (err if as_json else out).print(f"wrote {len(frame)} predictions to {output}")
    if as_json:  # the served answer of each input (the top k as a list), named as in the table
        _print_json({"predictions": [{"input": name, **a} for name, a in zip(names, answers)]})
    elif not output:
        out.print(frame.to_string(index=False), highlight=False)


def _recommendations(answers: list[dict], output: Path | None, as_json: bool) -> None:
    """`foundry predict --user`: one row per recommended item, best first."""
    import pandas as pd

    for answer in answers:
        if answer.get("note"):
            err.print(answer["note"], highlight=False)
    if as_json:
        return _print_json({"recommendations": answers})
    frame = pd.DataFrame(
        [
            {"user": a["user"], "rank": rank, **item, "cold_start": a["cold_start"]}
            for a in answers
            for rank, item in enumerate(a["items"], 1)
        ]
    )
    if output:
        frame.to_csv(output, index=False)
        out.print(f"wrote {len(frame)} recommendations to {output}")
    else:
        out.print(frame.to_string(index=False), highlight=False)


@app.command()
def generate(
    run: Annotated[str, typer.Argument(help="run id or folder of a text_generation model")],
    prompt: Annotated[str, typer.Argument(help="the text to continue")],
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate at most")] = 200,
    temperature: Annotated[float, typer.Option(help="0 = greedy; 1 = the model's own distribution")] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="sample among the k most likely tokens only")] = None,
    top_p: Annotated[float | None, typer.Option(help="sample within this much probability (nucleus)")] = None,
    seed: Annotated[int | None, typer.Option(help="the same seed gives the same text")] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="end before this text (repeat for several); it is not printed")
    ] = None,
    no_truncate: Annotated[
        bool,
        typer.Option("--no-truncate", help="refuse a prompt longer than the context instead of cutting it"),
    ] = False,
    prompt_lookup: PromptLookup = 8,
    precision: Precision = "fp32",
) -> None:
    """Generate text from a prompt, streamed to the terminal as it is decoded."""
    from modelfoundry.predictor import load
    from modelfoundry.store.registry import resolve_run

    generator = load(resolve_run(run))
    if not hasattr(generator, "generate"):
        raise UserError(f"{run}: a {generator.task} model does not generate text; use `foundry predict`.")
    generator.with_precision(precision)
    pieces = generator.generate(
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop or (),
        stream=True,
        truncate=not no_truncate,
        prompt_lookup=prompt_lookup,
    )
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def explain(
    run: Annotated[
        str, typer.Argument(help="run id or folder (a package with PyTorch weights or LightGBM trees)")
    ],
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="as `foundry predict` takes them: image files or folders, one table file, or texts"
        ),
    ],
    label: Annotated[
        str | None,
        typer.Option("--class", help="explain this class's probability (default: the predicted one)"),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="the HTML file (default: RUN/explanations/<time>.html)"),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="integrated gradients' steps (default per input kind; more: smaller delta)"),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="attributions printed per input")] = 5,
    as_json: AsJson = False,
) -> None:
    """Explain predictions: which tokens, pixels or columns moved the model, printed and as an HTML page."""
    from datetime import datetime

    from modelfoundry.evaluate.explain import explain as explain_inputs, summary, write_html
    from modelfoundry.predictor import load
    from modelfoundry.runfiles import run_folder
    from modelfoundry.store.registry import resolve_run

    path = resolve_run(run)
    predictor = load(path)
    task = predictor.task_module
    items, names = task.cli_inputs(predictor, inputs)
    explanations = explain_inputs(predictor, items, label, steps)
    names = names or [f"row {i + 1}" for i in range(len(explanations))]
    if output is None:
        output = run_folder(predictor.path) / "explanations" / f"{datetime.now():%Y%m%d-%H%M%S}.html"
        output.parent.mkdir(parents=True, exist_ok=True)
    write_html(output, f"Why {predictor.spec.get('run_id', 'the model')} said it", names, explanations, task)
    if as_json:
        return _print_json(
            {"explanations": [{"input": n, **e} for n, e in zip(names, explanations)], "html": output}
        )
    for name, explanation in zip(names, explanations):
        out.print(f"[bold]{escape(name)}[/]: {escape(summary(explanation))}", highlight=False)
        for item in explanation["top"][:top]:
            out.print(f"  {item['attribution']:+.4g}  {escape(item['name'])}", highlight=False)
    out.print(f"html: {output}", highlight=False)


@app.command()
def chat(
    run: Annotated[str, typer.Argument(help="run id or folder of a text_generation model")],
    max_new_tokens: Annotated[int, typer.Option(help="tokens per answer at most")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy; 1 = the model's own distribution")] = 0.7,
    top_p: Annotated[float | None, typer.Option(help="sample within this much probability (nucleus)")] = 0.9,
    seed: Annotated[int | None, typer.Option(help="the same seed gives the same answers")] = None,
    system: Annotated[str | None, typer.Option(help="a system message that starts the conversation")] = None,
    prompt_lookup: PromptLookup = 8,
    precision: Precision = "fp32",
) -> None:
    """Chat with a text_generation model in the terminal: multi-turn, each answer streamed as it is
    decoded. An empty line or /exit ends it; /reset starts a new conversation."""
    from modelfoundry.llm.chat import COMMANDS, chat_loop
    from modelfoundry.predictor import load
    from modelfoundry.store.registry import resolve_run

    generator = load(resolve_run(run))
    if not hasattr(generator, "chat"):
        raise UserError(f"{run}: a {generator.task} model does not chat; use `foundry predict`.")
    generator.with_precision(precision)
    err.print(f"chatting with {run} ({COMMANDS})", highlight=False)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    options = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "prompt_lookup": prompt_lookup,
    }
    chat_loop(generator, input, write, system, **options)


@app.command()
def ensemble(
    runs: Annotated[
        list[str], typer.Argument(help="two or more runs: run ids, versions (v3), aliases or run folders")
    ],
    method: Annotated[
        str,
        typer.Option(
            help="weighted (default): a weighted average; mean: the members' average probabilities (values); "
            "stack: a logistic (linear) regression on the members' predictions. weighted and stack fit on "
            "the members' out-of-fold predictions when all came from the same --folds, else on the "
            "validation split"
        ),
    ] = "weighted",
    name: Annotated[str | None, typer.Option(help="a readable name for the ensemble's run")] = None,
) -> None:
    """Combine trained models into one (a new run and model version)."""
    from modelfoundry.ensemble import make_ensemble

    run = make_ensemble(runs, method, name, console=err)
    out.print(f"run {run.id}", highlight=False)
    out.print(f"model:  {run.path / 'model'}\nreport: {run.path / 'report.html'}", highlight=False)


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="run id or folder")],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="onnx (default); for a fine-tuned pretrained_lm: hf (a Hugging Face folder) or gguf (one "
            "file "
            "llama.cpp-style runtimes load)",
        ),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge",
            help="pretrained_lm with LoRA: fold the adapter into the base weights (a Hugging Face folder)",
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--out", help="where to write (default: RUN/export/merged or RUN/export/model.gguf)"),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            min=0,
            help="largest allowed difference of any class probability between ONNX Runtime and PyTorch "
            "(of any "
            "logit between transformers and our model, for --merge / --format hf)",
        ),
    ] = 1e-4,
) -> None:
    """Export a packaged model (ONNX), checked against PyTorch on the run's held-out examples; a fine-tuned
    pretrained_lm as merged Hugging Face weights (--merge) or GGUF (--format gguf)."""
    from modelfoundry.compress.onnx_export import export_onnx
    from modelfoundry.store.registry import resolve_run

    if merge or format in ("hf", "gguf"):
        from modelfoundry.llm import export as llm_export
        from modelfoundry.runfiles import package_folder

        folder = package_folder(resolve_run(run))
        exports = folder.parent / "export"
        if format == "gguf":
            record = llm_export.export_gguf(folder, output or exports / "model.gguf")
            out.print(
                f"wrote {record['path']} ({record['bytes'] / 1e6:.1f} MB, {record['tensors']} float32 "
                "tensors, "
                "adapter merged)",
                highlight=False,
            )
            return
        record = llm_export.export_hf(folder, output or exports / "merged", merge, tolerance)
        out.print(
            f"wrote {record['path']} (Hugging Face folder, LlamaForCausalLM); parity: max logit difference "
            f"{record['max_logit_difference']:.1e} between transformers and adapter + base "
            f"(allowed {tolerance:g})",
            highlight=False,
        )
        return
    if format not in (None, "onnx"):
        raise UserError(f"--format: {format!r} is not supported; use onnx, hf or gguf.")
    from modelfoundry.ensemble import refuse_ensemble

    refuse_ensemble(resolve_run(run), "export")
    record = export_onnx(resolve_run(run), tolerance)
    parity = record["parity"]
    size = f"{record['bytes'] / 1e6:.1f} MB" if record["bytes"] >= 1e5 else f"{record['bytes'] / 1e3:.0f} kB"
    out.print(
        f"wrote {resolve_run(run)}/model/model.onnx ({size}, opset {record['opset']}, "
        f"{record['exporter']} exporter); parity: max probability difference "
        f"{parity['max_abs_probability_difference']:.1e} on {parity['examples']} {parity['inputs']} examples "
        f"(allowed {parity['tolerance']:g})",
        highlight=False,
    )


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="alias (champion), version (v3), run id or run folder")],
    host: Annotated[
        str, typer.Option(help="address to listen on; 0.0.0.0 for every interface")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    backend: Annotated[
        str,
        typer.Option(
            help="torch or onnx (after `foundry export`); auto: torch when the "
            "package has PyTorch weights (an int8 variant has not)"
        ),
    ] = "auto",
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="FOUNDRY_API_KEY", help="required in the X-API-Key header of feedback and admin requests"
        ),
    ] = None,
    max_batch_size: Annotated[
        int, typer.Option(min=1, help="most inputs run through the model at once")
    ] = 64,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            min=0,
            help="how long a request may wait for others to batch "
            "with (0: batch only what queued while the model was busy)",
        ),
    ] = 0.0,
    max_inputs: Annotated[int, typer.Option(min=1, help="most inputs in one request")] = 64,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="largest request body")] = 10.0,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.001, help="largest file (all files) sent to POST /v1/predict/batch")
    ] = 100.0,
    max_batch_rows: Annotated[
        int, typer.Option(min=1, help="most inputs (rows, texts, images) in a file sent to /v1/predict/batch")
    ] = 100_000,
    batch_chunk: Annotated[
        int, typer.Option(min=1, help="inputs of such a file scored per step (one progress line)")
    ] = 512,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="allow browser calls from this origin (repeatable); closed by default"),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="also answer requests whose Host header is this name (repeatable; *.example.com for a "
            "domain, * for any); by default only 127.0.0.1, localhost, ::1 and --host"
        ),
    ] = None,
    watch: Annotated[
        float,
        typer.Option(
            min=0,
            help="seconds between checks of the alias for a new version (0: only on POST /v1/admin/reload)",
        ),
    ] = 10.0,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, help="threads the model may use (default: one per core); 1 often serves small models best"
        ),
    ] = None,
    max_new_tokens_limit: Annotated[
        int, typer.Option(min=1, help="text generation: most new tokens a request may ask for (max_tokens)")
    ] = 512,
    max_sequences: Annotated[
        int,
        typer.Option(
            min=1, help="text generation: sequences decoded together (KV-cache slots); more wait for a slot"
        ),
    ] = 16,
    precision: Precision = "fp32",
) -> None:
    """Serve a model over HTTP: JSON API (docs at /docs), web page at /, Prometheus metrics at /metrics."""
    from modelfoundry.serve.app import Settings, access_notes, create_app, load_served

    settings = Settings(
        model,
        backend,
        api_key,
        max_batch_size,
        max_wait_ms,
        max_inputs,
        int(max_body_mb * 2**20),
        int(max_upload_mb * 2**20),
        max_batch_rows,
        batch_chunk,
        cors_origins=cors_origin or [],
        watch_seconds=watch,
        host=host,
        allowed_hosts=allowed_host or [],
        max_new_tokens_limit=max_new_tokens_limit,
        max_sequences=max_sequences,
        precision=precision,
    )
    if threads:
        import torch

        torch.set_num_threads(threads)  # ONNX Runtime sessions take the same number
    served = load_served(model, backend, precision)
    import uvicorn

    config = uvicorn.Config(
        create_app(settings, served), host=host, port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    name = served.version_name or served.predictor.spec.get("run_id")
    _announce_when_started(
        server, f"serving {name}" + (f" ({served.alias})" if served.alias else ""), access_notes(settings)
    )
    server.run()


def _announce_when_started(server, what: str, notes: list[str]) -> None:
    """Print who may call what, then the address once uvicorn listens (the real port, when --port 0
    asked for any free one)."""
    original = server.startup

    async def startup(sockets=None):
        await original(sockets)
        if server.started:
            bound = (
                server.servers[0].sockets[0].getsockname()
                if server.servers
                else (server.config.host, server.config.port)
            )
            for note in notes:
                out.print(note, highlight=False, soft_wrap=True)
            out.print(
                f"{what} on http://{server.config.host}:{bound[1]}  (page /, API docs /docs)", highlight=False
            )
            sys.stdout.flush()

    server.startup = startup


@models_app.command("list")
def models_list(
    limit: Annotated[int, typer.Option(help="most recent N versions")] = 20, as_json: AsJson = False
) -> None:
    """Model versions, newest first, with their aliases."""
    from modelfoundry.store.models import ModelStore

    store = ModelStore()
    if as_json:
        return _print_json(
            [
                {
                    "version": v.name,
                    "aliases": store.aliases(v.id),
                    "run_id": v.run_id,
                    "task": v.task,
                    "variant": v.variant,
                    "parent": f"v{v.parent}" if v.parent else None,
                    "labels": v.labels,
                    "metrics": v.metrics or {},
                    "path": v.path,
                    "created": v.created_at.isoformat(),
                }
                for v in store.list(limit)
            ]
        )
    table = Table("version", "aliases", "run", "task", "variant", "from", "test acc", "created")
    for v in store.list(limit):
        m = v.metrics or {}
        table.add_row(
            v.name,
            ", ".join(store.aliases(v.id)),
            v.run_id,
            v.task,
            v.variant,
            f"v{v.parent}" if v.parent else "",
            _fmt(m.get("test_accuracy")),
            f"{v.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@models_app.command("alias")
def models_alias(
    model: Annotated[str, typer.Argument(help="version (v3), run id or alias")],
    alias: Annotated[str, typer.Argument(help="the name to point at it, e.g. champion")],
) -> None:
    """Point an alias at a model version (servers watching the alias pick it up)."""
    from modelfoundry.store.models import ModelStore

    store = ModelStore()
    version = store.get(model)
    store.set_alias(alias, version.id)
    out.print(f"{alias} -> {version.name} (run {version.run_id})", highlight=False)


@models_app.command("promote")
def models_promote(model: Annotated[str, typer.Argument(help="version (v3), run id or alias")]) -> None:
    """Make a version the champion."""
    models_alias(model, "champion")


@feedback_app.command("list")
def feedback_list(limit: Annotated[int, typer.Option(help="most recent N corrections")] = 20) -> None:
    """Stored corrections, newest first."""
    from modelfoundry.store.feedback import FeedbackStore

    table = Table("id", "time", "version", "kind", "input", "predicted", "label")
    for row in FeedbackStore().list(limit):
        shown = row.input.get("text") or row.input.get("image") or json.dumps(row.input.get("row"))
        table.add_row(
            str(row.id),
            f"{row.created_at:%Y-%m-%d %H:%M:%S}",
            f"v{row.model_version}" if row.model_version else "-",
            row.kind,
            escape(shown if len(shown) <= 50 else shown[:47] + "..."),
            escape(row.predicted or "-"),
            escape(row.label),
        )
    out.print(table)


@feedback_app.command("export")
def feedback_export(file: Annotated[Path, typer.Argument(help="a .jsonl or .csv file to write")]) -> None:
    """Write every stored correction to a file."""
    from modelfoundry.store.feedback import FeedbackStore, export

    count = export(FeedbackStore().list(limit=None), file)
    out.print(f"wrote {count} corrections to {file}")


@app.command()
def retrain(
    model: Annotated[str, typer.Argument(help="the alias to improve, e.g. champion")] = "champion",
    promote: Annotated[bool, typer.Option(help="move the alias to the challenger when it wins")] = False,
    feedback_weight: Annotated[
        int, typer.Option(min=1, help="each correction counts as this many examples")
    ] = 3,
    margin: Annotated[
        float, typer.Option(min=0, help="how much better (accuracy) the challenger must be")
    ] = 0.005,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key of the champion's config")
    ] = None,
    warm_start: Annotated[
        bool, typer.Option(help="start the challenger from the champion's weights (model.init_from)")
    ] = False,
) -> None:
    """Champion + stored feedback -> challenger -> compare on the frozen holdout -> promote if better."""
    from modelfoundry.retrain import retrain as run_retrain

    result = run_retrain(
        model,
        promote=promote,
        feedback_weight=feedback_weight,
        margin=margin,
        overrides=set_ or [],
        console=err,
        warm_start=warm_start,
    )
    table = Table(
        "", "champion " + result["champion"]["version"], "challenger " + result["challenger"]["version"]
    )
    metric = result.get("metric", "accuracy")
    for name, label in (
        ("holdout", f"holdout {metric}"),
        ("feedback", f"held-out feedback {metric}"),
        ("combined", f"combined {metric}"),
    ):
        table.add_row(
            f"{label} ({result['examples'][name]})",
            _fmt(result["champion"][name]),
            _fmt(result["challenger"][name]),
        )
    out.print(table)
    out.print(result["decision"], highlight=False)
    out.print(f"report: {result['report']}", highlight=False)


@app.command()
def compress(
    run: Annotated[str, typer.Argument(help="run id or folder of the original model")],
    quantize: Annotated[str | None, typer.Option(help="int8: ONNX Runtime quantization")] = None,
    mode: Annotated[
        str, typer.Option(help="int8 mode: auto (static for CNNs, dynamic otherwise), dynamic or static")
    ] = "auto",
    prune: Annotated[
        float | None, typer.Option(help="fraction of channels / neurons / heads to remove, in (0, 1)")
    ] = None,
    finetune_epochs: Annotated[int, typer.Option(min=0, help="epochs of fine-tuning after pruning")] = 2,
    distill: Annotated[bool, typer.Option(help="train a smaller student on the model's soft labels")] = False,
    student: Annotated[
        list[str] | None,
        typer.Option(help="the student's model keys, e.g. --student model.name=cnn --student model.width=16"),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="student training epochs (default: the original's)")
    ] = None,
    temperature: Annotated[float, typer.Option(min=0.01, help="distillation temperature")] = 4.0,
    alpha: Annotated[float, typer.Option(min=0, max=1, help="weight of the teacher's soft labels")] = 0.7,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="the student's training keys, e.g. --set train.lr=0.002 (default: the teacher's)"
        ),
    ] = None,
    all_: Annotated[
        bool,
        typer.Option("--all", help="int8, --prune 0.5 and a half-size student, then the trade-off report"),
    ] = False,
    report: Annotated[bool, typer.Option(help="measure every variant and write compression.html")] = True,
    as_json: AsJson = False,
) -> None:
    """Smaller, faster variants of a trained model, each a registered version, and their trade-off report."""
    from modelfoundry.compress import make, quantize as int8, tradeoff
    from modelfoundry.compress.variants import parent_run_of

    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize!r}: only int8 is supported.")
    if student and not distill and not all_:
        raise UserError("--student describes the model of --distill; add --distill.")
    if not (quantize or prune is not None or distill or all_ or report):
        raise UserError(
            "compress: say what to make: --quantize int8, --prune 0.5, --distill --student ..., or --all."
        )
    if prune is not None and not 0 < prune < 1:
        raise UserError(
            f"--prune {prune}: the fraction of units to remove must be between 0 and 1 (exclusive), "
            "e.g. --prune 0.5."
        )
    from modelfoundry.tasks import task_of

    parent = parent_run_of(run)
    from modelfoundry.ensemble import refuse_ensemble

    refuse_ensemble(parent, "compress")
    from modelfoundry.compress.variants import refuse_generator

    refuse_generator(parent)
    metric = task_of(json.loads((parent / "model" / "model.json").read_text())).retrain_metric
    made, results = [], {}
    if quantize or all_:
        result = results["int8"] = int8.quantize_int8(parent, mode, console=err)
        made.append(
            f"int8 ({result['mode']}): {result['folder'].name} {result['version']}, "
            f"{result['bytes'] / 1e6:.2f} MB = {result['bytes'] / result['fp32_bytes']:.0%} of fp32 ONNX, "
            f"agrees with the original on {result['agreement']:.1%} of {result['checked_on']}"
        )
    if prune is not None or all_:
        result = results["pruned"] = make.prune_and_finetune(
            parent, prune or 0.5, finetune_epochs, console=err
        )
        made.append(
            f"pruned: {result['folder'].name} {result['version']}, {result['parameters_before']:,} -> "
            f"{result['parameters_after']:,} parameters, test {metric} {_fmt(result['test'].get(metric))}"
        )
    if distill or all_:
        student = student or _half_student(parent)
        trained = make.distill(parent, student, epochs, temperature, alpha, console=err, overrides=set_)
        results["distilled"] = {
            "run": trained.id,
            "version": f"v{trained.version}",
            "folder": trained.path,
            "test": trained.metrics.get("test", {}),
        }
        made.append(
            f"distilled: {trained.id} v{trained.version}, test {metric} "
            f"{_fmt(trained.metrics.get('test', {}).get(metric))}"
        )
    for line in made:
        (err if as_json else out).print(line, highlight=False)
    if report:
        result = tradeoff.measure_all(parent)
    if as_json:  # the variants made, and the trade-off table: one row per model, the quality columns named
        document = {"made": results}
        if report:
            document |= {"tradeoff": result, "report": tradeoff.write_report(parent, result)}
        return _print_json(document)
    if report:
        table = Table(
            "model",
            "size MB",
            "parameters",
            "p50 ms b1",
            "p50 ms b32",
            "per s b32",
            *[heading for _, heading, _ in result["quality"]["columns"]],
            "Pareto",
        )
        for r in result["rows"]:
            table.add_row(
                r["model"],
                f"{r['bytes'] / 1e6:.2f}",
                f"{r['parameters']:,}",
                f"{r['batch1_p50_ms']:.2f}",
                f"{r['batch32_p50_ms']:.2f}",
                f"{r['throughput_per_s']:,.0f}",
                *[
                    format(r[k], spec) if r.get(k) is not None else "-"
                    for k, _, spec in result["quality"]["columns"]
                ],
                "yes" if r["pareto"] else "",
            )
        out.print(table)
        out.print(f"report: {tradeoff.write_report(parent, result)}", highlight=False)


def _half_student(parent: Path) -> list[str]:
    """--student keys of a model with about half the teacher's parameters (the registry says how)."""
    from modelfoundry.models.registry import half_student

    spec = json.loads((parent / "model" / "model.json").read_text())
    student = half_student(spec["model"]["name"], spec["model"]["options"])
    return [
        f"model.{key}=[{', '.join(map(str, value))}]" if isinstance(value, list) else f"model.{key}={value}"
        for key, value in student.items()
    ]


@runs_app.command("list")
def runs_list(
    limit: Annotated[int, typer.Option(help="most recent N runs")] = 20, as_json: AsJson = False
) -> None:
    """Runs, newest first."""
    from modelfoundry.store.registry import Registry, to_json

    if as_json:
        return _print_json([to_json(r) for r in Registry().list(limit)])
    table = Table("run", "task", "model", "status", "test acc", "test f1", "train s", "created")
    for r in Registry().list(limit):
        m = r.metrics or {}
        table.add_row(
            r.id,
            r.task,
            r.model,
            r.shown_status,
            _fmt(m.get("test_accuracy")),
            _fmt(m.get("test_f1_macro")),
            _fmt(r.train_seconds, ".1f"),
            f"{r.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="run id, id prefix or folder")], as_json: AsJson = False
) -> None:
    """Everything the registry knows about one run (JSON; --json: without colours, whatever the terminal)."""
    from modelfoundry.store.registry import Registry, to_json

    record = to_json(Registry().get(run))
    if as_json:
        return _print_json(record)
    out.print_json(json.dumps(record))


@runs_app.command("compare")
def runs_compare(
    runs: Annotated[list[str], typer.Argument(help="two or more run ids")], as_json: AsJson = False
) -> None:
    """Config differences and metrics side by side."""
    from modelfoundry.store.registry import Registry

    if len(runs) < 2:
        raise UserError("runs compare: give at least two runs.")
    records = [Registry().get(r) for r in runs]
    flat = [_flatten(r.config) for r in records]
    if as_json:  # each key -> its value per run, in the order of `runs`; config keys only where they differ
        differ = [
            k
            for k in sorted(set().union(*flat))
            if len({json.dumps(f.get(k), default=str) for f in flat}) > 1
        ]
        return _print_json(
            {
                "runs": [r.id for r in records],
                "config": {k: [f.get(k) for f in flat] for k in differ},
                "metrics": {
                    k: [(r.metrics or {}).get(k) for r in records]
                    for k in sorted(set().union(*[(r.metrics or {}) for r in records]))
                },
                "train_seconds": [r.train_seconds for r in records],
            }
        )
    table = Table("", *[r.id for r in records])
    for key in sorted(set().union(*flat)):
        values = [str(f.get(key, "")) for f in flat]
        if len(set(values)) > 1:
            table.add_row(key, *values)
    for key in sorted(set().union(*[(r.metrics or {}) for r in records])):
        table.add_row(f"[bold]{key}", *[_fmt((r.metrics or {}).get(key)) for r in records])
    table.add_row("[bold]train seconds", *[_fmt(r.train_seconds, ".1f") for r in records])
    out.print(table)
    from modelfoundry.training.folds import paired_differences

    folds = [(r.id, _folds_of(Path(r.path))) for r in records]  # runs trained with --folds: fold by fold
    for other in folds[1:]:
        for line in paired_differences(folds[0], other):
            out.print(line, highlight=False)


def _folds_of(run: Path) -> dict | None:
    metrics = run / "metrics.json"
    return json.loads(metrics.read_text()).get("folds") if metrics.is_file() else None


AsJson = Annotated[
    bool,
    typer.Option("--json", help="print one JSON document to stdout (progress and warnings go to stderr)"),
]

Precision = Annotated[
    str,
    typer.Option(
        help="text generation: the weights in fp32 (as trained) or bf16 (about 1.8x faster on a CPU; "
        "answers may differ from fp32's)",
    ),
]

PromptLookup = Annotated[
    int,
    typer.Option(
        min=0,
        help="greedy (--temperature 0) only: tokens guessed from the prompt and the text so far, checked per "
        "pass over the model (generation/speculative.py): the same text, faster when it copies. 0: off",
    ),
]


def _print_json(document) -> None:
    """One JSON document on stdout, and nothing else there: NaN and infinity (which JSON has no word for)
    become null, paths and times strings."""
    typer.echo(json.dumps(_finite(document), indent=2, default=str, allow_nan=False))


def _finite(value):
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # a numpy number or array
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _flatten(d: dict, prefix: str = "") -> dict:
    items = {}
    for k, v in d.items():
        items.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return items


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


_METRIC_COLUMNS = {  # (key, column heading); a table shows the set whose first key the metrics have
    "accuracy": [
        ("accuracy", "accuracy"),
        ("precision_macro", "precision"),
        ("recall_macro", "recall"),
        ("f1_macro", "f1 macro"),
        ("f1_weighted", "f1 weighted"),
        ("roc_auc", "roc auc"),
        ("ece", "ece"),
    ],
    "bits_per_byte": [("bits_per_byte", "bits per byte"), ("loss", "loss"), ("perplexity", "perplexity")],
    "exact_match": [  # a fine-tuned pretrained LM's answers (llm/sft.py)
        ("exact_match", "exact match"),
        ("rouge_l", "ROUGE-L"),
        ("loss", "response loss"),
        ("perplexity", "perplexity"),
    ],
    "perplexity": [("loss", "loss"), ("perplexity", "perplexity")],  # its continued pretraining on text
    "rmse": [
        ("rmse", "rmse"),
        ("mae", "mae"),
        ("r2", "r2"),
        ("mape", "mape"),
        ("baseline.rmse", "rmse of the mean"),
    ],
    "ndcg@10": [  # recommendation (evaluate.k holds 10 by default)
        ("ndcg@10", "ndcg@10"),
        ("recall@10", "recall@10"),
        ("hitrate@10", "hitrate@10"),
        ("mrr", "mrr"),
        ("coverage@10", "coverage@10"),
        ("users", "users"),
        ("popularity.ndcg@10", "ndcg@10 of popularity"),
    ],
}


def _print_metrics(metrics: dict) -> None:
    from modelfoundry.evaluate.metrics import absent_note

    splits = [split for split in ("val", "test") if split in metrics]
    first = next((k for k in _METRIC_COLUMNS if splits and k in metrics[splits[0]]), "accuracy")
    columns = _METRIC_COLUMNS[first]
    table = Table("split", *[heading for _, heading in columns])
    for split in splits:
        m = metrics[split]
        values = [
            m.get(k) if "." not in k else m.get(k.split(".")[0], {}).get(k.split(".")[1]) for k, _ in columns
        ]
        table.add_row(split, *[_fmt(v) for v in values])
    out.print(table)
    for split in splits:
        if absent := metrics[split].get("absent_classes"):
            out.print(escape(absent_note(split, absent, len(metrics[split]["per_class"]))), highlight=False)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)


def main() -> None:
    warnings.showwarning = _show_warning
    if os.environ.get("RANK", "0") != "0":  # DDP (started by torchrun): rank 0 alone talks to the user
        out.quiet = err.quiet = True
    try:
        try:
            app()
        except SystemExit as exc:  # how typer ends every command
            leave(exc.code)  # DDP ranks > 0: exit now, without gloo's teardown
            raise
    except UserError as exc:
        if not report_to_launcher(
            str(exc)
        ):  # a process of `foundry train --nproc`: its launcher prints it once
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        if not under_launcher():
            err.print(
                "interrupted; `foundry train CONFIG --resume` continues the newest stopped run of CONFIG"
            )
        sys.exit(130)


if __name__ == "__main__":
    main()
