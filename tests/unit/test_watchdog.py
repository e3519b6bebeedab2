"""The watchdog restarts a model whose forward pass hangs or whose batch loop ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from inference_engine.errors import ModelNotReady
from inference_engine.imaging import ImageLimits
from inference_engine.metrics import Metrics
from inference_engine.models.loader import scan_repository
from inference_engine.service import InferenceService, ModelState
from inference_engine.settings import BatchingSettings, WatchdogSettings
from inference_engine.watchdog import Watchdog, diagnose
from tests.helpers import encode
from tests.repository import add_colour_model

GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
BLUE = encode(np.full((32, 32, 3), (10, 10, 250), np.uint8), "PNG")


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[tuple[InferenceService, Metrics]]:
    add_colour_model(tmp_path, "hangs", hang_on_blue_s=1.0, settings={"max_batch_size": 1})
    specs, broken = scan_repository(tmp_path, BatchingSettings())
    metrics = Metrics()
    service = InferenceService(specs, broken, metrics, limits=ImageLimits())
    watchdog = Watchdog(service, WatchdogSettings(max_forward_s=0.3, check_interval_s=0.05))
    service.start()
    await service.wait_loaded()
    watchdog.start()
    yield service, metrics
    await watchdog.stop()
    await service.stop(0.5)


async def wait_for_state(service: InferenceService, state: ModelState, within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while service.runtime("hangs").state is not state:
        assert time.monotonic() < deadline, service.runtime("hangs").state
        await asyncio.sleep(0.01)


async def test_a_hung_forward_pass_fails_its_requests_with_503_and_the_model_reloads(
    watched: tuple[InferenceService, Metrics],
) -> None:
    service, metrics = watched
    deadline = time.monotonic() + 10
    hung = asyncio.create_task(service.infer("hangs", BLUE, top_k=None, deadline=deadline))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(service.infer("hangs", GREEN, top_k=None, deadline=deadline))
    started = time.monotonic()
    for task in (hung, queued):
        with pytest.raises(ModelNotReady, match="restarting: a forward pass has run for"):
            await task
    assert time.monotonic() - started < 0.8  # long before the hung pass (1 s) returns
    await wait_for_state(service, ModelState.READY)
    runtime = service.runtime("hangs")
    assert runtime.restarts == 1
    assert metrics.watchdog_restarts.labels("hangs", "1", "hung")._value.get() == 1
    result = await service.infer("hangs", GREEN, top_k=None, deadline=time.monotonic() + 5)
    assert result.body["predictions"][0]["label"] == "green"


async def test_a_dead_batch_loop_is_restarted(watched: tuple[InferenceService, Metrics]) -> None:
    service, metrics = watched
    runtime = service.runtime("hangs")
    assert diagnose(runtime, 1.0) is None
    assert "image" in runtime.batchers
    for task in runtime.batchers["image"]._tasks:
        task.cancel()
    await asyncio.sleep(0)
    assert diagnose(runtime, 1.0) == ("loop_died", "its batch loop ended")
    await asyncio.sleep(0.2)
    await wait_for_state(service, ModelState.READY)
    assert metrics.watchdog_restarts.labels("hangs", "1", "loop_died")._value.get() == 1
    assert runtime.batchers["image"].alive


async def test_a_request_caught_in_a_restart_gets_503_not_500(tmp_path: Path) -> None:
    import threading

    add_colour_model(tmp_path, "slow_load", load_delay_s=0.5)
    specs, broken = scan_repository(tmp_path, BatchingSettings())
    service = InferenceService(specs, broken, Metrics(), limits=ImageLimits())
    service.start()
    await service.wait_loaded()
    runtime = service.runtime("slow_load")
    handler = runtime.handlers[0]
    entered, release = threading.Event(), threading.Event()
    original = handler.preprocess

    def held(image: object) -> object:
        entered.set()
        release.wait(5)
        return original(image)  # type: ignore[arg-type]

    handler.preprocess = held  # type: ignore[method-assign]
    request = asyncio.create_task(
        service.infer("slow_load", GREEN, top_k=None, deadline=time.monotonic() + 10)
    )
    await asyncio.to_thread(entered.wait, 5)
    restart = asyncio.create_task(service.restart(runtime, "test restart", "hung"))
    await asyncio.sleep(0.05)
    assert runtime.state is ModelState.LOADING  # the reload takes 0.5 s
    release.set()
    with pytest.raises(ModelNotReady, match="not ready"):
        await request
    await restart
    assert runtime.state is ModelState.READY
    await service.stop(0.5)


async def test_a_failed_reload_is_retried_and_too_many_fail_liveness(tmp_path: Path) -> None:
    switch = tmp_path / "no-memory"
    add_colour_model(
        tmp_path, "hangs", hang_on_blue_s=1.0, fail_load_while=str(switch), settings={"max_batch_size": 1}
    )
    specs, broken = scan_repository(tmp_path, BatchingSettings())
    metrics = Metrics()
    service = InferenceService(specs, broken, metrics, limits=ImageLimits(), recovery_limit=2)
    settings = WatchdogSettings(max_forward_s=0.2, check_interval_s=0.05, retry_backoff_s=0.1)
    watchdog = Watchdog(service, settings)
    service.start()
    await service.wait_loaded()
    watchdog.start()
    try:
        runtime = service.runtime("hangs")
        switch.touch()  # from now on every load fails (the hung copy holds the memory)
        hung = asyncio.create_task(service.infer("hangs", BLUE, top_k=None, deadline=time.monotonic() + 10))
        with pytest.raises(ModelNotReady):
            await hung
        deadline = time.monotonic() + 5
        while runtime.failed_recoveries < 2:  # retried, with backoff, and failing each time
            assert time.monotonic() < deadline, (runtime.state, runtime.failed_recoveries)
            await asyncio.sleep(0.02)
        assert runtime.state is ModelState.FAILED
        reason = service.liveness()
        assert reason is not None and "failed 2 reloads in a row" in reason and "memory" in reason
        assert metrics.failed_recoveries.labels("hangs", "1")._value.get() >= 2
        switch.unlink()  # the memory is free again: the next retry brings the model back
        await wait_for_state(service, ModelState.READY, within_s=5)
        assert service.liveness() is None and runtime.failed_recoveries == 0
        ok = await service.infer("hangs", GREEN, top_k=None, deadline=time.monotonic() + 5)
        assert ok.body["predictions"][0]["label"] == "green"
    finally:
        await watchdog.stop()
        await service.stop(0.5)


async def test_a_model_that_failed_its_first_load_is_not_retried(tmp_path: Path) -> None:
    switch = tmp_path / "no-memory"
    switch.touch()
    add_colour_model(tmp_path, "hangs", fail_load_while=str(switch))
    specs, broken = scan_repository(tmp_path, BatchingSettings())
    service = InferenceService(specs, broken, Metrics(), limits=ImageLimits(), recovery_limit=1)
    watchdog = Watchdog(service, WatchdogSettings(check_interval_s=0.02, retry_backoff_s=0.01))
    service.start()
    await service.wait_loaded()
    watchdog.start()
    try:
        await asyncio.sleep(0.2)
        runtime = service.runtime("hangs")
        assert runtime.state is ModelState.FAILED and runtime.failed_recoveries == 0
        assert service.liveness() is None  # readiness reports it; the process is not to blame
    finally:
        await watchdog.stop()
        await service.stop(0.5)
