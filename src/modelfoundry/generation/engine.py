"""Continuous batching: concurrent generation requests decoded together, one token per sequence per step.

One decode thread owns the model and a preallocated `KVCache` of `slots` sequences. A new sequence waits
until a slot is free, then its prompt is prefilled into that slot in one forward pass (B=1, T=prompt);
every step after that feeds the last token of *all* active sequences through the model together (B rows,
T=1, each row attending to its own slot). A sequence leaves as soon as it is done (end of text, a stop
sequence, its token budget, the context, or its client gone) and its slot takes the next waiting one, so
short and long requests share steps without waiting for each other: N streams cost far less than N
times one, because a small model's step costs about the same for 1 row as for 8.

The event loop side (serve/openai.py) calls `submit` and reads text pieces from the sequence's asyncio
queue; the decode thread puts them there with `call_soon_threadsafe`. `cancel` (a client that went away)
is a flag the thread reads before the next step; the slot is freed there.

The active sequences always hold slots 0..B-1 (`_active[i].slot == i`): when one leaves, the sequence in
the highest slot moves into its place (its keys and values copied, a few KB). The step then reads each
layer's cache as a view of its first B slots instead of gathering them, about a third faster at B = 8.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from modelfoundry.generation.kv_cache import KVCache
from modelfoundry.generation.sampling import pick

log = logging.getLogger("modelfoundry.serve")


@dataclass
class Request:
    """What one sequence asks for. `prompt_ids`: at least one token, and no more than the context."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # decode past the end-of-text token (fixed-length benchmarks)


@dataclass
class Finished:
    """The last item of a sequence's queue: why it ended (OpenAI's finish_reason) and its token counts."""

    reason: str  # "stop" (end of text or a stop sequence) | "length" (max_new_tokens or the context)
    prompt_tokens: int
    completion_tokens: int


class TextPieces:
    """New tokens -> the text to send so far: never half a UTF-8 character (byte-level tokens can split
    one; an unfinished one decodes to U+FFFD and is held back), never part of a stop sequence (text that
    could be the start of one is held until it is clearly not), nothing from a stop sequence on.

    Decoding is incremental, as vLLM's detokenizer does it: each token decodes a short window (the tokens
    since the last complete text, after one token of context so tokenizers that drop a leading space on
    a first token decode the same), not the whole sequence again."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()):
        self.decode, self.stop = decode, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.prefix = self.read = 0  # the window is ids[prefix:]; ids[prefix:read] are already text
        self.text = ""  # every complete character decoded so far
        self.sent = 0  # characters of it already given out

    def add(self, token: int) -> tuple[str, bool]:
        """(text to send now, whether a stop sequence ended the text)."""
        self.ids.append(token)
        known = self.decode(self.ids[self.prefix : self.read])
        window = self.decode(self.ids[self.prefix :])
        if len(window) > len(known) and not window.endswith("\ufffd"):  # else: a character is unfinished
            self.text += window[len(known) :]
            self.prefix, self.read = self.read, len(self.ids)
        text = self.text
        for stop in self.stop:
            at = text.find(stop, self.sent)
            if at >= 0:
                return self._take(at), True
        end = safe = len(text)
        for stop in self.stop:  # the longest tail that could begin a stop sequence waits
            for k in range(min(len(stop) - 1, end - self.sent), 0, -1):
                if text.endswith(stop[:k]):
                    safe = min(safe, end - k)
                    break
        return self._take(safe), False

    def rest(self) -> str:
        """What is held back, given out when the sequence ends for another reason than a stop (an
        unfinished character as U+FFFD)."""
        known = self.decode(self.ids[self.prefix : self.read])
        self.text += self.decode(self.ids[self.prefix :])[len(known) :]
        self.prefix = self.read = len(self.ids)
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece, self.sent = self.text[self.sent : end], max(self.sent, end)
        return piece


@dataclass(eq=False)
class Sequence:
    """One sequence in the engine. The event loop reads `queue`: (index, item) with item a str piece,
    then a `Finished`, or an Exception (several sequences of one request may share a queue, told apart
    by `index`); it may set `cancelled`. Everything else belongs to the decode thread."""

    request: Request
    loop: asyncio.AbstractEventLoop
    pieces: TextPieces
    queue: asyncio.Queue
    index: int = 0
    cancelled: bool = False
    slot: int | None = None
    generated: int = 0
    last: int = 0  # the token to feed next
    submitted: float = field(default_factory=time.perf_counter)
    generator: torch.Generator | None = None
    outbox: list | None = None  # the engine's: items wait there until the step ends

    def put(self, item) -> None:
        self.outbox.append((self, (self.index, item)))


def _deliver(items: list) -> None:
    """On the event loop: a step's items into their queues (one wake-up per step, not one per token)."""
    for sequence, item in items:
        sequence.queue.put_nowait(item)


class Engine:
    """The decode thread and its cache.

    Args:
        model: a `models.gpt.GPT` (in eval mode).
        decode: token ids -> text (the tokenizer's `decode`).
        eos_id: the end-of-text token, or None.
        slots: most sequences decoded together; more wait (`waiting`).
        on_first_token / on_tokens / on_cancel: metrics hooks, called in the decode thread with the seconds
            from submit to the first token, the number of tokens of each step, and for each sequence dropped
            unfinished because its client went away.
    """

    def __init__(
        self,
        model,
        decode: Callable[[list[int]], str],
        eos_id: int | None,
        slots: int = 8,
        on_first_token: Callable[[float], None] = lambda seconds: None,
        on_tokens: Callable[[int], None] = lambda n: None,
        on_cancel: Callable[[], None] = lambda: None,
    ):
        self.model, self.decode, self.eos_id = model, decode, eos_id
        parameter = next(model.parameters())
        self.cache = KVCache.allocate(
            model.config, slots, model.config.block_size, parameter.dtype, parameter.device
        )
        self.device = parameter.device
        self.on_first_token, self.on_tokens, self.on_cancel = on_first_token, on_tokens, on_cancel
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._active: list[Sequence] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._outbox: list = []  # (sequence, item) of this step, delivered together by _flush
        self._closing = False
        self._retiring = False  # another engine took over: end once the last sequence here is done
        self._thread: threading.Thread | None = None

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    @property
    def waiting(self) -> int:
        """Sequences queued for a free slot."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)
        self._thread.start()

    def close(self, wait: float = 5.0) -> None:
        """Stop the thread; sequences still waiting or running get an error."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait)

    def submit(self, request: Request, queue: asyncio.Queue | None = None, index: int = 0) -> Sequence:
        """Queue a sequence (call from the event loop); read its `queue` (a new one unless given)."""
        if not self.running or self._retiring:
            raise RuntimeError("the decode engine is not running")
        if not 0 < len(request.prompt_ids) <= self.max_len:
            raise ValueError(f"a prompt of {len(request.prompt_ids)} tokens does not fit {self.max_len}")
        generator = None
        if request.seed is not None:
            generator = torch.Generator(self.device).manual_seed(request.seed)
        sequence = Sequence(
            request,
            asyncio.get_running_loop(),
            TextPieces(self.decode, request.stop),
            asyncio.Queue() if queue is None else queue,
            index,
            generator=generator,
            outbox=self._outbox,
        )
        with self._lock:
            self._waiting.append(sequence)
        self._wake.set()
        return sequence

    def retire(self) -> None:
        """Take no more sequences; the thread ends when those it has are done (a reload: the old model
        finishes its answers while the new one takes new requests)."""
        self._retiring = True
        self._wake.set()

    def cancel(self, sequence: Sequence) -> None:
        """Its client went away: the thread drops it (and frees its slot) before the next step."""
        sequence.cancelled = True
        self._wake.set()

    # ---- the decode thread ----------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._closing:
                if self._retiring and not self._active and not self._waiting:
                    return
                try:
                    self._admit()
                    self._drop_cancelled()
                    if not self._active:
                        self._wake.wait(0.5)
                        self._wake.clear()
                        continue
                    self._step()
                except Exception as exc:
                    log.exception("the decode step failed")
                    for sequence in list(self._active):
                        self._end(sequence, exc)
                finally:
                    self._flush()
        with self._lock:
            left, self._waiting = [*self._active, *self._waiting], collections.deque()
        for sequence in left:
            sequence.put(RuntimeError("the server is shutting down"))
        self._flush()

    def _flush(self) -> None:
        """Hand this step's items to the event loop(s) of their sequences, one call per loop."""
        if not self._outbox:
            return
        items, self._outbox[:] = list(self._outbox), []
        loops: dict = {}
        for sequence, item in items:
            loops.setdefault(sequence.loop, []).append((sequence, item))
        for loop, batch in loops.items():
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody is listening
                loop.call_soon_threadsafe(_deliver, batch)

    def _admit(self) -> None:
        """Prefill waiting sequences into free slots (the next after the active ones), one prompt per
        forward pass."""
        while len(self._active) < self.cache.slots:
            with self._lock:
                if not self._waiting:
                    return
                sequence = self._waiting.popleft()
            if sequence.cancelled:  # its client went away while it waited
                self.on_cancel()
                continue
            sequence.slot = slot = len(self._active)
            self._active.append(sequence)
            self.cache.reset(slot)
            ids = torch.tensor([sequence.request.prompt_ids], device=self.device)  # (1, T)
            logits = self.model(ids, self.cache, torch.tensor([slot], device=self.device))[:, -1]  # (1, V)
            self._accept(sequence, self._pick(sequence, logits))
            self._flush()  # its first token goes out now, not after the other prefills
            self.on_tokens(1)

    def _step(self) -> None:
        """One new token for every active sequence: B rows of T=1, row i continuing slot i."""
        batch = list(self._active)
        idx = torch.tensor([[s.last] for s in batch], device=self.device)  # (B, 1)
        logits = self.model(idx, self.cache)[:, -1]  # (B, V); slots 0..B-1
        for sequence, token in zip(batch, self._pick_rows(batch, logits)):
            self._accept(sequence, token)
        self.on_tokens(len(batch))

    def _pick_rows(self, batch: list[Sequence], logits: torch.Tensor) -> list[int]:
        """The next token of every row: the greedy rows in one argmax, the sampled ones each with its own
        settings and generator (a seed gives the same text whoever else is being decoded)."""
        tokens: list[int | None] = [None] * len(batch)
        greedy = [i for i, s in enumerate(batch) if s.request.temperature == 0]
        if greedy:
            for i, token in zip(greedy, logits[greedy].argmax(-1).tolist()):
                tokens[i] = token
        for i, sequence in enumerate(batch):
            if tokens[i] is None:
                tokens[i] = self._pick(sequence, logits[i : i + 1])
        return tokens

    def _pick(self, sequence: Sequence, logits: torch.Tensor) -> int:
        r = sequence.request
        return int(pick(logits, r.temperature, r.top_k, r.top_p, sequence.generator)[0])

    def _accept(self, sequence: Sequence, token: int) -> None:
        """A new token: its text goes out, and the sequence ends when it is done."""
        sequence.generated += 1
        if sequence.generated == 1:
            self.on_first_token(time.perf_counter() - sequence.submitted)
        if token == self.eos_id and not sequence.request.ignore_eos:
            return self._end(sequence, "stop", flush=True)
        piece, stopped = sequence.pieces.add(token)
        if piece:
            sequence.put(piece)
        if stopped:
            return self._end(sequence, "stop", flush=False)
        sequence.last = token
        full = int(self.cache.lengths[sequence.slot]) >= self.max_len  # no room to feed this token
        if sequence.generated >= sequence.request.max_new_tokens or full:
            return self._end(sequence, "length", flush=True)
        return None

    def _drop_cancelled(self) -> None:
        for sequence in [s for s in self._active if s.cancelled]:
            self._release(sequence)
            self.on_cancel()

    def _end(self, sequence: Sequence, how: str | Exception, flush: bool = False) -> None:
        """`flush`: give out the text held back (it began no stop sequence after all)."""
        if isinstance(how, Exception):
            sequence.put(how)
        else:
            rest = sequence.pieces.rest() if flush else ""
            if rest:
                sequence.put(rest)
            sequence.put(Finished(how, len(sequence.request.prompt_ids), sequence.generated))
        self._release(sequence)

    def _release(self, sequence: Sequence) -> None:
        """Free its slot; the sequence in the highest slot moves into it, so slots 0..B-1 stay in use."""
        if sequence not in self._active:
            return
        last = self._active.pop()
        if last is not sequence:
            self._move(last.slot, sequence.slot)
            last.slot = sequence.slot
            self._active[last.slot] = last
        self.cache.reset(len(self._active))

    def _move(self, source: int, target: int) -> None:
        """Copy one slot's keys, values and length into another."""
        length = int(self.cache.lengths[source])
        for k, v in zip(self.cache.k, self.cache.v):
            k[target, :, :length] = k[source, :, :length]
            v[target, :, :length] = v[source, :, :length]
        self.cache.lengths[target] = length
