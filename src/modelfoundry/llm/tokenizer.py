"""A Hugging Face tokenizer behind the generation tokenizer interface (generation/tokenizer.py):
`encode`, `decode`, `eos_id`, `vocab_size`, `chat_template`, `apply_chat`. The base model's own
tokenizer and chat template are used as they are."""

from __future__ import annotations

from pathlib import Path


class HFTokenizer:
    def __init__(self, tokenizer):
        self.hf = tokenizer
        self.eos_id: int | None = tokenizer.eos_token_id
        self.vocab_size: int = len(tokenizer)
        self.chat_template: str | None = getattr(tokenizer, "chat_template", None) or None
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        # what ends an assistant turn besides eos (ChatML's <|im_end|> may not be the eos token)
        ends = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|eot_id|>", "</s>")]
        self.stop_ids = {
            i for i in [self.eos_id, *ends] if isinstance(i, int) and i != tokenizer.unk_token_id
        }

    @classmethod
    def load(cls, folder: Path) -> HFTokenizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(folder))

    def save(self, folder: Path) -> None:
        self.hf.save_pretrained(folder)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it (<|im_start|>) are read as themselves."""
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def apply_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as the model reads it: its chat template, or plain "role: content" lines when it
        has none (then the assistant's turn starts after "assistant:")."""
        if self.chat_template:
            return self.hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant:" if add_generation_prompt else "")
