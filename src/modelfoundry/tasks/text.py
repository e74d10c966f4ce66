"""Text classification: a text column and a label column of a CSV / TSV / JSONL / Parquet file.

Everything text-specific lives here: reading and cleaning the texts (personal data scrubbed per
data.privacy), the tokenizer and token ids, the length-sorted evaluation batches, what the report
shows of a mistake, how the Predictor and the HTTP service tokenize new texts, and corrections as
a JSONL file with the training file's column names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from modelfoundry.data import tabular, text
from modelfoundry.errors import InputError, UserError
from modelfoundry.tasks.base import Task, at, json_type, one_upload, unicode_text

MIN_TEXTS = 5  # a word must be in this many test texts to be ranked (rarer ones are noise)
WORDS_PER_CLASS = 12


class TextClassification(Task):
    name = "text_classification"
    kind = "text"
    data_keys = ("text", "max_length", "tokenizer", "privacy")
    # a config without model.name: MiniLM fine-tuned with its recipe, which `foundry init` writes too (the
    # base default, an MLP, takes no text); on 1,000 SST-2 phrases 0.805 against a 20-trial study's 0.807
    # in 0.66 of its time (bench/RESULTS.md, "Defaults against tuning")
    default_model = "pretrained"
    # integrated gradients' default steps: on MiniLM, 64 tokens, the convergence delta was 12% of the
    # explained change at 8 steps, 1.1% at 16, 0.2% at 32 (bench/explain.py): 16, the fewest under 5%
    explain_steps = 16
    starter = """\
# modelfoundry config: text classification. Train with `foundry train config.yaml`.
task: text_classification
data:
  source: reviews.csv        # a .csv / .tsv / .jsonl / .parquet file with a text column and a label column
  text: review               # the text column
  label: sentiment           # the label column
  # val_source: dev.csv      # separate validation / test files (default: split from source)
  # test_source: test.csv
  quoting: true              # false for TSV files whose texts hold stray quote characters (SST-2)
  # max_length: 128          # tokens per text; longer texts are cut (default: the most the model takes)
  privacy: {pii: report}     # personal data: off | report (count) | redact ([EMAIL] ...) | drop rows
  split: {val: 0.1, test: 0.2, seed: 0}
model:
  name: pretrained           # pretrained (fine-tune all-MiniLM-L6-v2) | lstm | gru | transformer
  # path: /models/my-bert    # any local Hugging Face encoder folder
  # freeze_layers: 0         # keep the embeddings and the first N layers fixed
"""

    def check_config(self, cfg) -> list[str]:
        problems = [p for p in super().check_config(cfg) if not p.startswith("data.label")]
        missing = [key for key in ("text", "label") if not getattr(cfg.data, key)]
        if missing:
            problems.append(
                f"text_classification needs data.{' and data.'.join(missing)}: "
                "name the text column and the label column of the file"
            )
        if cfg.data.tokenizer is not None and not isinstance(cfg.data.tokenizer, str):
            problems.append(
                "data.tokenizer: text_classification takes a Hugging Face model folder or tokenizer.json "
                "path here; {type, vocab_size} trains a tokenizer for task text_generation only"
            )
        return problems

    def load(self, data, base_dir: Path, path: Path, image_shape=None):
        extra: dict = {}
        texts, labels = text.read_text_table(path, data.text, data.label, data.quoting, extra)
        labels = self.raw_targets(labels, str(path))
        rules = text.TextRules(data.privacy.pii, str(path))  # text.clean_texts, keeping the rows it keeps
        texts, labels, rows = rules(texts, labels)
        rules.finish(extra)
        extra["columns"] = extra["columns"].iloc[rows]  # evaluate.sensitive: columns the model does not see
        return np.array(texts, dtype=object), labels, str(path), extra

    def load_builtin(self, name: str, bunch):
        raise UserError(
            f"data.source: builtin:{name} has no text column; give a .csv/.tsv/.jsonl/.parquet file."
        )

    def streams(self, path: Path, data) -> bool:
        from modelfoundry.data import stream

        return not path.is_dir() and stream.wanted(data.streaming, path)

    def streamed(self, path: Path, config, base_dir: Path):
        from modelfoundry.data.prepare import streamed_texts

        return streamed_texts(path, config, base_dir)

    def encode(self, examples: np.ndarray, targets, split: dict, config, base_dir: Path, report: dict):
        import torch

        data = config.data
        tokenizer, max_length = text.tokenizer_for(config, base_dir)
        ids, truncated = text.tokenize(tokenizer, list(examples), max_length)
        text.note_truncated(report, truncated, max_length)
        report["tokens"] = text.describe_lengths(torch.tensor([len(t) for t in ids]))
        preprocessing = {
            "kind": "text",
            "text_column": data.text,
            "max_length": max_length,
            "pii": data.privacy.pii,
            "quoting": data.quoting,
            **text.tokenizer_spec(tokenizer),
        }
        pad = preprocessing["pad_id"]
        parts = {
            k: text.TextData([ids[i] for i in v], targets.values[v], pad) if len(v) else None
            for k, v in split.items()
        }
        display = list(examples[split["test"]])
        for name in ("val", "test"):  # shortest first: evaluation batches carry the least padding
            if parts[name] is not None:
                parts[name], order = parts[name].sorted_by_length()
                parts[name].split_order = order  # prepare puts the split's sensitive columns in this order
                display = [display[i] for i in order] if name == "test" else display
        return parts, (max_length,), preprocessing, {"tokenizer.json": tokenizer.to_str()}, display

    def shown(self, item) -> dict:
        return {"text": item}

    def synthetic_inputs(self, spec: dict, count: int, generator):
        import torch

        pre, shape = spec["preprocessing"], spec["input_shape"]
        lengths = torch.randint(3, min(shape[0], 48) + 1, (count,), generator=generator)
        ids = torch.randint(1000, pre["vocab_size"], (count, int(lengths.max())), generator=generator)
        ids[torch.arange(ids.shape[1]) >= lengths[:, None]] = pre["pad_id"]
        return ids

    def student_data(self, teacher_package: Path, teacher_spec: dict) -> dict:
        """The student reads the teacher's token ids."""
        return {
            "tokenizer": str(teacher_package / "tokenizer.json"),
            "max_length": teacher_spec["preprocessing"]["max_length"],
        }

    def model_text_spec(self, preprocessing: dict) -> dict | None:
        return {k: preprocessing[k] for k in ("vocab_size", "pad_id")}

    # ---- Predictor and service -------------------------------------------------------------------

    def encode_inputs(self, predictor, inputs, origin: str = "input"):
        """Texts -> token ids, scrubbed of PII first when the model was trained on scrubbed text."""
        from modelfoundry.data.privacy import scrub_texts

        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise UserError(
                f"text input {bad[0] + 1} is {type(texts[bad[0]]).__name__}, not a string; a text model "
                "takes a string or a list of strings."
            )
        if not texts:
            raise UserError("no inputs given.")
        pre = predictor.spec["preprocessing"]
        if pre.get("pii") in ("redact", "drop"):  # a dropped row can't be dropped here; redact it instead
            texts, _, _ = scrub_texts(texts, "redact")
        ids, _ = text.tokenize(predictor.tokenizer(), texts, pre["max_length"])
        return ids

    def encode_request(self, predictor, inputs: list, limits, field: str = "inputs"):
        """Texts as strings; a lone surrogate (JSON can carry one, no tokenizer can read it) becomes
        U+FFFD."""
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                raise InputError(422, at(field, i), f"a text model takes strings; got {json_type(item)}.")
            if not item.strip():
                raise InputError(422, at(field, i), "the text is empty.")
        texts = [unicode_text(t) for t in inputs]
        if predictor.spec["preprocessing"].get("pii", "off") != "off":
            from modelfoundry.data.privacy import scrub_texts

            stored, _, _ = scrub_texts(texts, "redact")  # feedback never keeps the personal data it was sent
        else:
            stored = texts
        return predictor.encode(texts), [{"text": t} for t in stored]

    batch_suffixes = (*Task.batch_suffixes, ".txt")

    def batch_inputs(self, predictor, files: list[tuple[str, Path]], limits):
        """One file of texts: a .txt file (a text per line) or a table with the training text column."""
        _, path = one_upload(files, self.batch_suffixes, "text")
        texts, names = self.cli_inputs(predictor, [str(path)])
        return names, texts, []

    def cli_inputs(self, predictor, inputs: list[str]):
        texts = text.texts_to_predict(inputs, predictor.spec["preprocessing"]["text_column"])
        return texts, [t if len(t) <= 60 else t[:57] + "..." for t in texts]

    def card(self, spec: dict) -> dict:
        pre = spec["preprocessing"]
        return {"text": {"max_length": pre["max_length"], "pii": pre.get("pii")}}

    # ---- explanations ----------------------------------------------------------------------------

    def global_explanation(self, predictor, display, predictions: np.ndarray, spec: dict) -> dict | None:
        """The words most associated with each class in the model's answers on the test split: a word's
        lift is the mean probability of the class over the texts holding it, minus its mean over all texts
        (words of at least MIN_TEXTS texts; cheap: no backward pass)."""
        import re
        from collections import defaultdict

        if predictions is None or not len(predictions) or not self.is_classifier:
            return None
        holding = defaultdict(list)  # word -> indices of the texts that hold it
        for i, item in enumerate(display):
            for word in set(re.findall(r"\w+", str(item).lower())):
                holding[word].append(i)
        words = [w for w, rows in holding.items() if len(rows) >= MIN_TEXTS]
        if not words:
            return None
        overall = predictions.mean(0)  # (C,)
        lift = np.stack([predictions[holding[w]].mean(0) - overall for w in words])  # (W, C)
        classes = {}
        for c, label in enumerate(spec["labels"]):
            order = np.argsort(-lift[:, c], kind="stable")[:WORDS_PER_CLASS]
            classes[label] = [
                {"word": words[i], "lift": float(lift[i, c]), "texts": len(holding[words[i]])}
                for i in order
                if lift[i, c] > 0
            ]
        return {"kind": "words", "texts": len(display), "min_texts": MIN_TEXTS, "classes": classes}

    def global_section(self, entry: dict) -> tuple[str, str, str]:
        from modelfoundry.evaluate.report import _esc

        rows = "".join(
            f"<tr><th>{_esc(label)}</th><td>"
            + ", ".join(f"{_esc(w['word'])} <span class=muted>{w['lift']:+.2f}</span>" for w in words)
            + "</td></tr>"
            for label, words in entry["classes"].items()
        )
        caption = (
            f"<p class=\"muted\">From the model's answers on {entry['texts']} test texts: each word's lift "
            "is the mean probability of the class over the texts that hold it minus its mean over all texts "
            f"(words of {entry['min_texts']} texts or more). The worst mistakes below show single texts' "
            "token attributions.</p>"
        )
        return "global", "Words the model associates with each class", caption + f"<table>{rows}</table>"

    def explain_encoded(self, predictor, encoded, target, steps: int, raw) -> dict:
        """Integrated gradients on the token embeddings (the model's first embedding layer, replaced by a
        forward hook with points on the path). The baseline puts the [PAD] embedding at every real token
        and keeps the special ones ([CLS], [SEP]), which therefore get no attribution and are left out."""
        import torch

        from modelfoundry.evaluate.explain import integrated_gradients, top

        model, spec = predictor.model, predictor.spec
        device = next(model.parameters()).device
        ids = encoded[0].to(device)  # (T,)
        tokenizer = predictor.tokenizer()
        special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        keep = torch.tensor([int(i) in special for i in ids], device=device)  # (T,)
        embedding = token_embedding(model)
        with torch.no_grad():
            real = embedding(ids[None])[0].float()  # (T, D)
            pad = embedding(torch.tensor([[spec["preprocessing"]["pad_id"]]], device=device))[0, 0].float()
        baseline = torch.where(keep[:, None], real, pad)
        current = {}
        hook = embedding.register_forward_hook(lambda module, args, output: current["path"].to(output.dtype))

        def forward(path):  # (S, T, D) embeddings -> (S,)
            current["path"] = path
            return self.explained(model(ids.expand(len(path), -1)), spec, target)

        try:
            attributions, output, start, delta = integrated_gradients(
                forward, real, baseline, steps, chunk=64
            )
        finally:
            hook.remove()
        per_token = attributions.sum(-1).cpu().numpy()  # (T,)
        shown = [i for i in range(len(ids)) if not keep[i]]
        tokens = [  # index: the token's place among the text's token ids, special ones counted
            {"token": tokenizer.id_to_token(int(ids[i])), "index": i, "attribution": float(per_token[i])}
            for i in shown
        ]
        offsets = token_offsets(tokenizer, raw, ids.tolist())
        if offsets:  # where each token lies in the text as given: the page highlights the text itself
            for t in tokens:
                t["start"], t["end"] = offsets[t["index"]]
        return {
            **({"text": unicode_text(raw)} if offsets else {}),
            "method": "integrated gradients on the token embeddings",
            "baseline": "[PAD] tokens",
            "steps": steps,
            "output": output,
            "baseline_output": start,
            "convergence_delta": delta,
            "tokens": tokens,
            "top": top([f"{t['token']} (token {n + 1})" for n, t in enumerate(tokens)], per_token[shown]),
        }

    def explained_inputs(self, inputs) -> list | None:
        return [inputs] if isinstance(inputs, str) else [t if isinstance(t, str) else None for t in inputs]

    def explanation_html(self, explanation: dict) -> str:
        from modelfoundry.evaluate.explain import highlighted_tokens

        return highlighted_tokens(explanation["tokens"], explanation.get("text"))

    def shown_input(self, mistake: dict, predictor=None):
        return mistake["text"]

    # ---- evaluation of new data, retraining ------------------------------------------------------

    def read_labelled(self, predictor, source: Path, label: str | None):
        pre = predictor.spec["preprocessing"]
        texts, labels = text.read_text_table(
            source, pre["text_column"], label or predictor.spec["label_column"], pre.get("quoting", True)
        )
        shown = ["" if t is None else t for t in texts]
        return shown, self.raw_targets(labels, str(source)), shown

    def labelled_columns(self, predictor, source: Path, display) -> pd.DataFrame:
        """The file's columns, row for row as `read_labelled` read it (it keeps every row)."""
        return tabular.read_table(
            source, quoting=predictor.spec["preprocessing"].get("quoting", True), text=True
        )

    def feedback_records(self, rows, config: dict, folder: Path) -> Path:
        data = config["data"]
        records = [{data["text"]: row.input["text"], data["label"]: row.label} for row in rows]
        return write_jsonl(records, folder)


def write_jsonl(records: list[dict], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "feedback.jsonl"
    pd.DataFrame(records).to_json(path, orient="records", lines=True)
    return path


def token_embedding(model):
    """The layer that turns token ids into vectors: a Hugging Face encoder's input embeddings, else the
    model's first `nn.Embedding` (lstm, gru and transformer define their token table first)."""
    from torch import nn

    for module in model.modules():
        if hasattr(module, "get_input_embeddings"):
            return module.get_input_embeddings()
    return next(m for m in model.modules() if isinstance(m, nn.Embedding))


def token_offsets(tokenizer, text, ids: list[int]) -> list[tuple[int, int]] | None:
    """Each token's (start, end) in `text`, when tokenizing it again gives exactly `ids`; None otherwise
    (a text scrubbed of personal data before it was tokenized, or no text)."""
    if not isinstance(text, str):
        return None
    encoding = tokenizer.encode(unicode_text(text))
    return [tuple(o) for o in encoding.offsets] if encoding.ids == ids else None
