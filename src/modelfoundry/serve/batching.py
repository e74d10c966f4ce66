"""Micro-batching: concurrent requests run through the model as one batch.

Requests wait in a queue. One worker task takes the oldest request and every request queued
behind it (up to `max_batch_size` inputs), optionally waits up to `max_wait_ms` after the oldest
request arrived for more to come, and runs the batch in a single worker thread, off the event
loop, so the server keeps answering while the model works. While one batch runs, the next one
gathers in the queue: under load, batches grow by themselves; a lone request goes straight
through (with the default `max_wait_ms=0`) and never waits longer than `max_wait_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Request:
    key: object  # requests are batched only with others of the same key (the model that encoded them)
    payload: object
    size: int  # number of inputs
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Args:
    run_batch: (key, payloads) -> probabilities (sum of sizes, C), in the order of the payloads; runs in a
        thread.
    max_batch_size: most inputs in one batch (a single larger request still runs, alone).
    max_wait_ms: how long the oldest request may wait for company.
    on_batch: called with the number of inputs of each batch (metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[object, list], np.ndarray],
        max_batch_size: int = 64,
        max_wait_ms: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch or (lambda n: None)
        self._pending: deque[_Request] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._in_flight: list[_Request] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    @property
    def depth(self) -> int:
        """Inputs waiting for the model."""
        return sum(r.size for r in self._pending)

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; requests queued or in the batch being run get an error instead of waiting
        forever."""
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for request in [*self._in_flight, *self._pending]:
            if not request.future.done():
                request.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        self._executor.shutdown(
            wait=False, cancel_futures=True
        )  # never block the event loop on the model thread

    async def submit(self, key: object, payload: object, size: int) -> np.ndarray:
        """Queue one request's inputs; returns their probabilities (size, C)."""
        if not self.running:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(key, payload, size, future))
        self._wake.set()
        return await future

    def _take(self, batch: list[_Request], room: int) -> int:
        """Move queued requests with the batch's key into it while they fit; returns the room left."""
        key = batch[0].key if batch else (self._pending[0].key if self._pending else None)
        kept = deque()
        while self._pending:
            request = self._pending.popleft()
            if request.future.done():  # its client went away
                continue
            if request.key is key and (request.size <= room or not batch):
                batch.append(request)
                room -= request.size
            else:
                kept.append(request)
                if request.key is key:  # too big for this batch: it leads the next one, so stop here
                    break
        self._pending.extendleft(reversed(kept))
        return room

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch: list[_Request] = []
            room = self._take(batch, self.max_batch_size)
            if not batch:
                continue
            deadline = batch[0].arrived + self.max_wait
            while room > 0 and (remaining := deadline - time.perf_counter()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
                room = self._take(batch, room)
            self.on_batch(sum(r.size for r in batch))
            self._in_flight = batch
            try:
                probabilities = await loop.run_in_executor(
                    self._executor, self.run_batch, batch[0].key, [r.payload for r in batch]
                )
            except Exception as exc:  # noqa: BLE001  every request of the batch gets the error; the worker lives on
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                self._in_flight = []
                continue
            self._in_flight = []
            start = 0
            for request in batch:
                if not request.future.done():
                    request.future.set_result(probabilities[start : start + request.size])
                start += request.size
