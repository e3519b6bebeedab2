"""Batch formation: size and delay rules, admission, and a bounded queue that refuses at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from inference_engine.batching.queue import BatchQueue, WorkItem
from inference_engine.errors import QueueFull


def item(value: int, *, age_s: float = 0.0, deadline_s: float = 60.0) -> WorkItem[int]:
    now = time.monotonic()
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    return WorkItem(value, future, deadline=now + deadline_s, enqueued_at=now - age_s)


def admit_all(_: WorkItem[int]) -> bool:
    return True


async def test_batch_closes_when_full_without_waiting_for_the_delay() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    for i in range(5):
        queue.put(item(i))
    started = time.monotonic()
    batch = await queue.next_batch(max_size=3, max_delay_s=10.0, admit=admit_all)
    assert [w.payload for w in batch] == [0, 1, 2]
    assert time.monotonic() - started < 1.0
    assert len(queue) == 2


async def test_batch_closes_after_the_delay_counted_from_the_first_enqueue() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    queue.put(item(1))
    started = time.monotonic()
    batch = await queue.next_batch(max_size=8, max_delay_s=0.05, admit=admit_all)
    elapsed = time.monotonic() - started
    assert [w.payload for w in batch] == [1]
    assert 0.04 <= elapsed < 1.0


async def test_an_item_that_already_waited_is_not_made_to_wait_again() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    queue.put(item(1, age_s=1.0))
    started = time.monotonic()
    await queue.next_batch(max_size=8, max_delay_s=0.5, admit=admit_all)
    assert time.monotonic() - started < 0.25


async def test_items_arriving_during_the_delay_join_the_batch() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    queue.put(item(1))

    async def late() -> None:
        await asyncio.sleep(0.02)
        queue.put(item(2))

    task = asyncio.create_task(late())
    batch = await queue.next_batch(max_size=2, max_delay_s=2.0, admit=admit_all)
    await task
    assert [w.payload for w in batch] == [1, 2]


async def test_refused_items_take_no_slot() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    for i in range(6):
        queue.put(item(i))
    batch = await queue.next_batch(max_size=3, max_delay_s=0.0, admit=lambda w: w.payload % 2 == 1)
    assert [w.payload for w in batch] == [1, 3, 5]


async def test_waiting_for_the_first_item_does_not_spin() -> None:
    queue: BatchQueue[int] = BatchQueue(4)
    task = asyncio.create_task(queue.next_batch(max_size=2, max_delay_s=0.0, admit=admit_all))
    cpu_before = time.process_time()
    await asyncio.sleep(0.3)
    assert time.process_time() - cpu_before < 0.1
    queue.put(item(7))
    assert [w.payload for w in await task] == [7]


async def test_a_full_queue_raises_queue_full_with_retry_after() -> None:
    depths: list[int] = []
    queue: BatchQueue[int] = BatchQueue(2, on_depth=depths.append)
    queue.put(item(1))
    queue.put(item(2))
    with pytest.raises(QueueFull) as raised:
        queue.put(item(3), retry_after_s=4.2)
    assert raised.value.headers["Retry-After"] == "5"
    assert raised.value.status_code == 503
    assert depths == [1, 2]
    assert [w.payload for w in queue.drain_nowait()] == [1, 2]
    assert depths[-1] == 0


async def test_a_batch_cancelled_while_forming_keeps_what_it_took_off_the_queue() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    queue.put(item(1))
    taken: list[WorkItem[int]] = []
    task = asyncio.create_task(queue.next_batch(max_size=8, max_delay_s=5.0, admit=admit_all, into=taken))
    await asyncio.sleep(0.02)
    queue.put(item(2))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [w.payload for w in taken] == [1, 2]  # out of the queue, but still within reach
    assert len(queue) == 0
