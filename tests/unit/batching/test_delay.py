"""The adaptive batch delay: wait for another input only while it is expected sooner than the
forward-pass cost that batching it saves, never past the configured ceiling."""

from __future__ import annotations

import asyncio
import time

import pytest

from inference_engine.batching import BatchPolicy, DynamicBatcher, ModelWorker
from inference_engine.batching.delay import BatchDelay
from inference_engine.batching.queue import BatchQueue, WorkItem
from inference_engine.metrics import Metrics


def arrivals(delay: BatchDelay, gap_s: float, count: int = 20, start: float = 100.0) -> float:
    now = start
    for _ in range(count):
        delay.arrived(now)
        now += gap_s
    return now


def costs(
    delay: BatchDelay,
    fixed_s: float,
    per_item_s: float,
    sizes: tuple[int, ...] = (1, 4, 8),
    idle_s: float = 1.0,
) -> None:
    """Batches of ``sizes`` that each ran after the loop idled ``idle_s`` (default: far from saturated)."""
    for size in sizes:
        delay.idled(idle_s)
        delay.ran(size, fixed_s + per_item_s * size)


def test_fixed_mode_always_waits_the_configured_delay() -> None:
    delay = BatchDelay(0.005, "fixed")
    costs(delay, 0.010, 0.001)
    arrivals(delay, 0.5)
    assert delay.wait_s() == 0.005


def test_the_per_batch_cost_is_the_intercept_of_forward_time_over_batch_size() -> None:
    delay = BatchDelay(0.020, "adaptive")
    assert delay.batch_overhead_s() is None
    delay.ran(1, 0.012)
    assert delay.batch_overhead_s() is None  # one size says nothing about the fixed part
    costs(delay, 0.010, 0.002, sizes=(2, 4, 8))
    assert delay.batch_overhead_s() == pytest.approx(0.010, abs=1e-9)


def test_it_behaves_as_the_fixed_delay_until_it_has_measured_both() -> None:
    delay = BatchDelay(0.005, "adaptive")
    assert delay.wait_s() == 0.005
    costs(delay, 0.010, 0.001)
    assert delay.wait_s() == 0.005  # no arrival gap yet
    arrivals(delay, 0.001, count=1)
    assert delay.arrival_gap_s is None and delay.wait_s() == 0.005


def test_inputs_expected_sooner_than_the_saving_are_waited_for_up_to_the_ceiling() -> None:
    delay = BatchDelay(0.020, "adaptive")
    costs(delay, 0.008, 0.001)
    arrivals(delay, 0.002)
    assert delay.arrival_gap_s == pytest.approx(0.002)
    assert delay.wait_s() == 0.020  # each input gathered saves 8 ms for 2 ms of waiting


def test_sparse_arrivals_are_not_waited_for() -> None:
    delay = BatchDelay(0.050, "adaptive")
    costs(delay, 0.008, 0.001)
    arrivals(delay, 0.020)  # the next input is further away than the 8 ms a batch saves
    assert delay.wait_s() == 0.0


def test_a_saturated_loop_waits_even_for_sparse_arrivals() -> None:
    delay = BatchDelay(0.050, "adaptive")
    costs(delay, 0.008, 0.001, idle_s=0.0)  # every batch found its first input already queued
    arrivals(delay, 0.020)
    assert delay.busy_share == pytest.approx(1.0)
    assert delay.wait_s() == 0.050  # the backlog builds anyway: only fuller batches serve it faster
    for _ in range(30):  # the load falls: the loop waits for first inputs as long as it computes
        delay.idled(0.012)
        delay.ran(4, 0.012)
    assert delay.busy_share is not None and delay.busy_share < 0.6
    assert delay.wait_s() == 0.0


def test_an_idle_spell_restarts_the_arrival_average() -> None:
    delay = BatchDelay(0.050, "adaptive")
    costs(delay, 0.008, 0.001)
    now = arrivals(delay, 0.002)
    delay.arrived(now + 30.0)  # the first input after a quiet half minute
    assert delay.arrival_gap_s is None and delay.wait_s() == 0.050
    arrivals(delay, 0.020, start=now + 30.1)
    assert delay.wait_s() == 0.0


def test_the_averages_follow_a_change_of_load() -> None:
    delay = BatchDelay(0.050, "adaptive")
    costs(delay, 0.008, 0.001)
    now = arrivals(delay, 0.020)
    assert delay.wait_s() == 0.0
    arrivals(delay, 0.001, count=30, start=now)
    assert delay.wait_s() == 0.050


def _item(value: int) -> WorkItem[int]:
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    return WorkItem(value, future, deadline=time.monotonic() + 60)


async def test_the_queue_closes_a_batch_when_patience_runs_out_before_the_delay() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    queue.put(_item(1))
    started = time.monotonic()
    batch = await queue.next_batch(
        max_size=8, max_delay_s=5.0, admit=lambda _: True, incoming=lambda: 1, patience=lambda: 0.0
    )
    assert [w.payload for w in batch] == [1]
    assert time.monotonic() - started < 1.0


async def test_the_queue_waits_out_patience_for_an_incoming_input() -> None:
    queue: BatchQueue[int] = BatchQueue(16)
    queue.put(_item(1))

    async def arrives() -> None:
        await asyncio.sleep(0.03)
        queue.put(_item(2))

    task = asyncio.create_task(arrives())
    batch = await queue.next_batch(
        max_size=8, max_delay_s=5.0, admit=lambda _: True, incoming=lambda: 1, patience=lambda: 1.0
    )
    await task
    assert [w.payload for w in batch] == [1, 2]


async def test_an_adaptive_batcher_learns_from_what_it_serves() -> None:
    def predict(items: list[int]) -> list[int]:
        time.sleep(0.002 + 0.0005 * len(items))
        return items

    worker = ModelWorker("delay-test")
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        "m", BatchPolicy(4, 20.0, 64, "adaptive"), [(worker, predict)], Metrics(), eager=True
    )
    batcher.start()
    try:
        for size in (1, 3, 4, 2):
            futures = [batcher.submit(i, deadline=time.monotonic() + 10) for i in range(size)]
            results = await asyncio.gather(*futures)
            assert [r.output for r in results] == list(range(size))
        assert batcher.delay.batch_overhead_s() is not None
        assert batcher.delay.arrival_gap_s is not None
    finally:
        await batcher.drain(1.0)
        worker.close()
