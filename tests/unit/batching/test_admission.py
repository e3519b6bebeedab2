"""Predictive admission: refuse at once what the work ahead would make miss its deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from inference_engine.batching import BatchPolicy, DynamicBatcher, ModelWorker
from inference_engine.errors import DeadlineUnmeetable, QueueFull
from inference_engine.metrics import Metrics
from inference_engine.tenancy import Caller

PASS_S = 0.05  # every forward pass, whatever its size


def slow(items: list[int]) -> list[int | BaseException]:
    time.sleep(PASS_S)
    return list(items)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def make_batcher(metrics: Metrics) -> AsyncIterator[Callable[..., DynamicBatcher[int, int]]]:
    made: list[tuple[DynamicBatcher[int, int], ModelWorker]] = []

    def make(admission: str = "predictive", queue: int = 64) -> DynamicBatcher[int, int]:
        worker = ModelWorker("admission-test")
        policy = BatchPolicy(4, 1.0, queue, "fixed", admission)  # type: ignore[arg-type]
        batcher: DynamicBatcher[int, int] = DynamicBatcher("m", policy, [(worker, slow)], metrics, eager=True)
        batcher.forward.observe(1, PASS_S)  # as the runtime seeds it after warm-up
        batcher.forward.observe(4, PASS_S)
        batcher.start()
        made.append((batcher, worker))
        return batcher

    yield make
    for batcher, worker in made:
        await batcher.drain(2.0)
        worker.close()


def refusals(metrics: Metrics, reason: str) -> float:
    labels = {"model": "m", "version": "1", "reason": reason}
    return metrics.registry.get_sample_value("inference_engine_admission_refusals_total", labels) or 0.0


async def test_a_deadline_the_backlog_cannot_meet_is_refused_at_once(
    make_batcher: Callable[..., DynamicBatcher[int, int]], metrics: Metrics
) -> None:
    batcher = make_batcher()
    backlog = [batcher.submit(i, deadline=time.monotonic() + 10) for i in range(12)]  # 3 passes ahead
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(DeadlineUnmeetable) as refused:
        batcher.submit(99, deadline=time.monotonic() + 0.06)
    assert time.monotonic() - started < 0.05
    assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "1"
    assert "inputs ahead" in refused.value.message
    assert refusals(metrics, "deadline") == 1
    with pytest.raises(DeadlineUnmeetable):
        batcher.check_room(1, deadline=time.monotonic() + 0.06)  # before any work on the input
    # A deadline the backlog does meet is taken, and answered.
    late_enough = batcher.submit(100, deadline=time.monotonic() + 2)
    assert (await late_enough).output == 100
    await asyncio.gather(*backlog)


async def test_queue_only_admission_queues_it_to_time_out(
    make_batcher: Callable[..., DynamicBatcher[int, int]], metrics: Metrics
) -> None:
    batcher = make_batcher("queue_only")
    backlog = [batcher.submit(i, deadline=time.monotonic() + 10) for i in range(12)]
    doomed = batcher.submit(99, deadline=time.monotonic() + 0.06)
    with pytest.raises(Exception, match="deadline"):
        await doomed
    dropped = metrics.registry.get_sample_value(
        "inference_engine_dropped_inputs_total", {"model": "m", "version": "1", "reason": "deadline"}
    )
    assert dropped == 1 and refusals(metrics, "deadline") == 0
    await asyncio.gather(*backlog)


async def test_the_prediction_error_of_every_admitted_input_is_exported(
    make_batcher: Callable[..., DynamicBatcher[int, int]], metrics: Metrics
) -> None:
    batcher = make_batcher()
    await asyncio.gather(*(batcher.submit(i, deadline=time.monotonic() + 10) for i in range(8)))
    labels = {"model": "m", "version": "1"}
    registry = metrics.registry
    count = registry.get_sample_value("inference_engine_admission_prediction_error_seconds_count", labels)
    total = registry.get_sample_value("inference_engine_admission_prediction_error_seconds_sum", labels)
    assert count == 8
    assert total is not None and total / 8 < 0.1  # within 100 ms on average for 50 ms passes
    outcomes = [
        registry.get_sample_value("inference_engine_admission_predictions_total", {**labels, "outcome": o})
        or 0
        for o in ("early", "late")
    ]
    assert sum(outcomes) == 8


async def test_a_light_tenant_is_judged_on_its_round_robin_place(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    batcher = make_batcher(queue=256)
    heavy = Caller("heavy")
    flood = [batcher.submit(i, deadline=time.monotonic() + 30, caller=heavy) for i in range(40)]
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineUnmeetable):  # ten passes ahead of another heavy input
        batcher.submit(0, deadline=time.monotonic() + 0.2, caller=heavy)
    light = batcher.submit(1, deadline=time.monotonic() + 0.2, caller=Caller("light"))
    assert (await light).output == 1  # next round: well within its deadline
    for future in flood:
        future.cancel()


async def test_queue_full_refusals_are_counted(
    make_batcher: Callable[..., DynamicBatcher[int, int]], metrics: Metrics
) -> None:
    batcher = make_batcher(queue=2)
    held = [batcher.submit(i, deadline=time.monotonic() + 10) for i in range(2)]
    with pytest.raises(QueueFull):
        batcher.submit(2, deadline=time.monotonic() + 10)
    assert refusals(metrics, "queue_full") == 1
    await asyncio.gather(*held)


async def test_a_deadline_already_passed_is_exceeded_not_unmeetable(
    make_batcher: Callable[..., DynamicBatcher[int, int]],
) -> None:
    from inference_engine.errors import DeadlineExceeded

    batcher = make_batcher()
    with pytest.raises(DeadlineExceeded):  # 504: retrying later would not help a spent budget
        batcher.check_room(1, deadline=time.monotonic() - 0.001)
