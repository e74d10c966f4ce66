"""A loaded text-generation package: what `modelfoundry.load(run)` returns for task text_generation (and
what the server loads): `.model` (a GPT), `.tokenizer`, `.block_size`, `.generate(...)` and `.chat(...)`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from modelfoundry.errors import UserError
from modelfoundry.generation import decode, speculative
from modelfoundry.generation.sampling import check_settings
from modelfoundry.generation.tokenizer import load_tokenizer
from modelfoundry.predictor import Predictor

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}  # what --precision takes: the weights' dtype


class TextGenerator(Predictor):
    def __init__(self, model, spec: dict, path=None):
        super().__init__(model, spec, path)
        self.tokenizer = load_tokenizer(path)
        self.block_size: int = spec["preprocessing"]["block_size"]
        self.precision = "fp32"

    def __repr__(self) -> str:
        return f"TextGenerator(model={self.spec['model']['name']!r}, context={self.block_size})"

    def with_precision(self, precision: str) -> TextGenerator:
        """The weights (and the KV cache) in `precision`: "fp32" as trained, or "bf16": half the bytes read
        per token, about 1.8x the tokens/s on a CPU (bench/lora_precision.py), and answers that may differ
        from fp32's after some tokens (rounding). Returns self."""
        import torch

        if precision not in PRECISIONS:
            raise UserError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}.")
        self.model.to(getattr(torch, PRECISIONS[precision]))
        self.precision = precision
        return self

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | str = (),
        stream: bool = False,
        truncate: bool = True,
        prompt_lookup: int = speculative.DRAFT_TOKENS,
    ) -> str | Iterator[str]:
        """The continuation of `prompt`: the whole text, or with stream=True a generator of text pieces as
        they are decoded. temperature 0 is greedy; `stop` sequences end it and are not included; a prompt
        longer than the context keeps its last tokens (with a warning) unless truncate=False. Greedy decoding
        checks up to `prompt_lookup` tokens guessed from the prompt and the text so far per pass over the
        model (the same text; faster when the answer copies from its context); 0: one token per pass."""
        if not isinstance(prompt, str):
            raise UserError(f"prompt: {type(prompt).__name__} given; a prompt is a string.")
        check_settings(temperature, top_k, top_p)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise UserError(f"max_new_tokens: {max_new_tokens!r} must be a whole number >= 1.")
        if isinstance(prompt_lookup, bool) or not isinstance(prompt_lookup, int) or prompt_lookup < 0:
            raise UserError(
                f"prompt_lookup: {prompt_lookup!r} must be a whole number >= 0 (tokens guessed per pass; "
                "0 turns the guessing off)."
            )
        if not truncate:  # refuse now, not at the first piece of a stream
            decode.prompt_ids(self.tokenizer, prompt, self.block_size, truncate=False)
        pieces = decode.stream(
            self.model,
            self.tokenizer,
            prompt,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            truncate=truncate,
            prompt_lookup=prompt_lookup,
        )
        return pieces if stream else "".join(pieces)

    def chat(self, messages: list[dict], **options) -> str | Iterator[str]:
        """`generate` on the conversation in the tokenizer's chat form (its template, else "role: content"
        lines ending with "assistant:"); `options` as for generate."""
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise UserError('messages: a list of {"role": ..., "content": ...} objects with string values.')
        return self.generate(self.tokenizer.apply_chat(messages), **options)

    def predictions(self, inputs, batch_size: int = 256):
        raise UserError(
            "a text_generation model generates text: use .generate(prompt) "
            "(or `foundry generate RUN PROMPT`)."
        )

    def predict(self, inputs):
        return self.predictions(inputs)
