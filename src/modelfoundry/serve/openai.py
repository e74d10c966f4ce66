"""OpenAI-compatible routes of a text generation model: `GET /v1/models`, `POST /v1/completions`,
`POST /v1/chat/completions`, with `stream: true` as server-sent events in OpenAI's chunk format.

The official `openai` client pointed at `base_url=http://HOST:PORT/v1` works against them
(tests/e2e/test_generate_serve.py). Requests are checked here, their prompts tokenized, and each choice
becomes one sequence of the continuous-batching engine (generation/engine.py), which decodes every
request's sequences together. A client that goes away mid-answer cancels its sequences; the slot goes to
the next request.

Errors are `{"error": {"message", "type", "param", "code", "field"}}`: OpenAI's shape (its client reads
`message`), with `field` as in every other error of this server.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from modelfoundry.generation.engine import Engine, Finished, Request as SequenceRequest
from modelfoundry.serve.errors import ApiError

MODELS, COMPLETIONS, CHAT = "/v1/models", "/v1/completions", "/v1/chat/completions"  # errors.OPENAI_PATHS
MAX_STOP = 4  # stop sequences per request, as OpenAI allows
COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions; chat: up to the limit
DISCONNECT_POLL_S = 0.5
# A stream sends at most one event per this interval (the first at once): what came meanwhile goes in it.
# 20 ms is below what a reader notices, and spares the server an HTTP write per token per stream.
STREAM_INTERVAL_S = 0.02

router = APIRouter()


def generates(served) -> bool:
    """Whether the served package generates text (it has `generate`, as a text generation package does):
    the server asks the package, not the task's name."""
    return callable(getattr(served.predictor, "generate", None))


def make_engine(served, settings, metrics) -> Engine | None:
    """The decode engine of a generation package (not started), or None for any other model."""
    if not generates(served):
        return None
    package = served.predictor
    return Engine(
        package.model,
        package.tokenizer.decode,
        package.tokenizer.eos_id,
        settings.max_sequences,
        on_first_token=metrics.first_token.observe,
        on_tokens=metrics.tokens,
        on_cancel=metrics.cancelled.inc,
    )


# ---------- request bodies ----------


# OpenAI options this server does not implement, with the values that ask nothing of it: any other value is
# refused (400), never silently ignored. Other unknown fields (user, metadata, store, ...) are ignored.
UNSUPPORTED = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
}


class Sampling(BaseModel):
    """What both endpoints take; see UNSUPPORTED for the OpenAI options they refuse."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="ignored: this server serves one model (GET /v1/models)")
    max_tokens: int | None = Field(None, description="most new tokens per choice")
    temperature: float = Field(1.0, description="0 = greedy; higher = more varied")
    top_p: float = Field(1.0, description="nucleus sampling: keep the most likely tokens up to this mass")
    top_k: int | None = Field(None, description="(extension) keep only the k most likely tokens")
    n: int = Field(1, description="choices per prompt")
    stream: bool = False
    stream_options: dict[str, Any] | None = Field(
        None, description='{"include_usage": true}: a last usage chunk'
    )
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} sequences that end the text")
    seed: int | None = Field(None, description="the same seed and request give the same text")
    ignore_eos: bool = Field(
        False, description="(extension, as vLLM's) go on past the end-of-text token: fixed-length answers"
    )
    truncate: bool = Field(
        True,
        description="(extension) a prompt too long for the context loses tokens from its start (with a "
        "warning); false: answered 400 instead",
    )


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(description="a text, or a list of texts (each gets n choices)")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(Sampling):
    messages: list[Message]
    max_completion_tokens: int | None = Field(None, description="the newer name of max_tokens")


# ---------- routes ----------


@router.get(MODELS, tags=["openai"], summary="The served model, in OpenAI's list format")
def models(request: Request) -> dict:
    service = request.app.state.service
    served = generation_model(service)
    return {
        "object": "list",
        "data": [
            {
                "id": model_id(served),
                "object": "model",
                "created": int(served.loaded_at),
                "owned_by": "modelfoundry",
            }
        ],
    }


@router.post(COMPLETIONS, tags=["openai"], summary="Complete a prompt (OpenAI's completions API)")
async def completions(request: Request):
    from modelfoundry.serve.routes import read_body

    body: CompletionRequest = await read_body(request, CompletionRequest)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    service = request.app.state.service
    if not prompts:
        raise ApiError(400, "prompt", "the list of prompts is empty; send at least one.")
    if len(prompts) > service.settings.max_inputs:
        raise ApiError(
            400,
            "prompt",
            f"{len(prompts)} prompts in one request; the limit is {service.settings.max_inputs}.",
        )
    return await answer(request, service, body, prompts, [{"prompt": p} for p in prompts], chat=False)


@router.post(CHAT, tags=["openai"], summary="Answer a conversation (OpenAI's chat completions API)")
async def chat_completions(request: Request):
    from modelfoundry.serve.routes import read_body

    body: ChatRequest = await read_body(request, ChatRequest)
    if body.max_completion_tokens is not None and body.max_tokens is None:
        body.max_tokens = body.max_completion_tokens
    if not body.messages:
        raise ApiError(400, "messages", "the conversation is empty; send at least one message.")
    messages = [{"role": m.role, "content": message_text(m, i)} for i, m in enumerate(body.messages)]
    service = request.app.state.service
    tokenizer = generation_model(service).predictor.tokenizer
    return await answer(
        request, service, body, [tokenizer.apply_chat(messages)], [{"messages": messages}], chat=True
    )


def message_text(message: Message, i: int) -> str:
    """A message's content as text: a string, or OpenAI's list of parts of which only text ones are read."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if any(part.get("type") != "text" for part in content):
        raise ApiError(400, f"messages.{i}.content", "this model reads text only; send parts of type 'text'.")
    return "".join(str(part.get("text", "")) for part in content)


# ---------- one request: check, tokenize, submit, answer ----------


async def answer(
    request: Request, service, body: Sampling, prompts: list[str], stored: list[dict], chat: bool
):
    served = generation_model(service)
    engine: Engine = service.engine
    max_tokens = check_sampling(body, service.settings, chat)
    tokenizer = served.predictor.tokenizer
    field = "messages" if chat else "prompt"
    encoded = [
        await run_in_threadpool(
            prompt_ids, tokenizer, p, max_tokens, engine.max_len, body.truncate, at(field, i, prompts)
        )
        for i, p in enumerate(prompts)
    ]
    warnings = [w for _, w in encoded if w]
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    queue: asyncio.Queue = asyncio.Queue()
    sequences = []
    for i, (ids, _) in enumerate(encoded):
        for j in range(body.n):
            index = i * body.n + j
            seed = None if body.seed is None else body.seed + index  # the choices differ, each repeatable
            wanted = SequenceRequest(
                ids, max_tokens, body.temperature, body.top_k, body.top_p, seed, stop, body.ignore_eos
            )
            try:
                sequences.append(engine.submit(wanted, queue, index))
            except RuntimeError:
                for sequence in sequences:  # the choices already queued have nobody to read them
                    engine.cancel(sequence)
                raise ApiError(503, "model", "the server is shutting down or reloading; retry.") from None
    reply = Reply(
        id=("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12),
        model=model_id(served),
        chat=chat,
        prompt_tokens=sum(len(ids) for ids, _ in encoded),
        choices=len(sequences),
        warnings=warnings,
    )
    remember = remembering(service, served, reply, [stored[k // body.n] for k in range(len(sequences))])
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        events = stream(engine, sequences, queue, reply, include_usage, remember)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    texts, finished = await collect(request, engine, sequences, queue)
    remember(texts)
    from modelfoundry.serve.routes import FastJSONResponse

    return FastJSONResponse(reply.whole(texts, finished))


def check_sampling(body: Sampling, settings, chat: bool) -> int:
    """Refuses settings out of range, and OpenAI options this server lacks, with a 400 naming the field;
    returns max_tokens."""
    for name, value in (body.model_extra or {}).items():
        if name in UNSUPPORTED and value not in UNSUPPORTED[name]:
            raise ApiError(
                400, name, f"{name} is not supported by this server; leave it out (got {value!r})."
            )
    limit = settings.max_new_tokens_limit
    max_tokens = body.max_tokens
    if max_tokens is None:
        max_tokens = limit if chat else min(COMPLETION_DEFAULT_TOKENS, limit)
    if max_tokens < 1:
        raise ApiError(400, "max_tokens", f"max_tokens is {max_tokens}; ask for at least 1 new token.")
    if max_tokens > limit:
        raise ApiError(
            400,
            "max_tokens",
            f"max_tokens is {max_tokens:,}; this server answers at most {limit:,} new tokens per choice "
            "(`foundry serve --max-new-tokens-limit`). Ask for fewer.",
        )
    if not 0 <= body.temperature < math.inf:  # NaN too
        raise ApiError(400, "temperature", f"temperature is {body.temperature}; use 0 (greedy) or more.")
    if body.seed is not None and not -(2**62) < body.seed < 2**62:
        raise ApiError(400, "seed", f"seed is {body.seed}; use a whole number between -2**62 and 2**62.")
    if not 0 < body.top_p <= 1:
        raise ApiError(400, "top_p", f"top_p is {body.top_p}; it must be in (0, 1] (1 keeps every token).")
    if body.top_k is not None and body.top_k < 1:
        raise ApiError(400, "top_k", f"top_k is {body.top_k}; use 1 or more, or leave it out.")
    if not 1 <= body.n <= settings.max_inputs:
        raise ApiError(400, "n", f"n is {body.n}; ask for 1 to {settings.max_inputs} choices.")
    prompts = len(body.prompt) if isinstance(getattr(body, "prompt", None), list) else 1
    if prompts * body.n > settings.max_inputs:
        raise ApiError(
            400,
            "n",
            f"{prompts} prompts x n={body.n} is {prompts * body.n} sequences; this server takes at most "
            f"{settings.max_inputs} per request (`--max-inputs`). Split the request.",
        )
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stops) > MAX_STOP or not all(stops):
        raise ApiError(400, "stop", f"stop takes up to {MAX_STOP} non-empty strings; got {len(stops)}.")
    return max_tokens


def prompt_ids(tokenizer, text: str, max_tokens: int, context: int, truncate: bool, field: str):
    """A prompt's token ids and a warning when some were dropped.

    When the prompt and max_tokens together exceed the context, the prompt loses tokens from its start
    until they fit, keeping at least half the context (the answer then ends at the context, finish_reason
    "length"). With truncate false, a prompt that does not fit the context at all is refused instead."""
    ids = tokenizer.encode(text)
    if not ids:
        if tokenizer.eos_id is None:
            raise ApiError(400, field, "the prompt is empty; send some text.")
        ids = [tokenizer.eos_id]  # the start of a new document
    keep = max(context - max_tokens, context // 2)
    if len(ids) <= keep or (not truncate and len(ids) < context):
        return ids, None
    if not truncate:
        raise ApiError(
            400,
            field,
            f"the prompt is {len(ids):,} tokens; this model's context holds {context:,}. Shorten it, or send "
            '"truncate": true to drop its start.',
        )
    warning = (
        f"{field}: the prompt is {len(ids):,} tokens and the context {context:,}; its first "
        f"{len(ids) - keep:,} tokens were dropped to leave room for the answer."
    )
    return ids[-keep:], warning


def at(field: str, i: int, prompts: list) -> str:
    return field if len(prompts) == 1 else f"{field}.{i}"


async def collect(request: Request, engine: Engine, sequences, queue: asyncio.Queue):
    """Every choice's text and Finished; a client that goes away cancels them."""
    texts, finished = [""] * len(sequences), [None] * len(sequences)
    left, checked = len(sequences), time.monotonic()
    try:
        while left:
            if time.monotonic() - checked > DISCONNECT_POLL_S:  # however busy the queue is
                if await request.is_disconnected():
                    raise ApiError(499, "client", "the client went away")
                checked = time.monotonic()
            try:
                index, item = await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                continue
            if isinstance(item, Exception):
                raise ApiError(503, "model", f"generation stopped: {item}") from None
            if isinstance(item, Finished):
                finished[index], left = item, left - 1
            else:
                texts[index] += item
    finally:
        for sequence in sequences:
            engine.cancel(sequence)
    return texts, finished


async def stream(
    engine: Engine, sequences, queue: asyncio.Queue, reply: Reply, include_usage: bool, remember
):
    """Server-sent events: chunks of text as they come, one with each choice's finish_reason, a usage chunk
    when asked, then `data: [DONE]`. At most one event per STREAM_INTERVAL_S, the first at once: a choice's
    pieces decoded meanwhile become one chunk. The client going away stops the generator (Starlette cancels
    it) and its sequences with it. The first event carries the warnings, if any (a truncated prompt)."""
    texts, finished = [""] * len(sequences), [None] * len(sequences)
    left, warnings = len(sequences), reply.warnings
    try:
        if reply.chat:  # OpenAI's first chat chunk of each choice names the role
            yield b"".join(
                event(reply.chunk(i, {"role": "assistant", "content": ""}), warnings if i == 0 else None)
                for i in range(len(sequences))
            )
            warnings = None
        sent = 0.0  # when the last event went out
        while left:
            items = await gather_for(queue, left, sent + STREAM_INTERVAL_S)
            out = chunks(reply, items, texts, finished)
            left -= sum(isinstance(item, Finished) for _, item in items)
            yield b"".join(event(chunk, warnings if k == 0 else None) for k, chunk in enumerate(out))
            warnings, sent = None, time.monotonic()
            if "error" in out[-1]:
                return
        remember(texts)
        if include_usage:
            yield event({**reply.head("chunk"), "choices": [], "usage": reply.usage(finished)})
        yield b"data: [DONE]\n\n"
    finally:
        for sequence in sequences:
            engine.cancel(sequence)


async def gather_for(queue: asyncio.Queue, choices: int, until: float) -> list:
    """The items of a stream's queue: at least one, then what else comes until `until` (time.monotonic),
    or until every choice left has finished."""
    items = [await queue.get()]
    done = sum(isinstance(item, Finished | Exception) for _, item in items)
    while done < choices:
        while not queue.empty():
            items.append(queue.get_nowait())
            done += isinstance(items[-1][1], Finished | Exception)
        remaining = until - time.monotonic()
        if remaining <= 0 or done >= choices:
            break
        try:
            items.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
        done += isinstance(items[-1][1], Finished | Exception)
    return items


def chunks(reply: Reply, items: list, texts: list[str], finished: list) -> list[dict]:
    """The chunks of items that arrived together: each choice's pieces joined into one chunk, sent before
    its finish chunk; an error ends the list. Records the texts and Finished of each choice."""
    out, pending = [], {}  # choice -> text not yet in a chunk

    def send(index: int) -> None:
        text = pending.pop(index, "")
        if text:
            out.append(reply.chunk(index, {"content": text} if reply.chat else text))

    for index, item in items:
        if isinstance(item, Exception):
            for i in list(pending):
                send(i)
            out.append({"error": {"message": f"generation stopped: {item}", "type": "server_error"}})
            return out
        if isinstance(item, Finished):
            send(index)
            finished[index] = item
            out.append(reply.chunk(index, {} if reply.chat else "", finish=item.reason))
        else:
            texts[index] += item
            pending[index] = pending.get(index, "") + item
    for i in list(pending):
        send(i)
    return out


def event(data: dict, warnings: list[str] | None = None) -> bytes:
    """One server-sent event; `warnings` (an extension field) added when given."""
    return b"data: " + to_json({**data, "warnings": warnings} if warnings else data) + b"\n\n"


class Reply:
    """The answer's parts in OpenAI's shapes (text_completion / chat.completion / chat.completion.chunk)."""

    def __init__(
        self, id: str, model: str, chat: bool, prompt_tokens: int, choices: int, warnings: list[str]
    ):
        self.id, self.model, self.chat = id, model, chat
        self.prompt_tokens, self.choices, self.warnings = prompt_tokens, choices, warnings
        self.created = int(time.time())

    def head(self, kind: Literal["whole", "chunk"]) -> dict:
        obj = (
            "text_completion"
            if not self.chat
            else "chat.completion"
            if kind == "whole"
            else "chat.completion.chunk"
        )
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def usage(self, finished) -> dict:
        completion = sum(f.completion_tokens for f in finished if f is not None)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def whole(self, texts: list[str], finished: list[Finished]) -> dict:
        if self.chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": t},
                    "finish_reason": f.reason,
                    "logprobs": None,
                }
                for i, (t, f) in enumerate(zip(texts, finished))
            ]
        else:
            choices = [
                {"index": i, "text": t, "finish_reason": f.reason, "logprobs": None}
                for i, (t, f) in enumerate(zip(texts, finished))
            ]
        out = {**self.head("whole"), "choices": choices, "usage": self.usage(finished)}
        return {**out, "warnings": self.warnings} if self.warnings else out

    def chunk(self, index: int, content, finish: str | None = None) -> dict:
        """One choice's piece: a chat `delta`, or a completion's `text`."""
        key = "delta" if self.chat else "text"
        return {
            **self.head("chunk"),
            "choices": [{"index": index, key: content, "finish_reason": finish, "logprobs": None}],
        }


# ---------- the served model ----------


def generation_model(service):
    """The served package, when it generates text; a 404 in OpenAI's shape otherwise."""
    served = service.served
    if service.engine is None or not generates(served):
        raise ApiError(
            404,
            "model",
            "this model does not generate text; the OpenAI-compatible routes serve text generation models. "
            "Use POST /v1/predict.",
        )
    return served


def model_id(served) -> str:
    return served.version_name or served.predictor.spec.get("run_id") or "model"


def remembering(service, served, reply: Reply, stored: list[dict]):
    """What the feedback route needs of this answer, kept under its id once the texts are known: the
    prompt (or messages) and the answer of each choice."""

    def remember(texts: list[str]) -> None:
        service._remember(reply.id, stored, texts, served)

    return remember
