"""Eager batch closing: a batch waits for inputs still being decoded, and never for nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from inference_engine.batching import BatchPolicy, BatchResult, DynamicBatcher, ModelWorker
from inference_engine.batching.queue import BatchQueue, WorkItem
from inference_engine.metrics import Metrics


def item(value: int) -> WorkItem[int]:
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    return WorkItem(value, future, deadline=time.monotonic() + 60)


def admit_all(_: WorkItem[int]) -> bool:
    return True


async def test_nothing_incoming_closes_the_batch_at_once() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    queue.put(item(1))
    started = time.monotonic()
    batch = await queue.next_batch(max_size=8, max_delay_s=5.0, admit=admit_all, incoming=lambda: 0)
    assert [w.payload for w in batch] == [1]
    assert time.monotonic() - started < 1.0


async def test_an_incoming_item_is_waited_for_within_the_delay() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    queue.put(item(1))
    on_its_way = 1

    async def arrives() -> None:
        nonlocal on_its_way
        await asyncio.sleep(0.05)
        on_its_way = 0  # the announcement ends right before the put, with no await between
        queue.put(item(2))

    task = asyncio.create_task(arrives())
    batch = await queue.next_batch(max_size=8, max_delay_s=5.0, admit=admit_all, incoming=lambda: on_its_way)
    await task
    assert [w.payload for w in batch] == [1, 2]


async def test_an_incoming_item_that_never_comes_costs_at_most_the_delay() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    queue.put(item(1))
    started = time.monotonic()
    batch = await queue.next_batch(max_size=8, max_delay_s=0.05, admit=admit_all, incoming=lambda: 1)
    assert [w.payload for w in batch] == [1]
    assert 0.04 <= time.monotonic() - started < 1.0


@pytest.fixture
async def worker() -> AsyncIterator[ModelWorker]:
    made = ModelWorker("test-eager")
    yield made
    made.close()


def _batcher(worker: ModelWorker, *, eager: bool, delay_ms: float = 2000.0) -> DynamicBatcher[int, int]:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        "m", BatchPolicy(8, delay_ms, 64), [(worker, lambda items: list(items))], Metrics(), eager=eager
    )
    batcher.start()
    return batcher


async def test_an_eager_batcher_runs_a_lone_request_without_the_delay(worker: ModelWorker) -> None:
    batcher = _batcher(worker, eager=True)
    started = time.monotonic()
    result: BatchResult[int] = await batcher.submit(7, deadline=time.monotonic() + 30)
    assert result.output == 7
    assert time.monotonic() - started < 1.0  # the delay is 2 s
    await batcher.drain(1.0)


async def test_an_eager_batcher_waits_for_an_announced_input(worker: ModelWorker) -> None:
    batcher = _batcher(worker, eager=True)
    with batcher.incoming():
        first = batcher.submit(1, deadline=time.monotonic() + 30)
        await asyncio.sleep(0.05)  # the batch has formed and waits: something is on its way
    second = batcher.submit(2, deadline=time.monotonic() + 30)
    results: list[BatchResult[int]] = await asyncio.gather(first, second)
    assert [r.batch_size for r in results] == [2, 2]
    await batcher.drain(1.0)


async def test_a_batcher_that_is_not_eager_waits_out_the_delay(worker: ModelWorker) -> None:
    batcher = _batcher(worker, eager=False, delay_ms=300)
    started = time.monotonic()
    future = batcher.submit(1, deadline=time.monotonic() + 30)
    await asyncio.sleep(0.1)
    assert not future.done()  # still inside the delay, though nothing was announced
    second = batcher.submit(2, deadline=time.monotonic() + 30)
    results: list[BatchResult[int]] = await asyncio.gather(future, second)
    assert [r.batch_size for r in results] == [2, 2]
    assert time.monotonic() - started >= 0.29
    await batcher.drain(1.0)
