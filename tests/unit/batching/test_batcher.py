"""The batcher resolves every future exactly once, whatever the model does."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from inference_engine.batching import BatchPolicy, BatchResult, DynamicBatcher, ModelWorker
from inference_engine.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelFailed,
    ModelNotReady,
    QueueFull,
    ShuttingDown,
)
from inference_engine.metrics import Metrics

Predict = Callable[[list[int]], Sequence[int | BaseException]]


def doubled(items: list[int]) -> list[int | BaseException]:
    return [i * 2 for i in items]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def make_batcher(metrics: Metrics) -> AsyncIterator[Callable[..., DynamicBatcher[int, int]]]:
    made: list[DynamicBatcher[int, int]] = []
    workers: list[ModelWorker] = []

    def make(
        predict: Predict = doubled, *, size: int = 4, delay_ms: float = 5, queue: int = 64, instances: int = 1
    ) -> DynamicBatcher[int, int]:
        pairs = []
        for index in range(instances):
            worker = ModelWorker(f"test-{index}")
            workers.append(worker)
            pairs.append((worker, predict))
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            "m", BatchPolicy(size, delay_ms, queue), pairs, metrics
        )
        batcher.start()
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        await batcher.drain(1.0)
    for worker in workers:
        worker.close()


def deadline(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


async def test_results_come_back_in_order_with_batch_facts(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    batcher = make_batcher(size=4, delay_ms=50)
    futures = [batcher.submit(i, deadline=deadline()) for i in range(4)]
    results: list[BatchResult[int]] = await asyncio.gather(*futures)
    assert [r.output for r in results] == [0, 2, 4, 6]
    assert {r.batch_size for r in results} == {4}
    assert len({r.batch_id for r in results}) == 1
    assert all(r.inference_s >= 0 and r.queue_s >= 0 for r in results)


async def test_predict_runs_on_the_worker_thread_never_the_event_loop(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    threads: list[str] = []

    def record(items: list[int]) -> list[int | BaseException]:
        threads.append(threading.current_thread().name)
        return list(items)

    batcher = make_batcher(record)
    await batcher.submit(1, deadline=deadline())
    assert threads and threads[0].startswith("test-0")
    assert threads[0] != threading.current_thread().name


async def test_an_exception_entry_fails_only_its_item(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    def picky(items: list[int]) -> list[int | BaseException]:
        return [ValueError("odd") if i % 2 else i for i in items]

    batcher = make_batcher(picky, size=4, delay_ms=50)
    outcomes = await asyncio.gather(
        *(batcher.submit(i, deadline=deadline()) for i in range(4)), return_exceptions=True
    )
    assert [o.output for o in outcomes if isinstance(o, BatchResult)] == [0, 2]
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failures) == 2
    assert all(isinstance(f, ModelFailed) and "ValueError" in f.message for f in failures)


async def test_an_engine_error_entry_keeps_its_type(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    batcher = make_batcher(lambda items: [InvalidInput("not for this model") for _ in items])
    with pytest.raises(InvalidInput, match="not for this model"):
        await batcher.submit(1, deadline=deadline())


async def test_a_batch_wide_exception_fails_that_batch_and_the_loop_goes_on(
    make_batcher: Callable[..., DynamicBatcher[int, int]], metrics: Metrics
) -> None:
    calls = 0

    def first_call_explodes(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("CUDA out of memory")
        return list(items)

    batcher = make_batcher(first_call_explodes)
    with pytest.raises(ModelFailed, match="RuntimeError"):
        await batcher.submit(1, deadline=deadline())
    assert (await batcher.submit(2, deadline=deadline())).output == 2
    assert batcher.alive
    assert metrics.batch_failures.labels("m", "1")._value.get() == 1


async def test_wrong_number_of_outputs_fails_the_batch(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    batcher = make_batcher(lambda items: [1])
    futures = [batcher.submit(i, deadline=deadline()) for i in range(3)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert len(outcomes) == 3
    assert all(isinstance(o, ModelFailed) and "returned 1 outputs" in o.message for o in outcomes)


async def test_expired_items_are_dropped_before_the_forward_pass(
    make_batcher: Callable[..., DynamicBatcher[int, int]], metrics: Metrics
) -> None:
    seen: list[int] = []

    def slow(items: list[int]) -> list[int | BaseException]:
        seen.extend(items)
        time.sleep(0.2)
        return list(items)

    batcher = make_batcher(slow, size=1, delay_ms=0)
    first = batcher.submit(1, deadline=deadline())
    expiring = batcher.submit(2, deadline=deadline(0.05))
    assert (await first).output == 1
    with pytest.raises(DeadlineExceeded):
        await expiring
    assert seen == [1]
    assert metrics.dropped.labels("m", "1", "deadline")._value.get() == 1


async def test_cancelled_items_are_dropped_before_the_forward_pass(
    make_batcher: Callable[..., DynamicBatcher[int, int]], metrics: Metrics
) -> None:
    seen: list[int] = []

    def slow(items: list[int]) -> list[int | BaseException]:
        seen.extend(items)
        time.sleep(0.1)
        return list(items)

    batcher = make_batcher(slow, size=1, delay_ms=0)
    first = batcher.submit(1, deadline=deadline())
    gone = batcher.submit(2, deadline=deadline())
    gone.cancel()
    last = batcher.submit(3, deadline=deadline())
    await asyncio.gather(first, last)
    assert seen == [1, 3]
    assert metrics.dropped.labels("m", "1", "cancelled")._value.get() == 1


async def test_full_queue_refuses_and_retry_after_follows_throughput(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    release = threading.Event()

    def blocked(items: list[int]) -> list[int | BaseException]:
        release.wait(5)
        return list(items)

    batcher = make_batcher(blocked, size=1, delay_ms=0, queue=2)
    running = batcher.submit(0, deadline=deadline())
    await asyncio.sleep(0.05)  # the first item is now in the forward pass
    queued = [batcher.submit(i, deadline=deadline()) for i in (1, 2)]
    with pytest.raises(QueueFull) as raised:
        batcher.submit(3, deadline=deadline())
    assert int(raised.value.headers["Retry-After"]) >= 1
    release.set()
    assert [r.output for r in await asyncio.gather(running, *queued)] == [0, 1, 2]
    assert batcher.retry_after_s() >= 1.0


async def test_instances_share_the_queue_and_run_in_parallel(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    threads: set[str] = set()

    def sleepy(items: list[int]) -> list[int | BaseException]:
        threads.add(threading.current_thread().name)
        time.sleep(0.2)
        return list(items)

    batcher = make_batcher(sleepy, size=1, delay_ms=0, instances=2)
    started = time.monotonic()
    await asyncio.gather(*(batcher.submit(i, deadline=deadline()) for i in range(4)))
    assert len(threads) == 2
    assert time.monotonic() - started < 0.75  # 4 x 0.2 s on one thread would take 0.8 s


async def test_drain_finishes_queued_work_then_refuses(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    def slow(items: list[int]) -> list[int | BaseException]:
        time.sleep(0.05)
        return list(items)

    batcher = make_batcher(slow, size=1, delay_ms=0)
    futures = [batcher.submit(i, deadline=deadline()) for i in range(3)]
    await batcher.drain(5.0)
    assert [f.result().output for f in futures] == [0, 1, 2]
    assert not batcher.alive
    with pytest.raises(ShuttingDown):
        batcher.submit(9, deadline=deadline())


async def test_drain_timeout_fails_what_is_left(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    def slow(items: list[int]) -> list[int | BaseException]:
        time.sleep(0.3)
        return list(items)

    batcher = make_batcher(slow, size=1, delay_ms=0)
    futures = [batcher.submit(i, deadline=deadline()) for i in range(4)]
    await batcher.drain(0.1)
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert any(isinstance(o, ShuttingDown) for o in outcomes)
    assert all(isinstance(o, (ShuttingDown, BatchResult)) for o in outcomes)


# -- a batch still forming: its items have left the queue but have not run ----------------------


async def forming(batcher: DynamicBatcher[int, int], count: int) -> list[asyncio.Future[BatchResult[int]]]:
    """Submit ``count`` items and let the loops take them off the queue into a forming batch."""
    futures = [batcher.submit(i, deadline=deadline()) for i in range(count)]
    await asyncio.sleep(0.05)  # the batch waits for its 2 s delay; the queue itself is empty
    assert len(batcher._queue) == 0
    return futures


@pytest.mark.parametrize("instances", [1, 2])
async def test_abort_fails_a_forming_batch_at_once(
    make_batcher: Callable[..., DynamicBatcher[int, int]], instances: int
) -> None:
    batcher = make_batcher(size=64, delay_ms=2000, instances=instances)
    futures = await forming(batcher, 2)
    error = ModelNotReady("model m is restarting: test", retry_after_s=5.0)
    batcher.abort(error)
    outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 0.1)
    assert outcomes == [error, error]


async def test_drain_fails_a_forming_batch_it_has_no_time_to_run(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    batcher = make_batcher(size=64, delay_ms=2000, instances=2)
    futures = await forming(batcher, 2)
    await asyncio.wait_for(batcher.drain(0.05), 1.0)
    outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 0.1)
    assert all(isinstance(o, ShuttingDown) for o in outcomes), outcomes


async def test_drain_lets_a_forming_batch_run_when_time_allows(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    batcher = make_batcher(size=64, delay_ms=200)
    futures = await forming(batcher, 2)
    await asyncio.wait_for(batcher.drain(5.0), 2.0)
    assert [f.result().output for f in futures] == [0, 2]
