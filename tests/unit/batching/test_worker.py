"""A model thread: calls run on it one at a time; an abandoned one leaves nobody waiting."""

from __future__ import annotations

import asyncio
import threading

import pytest

from inference_engine.batching import ModelWorker
from inference_engine.errors import ModelNotReady


async def test_calls_run_on_the_worker_thread() -> None:
    worker = ModelWorker("test-worker")
    try:
        assert await worker.call(threading.current_thread) is not threading.current_thread()
        assert not worker.abandoned
    finally:
        worker.close()


async def test_abandon_fails_every_waiting_call_and_runs_no_queued_job() -> None:
    worker = ModelWorker("test-stuck")
    release, entered = threading.Event(), threading.Event()
    ran: list[str] = []

    def stuck() -> None:
        entered.set()
        release.wait(5)

    running = asyncio.ensure_future(worker.call(stuck))
    queued = asyncio.ensure_future(worker.call(ran.append, "queued"))
    await asyncio.to_thread(entered.wait, 5)
    error = ModelNotReady("model m was released while its thread was busy")
    worker.abandon(error)
    outcomes = await asyncio.wait_for(asyncio.gather(running, queued, return_exceptions=True), 0.1)
    assert list(outcomes) == [error, error]
    assert worker.abandoned
    with pytest.raises(ModelNotReady):  # a later call fails at once instead of queueing
        await asyncio.wait_for(worker.call(ran.append, "later"), 0.1)
    release.set()
    await asyncio.to_thread(worker._thread.join, 5)  # the thread ends once its job returns
    assert not worker._thread.is_alive()
    assert ran == []
