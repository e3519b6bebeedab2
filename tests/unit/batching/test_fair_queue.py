"""The fair queue: deficit round-robin across tenants by weight, priority classes, fair room."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from inference_engine.batching.queue import BatchQueue, WorkItem
from inference_engine.errors import QueueFull
from inference_engine.tenancy import Priority


def item(tenant: str, value: int = 0, *, weight: float = 1.0, priority: Priority = "normal") -> WorkItem[int]:
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    return WorkItem(
        value, future, deadline=time.monotonic() + 60, tenant=tenant, weight=weight, priority=priority
    )


def taken(queue: BatchQueue[int], count: int) -> list[str]:
    return [queue.get_nowait().tenant for _ in range(count)]


async def test_one_tenant_is_first_come_first_served() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    for value in range(5):
        queue.put(item("a", value))
    assert [queue.get_nowait().payload for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_flood_does_not_delay_a_light_tenant_behind_it() -> None:
    queue: BatchQueue[int] = BatchQueue(256)
    for value in range(100):
        queue.put(item("heavy", value))
    queue.put(item("light", 1000))
    # First come first served would serve the light tenant 101st; round-robin serves it 2nd.
    assert taken(queue, 2) == ["heavy", "light"]
    assert len(queue) == 99


async def test_weights_share_the_slots_in_proportion() -> None:
    queue: BatchQueue[int] = BatchQueue(1024)
    for _ in range(300):
        queue.put(item("gold", weight=3.0))
        queue.put(item("bronze", weight=1.0))
    served = Counter(taken(queue, 200))
    assert served["gold"] == 150 and served["bronze"] == 50


async def test_fractional_weights_save_their_credit() -> None:
    queue: BatchQueue[int] = BatchQueue(1024)
    for _ in range(100):
        queue.put(item("half", weight=0.5))
        queue.put(item("one", weight=1.0))
    served = Counter(taken(queue, 90))
    assert served["one"] == 60 and served["half"] == 30


async def test_a_tenant_that_went_idle_keeps_no_credit() -> None:
    queue: BatchQueue[int] = BatchQueue(64)
    queue.put(item("a", weight=5.0))
    assert taken(queue, 1) == ["a"]  # left with 4 slots of credit, then empty: forgotten
    for _ in range(3):
        queue.put(item("b"))
    queue.put(item("a", weight=5.0))
    queue.put(item("a", weight=5.0))
    assert taken(queue, 5) == ["b", "a", "a", "b", "b"]


async def test_higher_priority_classes_go_first() -> None:
    queue: BatchQueue[int] = BatchQueue(64)
    queue.put(item("a", 1, priority="low"))
    queue.put(item("a", 2, priority="normal"))
    queue.put(item("b", 3, priority="high"))
    queue.put(item("a", 4, priority="normal"))
    assert [queue.get_nowait().payload for _ in range(4)] == [3, 2, 4, 1]


async def test_a_full_queue_still_takes_a_tenant_under_its_share() -> None:
    queue: BatchQueue[int] = BatchQueue(10)
    for _ in range(10):
        queue.put(item("heavy"))
    with pytest.raises(QueueFull):
        queue.put(item("heavy"))
    # The light tenant holds nothing of its half: it gets in, up to that half.
    for _ in range(5):
        queue.put(item("light"))
    with pytest.raises(QueueFull):
        queue.put(item("light"))
    assert len(queue) == 15 and queue.queued_for("light") == 5
    assert not queue.has_room("heavy") and queue.has_room("newcomer")


async def test_ahead_of_counts_what_round_robin_serves_first() -> None:
    queue: BatchQueue[int] = BatchQueue(256)
    for _ in range(40):
        queue.put(item("heavy"))
    queue.put(item("urgent", priority="high"))
    assert queue.ahead_of("light", 1.0, "normal") == 1 + 1  # the high one, then one heavy
    assert queue.ahead_of("heavy", 1.0, "normal") == 1 + 40
    assert queue.ahead_of("light", 1.0, "low") == 41
    assert queue.ahead_of("light", 1.0, "high") == 1


async def test_get_waits_for_an_item_and_a_cancelled_wait_takes_none() -> None:
    queue: BatchQueue[int] = BatchQueue(8)
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    queue.put(item("a", 7))
    assert len(queue) == 1
    getter = asyncio.create_task(queue.get())
    assert (await asyncio.wait_for(getter, 1.0)).payload == 7
    assert len(queue) == 0


async def test_drain_returns_every_class_and_tenant() -> None:
    queue: BatchQueue[int] = BatchQueue(8)
    queue.put(item("a", priority="high"))
    queue.put(item("b"))
    queue.put(item("c", priority="low"))
    assert len(queue.drain_nowait()) == 3
    assert len(queue) == 0 and queue.queued_for("a") == 0
