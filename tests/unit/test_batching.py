"""The micro-batcher: concurrent requests share model calls, and every caller gets its own rows back.

The fake model returns one row per input, `[tag, position]`, so a caller can tell whether the rows it
got are its own. It can hold a batch on a `threading.Event` (the model is busy) so that requests
queue up deterministically behind it, with no sleeps.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from modelfoundry.serve.batching import MicroBatcher

GUARD_S = 10  # only against hangs; every test finishes in milliseconds


class FakeModel:
    """run_batch for MicroBatcher; payloads are (tag, size) and come back as rows [tag, 0..size-1]."""

    def __init__(self, hold: tuple[int, ...] = (), fail: tuple[int, ...] = ()):
        self.batches: list[tuple[object, list[int]]] = []  # (key, tags) of every call, in order
        self.gates = {index: threading.Event() for index in hold}  # these calls wait until released
        self.fail = fail  # these calls raise

    def __call__(self, key: object, payloads: list) -> np.ndarray:
        index = len(self.batches)
        self.batches.append((key, [tag for tag, _ in payloads]))
        if index in self.gates and not self.gates[index].wait(GUARD_S):
            raise RuntimeError(f"test bug: batch {index} was never released")
        if index in self.fail:
            raise ValueError(f"model failed on batch {index}")
        return rows(*payloads)

    def release(self, index: int) -> None:
        self.gates[index].set()


def rows(*payloads: tuple[int, int]) -> np.ndarray:
    return np.array([[tag, j] for tag, size in payloads for j in range(size)], dtype=float).reshape(-1, 2)


async def until(condition) -> None:
    """Let the event loop run until `condition()` holds (fails the test instead of hanging)."""
    for _ in range(GUARD_S * 1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


def run(test) -> None:
    asyncio.run(asyncio.wait_for(test(), GUARD_S))


def submit(batcher: MicroBatcher, tag: int, size: int = 1, key: object = "model") -> asyncio.Task:
    return asyncio.create_task(batcher.submit(key, (tag, size), size))


async def busy_batcher(model: FakeModel, **kwargs) -> tuple[MicroBatcher, asyncio.Task]:
    """A started batcher whose model is busy with batch 0 (tag 0) until `model.release(0)`."""
    batcher = MicroBatcher(model, **kwargs)
    batcher.start()
    first = submit(batcher, 0)
    await until(lambda: len(model.batches) == 1)
    return batcher, first


def test_a_lone_request_goes_straight_through():
    async def test():
        sizes = []
        model = FakeModel()
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_ms=0, on_batch=sizes.append)
        batcher.start()
        np.testing.assert_array_equal(await batcher.submit("model", (7, 3), 3), rows((7, 3)))
        assert model.batches == [("model", [7])] and sizes == [3]
        await batcher.stop()

    run(test)


def test_requests_queued_while_the_model_is_busy_run_as_one_batch_and_each_gets_its_own_rows():
    async def test():
        model = FakeModel(hold=(0,))
        batcher, first = await busy_batcher(model, max_batch_size=64)
        waiting = [submit(batcher, tag, size) for tag, size in ((1, 1), (2, 2), (3, 3))]
        await until(lambda: batcher.depth == 6)
        model.release(0)
        results = await asyncio.gather(first, *waiting)
        assert model.batches == [("model", [0]), ("model", [1, 2, 3])]
        for result, payload in zip(results, [(0, 1), (1, 1), (2, 2), (3, 3)]):
            np.testing.assert_array_equal(result, rows(payload))
        await batcher.stop()

    run(test)


def test_batches_never_exceed_max_batch_size_and_a_larger_request_runs_alone():
    async def test():
        sizes = []
        model = FakeModel(hold=(0,))
        batcher, first = await busy_batcher(model, max_batch_size=4, on_batch=sizes.append)
        requests = [(1, 3), (2, 2), (3, 1), (4, 6), (5, 1), (6, 4)]
        waiting = [submit(batcher, tag, size) for tag, size in requests]
        await until(lambda: batcher.depth == 17)
        model.release(0)
        results = await asyncio.gather(*waiting)
        await first
        for result, payload in zip(results, requests):
            np.testing.assert_array_equal(result, rows(payload))
        assert sum(sizes) == 1 + 17 and len(sizes) == len(model.batches)
        for size, (_, tags) in zip(sizes, model.batches):
            assert size <= 4 or len(tags) == 1, (size, tags)
        assert ("model", [4]) in model.batches  # the 6-input request ran, alone
        assert sorted(tag for _, tags in model.batches for tag in tags) == [0, 1, 2, 3, 4, 5, 6]
        await batcher.stop()

    run(test)


def test_requests_for_different_models_are_never_batched_together():
    async def test():
        model_a, model_b = object(), object()
        model = FakeModel(hold=(0,))
        batcher, first = await busy_batcher(model)
        keys = {1: model_a, 2: model_b, 3: model_a, 4: model_b}
        waiting = [submit(batcher, tag, key=key) for tag, key in keys.items()]
        await until(lambda: batcher.depth == 4)
        model.release(0)
        results = await asyncio.gather(first, *waiting)
        for key, tags in model.batches[1:]:
            assert {keys[tag] for tag in tags} == {key}  # each batch runs on the model of its requests
        assert sorted(len(tags) for _, tags in model.batches[1:]) == [2, 2]  # still batched per model
        for tag, result in enumerate(results):
            np.testing.assert_array_equal(result, rows((tag, 1)))
        await batcher.stop()

    run(test)


def test_with_max_wait_a_request_arriving_soon_after_joins_the_batch():
    async def test():
        sizes = []
        model = FakeModel()
        # The wait is long, but the batch is full (2 inputs) as soon as the second request arrives.
        batcher = MicroBatcher(model, max_batch_size=2, max_wait_ms=60_000, on_batch=sizes.append)
        batcher.start()
        first = submit(batcher, 1)
        await until(lambda: batcher.depth == 0)  # the worker holds it and waits for company
        await asyncio.sleep(0.01)
        second = submit(batcher, 2)
        np.testing.assert_array_equal(await first, rows((1, 1)))
        np.testing.assert_array_equal(await second, rows((2, 1)))
        assert model.batches == [("model", [1, 2])] and sizes == [2]
        await batcher.stop()

    run(test)


def test_with_max_wait_a_lone_request_is_answered_after_the_wait():
    async def test():
        model = FakeModel()
        batcher = MicroBatcher(model, max_batch_size=64, max_wait_ms=20)
        batcher.start()
        np.testing.assert_array_equal(await batcher.submit("model", (1, 2), 2), rows((1, 2)))
        assert model.batches == [("model", [1])]
        await batcher.stop()

    run(test)


def test_a_model_error_reaches_every_caller_of_the_batch_and_the_worker_keeps_serving():
    async def test():
        model = FakeModel(hold=(0,), fail=(1,))
        batcher, first = await busy_batcher(model)
        failing = [submit(batcher, 1), submit(batcher, 2, 2)]
        await until(lambda: batcher.depth == 3)
        model.release(0)
        np.testing.assert_array_equal(await first, rows((0, 1)))
        for task in failing:
            with pytest.raises(ValueError, match="model failed on batch 1"):
                await task
        np.testing.assert_array_equal(await batcher.submit("model", (3, 1), 1), rows((3, 1)))
        assert model.batches[1:] == [("model", [1, 2]), ("model", [3])]
        await batcher.stop()

    run(test)


def test_a_caller_that_gave_up_while_queued_is_skipped():
    async def test():
        model = FakeModel(hold=(0,))
        batcher, first = await busy_batcher(model)
        one, gone, three = submit(batcher, 1), submit(batcher, 2, 5), submit(batcher, 3)
        await until(lambda: batcher.depth == 7)
        gone.cancel()
        model.release(0)
        np.testing.assert_array_equal(await one, rows((1, 1)))
        np.testing.assert_array_equal(await three, rows((3, 1)))
        assert gone.cancelled()
        assert model.batches[1:] == [("model", [1, 3])]  # the model did no work for it
        await first
        await batcher.stop()

    run(test)


def test_a_caller_that_gave_up_while_its_batch_ran_does_not_break_the_others():
    async def test():
        model = FakeModel(hold=(0, 1))
        batcher, first = await busy_batcher(model)
        gone, stays = submit(batcher, 1, 2), submit(batcher, 2, 3)
        await until(lambda: batcher.depth == 5)
        model.release(0)
        await until(lambda: len(model.batches) == 2)  # tags 1 and 2 are in the model now
        gone.cancel()
        model.release(1)
        np.testing.assert_array_equal(await stays, rows((2, 3)))  # rows 2..4 of the batch, not 0..2
        assert gone.cancelled()
        np.testing.assert_array_equal(await batcher.submit("model", (3, 1), 1), rows((3, 1)))
        await first
        await batcher.stop()

    run(test)


def test_depth_counts_queued_inputs():
    async def test():
        model = FakeModel(hold=(0,))
        batcher, first = await busy_batcher(model)
        assert batcher.depth == 0  # the running batch is not waiting any more
        waiting = [submit(batcher, 1, 2), submit(batcher, 2, 3)]
        await asyncio.sleep(0)  # the two submissions queue themselves
        assert batcher.depth == 5
        model.release(0)
        await asyncio.gather(first, *waiting)
        assert batcher.depth == 0
        await batcher.stop()

    run(test)


def test_stop_fails_queued_requests_instead_of_leaving_them_hanging():
    async def test():
        model = FakeModel(hold=(0,))
        batcher, first = await busy_batcher(model)
        waiting = [submit(batcher, 1), submit(batcher, 2)]
        await until(lambda: batcher.depth == 2)
        model.release(0)  # so that stop() can wait for the model thread
        await batcher.stop()
        for task in waiting:
            with pytest.raises(RuntimeError, match="shutting down"):
                await task
        assert model.batches == [("model", [0])]  # nothing new started after stop
        first.cancel()

    run(test)


def test_stop_answers_the_batch_in_flight_instead_of_leaving_it_hanging():
    async def test():
        model = FakeModel(hold=(0,))
        batcher, in_flight = await busy_batcher(model)
        model.release(0)
        await batcher.stop()
        done, _ = await asyncio.wait([in_flight], timeout=1)
        in_flight.cancel()
        assert in_flight in done, "the caller whose batch was running when the server stopped got no answer"

    run(test)
