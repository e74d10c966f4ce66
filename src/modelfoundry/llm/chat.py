"""`foundry chat RUN`: a multi-turn conversation in the terminal, each answer streamed as it is decoded.

Works with any text_generation package (its `.chat(messages, stream=True)`): a fine-tuned pretrained_lm
speaks through its own chat template, a GPT from scratch through "role: content" lines.
"""

from __future__ import annotations

from collections.abc import Callable

COMMANDS = "an empty line or /exit ends the chat, /reset starts a new conversation"


def chat_loop(
    generator,
    read: Callable[[str], str],
    write: Callable[[str], None],
    system: str | None = None,
    **options,
) -> list[dict]:
    """Read a user turn, stream the answer, repeat; returns the conversation. `read` raises EOFError at the
    end of input; `options` are generate's (max_new_tokens, temperature, top_p, ...)."""
    first = [{"role": "system", "content": system}] if system else []
    messages = list(first)
    while True:
        try:
            line = read("you> ")
        except EOFError:
            break
        text = line.strip()
        if not text or text == "/exit":
            break
        if text == "/reset":
            messages = list(first)
            write("(a new conversation)\n")
            continue
        messages.append({"role": "user", "content": line})
        write("model> ")
        pieces = []
        for piece in generator.chat(messages, stream=True, **options):
            pieces.append(piece)
            write(piece)
        write("\n")
        messages.append({"role": "assistant", "content": "".join(pieces).strip()})
    return messages
